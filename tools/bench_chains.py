"""Benchmark of the chain computation: precompute time per map, and lookups per second.

Runs on the six Rocketfuel maps and on a synthetic 1000-location ISP-like map (cities with
several routers on 1 ms links, long-haul links between nearby cities), built like the
paper's meshes: every location pair gets its shortest-path delay.  One more row stands for a
measured RTT matrix: the largest map's mesh with +-5% noise per pair, so no longer a
shortest-path mesh and with thousands of distinct RTTs.
Usage: .venv/bin/python tools/bench_chains.py [--rocketfuel DIR] [--synthetic N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from mosto.chains.pareto import precompute
from mosto.chains.table import ChainTable
from mosto.chains.topology import Topology, load, parse_rocketfuel

ROCKETFUEL = Path(__file__).resolve().parents[1] / "data" / "rocketfuel"


def synthetic_map(n: int, seed: int = 1) -> str:
    """An ISP-like latency map in Rocketfuel format: about 10 routers per city."""
    rng = np.random.default_rng(seed)
    cities = max(2, n // 10)
    where = rng.uniform(0, 1, (cities, 2)) * [6000.0, 3000.0]  # km
    city_of = np.sort(np.r_[np.arange(cities), rng.integers(0, cities, n - cities)])
    km = np.hypot(*(where[:, None, :] - where[None, :, :]).transpose(2, 0, 1))
    links: dict[tuple[int, int], int] = {}
    for c in range(cities):
        routers = np.flatnonzero(city_of == c)
        for i, r in enumerate(routers[1:], 1):  # a tree plus a chord: 1 ms inside a city
            links[(int(routers[rng.integers(0, i)]), int(r))] = 1
        if len(routers) > 2:
            links[(int(routers[0]), int(routers[-1]))] = 1
    first = np.searchsorted(city_of, np.arange(cities))
    sizes = np.bincount(city_of, minlength=cities)

    def router(c: int) -> int:
        return int(first[c] + rng.integers(0, sizes[c]))

    near = np.argsort(km, axis=1)[:, 1:4]
    pairs = {(min(a, int(b)), max(a, int(b))) for a in range(cities) for b in near[a]}
    pairs |= _spanning_tree(km)  # keeps the map connected
    for a, b in sorted(pairs):
        links[(router(a), router(b))] = max(1, round(km[a, b] / 100))  # ~100 km per ms of RTT
    return "\n".join(f"r{a} r{b} {ms}" for (a, b), ms in links.items())


def _spanning_tree(km: np.ndarray) -> set[tuple[int, int]]:
    n = len(km)
    inside = np.zeros(n, dtype=bool)
    inside[0] = True
    best, parent = km[0].copy(), np.zeros(n, dtype=int)
    edges = set()
    for _ in range(n - 1):
        j = int(np.argmin(np.where(inside, np.inf, best)))
        inside[j] = True
        edges.add((min(j, int(parent[j])), max(j, int(parent[j]))))
        closer = km[j] < best
        best[closer], parent[closer] = km[j][closer], j
    return edges


def noisy(topology: Topology, seed: int = 0) -> Topology:
    rng = np.random.default_rng(seed)
    factor = np.triu(rng.uniform(0.95, 1.05, topology.rtt_us.shape), 1)
    rtt = np.round(topology.rtt_us * (factor + factor.T)).astype(np.int64)
    return Topology(topology.names, rtt, metric=False)


def bench_map(name: str, topology: Topology, links: int, load_s: float | None) -> dict[str, object]:
    start = time.perf_counter()
    table = ChainTable(topology.names, precompute(topology))
    precompute_s = time.perf_counter() - start
    n = topology.size
    rng = np.random.default_rng(0)
    queries = [
        (topology.names[s], topology.names[t], int(r))
        for s, t, r in zip(
            rng.integers(0, n, 20000),
            rng.integers(0, n, 20000),
            rng.integers(1, 12, 20000),
            strict=True,
        )
    ]
    start = time.perf_counter()
    for src, dst, rounds in queries:
        table.lookup(src, dst, rounds)
    lookup_s = time.perf_counter() - start
    return {
        "map": name,
        "nodes": n,
        "links": links,
        "mesh edges": n * (n - 1) // 2,
        "load s": "-" if load_s is None else f"{load_s:.3f}",
        "precompute s": f"{precompute_s:.3f}",
        "Pareto chains": table.points,
        "per pair": f"{table.points / (n * (n - 1) / 2):.2f}",
        "lookups/s": f"{len(queries) / lookup_s:,.0f}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rocketfuel", type=Path, default=ROCKETFUEL)
    parser.add_argument("--synthetic", type=int, default=1000, help="locations (0: skip)")
    args = parser.parse_args(argv)

    rows = []
    largest: tuple[str, Topology, int] | None = None
    for path in sorted(args.rocketfuel.glob("*.latencies.intra")):
        start = time.perf_counter()
        topology = load(path)
        load_s = time.perf_counter() - start
        links = len({frozenset(line.split()[:2]) for line in path.read_text().splitlines()})
        name = path.name.split(".")[0]
        rows.append(bench_map(name, topology, links, load_s))
        if largest is None or topology.size > largest[1].size:
            largest = (name, topology, links)
    if largest:
        name, topology, links = largest
        rows.append(bench_map(f"{name} +-5%", noisy(topology), links, None))
    if args.synthetic:
        text = synthetic_map(args.synthetic)
        start = time.perf_counter()
        topology = parse_rocketfuel(text, "synthetic")
        load_s = time.perf_counter() - start
        links = len(text.splitlines())
        rows.append(bench_map(f"synthetic-{args.synthetic}", topology, links, load_s))
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths, strict=True)))
    print("load = parse + shortest-path mesh; precompute = Pareto sets and their chains;")
    print("lookups = Python API, best chain for random pairs and 1-11 rounds, one at a time.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
