"""`mosto chains precompute | lookup | eval` end to end, on small maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mosto.chains import evaluate
from mosto.cli import main

# Two cities of three routers joined by two long links: enough for chains to pay off.
MAP = """\
a1 a2 1
a2 a3 1
a1 a3 1
b1 b2 1
b2 b3 1
a3 m1 12
m1 b1 12
a1 b3 30
"""


@pytest.fixture
def table(tmp_path: Path) -> Path:
    (tmp_path / "m.intra").write_text(MAP)
    assert main(["chains", "precompute", str(tmp_path / "m.intra"), "-o", str(tmp_path / "t")]) == 0
    return tmp_path / "t"


def test_precompute_and_lookup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "m.intra").write_text(MAP)
    out = tmp_path / "table.npz"
    assert main(["chains", "precompute", str(tmp_path / "m.intra"), "-o", str(out)]) == 0
    assert "7 locations, 21 pairs" in capsys.readouterr().out

    assert main(["chains", "lookup", str(out), "a2", "b2", "--rounds", "1", "--json"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert direct == {"path": ["a2", "b2"], "sum": 26.0, "max": 26.0, "cost": 13.0}

    assert main(["chains", "lookup", str(out), "a2", "b2", "--size", "500000", "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)  # 6 rounds: 0.5 * 26 + 5 * 12 = 73
    assert chain == {"path": ["a2", "a3", "m1", "b1", "b2"], "sum": 26.0, "max": 12.0, "cost": 73.0}

    assert main(["chains", "lookup", str(out), "b2", "a2", "--rounds", "6"]) == 0
    assert capsys.readouterr().out.startswith("b2 -> b1 -> m1 -> a3 -> a2  (6 rounds: cost 73 ms")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a1", "zz", "--rounds", "2"], "unknown node 'zz'"),
        (["a1", "b1", "--rounds", "0"], "--rounds must be at least 1"),
        (["a1", "b1", "--size", "-5"], "size must be >= 0"),
    ],
)
def test_lookup_errors(
    table: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["chains", "lookup", str(table), *argv]) == 2
    assert capsys.readouterr().err.strip() == f"mosto: {message}"


def test_precompute_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text('{"nodes": ["a", "b"], "rtt": [[0, 1], [2, 0]]}')
    assert main(["chains", "precompute", str(tmp_path / "bad.json"), "-o", "x"]) == 2
    assert "asymmetric" in capsys.readouterr().err


def test_eval_smoke(tmp_path: Path) -> None:
    """The evaluation pipeline on a small connected piece of a map: numbers, table, plot."""
    piece = evaluate.submap(MAP, 5, seed=3, origin="m")
    assert piece.size == 5
    costs = evaluate.evaluate(piece)
    ours, nodes = costs.ours[5]
    for base in (costs.shortest, costs.minimax, costs.widest):
        assert (base[5][0] >= ours).all()  # ours is optimal
    assert (costs.shortest[1][0] == costs.ours[1][0]).all()  # one round: shortest is optimal
    assert (nodes >= 2).all()
    table = evaluate.markdown({"piece": costs})
    assert table.count("\n| piece |") == 3
    evaluate.plot(costs, "piece", tmp_path / "fig.png")
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    assert np.isfinite(evaluate.improvement(costs.minimax[10][0], ours)).all()
