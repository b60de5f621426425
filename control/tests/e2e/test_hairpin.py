"""A one-armed proxy (issue 10, item 8): one interface toward both client and
server (tools/topology.py one_armed: a bridge), so every splice sends its
frames back out of the interface they came in on (XDP_TX, tc: a redirect to
the ingress device). Native XDP_TX on veth stalls on this kernel (ebpf/README.md,
Hairpin); the agent picks generic mode for a one-armed XDP interface on veth
and says so. Each transfer's sha256 is checked at the client."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
from processes import BIN, REPO, Processes, mosto, traffic, wait_for
from topology import ARM4, one_armed

SERVER_PORT = 9000
PROXY_PORT = 8000  # hands a flow over after 1 MiB
IDLE_PORT = 8001  # at once (quiet flows)
METRICS_PORT = 9118
ATTACKER = REPO / "control" / "tests" / "e2e" / "attacker.py"
NOBODY = 65534

# How the agent is asked to run: its default (tc on veth), or XDP in native
# mode, which it turns into generic for a one-armed veth interface.
HOOKS = {"tc": ("--hook", "tc"), "xdp": ("--mode", "native")}


class OneArmed:
    def __init__(self, topo, agent_args: tuple[str, ...]):
        self.topo = topo
        self.tmp = Path(tempfile.mkdtemp(prefix="mosto-arm-"))
        self.procs = Processes(self.tmp)
        self.procs.spawn(
            topo.server,
            traffic("serve", "--listen", f"0.0.0.0:{SERVER_PORT}"),
            "server.log",
            ready=True,
        )
        self.agent = topo.start_agent(
            self.procs,
            *agent_args,
            "--socket-mode",
            "666",
            "--metrics",
            f"127.0.0.1:{METRICS_PORT}",
        )
        for port, after in ((PROXY_PORT, "1M"), (IDLE_PORT, "0")):
            self.procs.spawn(
                topo.proxy,
                mosto(
                    "proxy",
                    "--listen",
                    f"0.0.0.0:{port}",
                    "--upstream",
                    f"{ARM4['server']}:{SERVER_PORT}",
                    "--agent",
                    topo.agent_socket,
                    "--handover-after",
                    after,
                    "--stats-file",
                    str(self.tmp / f"proxy-{port}.json"),
                ),
                f"proxy-{port}.log",
            )
        self.stats = self.tmp / f"proxy-{PROXY_PORT}.json"
        wait_for(self.stats.exists, 10, "the proxy's stats file")

    def proxy_stats(self) -> dict:
        return json.loads(self.stats.read_text())

    def fetch(self, size: str, *args: str, to: str = f"{ARM4['proxy']}:{PROXY_PORT}") -> dict:
        out = self.topo.client.sh(
            "timeout", "60", *traffic("fetch", "--connect", to, "--size", size, *args), check=False
        )
        assert out.stdout, out.stderr
        return json.loads(out.stdout)

    def counters(self) -> dict[str, int]:
        out = self.topo.proxy.sh(
            *mosto("xdp", "counters", "--pin-dir", self.topo.pin_dir, "--json")
        )
        return json.loads(out.stdout)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
        return self.topo.proxy.sh(
            "python3",
            "-c",
            f"import urllib.request; print(urllib.request.urlopen({url!r}).read().decode())",
        ).stdout

    def close(self) -> None:
        self.procs.stop_all()
        subprocess.run(["rm", "-rf", str(self.tmp)], check=False)


@pytest.fixture(scope="module", params=sorted(HOOKS))
def arm(request):
    with one_armed("marm") as topo:
        a = OneArmed(topo, HOOKS[request.param])
        a.hook = request.param
        try:
            yield a
        finally:
            a.close()


def test_the_agent_says_what_it_picked_for_the_hairpin(arm):
    log = (arm.tmp / "agent.log").read_text()
    if arm.hook == "tc":  # a hairpin is a redirect to the ingress device: no XDP_TX
        assert "attached to p0: tc (clsact ingress)" in log
    else:
        assert "one-armed on veth, every splice hairpins" in log
        assert "attached to p0: XDP (generic)" in log
        assert "p0: watching xdp_tx_errors" in log


def test_a_bulk_transfer_handed_over_through_the_hairpin_arrives_intact(arm):
    before = arm.counters()["hit_tx"]
    handed = arm.proxy_stats()["handed_over"]
    got = arm.fetch("64M")
    assert got["ok"], got
    assert got["sha256"] == got["expected"]
    assert arm.proxy_stats()["handed_over"] == handed + 1
    # Most of it went through the splice, back out of p0.
    assert arm.counters()["hit_tx"] - before > 64 * 1024 * 1024 // 65536
    if arm.hook == "xdp":
        assert 'mosto_xdp_tx_errors_total{interface="p0"} 0.0' in arm.metrics()


def test_after_a_flood_of_hairpinned_acks_the_link_carries_a_new_transfer(arm):
    """A spliced quiet flow; from the client's host, segments of it (ACKs with
    random seq/ack) as fast as one raw socket sends them, each translated and
    hairpinned toward the server. Then the link must still carry a new
    hand-over and a direct connection (the stall this guards against needed
    the link flapped)."""
    idle = arm.procs.spawn(
        arm.topo.client,
        traffic(
            "idle",
            "--connect",
            f"{ARM4['proxy']}:{IDLE_PORT}",
            "--count",
            "1",
            "--seconds",
            "30",
        ),
    )
    try:
        flows = wait_for(
            lambda: arm.topo.client.sh(
                "ss", "-Htn", "state", "established", f"( dport = :{IDLE_PORT} )"
            ).stdout.split(),
            5,
            "the idle connection",
        )
        client, proxy = flows[-2:]
        wait_for(lambda: _spliced(arm, client), 10, "the idle flow's splice")
        hits0 = arm.counters()["hit_tx"]
        flood = arm.topo.client.popen(
            [
                str(BIN / "python"),
                str(ATTACKER),
                "--socket",
                "-",
                "tsval-spray",
                "--src",
                client,
                "--dst",
                proxy,
                "--tsval",
                "1",
                "--seconds",
                "3",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = flood.communicate(timeout=60)
        assert flood.returncode == 0, err
        sent = json.loads(out)["sent"]
        assert sent > 10_000, sent
        assert arm.counters()["hit_tx"] - hits0 >= sent * 9 // 10  # hairpinned
        got = arm.fetch("16M")
        assert got["ok"], got
        direct = arm.fetch("4M", to=f"{ARM4['server']}:{SERVER_PORT}")
        assert direct["ok"], direct
    finally:
        idle.terminate()
        idle.wait()


def _spliced(arm, client: str) -> bool:
    """Whether the flow from client (host:port) is spliced."""
    out = arm.topo.proxy.sh(*mosto("ctl", "list", "--json", "--socket", arm.topo.agent_socket))
    host, port = client.rsplit(":", 1)
    return any(
        s["client"]["src"] == host and s["client"]["sport"] == int(port)
        for s in json.loads(out.stdout)
    )
