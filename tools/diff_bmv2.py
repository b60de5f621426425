#!/usr/bin/env python3
"""BMv2 against XDP on random frames and entries: the P4 program on a real
simple_switch_grpc and the XDP object through BPF_PROG_TEST_RUN get the same
entry and the same frame (mosto.testing.frames, the generator of the model
differential test), and must give the same output bytes on the same port (or
the same pass or drop), the same counters (event_out_of_window among them),
the same entry stats, and report the same FIN/RST events (of splice entries,
and of those only the first with a given digest: BMv2 sends no digest
twice, p4src/README.md).

    tools/diff_bmv2.py [--examples N]     # root; p4c-bm2-ss, simple_switch_grpc on PATH

Run by `make bmv2-test`. One kind of frame never reaches BMv2 on Linux and is
left out (p4src/README.md): a frame cut inside its outer VLAN tag or the EtherType after it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_ptf import prepare  # noqa: E402

from netns import in_ns, namespace  # noqa: E402

XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 1, 2, 3, 4
PORTS = 3  # 0 and 1: switch ports; 2: where BMv2 sends what it passes (the host port)
ETH_P_ALL, PACKET_OUTGOING = 0x0003, 4
SOL_PACKET, PACKET_AUXDATA = 263, 8
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40
AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
ETH_HLEN, VLAN_HLEN, ETH_P_8021Q, ETH_P_8021AD = 14, 4, 0x8100, 0x88A8
OUTPUT_WAIT_S, DROP_WAIT_S = 0.02, 0.15  # after the first frame out; for none at all
EVENT_WAIT_MS = 1000  # for a digest that XDP's event says is due


def outer(examples: int) -> int:
    from bmv2 import switch  # needs p4c and simple_switch_grpc

    with namespace("mdiff") as ns:
        prepare(ns, PORTS)
        with switch(ns, [f"dut{i}" for i in range(PORTS)]) as params:
            cmd = [sys.executable, __file__, "--inner", json.dumps(params)]
            cmd += ["--examples", str(examples)]
            return subprocess.run(in_ns(ns.name, cmd)).returncode


def cut_in_vlan_tag(frame: bytes) -> bool:
    ethertype = int.from_bytes(frame[12:14], "big") if len(frame) >= ETH_HLEN else 0
    # skb_vlan_untag() drops a frame without the tag and the EtherType after it.
    return ethertype in (ETH_P_8021Q, ETH_P_8021AD) and len(frame) < ETH_HLEN + VLAN_HLEN + 2


def _with_vlan_tag(frame: bytes, ancillary: list) -> bytes:
    """The frame as it was on the wire: veth hands a packet socket the 802.1Q
    tag in metadata (PACKET_AUXDATA), not in the data."""
    for level, kind, data in ancillary:
        if (level, kind) != (SOL_PACKET, PACKET_AUXDATA) or len(data) < AUXDATA.size:
            continue
        status, *_, tci, tpid = AUXDATA.unpack_from(data)
        if status & TP_STATUS_VLAN_VALID:
            tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q
            return frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]
    return frame


class Wire:
    """The switch's peers: send into port 0, see what leaves each port."""

    def __init__(self) -> None:
        self.socks = {}
        for port in range(PORTS):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((f"ptf{port}", 0))
            s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            s.setblocking(False)
            self.socks[port] = s

    def _read(self) -> list[tuple[int, bytes]]:
        got = []
        for port, s in self.socks.items():
            while True:
                try:
                    data, anc, _, addr = s.recvmsg(65535, socket.CMSG_SPACE(AUXDATA.size))
                except BlockingIOError:
                    break
                if addr[2] != PACKET_OUTGOING:  # not our own frames going out
                    got.append((port, _with_vlan_tag(data, anc)))
        return got

    def exchange(self, frame: bytes) -> list[tuple[int, bytes]]:
        self._read()  # anything stale
        self.socks[0].send(frame)
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + DROP_WAIT_S
        while time.monotonic() < deadline:
            got = self._read()
            if got:
                out += got
                deadline = min(deadline, time.monotonic() + OUTPUT_WAIT_S)
            time.sleep(0.001)
        return out


