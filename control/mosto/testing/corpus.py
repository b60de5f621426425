"""The fixture corpus: one record per case, checked three ways (reference
model, XDP through BPF_PROG_TEST_RUN and on veth, P4 on BMv2).

Each case names an input frame, the entries installed, and what must come
out: verdict, exact bytes, the counter the frame lands in, and the FIN/RST
event. Expected frames are written out field by field with scapy (checksums
computed afresh by scapy), not derived from the code under test.

Ports are logical: an input frame comes in by port 0 unless its case says
`ingress_port` 1; an entry's `egress` names port 0 (hairpin) or port 1, its
`ingress` port 0 or 1 (or is absent: any), and each target maps them to its
own ports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from mosto.dataplane.entry import FlowKey
from mosto.dataplane.model import flow_of

CLIENT_MAC, PROXY0_MAC = "02:00:00:00:00:01", "02:00:00:00:00:10"
PROXY1_MAC, SERVER_MAC = "02:00:00:00:00:11", "02:00:00:00:00:02"
C4, P4, S4 = "10.0.0.1", "10.0.0.10", "10.0.1.2"
C6, P6, S6 = "fd00::1", "fd00::10", "fd00:1::2"
CPORT, PPORT, SPORT = 40000, 8080, 80
PAYLOAD = b"mosto says hello"


@dataclass
class Case:
    name: str
    description: str
    packet: Packet
    entries: list[dict[str, Any]]
    verdict: str  # "forward", "pass" or "drop"
    counter: str
    expected: Packet | None = None  # forward only
    egress_port: int | None = None  # forward only
    event: bool = False  # a FIN/RST event is reported
    event_refused: bool = False  # a FIN/RST kept back by the window check (event_out_of_window)
    learned_tsval: int | None = None  # learning entries: the TSval recorded
    # Frames sent before packet, on the same entries (learning: what they
    # recorded); each passes or is dropped as packet is, nothing else checked.
    prior: list[Packet] = field(default_factory=list)
    recorded_by: int = -1  # learning: which of prior + [packet] the record is from
    ingress_port: int = 0  # the logical port the frames come in by
    tags: set[str] = field(default_factory=set)

    @property
    def frames(self) -> list[Packet]:
        return [*self.prior, self.packet]

    def learned(self) -> tuple[int, int, int] | None:
        """The record a learning entry must hold at the end: (tsval, seq, ack)."""
        if self.learned_tsval is None:
            return None
        tcp = self.frames[self.recorded_by][TCP]
        return self.learned_tsval, tcp.seq, tcp.ack

    @property
    def entry_frames(self) -> list[Packet]:
        """The frames of the first entry's flow: what its stats count (the
        others are the peer entry's, in the window-check cases)."""
        m = self.entries[0]["match"]
        flow = FlowKey(ip_address(m["src"]), ip_address(m["dst"]), m["sport"], m["dport"])
        return [f for f in self.frames if flow_of(bytes(f)) == flow]

    @property
    def hit(self) -> bool:
        """The frame matched an entry: its stats count it."""
        return self.counter in HIT_COUNTERS and "unmatched" not in self.tags

    @property
    def target_counter(self) -> str:
        """The counter as the targets split it: a hit leaves by its ingress port or another."""
        if self.counter != "hit":
            return self.counter
        return "hit_tx" if self.egress_port == self.ingress_port else "hit_redirect"

    @property
    def hairpin(self) -> bool:
        return self.verdict == "forward" and self.egress_port == self.ingress_port

    def __post_init__(self) -> None:
        if self.verdict == "forward":
            assert self.expected is not None and self.egress_port is not None, self.name


# Counters of frames that matched an entry (stats count them, on every target).
HIT_COUNTERS = {
    "hit",
    "pass_learn",
    "drop_bad_tcp",
    "drop_wrong_ingress",
    "drop_fragment",
    "drop_ipv6_ext",
}


def entry(
    src=C4, dst=S4, sport=CPORT, dport=SPORT, seq=5000, ack=-100, egress=1, **extra
) -> dict[str, Any]:
    doc = {
        "match": {"src": src, "dst": dst, "sport": sport, "dport": dport},
        "seq_delta": seq,
        "ack_delta": ack,
        "smac": PROXY1_MAC,
        "dmac": SERVER_MAC,
        "egress": egress,
    }
    doc.update(extra)
    return doc


