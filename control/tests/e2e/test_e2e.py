"""End to end: real kernel TCP in client/proxy/server namespaces, the
reference proxy handing flows over to the agent, XDP on the proxy's
interfaces. Every transfer's sha256 is checked at the receiving end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pytest
from stack import IDLE_TIMEOUT_S, SERVER_PORT, Stack, wait_for
from topology import tproxy

from netns import in_ns

KIB, MIB = 1 << 10, 1 << 20
NOBODY = 65534


@pytest.fixture(scope="module")
def stack():
    with Stack.running("mte") as s:
        yield s


def _settled(proxy) -> dict | None:
    """The proxy's stats once its hand-over attempt is over (the file lags a little)."""
    st = proxy.stats
    return st if st["handed_over"] or st["refused"] else None


def _attempts(proxy) -> int:
    st = proxy.stats
    return st["handed_over"] + sum(st["refused"].values())


def _spliced_events(stack: Stack, port: int, start: int = 0) -> list[dict]:
    return [
        e
        for e in stack.events[start:]
        if e["event"] == "spliced" and e["splice"]["client"]["dport"] == port
    ]


def _proxy_side(splice: dict) -> set[tuple]:
    """The proxy's own ends of a splice: (proxy addr, port, peer addr, port)."""
    to_server = splice["entries"][0]
    client, server = splice["client"], splice["server"]
    return {
        (client["dst"], client["dport"], client["src"], client["sport"]),
        (server["dst"], server["dport"], server["src"], server["sport"]),
        (
            to_server["match"]["dst"],
            to_server["match"]["dport"],
            to_server["match"]["src"],
            to_server["match"]["sport"],
        ),
    }


def _check_spliced_transfer(
    stack: Stack, proxy, result: dict, size: int, upload: bool, port: int | None = None
):
    """port: the port the client connected to (the proxy's, unless transparent)."""
    assert result["ok"], result
    stats = wait_for(lambda: _settled(proxy), 5, "the proxy's hand-over attempt")
    assert stats["handed_over"] == 1, stats
    assert stats["relayed_bytes"] < size, "the proxy relayed everything itself"
    spliced = [
        i
        for i, e in enumerate(stack.events)
        if e["event"] == "spliced" and e["splice"]["client"]["dport"] == (port or proxy.port)
    ]
    assert len(spliced) == 1
    splice = stack.events[spliced[0]]["splice"]
    # FIN both ways reached the ends (the transfer finished); the entries go.
    # (Splice ids are reused: only events after this splice's count.)
    removed = wait_for(
        lambda: [
            e
            for e in stack.events[spliced[0] :]
            if e["event"] == "removed" and e["splice"] == splice["id"]
        ],
        10,
        "the splice's removal",
    )
    assert removed[0]["reason"] == "closed"
    data_dir = "to_server" if upload else "to_client"
    assert removed[0][data_dir]["bytes"] >= size - stats["relayed_bytes"]
    ends = _proxy_side(splice)
    leaked = [
        p
        for p in stack.fin_rst_from_proxy()
        if (p["src"], p["sport"], p["dst"], p["dport"]) in ends
    ]
    assert not leaked, f"the proxy host sent FIN/RST after the hand-over: {leaked}"
    listed = json.loads(stack.ctl("list", "--json"))
    assert splice["client"] not in [s["client"] for s in listed]


# A hold stops a sender by flow control: what its window allows still reaches
# the proxy. A 1 MiB flow is handed over early enough that the rest exceeds the
# window it can have grown to by then, so a splice is left to carry it.
@pytest.mark.parametrize(
    ("size", "after"),
    [("1M", 64 * KIB), ("64M", MIB), ("1G", 4 * MIB)],
    ids=["1MiB", "64MiB", "1GiB"],
)
@pytest.mark.parametrize("upload", [False, True], ids=["download", "upload"])
def test_transfer_handed_over_mid_stream(stack, size, after, upload):
    port = 8000 + 10 * ["1M", "64M", "1G"].index(size) + upload
    with stack.proxy(port, "--handover-after", str(after)) as proxy:
        # 1 MiB is paced a little, so that it is still flowing at the hand-over;
        # an upload more, so that on a loaded host it outlasts a few refused
        # attempts (a held client's last in-flight segments come late there).
        pace = ["--pace", "0.005" if upload else "0.002"] if size == "1M" else []
        result = stack.fetch(proxy, size, *pace, *(["--upload"] if upload else []))
        nbytes = result["bytes"]
        _check_spliced_transfer(stack, proxy, result, nbytes, upload)


