"""Malformed maps, matrices, tables and names give one clear error each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mosto.chains.pareto import precompute
from mosto.chains.table import ChainTable, TableError
from mosto.chains.topology import TopologyError, load

SQUARE = "a b 1\nb c 2\nc d 1\nd a 3\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def matrix(nodes: list[str], rtt: list[list[object]]) -> str:
    return json.dumps({"nodes": nodes, "rtt": rtt})


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.intra", "", "empty file"),
        ("blank.json", " \n", "empty file"),
        ("short.intra", "a b 1\nc d\n", ":2: expected 'NODE NODE LATENCY_MS'"),
        ("nan.intra", "a b fast\n", "'fast' is not a number"),
        ("inf.intra", "a b inf\n", "not a finite number"),
        ("neg.intra", "a b 1\nb c -2\n", "negative RTT -2"),
        ("loop.intra", "a a 1\n", "link from a to itself"),
        ("twice.intra", "a b 1\nb a 2\n", "link b - a listed with 2.0 ms and 1.0 ms"),
        ("apart.intra", "a b 1\nc d 1\n", "map is disconnected (2 parts; e.g. no route from a"),
        ("one.intra", "# nothing\n", "needs at least two nodes"),
        ("bad.json", "{nodes", "not valid JSON"),
        ("keys.json", '{"nodes": []}', "expected {"),
        ("dup.json", matrix(["a", "a"], [[0, 1], [1, 0]]), "node 'a' listed twice"),
        ("rows.json", matrix(["a", "b"], [[0, 1]]), "'rtt' must have 2 rows"),
        ("cols.json", matrix(["a", "b"], [[0, 1], [1]]), "rtt row 1 (b) must have 2 values"),
        ("str.json", matrix(["a", "b"], [[0, "1"], [1, 0]]), "rtt[0][1]: '1' is not a number"),
        ("neg.json", matrix(["a", "b"], [[0, -1], [-1, 0]]), "negative RTT -1"),
        ("diag.json", matrix(["a", "b"], [[2, 1], [1, 0]]), "rtt[0][0] (a to itself) must be 0"),
        (
            "asym.json",
            matrix(["a", "b", "c"], [[0, 1, 2], [1, 0, 3], [2, 4, 0]]),
            "asymmetric: b -> c is 3 ms but c -> b is 4 ms",
        ),
        ("huge.json", matrix(["a", "b"], [[0, 1e300], [1e300, 0]]), "RTT 1e+300 ms is too large"),
    ],
)
def test_bad_topology(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(TopologyError) as err:
        load(write(tmp_path, name, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="No such file"):
        load(tmp_path / "nope.intra")


def test_rocketfuel_both_directions_and_comments(tmp_path: Path) -> None:
    topology = load(write(tmp_path, "ok.intra", "# map\n" + SQUARE + "b a 1\n\n"))
    assert topology.names == ("a", "b", "c", "d")
    assert topology.metric
    assert topology.rtt_us[0].tolist() == [0, 1000, 3000, 3000]  # a-d: via b, c ties direct 3


def test_bad_table_and_names(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="cannot read chain table"):
        ChainTable.load(write(tmp_path, "t.npz", "not a zip"))
    table = ChainTable(("a", "b", "c", "d"), precompute(load(write(tmp_path, "m", SQUARE))))
    table.save(tmp_path / "t.npz")
    loaded = ChainTable.load(tmp_path / "t.npz")
    assert loaded.lookup("a", "c", 5) == table.lookup("a", "c", 5)
    with pytest.raises(TableError, match="unknown node 'x'"):
        loaded.lookup("a", "x", 1)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        loaded.lookup("a", "b", 0)