def learning(src=C4, dst=S4, sport=CPORT, dport=SPORT) -> dict[str, Any]:
    return {"match": {"src": src, "dst": dst, "sport": sport, "dport": dport}, "learn": True}


def tcp4(
    src=C4,
    dst=S4,
    sport=CPORT,
    dport=SPORT,
    seq=1000,
    ack=2000,
    flags="A",
    options=(),
    window=512,
    payload=PAYLOAD,
    smac=CLIENT_MAC,
    dmac=PROXY0_MAC,
    ip_options=None,
    vlan=None,
    qinq=None,
    ip_flags=0,
) -> Packet:
    eth = Ether(src=smac, dst=dmac)
    for outer in qinq or ():
        eth = eth / Dot1AD(vlan=outer)
    if vlan is not None:
        eth = eth / Dot1Q(vlan=vlan)
    ip = IP(src=src, dst=dst, flags=ip_flags)
    if ip_options:
        ip.options = ip_options
    tcp = TCP(
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags=flags,
        window=window,
        options=list(options),
    )
    return eth / ip / tcp / Raw(payload) if payload else eth / ip / tcp


def tcp6(
    src=C6,
    dst=S6,
    sport=CPORT,
    dport=SPORT,
    seq=1000,
    ack=2000,
    flags="A",
    options=(),
    window=512,
    payload=PAYLOAD,
    smac=CLIENT_MAC,
    dmac=PROXY0_MAC,
    ext=(),
) -> Packet:
    ip6: Packet = IPv6(src=src, dst=dst)
    for header in ext:
        ip6 = ip6 / header
    return (
        Ether(src=smac, dst=dmac)
        / ip6
        / TCP(
            sport=sport,
            dport=dport,
            seq=seq,
            ack=ack,
            flags=flags,
            window=window,
            options=list(options),
        )
        / Raw(payload)
    )


OUT = {"smac": PROXY1_MAC, "dmac": SERVER_MAC}
TS = {"tsval_delta": 1_000_000, "tsecr_delta": -7}
NOP = ("NOP", None)


def _zero_checksum_payload() -> bytes:
    """A payload that makes the translated packet's TCP checksum exactly 0x0000.

    With a zero word as payload the checksum is c = ~S. A payload word w makes
    the sum S + w, and S + c = 0xffff, whose complement is 0x0000.
    """
    probe = Ether(bytes(tcp4(seq=6000, ack=1900, payload=b"\0\0", **OUT)))
    return probe[TCP].chksum.to_bytes(2, "big")


def _fin_rst(flags: str) -> Case:
    return Case(
        name=f"ipv4-{ {'F': 'fin', 'R': 'rst'}[flags] }",
        description=f"{flags} of a spliced flow is translated, forwarded and reported",
        packet=tcp4(flags=flags + "A", payload=b""),
        entries=[entry()],
        verdict="forward",
        counter="hit",
        expected=tcp4(flags=flags + "A", seq=6000, ack=1900, payload=b"", **OUT),
        egress_port=1,
        event=True,
    )


