"""The delay line (build/delayline) and the chain topology (tools/topology.py):
ping RTTs against the settings, loss against a binomial bound, TCP intact
through loss (super-frames cut into segments), rate and queue, a chain of
three proxies whose RTT is the sum of its links, IPv4 and IPv6, and nothing
left behind. Throughput is not measured here: tools/bench_delayline.py."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import rtt
from processes import REPO, Processes
from pyroute2 import netns as pyroute2_netns
from topology import DELAYLINE, LinkSpec, chain, chain_down

from netns import Namespace, in_ns, namespace

TOOLS = REPO / "tools"
# Each delay line adds its wake-ups to a round trip (some 0.1-0.2 ms measured);
# this is what a link may add, never take away.
RTT_TOLERANCE_MS = 0.5
RTT_ATTEMPTS = 3
# Loss within this many standard deviations of the binomial: a false failure
# about once in 150,000 runs.
LOSS_SIGMAS = 4.5
SERVER_PORT = 9000
MIB = 1 << 20


@pytest.fixture(scope="module")
def built():
    if not shutil.which("make") or not shutil.which(os.environ.get("CC", "cc")):
        pytest.skip("no make or C compiler to build build/delayline")
    subprocess.run(["make", "-s", "build/delayline"], cwd=REPO, check=True)
    return DELAYLINE


def _alive(pid: int) -> bool:
    """Running, not exited (a zombie waiting for init to reap it is gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@contextlib.contextmanager
def wan(specs, **kwargs):
    """chain(), then the check that it left nothing: no namespace, no delay
    line, no run directory; every delay line stopped cleanly by SIGTERM."""
    ch = None
    try:
        with chain(specs, **kwargs) as ch:
            yield ch
    finally:
        if ch is not None:
            assert_removed(ch)
    for link in ch.links:
        if link.ns is not None:
            assert link.returncode == 0, f"delayline l{link.index} exited {link.returncode}"
            assert set(link.counters) == {"ab", "ba"}


def assert_removed(ch) -> None:
    left = [n for n in pyroute2_netns.listnetns() if n.startswith(f"{ch.name}-")]
    assert not left, f"namespaces left: {left}"
    alive = [link.pid for link in ch.links if link.pid and _alive(link.pid)]
    assert not alive, f"delay lines left: {alive}"
    assert not ch.run_dir.exists()


def _stats(result: dict) -> dict:
    r = sorted(result["rtt_ms"])
    return {
        "min": r[0],
        "median": statistics.median(r),
        "p90": r[int(len(r) * 0.9)],
        "max": r[-1],
    }


def assert_rtt(ns, addr: str, count: int, interval: float, want_ms: float, tolerance_ms: float):
    """count echoes: all answered, none faster than want_ms, the median within
    tolerance_ms above it. Best of RTT_ATTEMPTS: on this shared 2-core machine
    another job's softirqs can delay the delay lines' wake-ups by milliseconds
    for a second or two (the line's late_max_us shows it)."""
    tries = []
    for _ in range(RTT_ATTEMPTS):
        result = rtt.ping(ns, addr, count, interval, timeout=1 + want_ms / 1e3)
        assert result["received"] == count, f"{addr}: lost {result['lost']}"
        st = _stats(result)
        assert st["min"] >= want_ms, f"{addr} faster than the setting {want_ms} ms: {st}"
        tries.append(st)
        if st["median"] <= want_ms + tolerance_ms:
            return st
    raise AssertionError(f"{addr}: setting {want_ms} ms, tolerance {tolerance_ms} ms: {tries}")


def _binomial_ok(lost: int, n: int, p: float) -> tuple[bool, str]:
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    ok = abs(lost - mean) <= LOSS_SIGMAS * sd
    return ok, f"lost {lost} of {n}, expected {mean:.1f} +- {LOSS_SIGMAS * sd:.1f}"


def _tcp_csum_errors(ns) -> int:
    """Tcp InCsumErrors of the namespace (IPv4 and IPv6 count together)."""
    lines = [line.split() for line in ns.sh("cat", "/proc/net/snmp").stdout.splitlines()]
    header, values = [row for row in lines if row[0] == "Tcp:"]
    return int(values[header.index("InCsumErrors")])


def _fetch(ch, addr: str, size: int, upload: bool = False) -> dict:
    cmd = [sys.executable, str(TOOLS / "traffic.py"), "fetch"]
    cmd += ["--connect", f"[{addr}]:{SERVER_PORT}", "--size", str(size)]
    out = ch.client.sh(*cmd, *(["--upload"] if upload else []), check=False).stdout
    return json.loads(out)


def _serve(procs: Processes, ch) -> None:
    cmd = [sys.executable, str(TOOLS / "traffic.py"), "serve", "--listen", f"[::]:{SERVER_PORT}"]
    procs.spawn(ch.server, cmd, "serve.log", ready=True)


# ---- the delay line's own command line ----


@pytest.mark.parametrize(
    "args, message",
    [
        (["--a", "x"], "usage"),
        (["--a", "x", "--b", "y", "--loss", "2"], "bad value for --loss"),
        (["--a", "x", "--b", "y", "--queue", "10"], "bad value for --queue"),
        (["--a", "x", "--b", "y", "--delay", "-1"], "bad value for --delay"),
        (["--a", "x", "--b", "y", "--rate-ab", "1T"], "bad value for --rate-ab"),
    ],
)
def test_bad_options_are_refused(built, args, message):
    p = subprocess.run([str(built), *args], capture_output=True, text=True)
    assert p.returncode == 2
    assert message in p.stderr


@pytest.mark.needs_root
def test_missing_interface_is_an_error(built):
    with namespace("wan") as ns:
        cmd = in_ns(ns.name, [str(built), "--a", "nope0", "--b", "nope1"])
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    assert p.returncode == 1
    assert "nope0" in p.stderr and "No such device" in p.stderr


# ---- delay ----


@pytest.mark.needs_root
@pytest.mark.parametrize(
    "rtt_ms, count, interval", [(10, 200, 0.005), (50, 100, 0.01), (200, 50, 0.02)]
)
def test_ping_rtt_is_the_setting(built, rtt_ms, count, interval):
    with wan([LinkSpec(rtt_ms / 2)]) as ch:
        for addr in (ch.server4, ch.server6):
            assert_rtt(ch.client, addr, count, interval, rtt_ms, RTT_TOLERANCE_MS)


@pytest.mark.needs_root
def test_delays_per_direction(built):
    with wan([LinkSpec(5, 45)]) as ch:
        for addr in (ch.server4, ch.server6):
            assert_rtt(ch.client, addr, 100, 0.01, 50, RTT_TOLERANCE_MS)


@pytest.mark.needs_root
def test_chain_rtt_is_the_sum_of_its_links(built):
    """Three proxies (InP, TrP, EgP), four links of their own delays; every
    proxy answers after the links before it, the server after all of them;
    and TCP goes through on plain kernel forwarding."""
    specs = [LinkSpec(5), LinkSpec(2, 8), LinkSpec(10), LinkSpec(3)]
    count = 50
    with wan(specs) as ch, Processes(Path(ch.run_dir)) as procs:
        assert [n.name.rsplit("-", 1)[1] for n in ch.nodes] == [
            "client", "inp", "trp1", "egp", "server",
        ]  # fmt: skip
        assert ch.rtt_ms == 46
        for hop in range(len(specs)):
            want = sum(s.rtt_ms for s in specs[: hop + 1])
            lines = hop + 1
            for addr in (ch.addr4(hop, "b"), ch.addr6(hop, "b")):
                assert_rtt(ch.client, addr, count, 0.01, want, RTT_TOLERANCE_MS * lines)
        _serve(procs, ch)
        for addr in (ch.server4, ch.server6):
            for upload in (False, True):
                result = _fetch(ch, addr, 8 * MIB, upload)
                assert result["ok"], result


# ---- loss ----


@pytest.mark.needs_root
@pytest.mark.parametrize("loss_there, loss_back", [(0.05, 0.0), (0.03, 0.03)])
def test_ping_loss_is_binomial(built, loss_there, loss_back):
    count = 2000
    with wan([LinkSpec(1, loss=loss_there, loss_back=loss_back)]) as ch:
        result = rtt.ping(ch.client, ch.server4, count, 0.002)
    p = 1 - (1 - loss_there) * (1 - loss_back)
    lost = count - result["received"]
    ok, why = _binomial_ok(lost, count, p)
    assert ok, why
    # The delay line counts what it dropped: those echoes, and now and then
    # some IPv6 chatter of the nodes.
    counted = ch.links[0].counters["ab"]["lost"] + ch.links[0].counters["ba"]["lost"]
    assert lost <= counted <= lost + 10, (lost, ch.links[0].counters)
    if not loss_back:
        assert ch.links[0].counters["ba"]["lost"] == 0


@pytest.mark.needs_root
@pytest.mark.parametrize("xdp", [True, False], ids=["xdp-ready", "tso"])
def test_tcp_through_loss_arrives_intact(built, xdp):
    """1% loss per packet: super-frames that lose some segments go on as
    their surviving segments, with checksums the receivers accept."""
    with wan([LinkSpec(0.5, loss=0.01)], xdp=xdp) as ch, Processes(ch.run_dir) as procs:
        _serve(procs, ch)
        for addr in (ch.server4, ch.server6):
            for upload in (False, True):
                result = _fetch(ch, addr, 8 * MIB, upload)
                assert result["ok"], result
        errors = {ns.name: _tcp_csum_errors(ns) for ns in (ch.client, ch.server)}
    assert not any(errors.values()), errors
    for direction in ("ab", "ba"):
        c = ch.links[0].counters[direction]
        assert c["lost"] > 0, c
        assert c["packets"] > c["forwarded"], f"no super-frames passed: {c}"


@pytest.mark.needs_root
@pytest.mark.parametrize("xdp", [True, False], ids=["xdp-ready", "tso"])
def test_super_frames_pass_whole(built, xdp):
    """With TSO (tso) or GRO on the delay line's interfaces (xdp-ready) the
    data comes through as frames of many segments."""
    with wan([LinkSpec(1)], xdp=xdp) as ch, Processes(ch.run_dir) as procs:
        _serve(procs, ch)
        assert _fetch(ch, ch.server4, 64 * MIB)["ok"]
    c = ch.links[0].counters["ba"]
    assert c["packets"] >= 10 * c["forwarded"], c
    assert c["truncated"] == 0 and c["send_fail"] == 0, c


# ---- rate and queue ----


@pytest.mark.needs_root
def test_rate_is_a_ceiling(built):
    rate = 50_000_000
    with wan([LinkSpec(1, rate_bps=rate)]) as ch, Processes(ch.run_dir) as procs:
        _serve(procs, ch)
        result = _fetch(ch, ch.server6, 4 * MIB)
    assert result["ok"], result
    assert result["gbit_s"] * 1e9 <= rate, result


@pytest.mark.needs_root
def test_full_queue_drops_the_tail(built):
    """UDP far faster than 10 Mbit/s into a queue of 128 KiB: the line takes
    what fits and counts the rest."""
    datagrams, payload = 2000, 1400
    with wan([LinkSpec(1, rate_bps=10_000_000, queue_bytes=128 << 10)]) as ch:
        code = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for _ in range({datagrams}): s.sendto(bytes({payload}), ('{ch.server4}', 9))"
        )
        ch.client.sh(sys.executable, "-c", code)
    c = ch.links[0].counters["ab"]
    assert c["queue_drop"] > datagrams // 2, c
    # every datagram accounted for (left: still queued when the line stopped)
    assert c["forwarded"] + c["queue_drop"] + c["left"] + c["rx_drop"] >= datagrams, c


