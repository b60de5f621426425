"""`mosto repro fig4 --quick`: one short run of the Fig. 4 set-up (a download
through one proxy on two delay-line links, handed over to XDP after the
gradual delay) gives a JSON with every field, and sane values; nothing is
left behind. Root (conftest.py: the tools tier)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from processes import BIN, REPO
from pyroute2 import netns as pyroute2_netns
from topology import DELAYLINE

FIELDS = (
    "rtt_ms",
    "gradual",
    "goodput_before_mbps",
    "goodput_dip_pct",
    "recovery_s",
    "retrans_across",
    "handover_s",
    "goodput_mbps",
)


def test_quick_fig4(tmp_path: Path) -> None:
    if not os.access(DELAYLINE, os.X_OK):
        pytest.skip(f"{DELAYLINE} missing: run `make build/delayline`")
    before = set(pyroute2_netns.listnetns())
    p = subprocess.run(
        [str(BIN / "mosto"), "repro", "fig4", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "RTT 50 ms" in p.stdout and "handed over at" in p.stdout  # progress lines
    runs = json.loads((tmp_path / "fig4.json").read_text())["runs"]
    assert len(runs) == 1
    run = runs[0]
    for key in FIELDS:
        assert key in run, key
    assert run["rtt_ms"] == 50 and run["gradual"] is True
    assert run["handed_over"] == 1, run["refused"]
    assert run["bytes"] > 0
    assert run["goodput_before_mbps"] > 0
    # The ramp came first: the trigger, the delay steps, then the hand-over.
    names = [e["event"] for e in run["events"]]
    assert names.index("trigger") < names.index("delay") < names.index("handed_over")
    assert run["trigger_s"] <= run["handover_s"] < 6
    # data still arrived after the hand-over (XDP forwarded it)
    after = run["goodput_mbps"][int(run["handover_s"] / 0.1) + 5 :]
    assert after and max(after) > 0
    assert run["goodput_dip_pct"] is not None and run["goodput_dip_pct"] <= 100
    assert {"TcpRetransSegs", "TcpExtTCPTimeouts"} <= set(run["retrans_across"])
    assert (tmp_path / "fig4.png").stat().st_size > 0
    # nothing left: namespaces, pinned maps
    left = set(pyroute2_netns.listnetns()) - before
    assert not [n for n in left if n.startswith("f4")], left
    assert not list(Path("/sys/fs/bpf").glob("f4*"))
