"""Precompute and lookup against an independent brute force over all simple chains."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mosto.chains.lookup import rounds_for_size, twice_cost
from mosto.chains.pareto import pair_index, precompute
from mosto.chains.table import ChainTable
from mosto.chains.topology import Topology, mesh_from_links, parse_rtt_json

ROUNDS = (1, 2, 3, 5, 10)


def all_chains(rtt: np.ndarray, s: int, t: int) -> list[tuple[int, int, int]]:
    """(sum, max, hops) of every simple chain s -> t."""
    others = [x for x in range(len(rtt)) if x not in (s, t)]
    out = []
    for k in range(len(others) + 1):
        for middle in itertools.permutations(others, k):
            nodes = (s, *middle, t)
            hops = [int(rtt[a, b]) for a, b in itertools.pairwise(nodes)]
            out.append((sum(hops), max(hops), len(hops)))
    return out


def brute_front(chains: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Pareto set in (sum, max), fewest hops on ties, in increasing max."""
    fewest: dict[tuple[int, int], int] = {}
    for s, m, h in chains:
        fewest[(s, m)] = min(h, fewest.get((s, m), h))
    front = [
        (s, m, h)
        for (s, m), h in fewest.items()
        if not any(s2 <= s and m2 <= m and (s2, m2) != (s, m) for s2, m2 in fewest)
    ]
    return sorted(front, key=lambda p: p[1])


def check_chain(rtt: np.ndarray, nodes: list[int], s: int, t: int) -> tuple[int, int, int]:
    assert nodes[0] == s and nodes[-1] == t
    assert len(set(nodes)) == len(nodes), f"chain {nodes} is not simple"
    hops = [int(rtt[a, b]) for a, b in itertools.pairwise(nodes)]
    return sum(hops), max(hops), len(hops)


def check_against_brute_force(topology: Topology) -> None:
    rtt, n = topology.rtt_us, topology.size
    sets = precompute(topology)
    table = ChainTable(topology.names, sets)
    for s, t in itertools.combinations(range(n), 2):
        chains = all_chains(rtt, s, t)
        p = pair_index(n, s, t)
        got = []
        for i in range(sets.pair_offsets[p], sets.pair_offsets[p + 1]):
            nodes = sets.paths[sets.path_offsets[i] : sets.path_offsets[i + 1]].tolist()
            assert check_chain(rtt, nodes, s, t)[:2] == (sets.sum_us[i], sets.max_us[i])
            got.append(check_chain(rtt, nodes, s, t))
        assert got == brute_front(chains), (rtt.tolist(), s, t)

        for r in ROUNDS:
            best = min((twice_cost(a, b, r), h, a) for a, b, h in chains)
            for src, dst in ((s, t), (t, s)):
                chain = table.lookup(topology.names[src], topology.names[dst], r)
                nodes = [topology.names.index(x) for x in chain.path]
                a, b, h = check_chain(rtt, nodes, src, dst)
                assert (a, b) == (chain.sum_us, chain.max_us)
                assert (twice_cost(a, b, r), h, a) == best, (rtt.tolist(), src, dst, r)


@st.composite
def rtt_matrices(draw: st.DrawFn, high: int = 6) -> np.ndarray:
    """Symmetric, zero diagonal, small integers: many ties, triangle inequality not assumed."""
    n = draw(st.integers(2, 7))
    values = draw(st.lists(st.integers(0, high), min_size=n * n, max_size=n * n))
    m = np.triu(np.array(values, dtype=np.int64).reshape(n, n), 1)
    return m + m.T


@settings(max_examples=120, deadline=None)
@given(rtt_matrices())
def test_matrix_matches_brute_force(rtt: np.ndarray) -> None:
    check_against_brute_force(Topology(tuple(f"p{i}" for i in range(len(rtt))), rtt, False))


@settings(max_examples=60, deadline=None)
@given(rtt_matrices(high=10**6))
def test_wide_values_match_brute_force(rtt: np.ndarray) -> None:
    check_against_brute_force(Topology(tuple(f"p{i}" for i in range(len(rtt))), rtt, False))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_rocketfuel_mesh_matches_brute_force(data: st.DataObject) -> None:
    """Shortest-path meshes, as built from a Rocketfuel map (the sweep stops early on them)."""
    n = data.draw(st.integers(2, 7))
    links = {}
    for node in range(1, n):  # a random tree keeps the map connected; extra links add cycles
        links[(data.draw(st.integers(0, node - 1)), node)] = data.draw(st.integers(1, 9))
    for a, b in data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)))):
        if a != b:
            links[(min(a, b), max(a, b))] = data.draw(st.integers(1, 9))
    names = tuple(f"r{i}" for i in range(n))
    links_us = {k: v * 1000 for k, v in links.items()}
    check_against_brute_force(mesh_from_links(names, links_us))


def test_json_matrix_rounds_to_microseconds() -> None:
    text = '{"nodes": ["a", "b", "c"], "rtt": [[0, 10.0004, 6], [10.0004, 0, 5.5], [6, 5.5, 0]]}'
    topology = parse_rtt_json(text)
    assert topology.rtt_us.tolist() == [[0, 10000, 6000], [10000, 0, 5500], [6000, 5500, 0]]
    table = ChainTable(topology.names, precompute(topology))
    assert [c.path for c in table.chains("a", "b")] == [("a", "c", "b"), ("a", "b")]
    assert table.lookup("a", "b", 1).path == ("a", "b")
    assert table.lookup("a", "b", 10).to_json(10) == {
        "path": ["a", "c", "b"],
        "sum": 11.5,
        "max": 6.0,
        "cost": 59.75,
    }


def test_one_round_prefers_fewest_proxies_among_shortest() -> None:
    """a-b-c-d on a line: the direct a-d has the same sum as the 3-hop chain, a larger max."""
    names = ("a", "b", "c", "d")
    topology = mesh_from_links(names, {(0, 1): 1000, (1, 2): 1000, (2, 3): 1000})
    table = ChainTable(names, precompute(topology))
    assert [c.path for c in table.chains("a", "d")] == [("a", "b", "c", "d")]
    assert table.lookup("a", "d", 1).path == ("a", "d")
    assert table.lookup("d", "a", 2).path == ("d", "c", "b", "a")
    assert table.lookup("a", "a", 5).path == ("a",)


def test_rounds_for_size() -> None:
    seg = 1460
    assert rounds_for_size(0) == 1
    assert rounds_for_size(10 * seg) == 1  # fits the initial window (paper: < 15 KB)
    assert rounds_for_size(10 * seg + 1) == 2
    assert rounds_for_size(30 * seg) == 2
    assert rounds_for_size(31 * seg) == 3
    assert rounds_for_size(310 * seg) == 5
    assert rounds_for_size(311 * seg) == 6
    assert rounds_for_size(1000, icw=1, mss=100) == 4  # 1 + 2 + 4 + 8 >= 10 segments