# ---- frames as they are ----


@pytest.mark.needs_root
def test_vlan_tag_passes(built):
    """The kernel hands the delay line a VLAN tag apart from the frame; it
    goes out on the frame again."""
    tci = 0x2007
    frame = (
        bytes.fromhex("020000010002" "020000010001" "8100") + tci.to_bytes(2, "big")
        + bytes.fromhex("88b5") + b"mosto-vlan".ljust(46, b"\0")
    )  # fmt: skip
    receive = (
        "import socket, struct, sys\n"
        "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n"
        "s.bind(('s0', 3)); s.setsockopt(263, 8, 1); s.settimeout(5)\n"  # PACKET_AUXDATA
        "print('ready', flush=True)\n"
        "while True:\n"
        "    data, anc, _, _ = s.recvmsg(4096, 1024)\n"
        "    if b'mosto-vlan' in data:\n"
        "        for level, kind, aux in anc:\n"
        "            if level == 263 and kind == 8:\n"
        "                print(data.hex(), struct.unpack_from('IIIHHHH', aux)[5]); sys.exit()\n"
    )
    with wan([LinkSpec(1)]) as ch, Processes(ch.run_dir) as procs:
        rx = procs.spawn(ch.server, [sys.executable, "-c", receive], "vlan.log", ready=True)
        send = (
            "import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
            f"s.bind(('c0', 0)); s.send(bytes.fromhex('{frame.hex()}'))"
        )
        ch.client.sh(sys.executable, "-c", send)
        out, _ = rx.communicate(timeout=10)
    data_hex, got_tci = out.split()
    untagged = frame[:12] + frame[16:]
    assert bytes.fromhex(data_hex) == untagged
    assert int(got_tci) == tci