def test_ipv6_transfer_handed_over(stack):
    with stack.proxy(8100, "--handover-after", str(MIB), v6=True) as proxy:
        result = stack.fetch(proxy, "64M")
        _check_spliced_transfer(stack, proxy, result, result["bytes"], upload=False)
        assert ":" in stack.events_of("spliced")[-1]["splice"]["client"]["src"]


def test_transparent_proxy_handed_over_without_rewrites(stack):
    """TPROXY: the client talks to the server's address; the proxy connects as the
    client. Both connections have the same four-tuple, so no address is rewritten."""
    with (
        tproxy(stack.topo, dport=SERVER_PORT, to_port=8150),
        stack.proxy(8150, "--handover-after", str(MIB), transparent=True) as proxy,
    ):
        result = stack.fetch(None, "64M")
        _check_spliced_transfer(
            stack, proxy, result, result["bytes"], upload=False, port=SERVER_PORT
        )
    splice = _spliced_events(stack, SERVER_PORT)[-1]["splice"]
    assert splice["client"]["dst"] == splice["server"]["src"] == "10.2.0.1"
    assert all("rewrite" not in e for e in splice["entries"]), splice["entries"]


def test_handover_with_data_queued_is_refused_and_the_proxy_carries_on(stack):
    # No hold, no drain, and a slow reader with a small receive buffer: its
    # window fills at once, so the proxy's socket to it holds data when the
    # proxy asks (with the client's default buffers of megabytes the queues
    # were sometimes empty at that instant, and the hand-over rightly went on).
    ns = stack.topo.client
    old = ns.sh("sysctl", "-n", "net.ipv4.tcp_rmem").stdout.split()
    ns.sh("sysctl", "-qw", "net.ipv4.tcp_rmem=4096 65536 131072")
    try:
        with stack.proxy(8200, "--handover-after", str(MIB), "--no-drain", "--attempts", "1") as p:
            result = stack.fetch(p, "16M", "--read-pace", "0.002")
            assert result["ok"], result
            stats = wait_for(lambda: _settled(p), 5, "the refusal")
            stats = wait_for(
                lambda: p.stats if p.stats["relayed_bytes"] >= 16 * MIB else None,
                5,
                f"the proxy to relay the whole transfer: {p.stats}",
            )
    finally:
        ns.sh("sysctl", "-qw", f"net.ipv4.tcp_rmem={' '.join(old)}")
    assert stats["handed_over"] == 0, stats
    assert stats["refused"] == {"buffers_not_empty": 1}, stats


def test_quiet_flows_handed_over_at_once(stack):
    """Nothing flows after the first bytes: the agent probes the peers for their TSvals."""
    with stack.proxy(8250, "--handover-after", "0") as proxy:
        idle = stack.idle(8250, count=5, seconds=3)
        stats = wait_for(lambda: _attempts(proxy) >= 5 and _settled(proxy), 10, "5 hand-overs")
        idle.wait()
    assert stats["handed_over"] == 5, stats


def test_idle_splice_is_reaped_and_reported(stack):
    with stack.proxy(8260, "--handover-after", "0") as proxy:
        start = len(stack.events)
        idle = stack.idle(8260, count=1, seconds=IDLE_TIMEOUT_S + 4)
        wait_for(lambda: proxy.stats["handed_over"] == 1, 10, "the hand-over")
        spliced = wait_for(lambda: _spliced_events(stack, 8260, start), 5, "spliced")
        sid = spliced[-1]["splice"]["id"]
        removed = wait_for(
            lambda: [
                e for e in stack.events[start:] if e["event"] == "removed" and e["splice"] == sid
            ],
            IDLE_TIMEOUT_S + 3,
            "idle reaping",
        )
        assert removed[0]["reason"] == "idle"
        idle.kill()
        idle.wait()


def test_different_window_scales_on_the_two_connections(stack):
    """A client with small buffers negotiates a smaller window scale than the proxy's."""
    ns = stack.topo.client
    old = ns.sh("sysctl", "-n", "net.ipv4.tcp_rmem").stdout.split()
    ns.sh("sysctl", "-qw", "net.ipv4.tcp_rmem=4096 65536 131072")
    try:
        with stack.proxy(8270, "--handover-after", str(MIB)) as proxy:
            result = stack.fetch(proxy, "64M")
            _check_spliced_transfer(stack, proxy, result, result["bytes"], upload=False)
    finally:
        ns.sh("sysctl", "-qw", f"net.ipv4.tcp_rmem={' '.join(old)}")
    splice = _spliced_events(stack, 8270)[0]["splice"]
    assert splice["entries"][0].get("wscale_shift", 0) < 0, splice["entries"][0]


