"""Hand-overs at scale, for correctness only (speed is `make bench`'s): 5,000
quiet flows handed over at once and then carrying data both ways, and 200
bulk downloads handed over mid-stream; every byte sha256-checked at its
receiver, every splice removed afterwards as closed. `make stress` runs it
(MOSTO_STRESS=1), and so does `make test` (it takes about 45 s on 2 cores); a
plain pytest run skips it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from processes import BIN, REPO
from stack import Stack, wait_for

pytestmark = pytest.mark.skipif(
    not os.environ.get("MOSTO_STRESS"),
    reason="stress test: `make stress` or `make test` runs it (MOSTO_STRESS=1)",
)
QUIET_FLOWS, BULK_FLOWS = 5000, 200


@pytest.fixture(scope="module")
def stack():
    # Idle flows must outlive the whole burst; FINs end them after a short grace.
    with Stack.running("mst", agent_args=("--idle-timeout", "300")) as s:
        yield s


def test_5000_quiet_flows_handed_over_carry_every_byte_and_close(stack):
    topo = stack.topo
    p = topo.proxy.popen(
        [
            str(BIN / "python"),
            str(REPO / "tools" / "quiet_pairs.py"),
            "run",
            "--client-ns",
            topo.client.name,
            "--server-ns",
            topo.server.name,
            "--agent",
            topo.agent_socket,
            "--flows",
            str(QUIET_FLOWS),
            "--connections",
            "8",
            "--batch",
            "16",
            "--verify",
            "16384",
        ],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
    )
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    result = json.loads(out.splitlines()[-1])
    assert result["offloaded"] == QUIET_FLOWS and not result["refused"], result
    verified = result["verified"]
    for side in ("client", "server"):
        assert verified[side] == {"ok": QUIET_FLOWS, "bad": 0, "fin": QUIET_FLOWS}, verified
    assert verified["removed"] == {"closed": QUIET_FLOWS}, verified


def test_200_bulk_flows_handed_over_mid_stream_intact_and_closed(stack):
    start = len(stack.events)
    with stack.proxy(8400, "--handover-after", "256K") as proxy:
        result = stack.fetch(proxy, "16M", "--parallel", str(BULK_FLOWS), "--seed", "7000")
        assert result["ok"] and result["flows"] == BULK_FLOWS, result
        stats = wait_for(
            lambda: proxy.stats if proxy.stats["flows"] == BULK_FLOWS else None, 30, "the flows"
        )
    assert stats["handed_over"] == BULK_FLOWS, stats
    spliced = {
        e["splice"]["id"]
        for e in stack.events[start:]
        if e["event"] == "spliced" and e["splice"]["client"]["dport"] == 8400
    }
    assert len(spliced) == BULK_FLOWS

    def reasons() -> dict | None:
        got = {
            e["splice"]: e["reason"]
            for e in stack.events[start:]
            if e["event"] == "removed" and e["splice"] in spliced
        }
        return got if len(got) == BULK_FLOWS else None

    removed = wait_for(reasons, 30, "every bulk splice removed")
    assert set(removed.values()) == {"closed"}, removed