# ---- clean-up ----


@pytest.mark.needs_root
def test_removed_after_an_error(built):
    with pytest.raises(RuntimeError, match="inside"):
        with wan([LinkSpec(1), LinkSpec(2, loss=0.1)]) as ch:
            assert all(_alive(link.pid) for link in ch.links)
            raise RuntimeError("inside the chain")


@pytest.mark.needs_root
def test_cli_up_and_down(built):
    name = f"wan{os.urandom(3).hex()}"
    topology_py = [sys.executable, str(TOOLS / "topology.py"), "chain"]
    try:
        up = subprocess.run(
            [*topology_py, "up", "--name", name, "--delays", "2,1/3", "--loss", "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert up.returncode == 0, up.stderr
        assert "round trip 8 ms" in up.stdout
        pids = [int(p.read_text()) for p in Path(f"/run/{name}").glob("l*.pid")]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        assert_rtt(Namespace(f"{name}-client"), "fd02::2", 20, 0.01, 8, 2 * RTT_TOLERANCE_MS)
    finally:
        down = subprocess.run(
            [*topology_py, "down", "--name", name], capture_output=True, text=True, timeout=60
        )
        if down.returncode:
            chain_down(name)
    assert down.returncode == 0, down.stderr
    assert not [n for n in pyroute2_netns.listnetns() if n.startswith(f"{name}-")]
    assert not any(_alive(pid) for pid in pids)
    assert not Path(f"/run/{name}").exists()


@pytest.mark.needs_root
def test_sigterm_stops_it_with_its_counters(built):
    with wan([LinkSpec(1)]) as ch:
        assert rtt.ping(ch.client, ch.server4, 10, 0.01)["received"] == 10
        ch.stop_delaylines()  # SIGTERM
        link = ch.links[0]
        assert link.returncode == 0
        assert not _alive(link.pid)
    # 10 echoes each way, and maybe the nodes' IPv6 chatter
    assert link.counters["ab"]["forwarded"] >= 10
    assert link.counters["ba"]["forwarded"] >= 10
    assert link.counters["ab"]["left"] == 0


def _offloads(ns, ifname: str) -> dict[str, str]:
    out = ns.sh("ethtool", "-k", ifname).stdout
    pairs = (line.split(":", 1) for line in out.splitlines()[1:] if ":" in line)
    return {k.strip(): v.split()[0] for k, v in pairs}


@pytest.mark.needs_root
def test_xdp_ready_offloads(built):
    """What faces a proxy sends it plain frames (no TSO, checksums done);
    the client and server keep TSO; GRO is on everywhere."""
    with wan([LinkSpec(1), LinkSpec(0), LinkSpec(1)]) as ch:
        link0, link2 = ch.links[0].ns, ch.links[2].ns
        sides = [
            (ch.client, "c0", True),
            (link0, "la", True),
            (link0, "lb", False),  # toward the InP
            (ch.proxies[0], "pc", False),
            (ch.proxies[0], "ps", False),
            (ch.proxies[1], "pc", False),
            (ch.proxies[1], "ps", False),
            (link2, "la", False),  # toward the EgP
            (link2, "lb", True),
            (ch.server, "s0", True),
        ]
        for ns, ifname, tso in sides:
            k = _offloads(ns, ifname)
            where = f"{ns.name} {ifname}"
            # (not the summary line: 6.18's tx-tcp-accecn-segmentation stays on)
            for feature in ("tx-tcp-segmentation", "tx-tcp6-segmentation"):
                assert k[feature] == ("on" if tso else "off"), f"{where} {feature}"
            assert k["generic-receive-offload"] == "on", where
