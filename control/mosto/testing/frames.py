"""Random frames and entries for differential tests (hypothesis strategies):
random deltas with wrap-around, option mixes, odd payload lengths, IPv4/IPv6,
zero to three VLAN tags, IPv4 fragments, IPv6 extension-header chains (some
past the parser's bounds), malformed options, lying data offsets, truncated
headers, entries tied to an ingress port or not. The model
against XDP and tc (ebpf/tests/test_differential.py) and BMv2 against XDP
(tools/diff_bmv2.py) draw from the same generator."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from mosto.dataplane.entry import Entry, FlowKey, Track

u32 = st.one_of(
    st.integers(0, 2**32 - 1),
    st.integers(2**32 - 4096, 2**32 - 1),  # near the wrap
    st.integers(0, 4096),
)
u16 = st.integers(0, 0xFFFF)
port = st.integers(1, 0xFFFF)
ipv4 = st.integers(1, 2**32 - 2).map(ipaddress.IPv4Address)
ipv6 = st.integers(1, 2**128 - 2).map(ipaddress.IPv6Address)


@st.composite
def tcp_option(draw) -> bytes:
    kind = draw(st.sampled_from(["nop", "eol", "mss", "ws", "sackok", "sack", "ts", "junk"]))
    if kind == "nop":
        return b"\x01"
    if kind == "eol":
        return b"\x00" + draw(st.binary(max_size=3))  # anything may follow EOL
    if kind == "mss":
        return b"\x02\x04" + draw(st.binary(min_size=2, max_size=2))
    if kind == "ws":
        return b"\x03\x03" + draw(st.binary(min_size=1, max_size=1))
    if kind == "sackok":
        return b"\x04\x02"
    if kind == "sack":
        blocks = draw(st.integers(1, 4))
        length = 2 + 8 * blocks
        if draw(st.integers(0, 9)) == 0:  # sometimes a length that is not 2 + 8n
            length = draw(st.integers(0, 40))
        return b"\x05" + bytes([length]) + draw(st.binary(min_size=8 * blocks, max_size=8 * blocks))
    if kind == "ts":
        length = 10 if draw(st.integers(0, 9)) else draw(st.integers(0, 12))
        return b"\x08" + bytes([length]) + draw(st.binary(min_size=8, max_size=8))
    return bytes([draw(st.integers(0, 255)), draw(st.integers(0, 14))]) + draw(
        st.binary(max_size=12)
    )


@st.composite
def tcp_options(draw) -> bytes:
    opts = b"".join(draw(st.lists(tcp_option(), max_size=8)))[:40]
    pad = (-len(opts)) % 4
    return opts + draw(st.sampled_from([b"\x00", b"\x01"])) * pad


@st.composite
def ipv6_ext_chain(draw) -> tuple[bytes, int]:
    """(extension headers, next header of the first): hop-by-hop, routing,
    fragment and destination options, sometimes more or longer than the walk takes."""
    kinds = draw(st.lists(st.sampled_from([0, 43, 44, 60]), min_size=1, max_size=8))
    raw, nexthdr = b"", 6
    for kind in reversed(kinds):
        if kind == 44:
            offset = 0 if draw(st.integers(0, 2)) else draw(st.integers(1, 0x1FFF))
            frag = (offset << 3) | draw(st.integers(0, 1))
            header = (
                bytes([nexthdr, 0])
                + frag.to_bytes(2, "big")
                + draw(st.binary(min_size=4, max_size=4))
            )
        else:
            units = draw(st.sampled_from([0, 0, 1, 2, 33]))
            header = bytes([nexthdr, units]) + b"\x01\x00" * (3 + 4 * units)  # empty PadN options
        raw, nexthdr = header + raw, kind
    return raw, nexthdr


@st.composite
def scenario(draw) -> tuple[bytes, Entry, bool]:
    """(frame, entry, intact): intact frames carry correct checksums."""
    v6 = draw(st.booleans())
    addr = ipv6 if v6 else ipv4
    src, dst, sport, dport = draw(addr), draw(addr), draw(port), draw(port)
    opts = draw(tcp_options())
    payload = draw(st.binary(max_size=64))
    dataofs = 5 + len(opts) // 4
    if draw(st.integers(0, 19)) == 0:
        dataofs = draw(st.integers(0, 15))  # a data offset that lies
    tcp = TCP(
        sport=sport,
        dport=dport,
        seq=draw(u32),
        ack=draw(u32),
        window=draw(u16),
        flags=draw(st.integers(0, 0xFF)),
        dataofs=dataofs,
    ) / Raw(opts + payload)
    l3: Packet
    l4: Packet = tcp
    if draw(st.integers(0, 29)) == 0:
        l4 = UDP(sport=sport, dport=dport) / Raw(payload)
    if v6:
        l3 = IPv6(src=str(src), dst=str(dst))
        if draw(st.integers(0, 5)) == 0:
            ext, first = draw(ipv6_ext_chain())
            l3 = IPv6(src=str(src), dst=str(dst), nh=first) / Raw(ext)
            l4 = Raw(bytes(l4))  # scapy would not put TCP behind raw headers itself
    else:
        ihl_words = draw(st.integers(0, 3))
        l3 = IP(src=str(src), dst=str(dst), options=[b"\x01" * 4 * ihl_words] if ihl_words else [])
        if draw(st.integers(0, 29)) == 0:
            l3.frag = draw(st.integers(1, 0x1FFF))
        if draw(st.integers(0, 9)) == 0:
            l3.flags = "MF"
            if draw(st.booleans()):  # a tiny first fragment: the TCP header split
                l4 = Raw(bytes(l4)[: draw(st.integers(0, 19))])
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:10")
    # Hypothesis favours the first choice: one tag, on which tc can always be run.
    tags = draw(st.sampled_from([1, 0, 0, 0, 0, 1, 2, 3]))
    for i in range(tags):
        tag = Dot1AD if i == 0 and tags > 1 else Dot1Q
        eth = eth / tag(vlan=draw(st.integers(0, 4095)))
    frame = bytes(eth / l3 / l4)
    intact = True
    if draw(st.integers(0, 9)) == 0:
        # No NIC delivers less than an Ethernet header; BPF_PROG_TEST_RUN refuses it.
        frame = frame[: draw(st.integers(14, len(frame)))]
        intact = False

    hit = draw(st.integers(0, 4)) > 0
    match = (
        FlowKey(src, dst, sport, dport)
        if hit
        else FlowKey(draw(addr), draw(addr), draw(port), draw(port))
    )
    ts = draw(st.booleans())
    rewrite = None
    if draw(st.booleans()):
        rewrite = FlowKey(draw(addr), draw(addr), draw(port), draw(port))
    ack_delta = draw(u32)
    track = None
    if draw(st.booleans()):
        # Near the frame's own numbers, often exactly on them: the window
        # check must say yes as well as no (ebpf/track.h).
        near = st.sampled_from([0, 0, 0, -1, 1, -2, 2])  # exact often: a report is rare
        seq, ack_out = tcp.seq, (tcp.ack + ack_delta) % (1 << 32)
        snd_nxt = draw(st.sampled_from([seq, seq, (seq - (1 << 30)) % (1 << 32), draw(u32)]))
        track = Track(
            snd_nxt=(snd_nxt + draw(near)) % (1 << 32),
            ack=(draw(st.sampled_from([ack_out, draw(u32)])) + draw(near)) % (1 << 32),
        )
    entry = Entry(
        match=match,
        seq_delta=draw(u32),
        ack_delta=ack_delta,
        smac="02:00:00:00:00:11",
        dmac="02:00:00:00:00:02",
        egress=draw(st.sampled_from([0, 1])),  # logical port
        tsval_delta=draw(u32) if ts else None,
        tsecr_delta=draw(u32) if ts else None,
        wscale_shift=draw(st.integers(-14, 14)),
        rewrite=rewrite,
        ingress=draw(st.sampled_from([None, 0, 0, 1])),  # logical port; frames come in by 0
        track=track,
    )
    if draw(st.integers(0, 9)) == 0:
        entry = Entry.learning(match)
    return frame, entry, intact
