"""tools/bench_throughput.py in its --quick mode (short rows, one round): it
runs every row end to end and writes the JSON `make bench` promises. Only the
shape and the plain facts are checked (every row once, bytes moved, the
splice rows handed over); speeds are the benchmark's, not a test's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from processes import REPO

PATHS = {"forward", "haproxy", "relay", "splice"}
HOOKS = {"none", "xdp", "tc"}
# (path, hook) of every row, each uncontended and contended (issue 12)
ROWS = {
    ("forward", "none"),
    ("forward", "xdp"),
    ("forward", "tc"),
    ("haproxy", "none"),
    ("relay", "none"),
    ("splice", "xdp"),
    ("splice", "tc"),
}
NUMBERS = ("gbps", "host_cpu_s_per_gb", "proxy_cpu_s")


def test_quick_run_writes_every_row(tmp_path: Path) -> None:
    if not shutil.which("haproxy"):
        pytest.skip("no haproxy on PATH (tools/install-deps.sh installs it)")
    out, doc = tmp_path / "throughput.md", tmp_path / "bench" / "throughput.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_throughput.py"), "--quick"]
        + ["--out", str(out), "--json", str(doc)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(doc.read_text())
    assert isinstance(rows, list)
    seen = [(r["path"], r["hook"], r["contended"]) for r in rows]
    assert sorted(seen) == sorted((p, h, c) for p, h in ROWS for c in (False, True))
    for r in rows:
        assert r["path"] in PATHS and r["hook"] in HOOKS and isinstance(r["contended"], bool)
        for key in NUMBERS:
            assert isinstance(r[key], (int, float)) and r[key] >= 0, (key, r)
        assert r["gbps"] > 0 and r["host_cpu_s_per_gb"] > 0, r
        assert all(run["bytes"] > 0 for run in r["runs"]), r
        if r["path"] == "splice":
            assert all(run["handed_over"] for run in r["runs"]), r
        if r["path"] in ("haproxy", "relay"):
            assert r["proxy_cpu_s"] > 0, f"no CPU counted for the proxy process: {r}"
    detail = json.loads(doc.with_name("throughput-detail.json").read_text())
    assert {(g["hook"], g["what"]) for g in detail["ratios"]} and all(
        g["uncontended"] is not None for g in detail["ratios"]
    )
    assert {"hit/xdp", "hit/tc"} <= set(detail["per_packet"])
    text = out.read_text()
    assert "| splice | tc | no |" in text and "Issue 12's goals" in text
