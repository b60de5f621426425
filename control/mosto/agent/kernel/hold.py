"""Holding a flow's senders while the proxy drains, by flow control, not loss:
the proxy host's netfilter drops the pure ACKs (and window updates) that the
proxy's own sockets send on held flows. A sender then never sees its window
move: it sends what the last window it saw allows, the proxy receives all of
it and relays it, and the sender stops. Nothing is dropped that a sender would
have to retransmit, so a hand-over costs no retransmission timeout. After the
splice is active the agent makes each receiver acknowledge through the data
plane (Agent._kick), which reopens the senders' windows at once.

Segments with data, SYN, FIN or RST still pass. Holds are elements of two
nftables sets of the proxy's outbound 4-tuples; a fixed set of rules (one per
TCP data offset, since nftables cannot subtract the header length from the IP
length) matches what carries no payload. The rules live in the table
`mosto_hold`.

For the few milliseconds of the offload itself (from reading the sockets to
verifying them) a held flow is also frozen: its peers' data segments are
dropped before they reach a socket, so no late segment (a sender's tail loss
probe, say) can move a socket's state between the read and the entries, which
would force a rollback after the splice had already carried packets.

Why nftables and not the data plane: it is the proxy host's own kernel, so a
hold works the same whichever data plane (XDP or a switch) does the splicing.
"""

from __future__ import annotations

import json
import threading

import nftables  # Debian's python3-nftables: libnftables' own binding

from mosto.dataplane.entry import FlowKey

TABLE = "mosto_hold"
TCP_DOFF_MIN, TCP_DOFF_MAX = 5, 15
IPV4_HLEN = 20


class HoldError(Exception):
    pass


PURE_ACK = "tcp flags & (fin | syn | rst) == 0"


def _per_doff(chain: str, set_name: str, pure_ack: bool) -> list[str]:
    """One rule per TCP data offset (nftables cannot subtract the header length
    from the IP length): drop what is in set_name and carries no payload (and
    no SYN, FIN or RST) if pure_ack, else what carries payload."""
    op, extra = ("", f" {PURE_ACK}") if pure_ack else ("> ", "")
    rules = []
    for doff in range(TCP_DOFF_MIN, TCP_DOFF_MAX + 1):
        hdr = 4 * doff
        rules.append(
            f"add rule inet {TABLE} {chain} ip hdrlength 5 @th,96,4 {doff} "
            f"ip length {op}{IPV4_HLEN + hdr}{extra} "
            f"ip saddr . ip daddr . tcp sport . tcp dport @{set_name}4 counter drop"
        )
        rules.append(
            f"add rule inet {TABLE} {chain} @th,96,4 {doff} ip6 length {op}{hdr}{extra} "
            f"ip6 saddr . ip6 daddr . tcp sport . tcp dport @{set_name}6 counter drop"
        )
    return rules


def _rules() -> list[str]:
    """The proxy's own pure ACKs on held flows (outbound 4-tuples)."""
    return _per_doff("output", "held", pure_ack=True)


def _freeze_rules() -> list[str]:
    """Data-bearing segments to a frozen flow are dropped (inbound 4-tuples)."""
    return _per_doff("prerouting", "frozen", pure_ack=False)


# A frozen flow thaws in milliseconds; the kernel's own timeout is a backstop.
FREEZE_BACKSTOP_S = 1


class Holds:
    """The hold table of this network namespace. Every element also carries a
    kernel timeout (backstop_s), so a hold ends even if the agent died and no
    agent comes back to delete it; the agent's own timeout comes first."""

    def __init__(self, backstop_s: int = 7) -> None:
        self.backstop_s = backstop_s
        self._nft = nftables.Nftables()
        self._lock = threading.Lock()
        self._held: set[FlowKey] = set()  # what the sets hold: only this agent adds to them
        # A fresh table: holds of an agent that died are void (their proxies retry).
        self._nft.cmd(f"delete table inet {TABLE}")
        self._run(
            "\n".join(
                [
                    f"add table inet {TABLE}",
                    # raw priority: before conntrack sees the ACK
                    f"add chain inet {TABLE} output {{ type filter hook output priority -300; }}",
                    f"add set inet {TABLE} held4 {{ type ipv4_addr . ipv4_addr . inet_service . "
                    "inet_service; flags timeout; }",
                    f"add set inet {TABLE} held6 {{ type ipv6_addr . ipv6_addr . inet_service . "
                    "inet_service; flags timeout; }",
                    *_rules(),
                    # raw priority: before conntrack, and before any socket sees the data
                    f"add chain inet {TABLE} prerouting "
                    "{ type filter hook prerouting priority -300; }",
                    f"add set inet {TABLE} frozen4 {{ type ipv4_addr . ipv4_addr . "
                    "inet_service . inet_service; flags timeout; }",
                    f"add set inet {TABLE} frozen6 {{ type ipv6_addr . ipv6_addr . "
                    "inet_service . inet_service; flags timeout; }",
                    *_freeze_rules(),
                ]
            )
        )

    def _run(self, cmd: str) -> str:
        rc, out, err = self._nft.cmd(cmd)
        if rc != 0:
            raise HoldError(f"nft: {err.strip()}")
        return out

    def _element(self, flow: FlowKey, frozen: bool = False, timeout: int | None = None) -> str:
        """The set element of an inbound flow: for a hold its reverse (what the
        proxy sends), for a freeze the flow itself; timeout: to add it with."""
        key, name = (flow, "frozen") if frozen else (flow.reversed(), "held")
        s = f"{name}{key.family}"
        expires = f" timeout {timeout}s" if timeout is not None else ""
        return f"inet {TABLE} {s} {{ {key.src} . {key.dst} . {key.sport} . {key.dport}{expires} }}"

    def freeze(self, *flows: FlowKey) -> None:
        with self._lock:
            self._run(
                "\n".join(f"add element {self._element(f, True, FREEZE_BACKSTOP_S)}" for f in flows)
            )

    def thaw(self, *flows: FlowKey) -> None:
        with self._lock:
            self._delete([self._element(f, True) for f in flows])

    def _delete(self, elements: list[str]) -> None:
        """One transaction; if the kernel's backstop timed one of them out first
        (a freeze or hold that outlived it), the rest one by one."""
        try:
            self._run("\n".join(f"delete element {e}" for e in elements))
        except HoldError:
            for e in elements:
                self._nft.cmd(f"delete element {e}")

    def hold(self, *flows: FlowKey) -> None:
        """Holds the flows, in one nftables transaction."""
        with self._lock:
            new = [f for f in flows if f not in self._held]
            if new:
                adds = (f"add element {self._element(f, timeout=self.backstop_s)}" for f in new)
                self._run("\n".join(adds))
                self._held.update(new)

    def release(self, *flows: FlowKey) -> None:
        """Lifts what is held of these flows; no nftables work at all for the rest
        (deleting an absent element costs libnftables ~8 ms, an error path)."""
        with self._lock:
            held = [f for f in flows if f in self._held]
            if held:
                self._held.difference_update(held)
                self._delete([self._element(f) for f in held])

    def held(self, flow: FlowKey) -> bool:
        with self._lock:
            return flow in self._held

    def dropped(self) -> int:
        """The proxy's ACKs held back since the table was made."""
        self._nft.set_json_output(True)
        try:
            out = json.loads(self._run(f"list chain inet {TABLE} output"))
        finally:
            self._nft.set_json_output(False)
        total = 0
        for item in out["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    total += expr["counter"]["packets"]
        return total

    def close(self) -> None:
        with self._lock:
            self._nft.cmd(f"delete table inet {TABLE}")
