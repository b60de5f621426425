"""`mosto repro fig5 --quick`: the Fig. 5 set-up (five delayed links, the
chain tables from the measured RTTs, the ingress proxies' lookups, a warm
front-end) run briefly gives a fig5.json of the issue's shape with values
that make sense, every transfer intact; nothing is left behind. Root (the
tools tier)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from processes import BIN, REPO
from pyroute2 import netns as pyroute2_netns
from topology import DELAYLINE

SERIES = {"direct", "mosto_1", "mosto_3", "warm_frontend"}


def test_quick_fig5(tmp_path: Path) -> None:
    if not os.access(DELAYLINE, os.X_OK):
        pytest.skip(f"{DELAYLINE} missing: run `make build/delayline`")
    before = set(pyroute2_netns.listnetns())
    p = subprocess.run(
        [str(BIN / "mosto"), "repro", "fig5", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads((tmp_path / "fig5.json").read_text())
    assert set(doc) == {"rtt_ms", "sizes_kb", "series"}
    assert doc["rtt_ms"] == 60 and doc["sizes_kb"] == [10, 100]
    assert set(doc["series"]) == SERIES
    for name, s in doc["series"].items():
        assert set(s) == {"mean_ms", "p50_ms", "p95_ms"}, name
        for key, values in s.items():
            assert len(values) == 2 and all(v > 0 for v in values), (name, key)
        assert all(p50 <= p95 for p50, p95 in zip(s["p50_ms"], s["p95_ms"], strict=True))
    direct, warm = doc["series"]["direct"]["p50_ms"], doc["series"]["warm_frontend"]["p50_ms"]
    # Physics: a new connection needs a round trip to set up and one for the
    # request; the warm front-end's answer comes in one; 100 KB needs more
    # rounds of slow start than 10 KB from a cold start.
    assert direct[0] >= 2 * 60 and warm[0] >= 60 and warm[1] < direct[1]
    assert direct[1] > direct[0] + 60
    detail = json.loads((tmp_path / "fig5-runs.json").read_text())
    assert len(detail["transfers"]) == 4 * 2 * 2 and all(t["ok"] for t in detail["transfers"])
    # The chains the ingress proxies looked up: the three-proxy one for 100 KB.
    assert detail["chains"]["mosto_3"]["mosto_3-inp-100000"] == ["inp", "trp1", "egp", "server"]
    assert detail["chains"]["mosto_1"]["mosto_1-trp2-100000"] == ["trp2", "server"]
    assert (tmp_path / "fig5.png").stat().st_size > 0
    left = set(pyroute2_netns.listnetns()) - before
    assert not [n for n in left if n.startswith("f5")], left