def test_prometheus_metrics(stack):
    """After a hand-over of its own (the test does not rely on others')."""
    with stack.proxy(8703, "--handover-after", "0") as proxy:
        idle = stack.idle(8703, count=1, seconds=2)
        wait_for(lambda: proxy.stats["handed_over"] >= 1, 10, "a hand-over")
        idle.wait()
    text = stack.metrics()
    handovers = [
        line for line in text.splitlines() if line.startswith('mosto_handovers_total{result="ok"}')
    ]
    assert handovers and float(handovers[0].split()[-1]) >= 1, text[:2000]
    assert 'mosto_dataplane_packets_total{outcome="hit_redirect"}' in text
    assert "mosto_handover_seconds_count" in text


def test_100_concurrent_flows_handed_over(stack):
    with stack.proxy(8300, "--handover-after", str(256 * KIB)) as proxy:
        result = stack.fetch(proxy, "16M", "--parallel", "100", "--seed", "100")
        assert result["ok"] and result["flows"] == 100, result
        stats = wait_for(
            lambda: proxy.stats if proxy.stats["flows"] == 100 else None, 5, "100 flows"
        )
    assert stats["handed_over"] == 100, stats


def test_unprivileged_proxy_hands_over(stack):
    with stack.proxy(8400, "--handover-after", str(MIB), uid=NOBODY) as proxy:
        assert proxy.cap_eff() == 0, "the proxy must run without capabilities"
        result = stack.fetch(proxy, "64M")
        _check_spliced_transfer(stack, proxy, result, result["bytes"], upload=False)


def test_agent_killed_after_handover_flow_completes_and_restart_rebuilds(stack):
    with stack.proxy(8500, "--handover-after", str(4 * MIB)) as proxy:
        import threading

        box: dict = {}
        t = threading.Thread(target=lambda: box.update(stack.fetch(proxy, "1G")))
        t.start()
        wait_for(lambda: proxy.stats["handed_over"] == 1, 30, "the hand-over")
        stack.kill_agent()
        t.join(120)
        assert box.get("ok"), box
    stack.start_agent()
    # Only ours: the module's other splices may be reaped meanwhile.
    ours = [s for s in json.loads(stack.ctl("list", "--json")) if s["client"]["dport"] == 8500]
    assert ours
    for s in ours:
        stack.ctl("release", str(s["id"]))
    left = json.loads(stack.ctl("list", "--json"))
    assert not [s for s in left if s["client"]["dport"] == 8500], left


def _tcp_timeouts(ns) -> int:
    """The namespace's TcpExtTCPTimeouts: retransmission timeouts of its senders."""
    return json.loads(ns.sh("nstat", "-az", "-j").stdout)["kernel"]["TcpExtTCPTimeouts"]


@pytest.mark.parametrize("upload", [False, True], ids=["download", "upload"])
def test_bulk_handover_costs_the_sender_no_timeout(stack, upload):
    """The hold stops the sender by flow control and the agent prompts the ACKs
    that reopen its window: no segment is lost, so nothing waits for an RTO."""
    sender = stack.topo.client if upload else stack.topo.server
    port = 8600 + upload
    with stack.proxy(port, "--handover-after", "8M") as proxy:
        for _ in range(3):
            before = _tcp_timeouts(sender)
            result = stack.fetch(proxy, "256M", *(["--upload"] if upload else []))
            assert result["ok"], result
            assert _tcp_timeouts(sender) == before, result
        stats = wait_for(
            lambda: proxy.stats["handed_over"] == 3 and proxy.stats, 10, "3 hand-overs"
        )
    assert stats["relayed_bytes"] < 3 * 64 * MIB


LOSS_PCT = 0.5


def _lossy(ns, ifname: str) -> None:
    """Random loss of LOSS_PCT% of the TCP segments ns sends and receives on ifname."""
    per_mille = int(LOSS_PCT * 10)
    drop = f"meta l4proto tcp numgen random mod 1000 < {per_mille} counter drop"
    rules = "\n".join(
        [
            "table inet mosto_loss {",
            f" chain in {{ type filter hook prerouting priority 0; iifname {ifname} {drop}; }}",
            f" chain out {{ type filter hook output priority 0; oifname {ifname} {drop}; }}",
            "}",
        ]
    )
    subprocess.run(in_ns(ns.name, ["nft", "-f", "-"]), input=rules, text=True, check=True)


