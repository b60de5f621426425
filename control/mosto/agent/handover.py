"""From two quiet connections to two splice entries.

A is the proxy's connection to the client, B its connection to the server.
With both buffers empty, a client packet continues on B with
seq' = seq + (B.snd_nxt - A.rcv_nxt) and ack' = ack + (B.rcv_nxt - A.snd_nxt);
the other direction uses the negated deltas.
"""

from __future__ import annotations

from dataclasses import dataclass

from mosto.agent.kernel.netinfo import NextHop
from mosto.agent.kernel.tcpstate import TCP_ESTABLISHED, TcpState
from mosto.dataplane.entry import U32, WSCALE_SHIFT_MAX, Entry, FlowKey, Track
from mosto.wire import refusal

TCPOLEN_TSTAMP_ALIGNED = 12  # what a timestamp option costs each segment


@dataclass(frozen=True)
class Pair:
    """The two flow directions that arrive at the proxy: client->A, server->B."""

    from_client: FlowKey
    from_server: FlowKey


def inbound(state: TcpState) -> FlowKey:
    """The flow of the packets this socket receives."""
    return FlowKey(state.peer[0], state.local[0], state.peer[1], state.local[1])


def pair_of(a: TcpState, b: TcpState) -> Pair:
    return Pair(inbound(a), inbound(b))


def check_quiet(a: TcpState, b: TcpState) -> None:
    """Refuses unless both connections are established, of one family, and idle."""
    if a.peer[0].version != b.peer[0].version:
        raise refusal.WrongFamily(
            f"client side is IPv{a.peer[0].version}, server side IPv{b.peer[0].version}"
        )
    for name, s in (("client", a), ("server", b)):
        if s.info.state != TCP_ESTABLISHED:
            raise refusal.NotEstablished(f"{name} connection is in TCP state {s.info.state}")
        if s.inq or s.outq:
            raise refusal.BuffersNotEmpty(
                f"{name} connection has {s.inq} bytes unread and {s.outq} unacknowledged"
            )


def check_options(a: TcpState, b: TcpState) -> None:
    """Timestamps must be on both or neither; segments must fit the other side's MSS."""
    if a.info.timestamps != b.info.timestamps:
        on, off = ("client", "server") if a.info.timestamps else ("server", "client")
        raise refusal.OptionsIncompatible(
            f"timestamps are on for the {on} connection and off for the {off} connection"
        )
    ts = TCPOLEN_TSTAMP_ALIGNED if a.info.timestamps else 0
    # What a peer may send us is bounded by the MSS we advertised to it.
    for src, dst, name in ((b, a, "server"), (a, b, "client")):
        if src.info.advmss - ts > dst.info.snd_mss:
            raise refusal.OptionsIncompatible(
                f"the {name} may send {src.info.advmss - ts}-byte segments, the other side "
                f"takes {dst.info.snd_mss}"
            )


def _wscale_shift(sender_shift: int, receiver_reads_with: int) -> int:
    shift = sender_shift - receiver_reads_with
    assert -WSCALE_SHIFT_MAX <= shift <= WSCALE_SHIFT_MAX
    return shift


def build_entries(
    a: TcpState,
    b: TcpState,
    to_server: NextHop,
    to_client: NextHop,
    client_tsval: int | None,
    server_tsval: int | None,
) -> tuple[Entry, Entry]:
    """The client->server and server->client entries. States are read in repair
    mode; TSvals are any value each peer sent (the learned ones). Each entry
    takes its frames only from the interface the proxy reaches their sender
    by (the one they came in on while the proxy relayed them). Each also
    carries its sender's state, for the FIN/RST window check: quiet, each
    peer has sent what the proxy received and acknowledged what it sent."""
    if a.snd_nxt is None or a.rcv_nxt is None or b.snd_nxt is None or b.rcv_nxt is None:
        raise ValueError("build_entries needs states read in repair mode")
    seq_cs = (b.snd_nxt - a.rcv_nxt) % U32
    ack_cs = (b.rcv_nxt - a.snd_nxt) % U32
    ts_cs: tuple[int | None, int | None] = (None, None)
    ts_sc: tuple[int | None, int | None] = (None, None)
    if a.info.timestamps:
        if client_tsval is None or server_tsval is None:
            who = "client" if client_tsval is None else "server"
            raise refusal.TimestampsUnknown(f"no TSval from the {who} seen yet")
        if a.ts_clock is None or b.ts_clock is None:
            raise ValueError("timestamps on, but a socket's TS clock was not read")
        # Translated clocks start at our own sockets' clocks now, so they never
        # go back for PAWS: a TSval learned earlier is a lower bound of the peer's.
        d_cs = (b.ts_clock - client_tsval) % U32
        d_sc = (a.ts_clock - server_tsval) % U32
        ts_cs = (d_cs, -d_sc % U32)
        ts_sc = (d_sc, -d_cs % U32)
    from_client, from_server = inbound(a), inbound(b)
    out_cs = FlowKey(b.local[0], b.peer[0], b.local[1], b.peer[1])
    out_sc = FlowKey(a.local[0], a.peer[0], a.local[1], a.peer[1])
    cs = Entry(
        match=from_client,
        seq_delta=seq_cs,
        ack_delta=ack_cs,
        smac=to_server.smac,
        dmac=to_server.dmac,
        egress=to_server.ifname,
        ingress=to_client.ifname,
        tsval_delta=ts_cs[0],
        tsecr_delta=ts_cs[1],
        wscale_shift=_wscale_shift(a.info.snd_wscale, b.info.rcv_wscale),
        rewrite=None if out_cs == from_client else out_cs,
        track=Track(snd_nxt=a.rcv_nxt, ack=b.rcv_nxt),
    )
    sc = Entry(
        match=from_server,
        seq_delta=-ack_cs % U32,
        ack_delta=-seq_cs % U32,
        smac=to_client.smac,
        dmac=to_client.dmac,
        egress=to_client.ifname,
        ingress=to_server.ifname,
        tsval_delta=ts_sc[0],
        tsecr_delta=ts_sc[1],
        wscale_shift=_wscale_shift(b.info.snd_wscale, a.info.rcv_wscale),
        rewrite=None if out_sc == from_server else out_sc,
        track=Track(snd_nxt=b.rcv_nxt, ack=a.rcv_nxt),
    )
    return cs, sc


def moved(before: TcpState, after: TcpState) -> str | None:
    """What changed between two repair-mode reads of one socket, if anything."""
    for field in ("snd_nxt", "rcv_nxt", "inq", "outq"):
        if getattr(before, field) != getattr(after, field):
            return f"{field} {getattr(before, field)} -> {getattr(after, field)}"
    if after.info.state != TCP_ESTABLISHED:
        return f"state -> {after.info.state}"
    return None