CASES: list[Case] = [
    Case(
        name="ipv4-seq-ack",
        description="seq and ack move by their deltas; out of port 1",
        packet=tcp4(),
        entries=[entry()],
        verdict="forward",
        counter="hit",
        expected=tcp4(seq=6000, ack=1900, **OUT),
        egress_port=1,
    ),
    Case(
        name="ipv4-seq-ack-wrap",
        description="seq and ack wrap around 2^32",
        packet=tcp4(seq=0xFFFFFF00, ack=0x10),
        entries=[entry(seq=0x200, ack=-0x20)],
        verdict="forward",
        counter="hit",
        expected=tcp4(seq=0x100, ack=0xFFFFFFF0, **OUT),
        egress_port=1,
    ),
    Case(
        name="ipv4-hairpin",
        description="egress equal to ingress sends the frame back out (XDP_TX)",
        packet=tcp4(),
        entries=[entry(egress=0)],
        verdict="forward",
        counter="hit",
        expected=tcp4(seq=6000, ack=1900, **OUT),
        egress_port=0,
    ),
    Case(
        name="ipv4-sack-4-blocks",
        description="four SACK blocks (the most that fit) move with the ack delta",
        packet=tcp4(options=[NOP, NOP, ("SAck", (10, 20, 30, 40, 50, 60, 70, 80))]),
        entries=[entry()],
        verdict="forward",
        counter="hit",
        expected=tcp4(
            seq=6000,
            ack=1900,
            **OUT,
            options=[
                NOP,
                NOP,
                (
                    "SAck",
                    (
                        4294967206,
                        4294967216,
                        4294967226,
                        4294967236,
                        4294967246,
                        4294967256,
                        4294967266,
                        4294967276,
                    ),
                ),
            ],
        ),
        egress_port=1,
    ),
    Case(
        name="ipv4-sack-3-blocks-ts",
        description="three SACK blocks move with the ack delta, timestamps with theirs",
        packet=tcp4(
            options=[
                NOP,
                NOP,
                ("Timestamp", (111, 222)),
                NOP,
                NOP,
                ("SAck", (100, 200, 300, 400, 500, 600)),
            ]
        ),
        entries=[entry(timestamps=TS)],
        verdict="forward",
        counter="hit",
        expected=tcp4(
            seq=6000,
            ack=1900,
            **OUT,
            options=[
                NOP,
                NOP,
                ("Timestamp", (1_000_111, 215)),
                NOP,
                NOP,
                ("SAck", (0, 100, 200, 300, 400, 500)),
            ],
        ),
        egress_port=1,
    ),
    Case(
        name="ipv4-sack-odd-offset",
        description="a SACK block at an odd offset: its checksum share is byte-swapped",
        packet=tcp4(options=[NOP, ("SAck", (0x01020304, 0x05060708)), NOP, NOP, NOP]),
        entries=[entry(ack=0x00102030)],
        verdict="forward",
        counter="hit",
        expected=tcp4(
            seq=6000,
            ack=2000 + 0x00102030,
            **OUT,
            options=[NOP, ("SAck", (0x01122334, 0x05162738)), NOP, NOP, NOP],
        ),
        egress_port=1,
    ),
    Case(
        name="ipv4-ts-not-in-entry",
        description="timestamps stay as they are when the entry carries no TS deltas",
        packet=tcp4(options=[NOP, NOP, ("Timestamp", (111, 222))]),
        entries=[entry()],
        verdict="forward",
        counter="hit",
        expected=tcp4(seq=6000, ack=1900, options=[NOP, NOP, ("Timestamp", (111, 222))], **OUT),
        egress_port=1,
    ),
    Case(
        name="ipv4-window-up-saturates",
        description="window << 8 saturates at 65535",
        packet=tcp4(window=1000),
        entries=[entry(wscale_shift=8)],
        verdict="forward",
        counter="hit",
        expected=tcp4(seq=6000, ack=1900, window=0xFFFF, **OUT),
        egress_port=1,
    ),
    Case(
        name="ipv4-window-down",
        description="window >> 3",
        packet=tcp4(window=1000),
        entries=[entry(wscale_shift=-3)],
        verdict="forward",
        counter="hit",
        expected=tcp4(seq=6000, ack=1900, window=125, **OUT),
        egress_port=1,
    ),
    Case(
        name="ipv4-nat",
        description="non-transparent proxy: addresses and ports rewritten, IPv4 sum fixed",
        packet=tcp4(dst=P4, dport=PPORT),
        entries=[
            entry(
                dst=P4, dport=PPORT, rewrite={"src": P4, "dst": S4, "sport": 50000, "dport": SPORT}
            )
        ],
        verdict="forward",
        counter="hit",
        expected=tcp4(src=P4, dst=S4, sport=50000, dport=SPORT, seq=6000, ack=1900, **OUT),
        egress_port=1,
    ),
    Case(
        name="ipv4-ip-options",
        description="IPv4 header with options (IHL 6)",
        packet=tcp4(ip_options=[IPOption_NOP()] * 4),
        entries=[entry()],
        verdict="forward",
        counter="hit",
        expected=tcp4(seq=6000, ack=1900, ip_options=[IPOption_NOP()] * 4, **OUT),
        egress_port=1,
    ),
    Case(
        name="ipv4-vlan",
        description="one 802.1Q tag is parsed and kept",
        packet=tcp4(vlan=42),
        entries=[entry()],
        verdict="forward",
        counter="hit",
        expected=tcp4(seq=6000, ack=1900, vlan=42, **OUT),
        egress_port=1,
    ),
    Case(
        name="ipv4-checksum-zero",
        description="the translated checksum comes out as 0x0000 (the RFC 1624 corner)",
        packet=tcp4(payload=_zero_checksum_payload()),
        entries=[entry()],
        verdict="forward",
        counter="hit",
        expected=tcp4(seq=6000, ack=1900, payload=_zero_checksum_payload(), **OUT),
        egress_port=1,
        tags={"checksum-zero"},
    ),
    _fin_rst("F"),
    _fin_rst("R"),
    Case(
        name="ipv6-seq-ack-sack-ts",
        description="IPv6: seq/ack, SACK and timestamps",
        packet=tcp6(options=[NOP, NOP, ("Timestamp", (5, 6)), NOP, NOP, ("SAck", (100, 200))]),
        entries=[entry(src=C6, dst=S6, timestamps=TS)],
        verdict="forward",
        counter="hit",
        expected=tcp6(
            seq=6000,
            ack=1900,
            **OUT,
            options=[
                NOP,
                NOP,
                ("Timestamp", (1_000_005, 4294967295)),
                NOP,
                NOP,
                ("SAck", (0, 100)),
            ],
        ),
        egress_port=1,
    ),
    Case(
        name="ipv6-nat",
        description="IPv6 non-transparent proxy: addresses and ports rewritten",
        packet=tcp6(dst=P6, dport=PPORT),
        entries=[
            entry(
                src=C6,
                dst=P6,
                dport=PPORT,
                rewrite={"src": P6, "dst": S6, "sport": 50000, "dport": SPORT},
            )
        ],
        verdict="forward",
        counter="hit",
        expected=tcp6(src=P6, dst=S6, sport=50000, seq=6000, ack=1900, **OUT),
        egress_port=1,
    ),
    Case(
        name="learn-tsval",
        description="a learning entry records the sender's TSval and passes the frame",
        packet=tcp4(options=[NOP, NOP, ("Timestamp", (0xDEADBEEF, 222))]),
        entries=[learning()],
        verdict="pass",
        counter="pass_learn",
        learned_tsval=0xDEADBEEF,
    ),
    Case(
        name="learn-no-timestamp",
        description="a learning entry's flow without timestamps: nothing recorded",
        packet=tcp4(options=[NOP, NOP, ("SAck", (1, 2))]),
        entries=[learning()],
        verdict="pass",
        counter="pass_learn",
    ),
    Case(
        name="learn-malformed-options",
        description="malformed options on a learning entry's flow: passed (the proxy owns it)",
        packet=tcp4(options=[("Timestamp", (1, 2)), ("Timestamp", (3, 4))]),
        entries=[learning()],
        verdict="pass",
        counter="pass_learn",
    ),
    Case(
        name="learn-fin",
        description="a FIN on a learning entry's flow is reported (the flow ends before hand-over)",
        packet=tcp4(flags="FA", payload=b"", options=[NOP, NOP, ("Timestamp", (7, 8))]),
        entries=[learning()],
        verdict="pass",
        counter="pass_learn",
        event=True,
        learned_tsval=7,
    ),
    Case(
        name="learn-not-far-behind",
        description="a learning entry keeps its record against a frame far behind it in "
        "sequence space (a blind spoofer's, say): the record only moves forward",
        prior=[tcp4(seq=1_000_000, options=[NOP, NOP, ("Timestamp", (500, 1))])],
        packet=tcp4(
            seq=(1_000_000 - (1 << 30)) % (1 << 32),
            options=[NOP, NOP, ("Timestamp", (0xFFFF0000, 1))],
        ),
        entries=[learning()],
        verdict="pass",
        counter="pass_learn",
        learned_tsval=500,
        recorded_by=0,
    ),
    Case(
        name="learn-reordered",
        description="a frame a little behind the record (reordered, retransmitted) replaces it",
        prior=[tcp4(seq=1_000_000, options=[NOP, NOP, ("Timestamp", (500, 1))])],
        packet=tcp4(seq=1_000_000 - 1448, options=[NOP, NOP, ("Timestamp", (499, 1))]),
        entries=[learning()],
        verdict="pass",
        counter="pass_learn",
        learned_tsval=499,
    ),
    Case(
        name="learn-ahead-wraps",
        description="a frame ahead of the record replaces it, across the 2^32 wrap",
        prior=[tcp4(seq=(1 << 32) - 100, options=[NOP, NOP, ("Timestamp", (500, 1))])],
        packet=tcp4(seq=50, ack=9, options=[NOP, NOP, ("Timestamp", (501, 1))]),
        entries=[learning()],
        verdict="pass",
        counter="pass_learn",
        learned_tsval=501,
    ),
    Case(
        name="miss-other-port",
        description="a flow with no entry passes untouched",
        packet=tcp4(sport=CPORT + 1),
        entries=[entry()],
        verdict="pass",
        counter="pass_miss",
    ),
    Case(
        name="miss-reverse-direction",
        description="entries are directional: the reverse flow needs its own",
        packet=tcp4(src=S4, dst=C4, sport=SPORT, dport=CPORT),
        entries=[entry()],
        verdict="pass",
        counter="pass_miss",
    ),
    Case(
        name="pass-udp",
        description="UDP passes",
        packet=Ether(src=CLIENT_MAC, dst=PROXY0_MAC)
        / IP(src=C4, dst=S4)
        / UDP(sport=CPORT, dport=SPORT)
        / Raw(PAYLOAD),
        entries=[entry()],
        verdict="pass",
        counter="pass_not_tcp",
    ),
    Case(
        name="pass-arp",
        description="non-IP passes",
        packet=Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff")
        / ARP(hwsrc=CLIENT_MAC, psrc=C4, hwdst="00:00:00:00:00:00", pdst=S4),
        entries=[entry()],
        verdict="pass",
        counter="pass_not_ip",
    ),
    Case(
        name="pass-fragment",
        description="a non-first IPv4 fragment has no TCP header to match: it passes",
        packet=Ether(src=CLIENT_MAC, dst=PROXY0_MAC)
        / IP(src=C4, dst=S4, proto=6, frag=100)
        / Raw(b"x" * 40),
        entries=[entry()],
        verdict="pass",
        counter="pass_fragment",
    ),
    Case(
        name="pass-truncated-tcp",
        description="a TCP header cut short passes (it cannot be matched)",
        packet=Ether(bytes(tcp4())[: 14 + 20 + 12]),
        entries=[entry()],
        verdict="pass",
        counter="pass_truncated",
    ),
    Case(
        name="drop-bad-option-length",
        description="a spliced flow with a malformed option is dropped, never passed",
        packet=tcp4(options=[NOP, NOP, ("Timestamp", (1, 2)), (99, b"")]),
        entries=[entry()],
        verdict="drop",
        counter="drop_bad_tcp",
    ),
    Case(
        name="drop-sack-length",
        description="SACK of a length that is not 2 + 8n is malformed",
        packet=tcp4(options=[NOP, NOP, (5, b"\0" * 6)]),
        entries=[entry()],
        verdict="drop",
        counter="drop_bad_tcp",
    ),
    Case(
        name="drop-duplicate-timestamps",
        description="two timestamp options in one header are malformed",
        packet=tcp4(options=[("Timestamp", (1, 2)), ("Timestamp", (3, 4))]),
        entries=[entry(timestamps=TS)],
        verdict="drop",
        counter="drop_bad_tcp",
    ),
    Case(
        name="drop-data-offset",
        description="a data offset below 5 cannot be translated",
        packet=tcp4(),
        entries=[entry()],
        verdict="drop",
        counter="drop_bad_tcp",
        tags={"dataofs-4"},
    ),
    # ---- where a spliced flow's frames come in, and how they are wrapped ----
    Case(
        name="ipv4-ingress-pinned",
        description="an entry tied to its ingress port translates what comes in by it",
        packet=tcp4(),
        entries=[entry(ingress=0)],
        verdict="forward",
        counter="hit",
        expected=tcp4(seq=6000, ack=1900, **OUT),
        egress_port=1,
    ),
    Case(
        name="drop-wrong-ingress",
        description="a spliced four-tuple coming in by another port is dropped, not passed",
        packet=tcp4(),
        entries=[entry(ingress=0)],
        verdict="drop",
        counter="drop_wrong_ingress",
        ingress_port=1,
    ),
    Case(
        name="drop-wrong-ingress-rst",
        description="an RST of a spliced flow by another port is dropped and not reported",
        packet=tcp4(flags="RA", payload=b""),
        entries=[entry(ingress=0)],
        verdict="drop",
        counter="drop_wrong_ingress",
        ingress_port=1,
    ),
    Case(
        name="ipv4-any-ingress",
        description="an entry without an ingress takes its flow from any port",
        packet=tcp4(),
        entries=[entry(egress=0)],
        verdict="forward",
        counter="hit",
        expected=tcp4(seq=6000, ack=1900, **OUT),
        egress_port=0,
        ingress_port=1,
    ),
    Case(
        name="drop-first-fragment",
        description="an IPv4 first fragment (MF) of a spliced flow is dropped",
        packet=tcp4(ip_flags="MF"),
        entries=[entry()],
        verdict="drop",
        counter="drop_fragment",
    ),
    Case(
        name="miss-first-fragment",
        description="a first fragment of a flow without an entry passes",
        packet=tcp4(ip_flags="MF", sport=CPORT + 1),
        entries=[entry()],
        verdict="pass",
        counter="pass_miss",
    ),
    Case(
        name="learn-first-fragment",
        description="a first fragment of a learning entry's flow passes (the proxy owns it)",
        packet=tcp4(ip_flags="MF", options=[NOP, NOP, ("Timestamp", (99, 1))]),
        entries=[learning()],
        verdict="pass",
        counter="pass_learn",
        learned_tsval=99,
    ),
    Case(
        name="drop-tiny-first-fragment",
        description="a first fragment that splits the TCP header (RFC 1858) is dropped unmatched",
        packet=Ether(src=CLIENT_MAC, dst=PROXY0_MAC)
        / IP(src=C4, dst=S4, proto=6, flags="MF")
        / Raw(bytes(TCP(sport=CPORT + 1, dport=SPORT))[:8]),
        entries=[entry()],
        verdict="drop",
        counter="drop_fragment",
        tags={"unmatched"},  # dropped before the look-up
    ),
    Case(
        name="ipv6-first-fragment",
        description="an IPv6 first fragment (fragment header, M) of a spliced flow is dropped",
        packet=tcp6(ext=[IPv6ExtHdrFragment(m=1, offset=0, id=7)]),
        entries=[entry(src=C6, dst=S6)],
        verdict="drop",
        counter="drop_fragment",
    ),
    Case(
        name="pass-ipv6-fragment",
        description="a non-first IPv6 fragment has no TCP header to match: it passes",
        packet=Ether(src=CLIENT_MAC, dst=PROXY0_MAC)
        / IPv6(src=C6, dst=S6)
        / IPv6ExtHdrFragment(nh=6, m=0, offset=3, id=7)
        / Raw(b"y" * 24),
        entries=[entry(src=C6, dst=S6)],
        verdict="pass",
        counter="pass_fragment",
    ),
    Case(
        name="drop-ipv6-ext",
        description="a spliced flow behind hop-by-hop, routing and destination options is dropped",
        packet=tcp6(
            ext=[
                IPv6ExtHdrHopByHop(),
                IPv6ExtHdrRouting(addresses=[S6]),
                IPv6ExtHdrDestOpt(options=[]),
            ]
        ),
        entries=[entry(src=C6, dst=S6)],
        verdict="drop",
        counter="drop_ipv6_ext",
    ),
    Case(
        name="drop-ipv6-atomic-fragment",
        description="an atomic fragment (offset 0, M 0) is a whole segment behind a header",
        packet=tcp6(ext=[IPv6ExtHdrFragment(m=0, offset=0, id=8)]),
        entries=[entry(src=C6, dst=S6)],
        verdict="drop",
        counter="drop_ipv6_ext",
    ),
    Case(
        name="miss-ipv6-ext",
        description="TCP behind extension headers without an entry passes untouched",
        packet=tcp6(ext=[IPv6ExtHdrDestOpt(options=[]), IPv6ExtHdrDestOpt(options=[])]),
        entries=[entry(src=C6, dst=S6, sport=CPORT + 1)],
        verdict="pass",
        counter="pass_miss",
    ),
    Case(
        name="learn-ipv6-ext",
        description="behind extension headers a learning entry passes, but learns no TSval",
        packet=tcp6(
            ext=[IPv6ExtHdrHopByHop()],
            options=[NOP, NOP, ("Timestamp", (0x01020304, 5))],
        ),
        entries=[learning(src=C6, dst=S6)],
        verdict="pass",
        counter="pass_learn",
    ),
    Case(
        name="drop-ipv6-ext-chain-too-long",
        description="more extension headers than the walk takes: dropped, whatever they hide",
        packet=tcp6(ext=[IPv6ExtHdrDestOpt(options=[])] * 7, sport=CPORT + 1),
        entries=[entry(src=C6, dst=S6)],
        verdict="drop",
        counter="drop_deep_headers",
    ),
    Case(
        name="drop-ipv6-ext-too-many-bytes",
        description="extension headers longer than the walk takes: dropped, whatever they hide",
        packet=tcp6(
            ext=[IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 255)])],  # 33 units
            sport=CPORT + 1,
        ),
        entries=[entry(src=C6, dst=S6)],
        verdict="drop",
        counter="drop_deep_headers",
    ),
    Case(
        name="pass-ipv6-ah",
        description="an authentication header is not walked: not TCP as far as the parser goes",
        packet=Ether(src=CLIENT_MAC, dst=PROXY0_MAC)
        / IPv6(src=C6, dst=S6, nh=51)
        / Raw(bytes([6, 4]) + b"\0" * 22),
        entries=[entry(src=C6, dst=S6)],
        verdict="pass",
        counter="pass_not_tcp",
    ),
    Case(
        name="ipv4-qinq",
        description="802.1ad outer and 802.1Q inner tag: parsed, translated, kept",
        packet=tcp4(qinq=[100], vlan=42),
        entries=[entry()],
        verdict="forward",
        counter="hit",
        expected=tcp4(seq=6000, ack=1900, qinq=[100], vlan=42, **OUT),
        egress_port=1,
    ),
    Case(
        name="drop-three-tags",
        description="a third VLAN tag: dropped, whatever it hides (VID 0 tags all come off)",
        packet=tcp4(qinq=[0, 0], vlan=0, sport=CPORT + 1),
        entries=[entry()],
        verdict="drop",
        counter="drop_deep_headers",
    ),
]


