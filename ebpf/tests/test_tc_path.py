"""The tc program on a real path: what tc sees and XDP never does.

client ns --veth-- DUT ns (tc splice on both ingresses, no IP forwarding)
--veth-- server ns. Two TCP connections from fixed source ports, 8 MiB up on
one, 8 MiB down on the other; splice entries installed before they open
translate every frame both ways (seq/ack by different deltas each way, SACK
with them, timestamps; optionally addresses and ports), so the two ends only
talk if every frame, SYN included, is translated right. Both check sha256.

- senders with offloads on hand the DUT GSO super-frames (up to 64 KiB) whose
  TCP checksum is CHECKSUM_PARTIAL (the pseudo-header sum only); the DUT's
  egress veths have tx checksumming off, so the kernel segments and sums them
  in software after the rewrite and the receiver verifies every segment:
  a checksum the program got wrong stalls the transfer.
- senders with offloads off hand it 1500-byte frames with full checksums.
- with a VLAN, client and server tag every frame in skb metadata on egress
  (vlan_tag.bpf.c, what an 802.1Q device on a veth does: hardware-accelerated
  VLAN; this kernel has no 802.1Q devices) and refuse untagged frames on
  ingress. The tag reaches the DUT in metadata, not in the data. The program
  parses the untagged data, translates, and the tag leaves with the frame, as
  XDP keeps a tag it finds in the data; a lost tag stalls the transfer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2.netns import popns, pushns

from mosto.dataplane.entry import parse_entry
from mosto.targets.xdp import libbpf
from mosto.targets.xdp.target import XdpTarget
from netns import Namespace, namespace, veth

XFER = Path(__file__).with_name("xfer.py")
VLAN_SRC = Path(__file__).with_name("vlan_tag.bpf.c")
C4, P0, P1, S4 = "10.77.0.1", "10.77.0.254", "10.77.1.254", "10.77.1.2"
CMAC, P0MAC, P1MAC, SMAC = (
    "02:77:00:00:00:01",
    "02:77:00:00:00:10",
    "02:77:00:00:00:11",
    "02:77:00:00:00:02",
)
SPORT, DPORT, VIP_PORT, NAT_PORT = 41000, 9000, 8080, 50000
VLAN = 42
SIZE = 8 << 20
MTU_FRAME = 1514 + 4  # the largest frame a 1500-byte MTU gives, with a tag
# Deltas of the two directions: client->server (F) and server->client (R).
D_F, D_R, T_F, T_R = 0x7FFF0000, 0x12345678, 1_000_000, -5_000


@dataclass
class Path3:
    client: Namespace
    dut: Namespace
    server: Namespace
    c0: str  # client's veth
    p0: str  # DUT, facing the client
    p1: str  # DUT, facing the server
    s0: str  # server's veth


@pytest.fixture(scope="module")
def vlan_object(tmp_path_factory) -> Iterator[libbpf.BpfObject]:
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang not installed: cannot build vlan_tag.bpf.c")
    out = tmp_path_factory.mktemp("bpf") / "vlan_tag.bpf.o"
    arch_inc = f"/usr/include/{os.uname().machine}-linux-gnu"
    subprocess.run(
        [clang, "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", f"-I{arch_inc}",
         f"-DVLAN_ID={VLAN}", "-c", str(VLAN_SRC), "-o", str(out)],
        check=True,
    )  # fmt: skip
    obj = libbpf.BpfObject(str(out), None)
    yield obj
    obj.close()


def tag_on_the_wire(ns: Namespace, dev: str, obj: libbpf.BpfObject) -> None:
    pushns(ns.name)
    try:
        ifindex = socket.if_nametoindex(dev)
        for prog, point in (
            ("vlan_push", libbpf.BPF_TC_EGRESS),
            ("vlan_pop", libbpf.BPF_TC_INGRESS),
        ):
            libbpf.tc_attach(ifindex, obj.prog_fd(prog), 1, 1, point)
    finally:
        popns()


@contextlib.contextmanager
def topology(vlan: libbpf.BpfObject | None, sender_offload: bool) -> Iterator[Path3]:
    tag = uuid.uuid4().hex[:6]
    with (
        namespace("mtc-c") as c,
        namespace("mtc-dut") as d,
        namespace("mtc-s") as s,
    ):
        path = Path3(c, d, s, f"c{tag}", f"p{tag}a", f"p{tag}b", f"s{tag}")
        for ns in (c, d, s):
            ns.quiet()
        veth(c, path.c0, d, path.p0, CMAC, P0MAC)
        veth(d, path.p1, s, path.s0, P1MAC, SMAC)
        c.sh("ip", "addr", "add", f"{C4}/24", "dev", path.c0)
        c.sh("ip", "route", "add", "default", "via", P0)
        d.sh("ip", "addr", "add", f"{P0}/24", "dev", path.p0)
        d.sh("ip", "addr", "add", f"{P1}/24", "dev", path.p1)
        d.sh("sysctl", "-qw", "net.ipv4.ip_forward=0")  # only the program forwards
        s.sh("ip", "addr", "add", f"{S4}/24", "dev", path.s0)
        s.sh("ip", "route", "add", "default", "via", P1)
        if vlan:
            # Tagged ARP would reach the DUT's stack, which has no VLAN devices.
            c.sh("ip", "neigh", "replace", P0, "lladdr", P0MAC, "dev", path.c0, "nud", "permanent")
            s.sh("ip", "neigh", "replace", P1, "lladdr", P1MAC, "dev", path.s0, "nud", "permanent")
            tag_on_the_wire(c, path.c0, vlan)
            tag_on_the_wire(s, path.s0, vlan)
        # The DUT sends what it rewrote with software checksums, so the
        # receiver verifies them; senders offload (GSO, CHECKSUM_PARTIAL) or not.
        d.sh("ethtool", "-K", path.p0, "tx", "off")
        d.sh("ethtool", "-K", path.p1, "tx", "off")
        if not sender_offload:
            c.sh("ethtool", "-K", path.c0, "tx", "off")
            s.sh("ethtool", "-K", path.s0, "tx", "off")
        yield path


def splice_entries(path: Path3, nat: bool, sport: int) -> tuple[dict, dict]:
    """Client->server and server->client entries, egress named as in the DUT."""
    nat_port = NAT_PORT + sport - SPORT
    if nat:
        # The client talks to the DUT's own address; the server sees the DUT.
        fwd_match = {"src": C4, "dst": P0, "sport": sport, "dport": VIP_PORT}
        fwd_rw = {"src": P1, "dst": S4, "sport": nat_port, "dport": DPORT}
        rev_match = {"src": S4, "dst": P1, "sport": DPORT, "dport": nat_port}
        rev_rw = {"src": P0, "dst": C4, "sport": VIP_PORT, "dport": sport}
    else:
        fwd_match = {"src": C4, "dst": S4, "sport": sport, "dport": DPORT}
        rev_match = {"src": S4, "dst": C4, "sport": DPORT, "dport": sport}
    fwd = {
        "match": fwd_match,
        "seq_delta": D_F,
        "ack_delta": -D_R,
        "timestamps": {"tsval_delta": T_F, "tsecr_delta": -T_R},
        "smac": P1MAC,
        "dmac": SMAC,
        "egress": path.p1,
    }
    rev = {
        "match": rev_match,
        "seq_delta": D_R,
        "ack_delta": -D_F,
        "timestamps": {"tsval_delta": T_R, "tsecr_delta": -T_F},
        "smac": P0MAC,
        "dmac": CMAC,
        "egress": path.p0,
    }
    if nat:
        fwd["rewrite"], rev["rewrite"] = fwd_rw, rev_rw
    return fwd, rev


@contextlib.contextmanager
def tc_on_dut(path: Path3) -> Iterator[XdpTarget]:
    """The tc program on both DUT ingresses, private maps. Interface names and
    the devmap's ifindexes are per namespace: attach and add from inside it."""
    pushns(path.dut.name)
    try:
        target = XdpTarget(pin_dir=None, hook="tc")
        for dev in (path.p0, path.p1):
            target.attach(dev, hook="tc")
    finally:
        popns()
    try:
        yield target
    finally:
        target.close()  # the filters go with the namespace