def _lost(ns) -> int:
    out = ns.sh("nft", "list", "table", "inet", "mosto_loss").stdout
    return sum(int(w) for w in re.findall(r"counter packets (\d+)", out))


def test_handovers_on_lossy_links_lose_no_byte(stack):
    """20 flows handed over while both links drop 0.5% of the segments both ways:
    every byte arrives (sha256 at the client), every flow is handed over, and
    the loss was real."""
    _lossy(stack.topo.client, "c0")
    _lossy(stack.topo.server, "s0")
    try:
        with stack.proxy(8701, "--handover-after", str(4 * MIB), "--attempts", "20") as proxy:
            result = stack.fetch(proxy, "64M", "--parallel", "20", "--seed", "700")
            assert result["ok"] and result["flows"] == 20, result
            stats = wait_for(lambda: proxy.stats["flows"] == 20 and proxy.stats, 5, "20 flows")
        assert stats["handed_over"] == 20, stats
        assert _lost(stack.topo.client) > 0 and _lost(stack.topo.server) > 0
    finally:
        for ns in (stack.topo.client, stack.topo.server):
            ns.sh("nft", "delete", "table", "inet", "mosto_loss", check=False)


REORDER_PCT = 2  # of the segments a namespace sends: held back behind the others
SLOW_CLASS_RATE = "20mbit"  # a held-back segment waits for its class: ~0.6 ms per segment


def _reordering(ns, ifname: str) -> None:
    """Reordering on what ns sends out of ifname, without netem (not in this
    kernel): an htb with a fast default class and a slow one, and nftables
    moving REORDER_PCT% of the TCP segments, at random, into the slow one."""
    ns.sh("tc", "qdisc", "replace", "dev", ifname, "root", "handle", "1:", "htb", "default", "10")
    for classid, rate in (("1:10", "40gbit"), ("1:20", SLOW_CLASS_RATE)):
        ns.sh("tc", "class", "add", "dev", ifname, "parent", "1:", "classid", classid, "htb",
              "rate", rate)  # fmt: skip
    rule = f"oifname {ifname} meta l4proto tcp numgen random mod 100 < {REORDER_PCT}"
    ns.sh("nft", "add table inet mosto_reorder; add chain inet mosto_reorder out "
          "{ type filter hook output priority 0; }; "
          f"add rule inet mosto_reorder out {rule} meta priority set 1:20")  # fmt: skip


def _held_back(ns, ifname: str) -> int:
    out = ns.sh("tc", "-s", "class", "show", "dev", ifname, "classid", "1:20").stdout
    m = re.search(r"Sent \d+ bytes (\d+) pkt", out)
    return int(m.group(1)) if m else 0


def _plain_links(ns, ifname: str) -> None:
    for table in ("mosto_loss", "mosto_reorder"):
        ns.sh("nft", "delete", "table", "inet", table, check=False)
    ns.sh("tc", "qdisc", "del", "dev", ifname, "root", check=False)


def _nstat(ns, counter: str) -> int:
    out = ns.sh("nstat", "-az", counter).stdout
    m = re.search(rf"^{counter}\s+(\d+)", out, re.M)
    return int(m.group(1)) if m else 0


def test_1GiB_transfers_over_lossy_reordering_links_are_handed_over_intact(stack):
    """Four 1 GiB downloads handed over while both links lose 0.5% of the
    segments and reorder 2%: every byte arrives (sha256), every flow is
    handed over, and the loss and the reordering were real (the client saw
    segments out of order after the hand-over)."""
    links = ((stack.topo.client, "c0"), (stack.topo.server, "s0"))
    try:
        for ns, ifname in links:
            _lossy(ns, ifname)
            _reordering(ns, ifname)
        with stack.proxy(8704, "--handover-after", str(4 * MIB), "--attempts", "20") as proxy:
            ofo = _nstat(stack.topo.client, "TcpExtTCPOFOQueue")
            result = stack.fetch(proxy, "1G", "--parallel", "4", "--seed", "703")
            assert result["ok"] and result["flows"] == 4, result
            stats = wait_for(lambda: proxy.stats["flows"] == 4 and proxy.stats, 5, "4 flows")
        assert stats["handed_over"] == 4, stats
        assert stats["relayed_bytes"] < 4 * 256 * MIB, stats  # most went through the splice
        assert _nstat(stack.topo.client, "TcpExtTCPOFOQueue") > ofo
        for ns, ifname in links:
            assert _lost(ns) > 0 and _held_back(ns, ifname) > 0
    finally:
        for ns, ifname in links:
            _plain_links(ns, ifname)