def _finish() -> None:
    # Raw option bytes scapy will not build from a (kind, value) pair.
    for case in CASES:
        if case.name == "drop-bad-option-length":
            raw = bytearray(bytes(case.packet))
            opt = 14 + 20 + 20 + 12  # NOP NOP TS(10): the next option's length byte
            raw[opt + 1] = 1
            case.packet = Ether(bytes(raw))
        elif "dataofs-4" in case.tags:
            pkt = case.packet
            pkt[TCP].dataofs = 4
            case.packet = Ether(bytes(pkt))


_finish()


def by_name(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def install_docs(case: Case, port_egress: dict[int, int | str]) -> list[dict[str, Any]]:
    """The case's entries with logical ports (egress, ingress) replaced by the target's."""
    return [
        {k: port_egress[v] if k in ("egress", "ingress") else v for k, v in doc.items()}
        for doc in case.entries
    ]


# -- the FIN/RST window check (ebpf/track.h) -----------------------------------
# A splice of C4:40000 <-> S4:80 whose client sent up to 1000 and whose
# server sent up to 1900 (its seq 1900 is the client's 2000). Both entries
# leave by port 1 so that every frame lands in one counter.

SERVER = {"src": S4, "dst": C4, "sport": SPORT, "dport": CPORT}
BACK = {"smac": PROXY0_MAC, "dmac": CLIENT_MAC}
FAR = 1000 + (1 << 30) + 1  # past MOSTO_TRACK_SEQ_AHEAD


def _tracked_pair(server_first: bool = False, v6: bool = False) -> list[dict[str, Any]]:
    c, s = (C6, S6) if v6 else (C4, S4)
    to_server = entry(src=c, dst=s, track={"snd_nxt": 1000, "ack": 1900})
    to_client = entry(
        src=s,
        dst=c,
        sport=SPORT,
        dport=CPORT,
        seq=100,
        ack=-5000,
        track={"snd_nxt": 1900, "ack": 1000},
        **BACK,
    )
    return [to_client, to_server] if server_first else [to_server, to_client]


def _client(v6: bool = False, **kw) -> Packet:
    return tcp6(**kw) if v6 else tcp4(**kw)


def _server(v6: bool = False, **kw) -> Packet:
    fields = dict(SERVER, smac=SERVER_MAC, dmac=PROXY1_MAC)
    if v6:
        fields.update(src=S6, dst=C6)
    fields.update(kw)
    return tcp6(**fields) if v6 else tcp4(**fields)


def _to_server(v6: bool = False, **kw) -> Packet:
    return _client(v6, **kw, **OUT)


def _to_client(v6: bool = False, **kw) -> Packet:
    return _server(v6, **BACK, **kw)


def _rst(name: str, description: str, seq: int, event: bool, prior=(), pair=True) -> Case:
    return Case(
        name=name,
        description=description,
        prior=list(prior),
        packet=tcp4(flags="R", seq=seq, ack=0, payload=b""),
        entries=_tracked_pair() if pair else _tracked_pair()[:1],
        verdict="forward",
        counter="hit",
        expected=_to_server(flags="R", seq=seq + 5000, ack=(1 << 32) - 100, payload=b""),
        egress_port=1,
        event=event,
        event_refused=not event,
        tags={"track"},
    )


def _fin(name: str, description: str, event: bool, seq: int = 1000, ack: int = 2000) -> Case:
    return Case(
        name=name,
        description=description,
        packet=tcp4(flags="FA", seq=seq, ack=ack),
        entries=_tracked_pair(),
        verdict="forward",
        counter="hit",
        expected=_to_server(flags="FA", seq=(seq + 5000) % (1 << 32), ack=ack - 100),
        egress_port=1,
        event=event,
        event_refused=not event,
        tags={"track"},
    )


# The client sends 16 bytes and the server acknowledges them: both directions move.
DATA_AND_ACK = [tcp4(seq=1000, ack=2000), _server(seq=1900, ack=6016, payload=b"")]

TRACK_CASES: list[Case] = [
    _rst("track-rst-exact", "an RST at the receiver's next seq is reported", 1000, True),
    _rst(
        "track-rst-in-window",
        "an RST one byte past the receiver's next seq is kept back (RFC 5961: a challenge ACK "
        "is the receiver's business) and forwarded",
        1001,
        False,
    ),
    _rst(
        "track-rst-after-data",
        "the receiver's ACK of new data moves the exact RST seq with it",
        1016,
        True,
        prior=DATA_AND_ACK,
    ),
    _rst(
        "track-rst-stale",
        "after the receiver acknowledged new data, an RST at the old seq is kept back",
        1000,
        False,
        prior=DATA_AND_ACK,
    ),
    _rst(
        "track-rst-no-peer",
        "without the other direction's entry, a quiet flow's state is assumed: exact RST reported",
        1000,
        True,
        pair=False,
    ),
    _rst(
        "track-rst-no-peer-wrong",
        "without the other direction's entry, an inexact RST is kept back",
        999,
        False,
        pair=False,
    ),
    _fin(
        "track-fin", "a FIN whose ACK acknowledges exactly what the server sent is reported", True
    ),
    _fin(
        "track-fin-ack-ahead", "a FIN acknowledging a byte never sent is kept back", False, ack=2001
    ),
    _fin(
        "track-fin-ack-behind",
        "a FIN older than the sender's last ACK is kept back",
        False,
        ack=1999,
    ),
    _fin("track-fin-seq-far", "a FIN whose seq is past any window is kept back", False, seq=FAR),
    Case(
        name="track-fin-after-data",
        description="the server's FIN acknowledging the client's new bytes is reported",
        prior=[tcp4(seq=1000, ack=2000)],
        packet=_server(flags="FA", seq=1900, ack=6016, payload=b""),
        entries=_tracked_pair(server_first=True),
        verdict="forward",
        counter="hit",
        expected=_to_client(flags="FA", seq=2000, ack=1016, payload=b""),
        egress_port=1,
        event=True,
        tags={"track"},
    ),
    Case(
        name="track-spoof-moves-nothing",
        description="a segment with an unacceptable ACK (a blind spoofer's, far ahead) does not "
        "move the state: the server's FIN acknowledging it is kept back",
        prior=[tcp4(seq=50000, ack=2001)],
        packet=_server(flags="FA", seq=1900, ack=55016, payload=b""),
        entries=_tracked_pair(server_first=True),
        verdict="forward",
        counter="hit",
        expected=_to_client(flags="FA", seq=2000, ack=50016, payload=b""),
        egress_port=1,
        event_refused=True,
        tags={"track"},
    ),
    Case(
        name="track-ipv6-fin-after-data",
        description="IPv6: the payload length comes from the IPv6 header",
        prior=[_client(True, seq=1000, ack=2000)],
        packet=_server(True, flags="FA", seq=1900, ack=6016, payload=b""),
        entries=_tracked_pair(server_first=True, v6=True),
        verdict="forward",
        counter="hit",
        expected=_to_client(True, flags="FA", seq=2000, ack=1016, payload=b""),
        egress_port=1,
        event=True,
        tags={"track"},
    ),
]
CASES += TRACK_CASES