def _tx_bytes(path: Path3) -> int:
    """What the DUT's two veths transmitted, in bytes."""
    out = path.dut.sh("ip", "-s", "-j", "link", "show").stdout
    return sum(
        link["stats64"]["tx"]["bytes"]
        for link in json.loads(out)
        if link["ifname"] in (path.p0, path.p1)
    )


def transfer(path: Path3, nat: bool, sport: int, up: int, down: int) -> dict:
    server = path.server.popen(
        [sys.executable, str(XFER), "serve", S4, str(DPORT)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        dst, dport = (P0, VIP_PORT) if nat else (S4, DPORT)
        client = path.client.sh(
            sys.executable, str(XFER), "fetch", C4, str(sport), dst, str(dport),
            str(up), str(down), check=False,
        )  # fmt: skip
        assert client.returncode == 0, client.stderr
        return json.loads(client.stdout)
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize(
    "nat,sender_offload,vlan",
    [
        (False, True, False),
        (True, True, False),
        (False, False, False),
        (True, False, False),
        (False, True, True),
        (True, True, True),
    ],
    ids=["gso", "gso-nat", "full-csum", "full-csum-nat", "gso-vlan-meta", "gso-nat-vlan-meta"],
)
def test_tcp_transfer_through_tc_splice(nat, sender_offload, vlan, request):
    tagger = request.getfixturevalue("vlan_object") if vlan else None
    with topology(tagger, sender_offload) as path, tc_on_dut(path) as target:
        # One connection per direction: each data-carrying entry sees data only.
        flows = {"up": (SPORT, SIZE, 0), "down": (SPORT + 1, 0, SIZE)}
        entries = {name: splice_entries(path, nat, sport) for name, (sport, _, _) in flows.items()}
        pushns(path.dut.name)
        try:
            for fwd, rev in entries.values():
                target.add(parse_entry(fwd))
                target.add(parse_entry(rev))
        finally:
            popns()
        sent_before = _tx_bytes(path)
        results = {name: transfer(path, nat, *flow) for name, flow in flows.items()}
        sent = _tx_bytes(path) - sent_before
        counters = target.counters()
        stats = {
            name: [target.stats(parse_entry(e).match) for e in pair]
            for name, pair in entries.items()
        }

    assert all(r == {"up_ok": True, "down_ok": True} for r in results.values()), results
    assert counters["drop_bad_tcp"] == counters["drop_no_egress"] == 0, counters
    # The peers are in other namespaces: frames go to their ingress at once
    # (bpf_redirect_peer), not out of the DUT's veths.
    assert sent < SIZE // 10, f"{sent} bytes left by the DUT's veths' transmit path"
    runs = sum(st.packets for pair in stats.values() for st in pair)
    assert counters["hit_redirect"] == runs, counters
    # The direction that carried the data: client->server up, server->client down.
    data = {"up": stats["up"][0], "down": stats["down"][1]}
    for name, st in data.items():
        assert st.bytes >= SIZE, (name, st)
        per_run = st.bytes / st.packets
        print(f"\n{request.node.callspec.id} {name}: {st.packets} runs, {per_run:.0f} B/run")
        if sender_offload:
            # GSO: one program run for many wire segments.
            assert per_run > 4 * MTU_FRAME, f"{name}: {per_run:.0f} B/frame, no super-frames"
        else:
            assert per_run <= MTU_FRAME, f"{name}: {per_run:.0f} B/frame with offloads off"


def test_qinq_is_translated_and_a_third_tag_dropped_as_in_xdp():
    """802.1Q in 802.1Q: tc finds the outer tag in metadata and the inner one in
    the data; like XDP with both in the data, it translates the frame
    (hit_redirect), as with one tag. A third tag is past what the parser
    takes: dropped (drop_deep_headers) on both hooks."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Dot1Q, Ether

    def frame(*vlans: int) -> bytes:
        eth = Ether(src=CMAC, dst=P0MAC)
        for vid in vlans:
            eth = eth / Dot1Q(vlan=vid)
        return bytes(eth / IP(src=C4, dst=S4) / TCP(sport=SPORT, dport=DPORT, flags="A"))

    def send(path: Path3, raw: bytes) -> None:
        script = (
            "import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); "
            f"s.bind(({path.c0!r}, 0)); s.send({raw!r})"
        )
        path.client.sh(sys.executable, "-c", script)

    with topology(None, True) as path, tc_on_dut(path) as target:
        fwd, _ = splice_entries(path, False, SPORT)
        pushns(path.dut.name)
        try:
            target.add(parse_entry(fwd))
        finally:
            popns()
        cases = (
            ((VLAN, 7), "hit_redirect"),
            ((VLAN,), "hit_redirect"),
            ((VLAN, 7, 9), "drop_deep_headers"),
        )
        for vlans, counter in cases:
            target.reset_counters()
            send(path, frame(*vlans))
            deadline = time.monotonic() + 2
            while not any(target.counters().values()) and time.monotonic() < deadline:
                time.sleep(0.01)
            moved = {k: v for k, v in target.counters().items() if v}
            assert moved == {counter: 1}, (vlans, moved)
            # XDP, with every tag in the data, decides the same.
            target.reset_counters()
            target.test_run(frame(*vlans), ingress_ifindex=1, hook="xdp")
            assert {k for k, v in target.counters().items() if v} == {counter}
