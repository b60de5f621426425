"""Chains of proxies on delayed links, handed over on every proxy: the
ingress proxy looks the chain up in a table made from the RTTs measured on
the links, the others follow its PROXY v2 header, each hands over to XDP once
its sending socket leaves slow start (after the gradual delay), and the bytes
arrive intact, IPv4 and IPv6, with 0.5% random loss on one link.

Short links (5 ms one way, 10 ms RTT a hop): slow start, the delay steps and
the hand-overs all happen in well under a second, and what the test checks
(integrity across three hand-overs in turn, under loss) does not depend on
the RTT; the paper's long paths are `mosto repro fig5`'s. The links toward
the client are rate-limited so the transfer lasts past the last hand-over
whatever the machine's speed."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import wan
from processes import Processes, traffic
from repro_fig4 import start_agent_on
from topology import DELAYLINE, LinkSpec, chain

SERVER_PORT = 9000
RATE = 200_000_000
SIZE = "96M"  # about 4 s at RATE: every proxy hands over well before the end
LOSS = 0.005
LOSSY_LINK = 1  # between the ingress proxy and the first transit proxy


def _specs() -> list[LinkSpec]:
    queue = int(RATE / 8 * 0.015)  # the delay and a link-BDP
    plain = LinkSpec(5, rate_back_bps=RATE, queue_bytes=queue)
    lossy = LinkSpec(5, loss=LOSS, rate_back_bps=RATE, queue_bytes=queue)
    return [lossy if i == LOSSY_LINK else plain for i in range(4)]


@pytest.fixture
def wan_chain():
    if not os.access(DELAYLINE, os.X_OK):
        pytest.skip(f"{DELAYLINE} missing: run `make build/delayline`")
    with chain(_specs(), prefix="wanE") as ch:
        try:
            yield ch
        finally:
            for node in ch.proxies:
                subprocess.run(["rm", "-rf", f"/sys/fs/bpf/{node.name}"], check=False)


def _fastopen_active(ns) -> int:
    """SYNs this namespace sent with data that the peer took (TCP Fast Open)."""
    doc = json.loads(ns.sh("nstat", "-az", "--json", "TcpExtTCPFastOpenActive").stdout)
    return int(doc.get("kernel", doc).get("TcpExtTCPFastOpenActive", 0))


@pytest.mark.parametrize(
    ("v6", "upload", "fastopen"),
    [(False, False, False), (True, False, False), (False, True, False), (False, False, True)],
)
def test_bulk_transfer_across_a_chain_handed_over_on_every_proxy(wan_chain, v6, upload, fastopen):
    """fastopen: the headers ride in the SYNs (mosto proxy --fastopen), once a
    first, small flow has fetched the cookies."""
    ch = wan_chain
    logdir = Path(tempfile.mkdtemp(prefix="mosto-e2e-chain-"))
    with Processes(logdir) as procs:
        matrix = wan.rtt_matrix(ch, count=5)
        # measured over the links: a delay line is never early, and a longer
        # stretch of the chain takes longer (how late it is depends on load)
        row = matrix["rtt"][0]
        assert row[1] >= 10 and row[2] >= 20 and row[3] >= 30, matrix
        assert row[1] < row[2] < row[3], matrix
        table = wan.precompute(matrix, logdir / "chains.npz")
        serve = traffic("serve", "--listen", f"[::]:{SERVER_PORT}")
        procs.spawn(ch.server, serve, "server.log", ready=True)
        extra = {}
        for k, node in enumerate(ch.proxies):
            sock = start_agent_on(ch, procs, node, wan.role(ch, k), "native")
            extra[k] = ["--agent", str(sock), "--handover-on", "slowstart", "--gradual"]
            if fastopen:
                node.sh("sysctl", "-qw", "net.ipv4.tcp_fastopen=3")
                extra[k].append("--fastopen")
        ks = list(range(len(ch.proxies)))
        stats = wan.start_proxies(ch, procs, table, ks, SERVER_PORT, 96 << 20, extra, v6=v6)
        inp = wan.hostport(wan.listen_addr(ch, 0, v6), wan.PROXY_PORT)
        if fastopen:
            ch.client.sh(*traffic("fetch", "--connect", inp, "--size", "10K"))
        cmd = traffic("fetch", "--connect", inp, "--size", SIZE, *["--upload"] * upload)
        out = ch.client.sh(*cmd, check=False)
        result = json.loads(out.stdout) if out.stdout.strip() else {}
        assert result.get("ok"), (out.stdout, out.stderr[-2000:])
        procs.stop_all()  # the stats files are final
        docs = {name: json.loads(path.read_text()) for name, path in stats.items()}
        if fastopen:  # inp's and trp1's headers went in SYNs (egp sends none)
            assert _fastopen_active(ch.proxies[0]) >= 1 and _fastopen_active(ch.proxies[1]) >= 1
    chain_ev = [e for e in docs["inp"]["events"] if e["event"] == "chain"]
    assert chain_ev and chain_ev[0]["path"] == ["inp", "trp1", "egp", "server"]
    for name, doc in docs.items():
        assert doc["flows"] == 1 + fastopen, name
        events = [e["event"] for e in doc["events"]]
        # each proxy in turn: slow start over, the delay raised, then handed
        # over (the small first flow may have been too: it can hit the loss)
        assert 1 <= doc["handed_over"] <= doc["flows"], (name, doc["refused"], events)
        assert events.index("slowstart_end") < events.index("delay") < events.index("handed_over")
        # what the proxy relayed stops at the hand-over: the rest of the bulk
        # flow went by XDP
        assert doc["relayed_bytes"] < 96 << 20, name
    # the loss was real: the lossy link dropped packets, the others none
    ch.stop_delaylines()
    lost = {
        i: sum(d.get("lost", 0) for d in link.counters.values()) for i, link in enumerate(ch.links)
    }
    sent = {
        i: sum(d.get("packets", 0) for d in link.counters.values())
        for i, link in enumerate(ch.links)
    }
    assert lost[LOSSY_LINK] > 0 and all(lost[i] == 0 for i in lost if i != LOSSY_LINK), lost
    share = lost[LOSSY_LINK] / (sent[LOSSY_LINK] + lost[LOSSY_LINK])
    assert 0.002 < share < 0.01, (share, lost, sent)