SPOOF = r"""
import random, socket, sys
from scapy.all import IP, TCP
src, dst = sys.argv[1], sys.argv[3]
sport, dport, count = int(sys.argv[2]), int(sys.argv[4]), int(sys.argv[5])
pkts = [bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags,
        seq=random.getrandbits(32), ack=random.getrandbits(32)))
        for flags in ("R", "F", "FA") for _ in range(count)]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for pkt in pkts:  # as fast as a raw socket goes: a sweep, not a trickle
    raw.sendto(pkt, (dst, 0))
"""


def _kept_back(stack: Stack) -> int:
    """FINs and RSTs the data plane's window check did not report (root sees the counters)."""
    return json.loads(stack.ctl("stats", "--json"))["counters"]["event_out_of_window"]


def _spray(ns, flow: dict, count: int) -> None:
    """count RSTs, FINs and FIN+ACKs with random seq and ack, as flow's sender."""
    out = ns.sh(
        sys.executable, "-c", SPOOF, flow["src"], str(flow["sport"]), flow["dst"],
        str(flow["dport"]), str(count), check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_blind_spoofed_rst_and_fin_do_not_end_a_spliced_flow(stack):
    """A peer namespace sprays RSTs and FINs with random sequence numbers at a
    spliced flow's four-tuple (as an off-path attacker would) while it carries
    a download: the data plane's window check reports none of them (RFC 5961),
    the transfer completes through the splice, which ends later as `closed`."""
    port = 8702
    with stack.proxy(port, "--handover-after", str(4 * MIB)) as proxy:
        box: dict = {}
        t = threading.Thread(
            target=lambda: box.update(stack.fetch(proxy, "256M", "--pace", "0.0005"))
        )
        t.start()
        ev = wait_for(lambda: _spliced_events(stack, port), 20, "the hand-over")[-1]["splice"]
        kept = _kept_back(stack)
        _spray(stack.topo.client, ev["client"], 300)
        t.join(120)
        assert box.get("ok"), box
        assert proxy.stats["handed_over"] == 1
    removed = wait_for(
        lambda: [e for e in stack.events if e["event"] == "removed" and e["splice"] == ev["id"]],
        10,
        "the splice's removal",
    )
    assert removed[-1]["reason"] == "closed", removed
    # An FIN+ACK whose random ACK falls among the server's bytes in flight is
    # acceptable (one in a thousand or so, in a download): it is reported, and
    # a lone FIN ends nothing. RSTs and bare FINs never are.
    assert _kept_back(stack) - kept >= 2 * 300 + 300 * 9 // 10
    kinds = [e["event"] for e in stack.events if e.get("splice") == ev["id"]]
    assert "rst" not in kinds, kinds


def test_a_blind_sweep_does_not_end_a_quiet_splice(stack):
    """The case a flow-is-quiet check cannot catch: an idle connection, spliced,
    and spoofed RSTs and FINs with random numbers from both peers' sides. The
    window check keeps them all back (without it, the first RST ended the
    splice). The peers' own FINs, later, still end it as `closed`."""
    port = 8705
    count = 1000
    with stack.proxy(port, "--handover-after", "0") as proxy:
        start = len(stack.events)
        idle = stack.idle(port, count=1, seconds=60)
        ev = wait_for(lambda: _spliced_events(stack, port, start), 10, "the hand-over")[-1]
        splice = ev["splice"]
        kept = _kept_back(stack)
        _spray(stack.topo.client, splice["client"], count)
        _spray(stack.topo.server, splice["server"], count)
        time.sleep(4 * stack.grace)  # past the grace an RST or two FINs would have started
        mine = [e for e in stack.events[start:] if e.get("splice") == splice["id"]]
        assert mine == [], mine  # no fin, rst or removed
        assert _kept_back(stack) - kept >= 2 * 3 * count * 9 // 10
        assert proxy.stats["handed_over"] == 1
        idle.terminate()  # its socket closes: a FIN each way, within the idle timeout
        idle.wait()
    removed = wait_for(
        lambda: [e for e in stack.events[start:] if e["event"] == "removed"],
        10,
        "the splice's removal",
    )
    assert removed[-1]["splice"] == splice["id"] and removed[-1]["reason"] == "closed", removed