def digest_sample(frame: bytes) -> tuple[str, str, int, int, int, int, int]:
    """What a splice entry's FIN/RST digest carries of a frame (p4src's
    splice_event_t): BMv2 sends one only once."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    pkt = Ether(frame)
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    tcp = pkt[TCP]
    return (ip.src, ip.dst, tcp.sport, tcp.dport, int(tcp.flags), tcp.seq, tcp.ack)


def inner(params: dict, examples: int) -> int:
    from hypothesis import HealthCheck, given, settings

    from mosto.targets.bmv2.target import Bmv2Target
    from mosto.targets.xdp.target import XdpTarget
    from mosto.testing.frames import scenario
    from mosto.testing.pktdiff import explain_mismatch

    sw = Bmv2Target(
        params["grpc_addr"],
        int(params["device_id"]),
        p4info=params["p4info"],
        device_config=params["bmv2_json"],
    )
    xdp = XdpTarget(pin_dir=None)
    ingress = socket.if_nametoindex("dut0")
    wire = Wire()
    outcomes: Counter[str] = Counter()
    mismatches: list[str] = []
    ev_sw: list[int] = []  # TCP flags of the FIN/RST events of one frame
    ev_xdp: list[int] = []
    # Reported (of which not compared: a learning entry's, or a repeated
    # digest), or kept back by the window check.
    fin_rst: Counter[str] = Counter()
    digested: set[tuple] = set()  # splice entries' digests BMv2 has sent

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(scenario())
    def check(sc) -> None:
        frame, entry, _ = sc
        if cut_in_vlan_tag(frame):
            outcomes["skipped_cut_in_vlan_tag"] += 1
            return
        port = entry.egress if isinstance(entry.egress, int) else 0
        pinned = None if entry.ingress is None else f"dut{entry.ingress}"
        sw_entry, xdp_entry = entry, replace(entry, egress=f"dut{port}", ingress=pinned)
        if entry.learn:
            xdp_entry = entry
        for t in (sw, xdp):
            t.reset_counters()
        sw.add(sw_entry)
        xdp.add(xdp_entry)
        sw_events.poll(0)  # a late digest of the frame before
        xdp_events.poll(0)
        ev_sw.clear()
        ev_xdp.clear()
        try:
            verdict, out, _ = xdp.test_run(frame, ingress_ifindex=ingress)
            want = {
                XDP_TX: [(0, out)],
                XDP_REDIRECT: [(1, out)],
                XDP_PASS: [(2, frame)],
                XDP_DROP: [],
            }[verdict]
            got = wire.exchange(frame)
            c_sw = {k: v for k, v in sw.counters().items() if v}
            c_xdp = {k: v for k, v in xdp.counters().items() if v}
            st_sw, st_xdp = sw.stats(entry.match), xdp.stats(entry.match)
            xdp_events.poll(0)
            sw_events.poll(EVENT_WAIT_MS if ev_xdp else 0)
        finally:
            sw.delete(entry.match)
            xdp.delete(entry.match)
        outcomes[next(iter(c_xdp), "none")] += 1
        fin_rst["reported"] += len(ev_xdp)
        fin_rst["kept back"] += c_xdp.get("event_out_of_window", 0)
        problems = []
        if got != want:
            if len(got) == len(want) == 1 and got[0][0] == want[0][0]:
                problems.append(explain_mismatch(want[0][1], got[0][1]))
            else:
                problems.append(f"out: XDP {[p for p, _ in want]}, BMv2 {[p for p, _ in got]}")
        if c_sw != c_xdp:
            problems.append(f"counters: XDP {c_xdp}, BMv2 {c_sw}")
        if (st_sw.packets, st_sw.bytes) != (st_xdp.packets, st_xdp.bytes):
            problems.append(f"stats: XDP {st_xdp}, BMv2 {st_sw}")
        sample = digest_sample(frame) if (ev_sw or ev_xdp) and not entry.learn else None
        if entry.learn:
            fin_rst["learning"] += len(ev_xdp)
        elif sample in digested:
            fin_rst["repeated"] += len(ev_xdp)
        elif ev_sw != ev_xdp:
            problems.append(f"events (TCP flags): XDP {ev_xdp}, BMv2 {ev_sw}")
        if ev_sw and sample is not None:
            digested.add(sample)
        if problems:
            mismatches.append(
                "; ".join(problems) + f"\n  frame {frame.hex()}\n  entry {entry.to_json()}"
            )

    try:
        with (
            sw.events(lambda ev: ev_sw.append(ev.tcp_flags)) as sw_events,
            xdp.events(lambda ev: ev_xdp.append(ev.tcp_flags)) as xdp_events,
        ):
            check()
    finally:
        sw.close()
        xdp.close()
    compared = sum(n for k, n in outcomes.items() if not k.startswith("skipped"))
    print(
        f"diff_bmv2: {compared} random frames and entries, BMv2 vs XDP: "
        + ", ".join(f"{k} {n}" for k, n in outcomes.most_common())
        + "; FIN/RST events: "
        + ", ".join(f"{k} {fin_rst[k]}" for k in ("reported", "learning", "repeated", "kept back"))
    )
    for m in mismatches[:10]:
        print(f"MISMATCH {m}")
    print(f"diff_bmv2: {len(mismatches)} mismatches")
    return 1 if mismatches else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=1500)
    parser.add_argument("--inner", help=argparse.SUPPRESS)  # the switch's parameters
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("diff_bmv2: needs root (network namespaces, BPF)", file=sys.stderr)
        return 2
    if args.inner:
        return inner(json.loads(args.inner), args.examples)
    return outer(args.examples)


if __name__ == "__main__":
    sys.exit(main())
