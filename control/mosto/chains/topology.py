"""Proxy locations and the RTT between every pair, loaded from a Rocketfuel map or a JSON matrix.

RTTs are held as integer microseconds: sums are then exact, so "two chains tie" is well defined
and the same on every machine (a float sum depends on the order of its additions).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

US_PER_MS = 1000
UNREACHABLE = np.int64(1) << 60
# Largest total RTT a chain may reach: keeps the packed (sum, hops) keys of pareto.py in int64.
MAX_TOTAL_US = 1 << 42


class TopologyError(ValueError):
    """The input is not a usable set of proxy locations; the message says why, in one line."""


@dataclass(frozen=True)
class Topology:
    names: tuple[str, ...]
    rtt_us: np.ndarray  # (n, n) int64, symmetric, zero diagonal: the full mesh
    metric: bool  # rtt_us already holds shortest-path RTTs (true for a Rocketfuel mesh)

    @property
    def size(self) -> int:
        return len(self.names)


def load(path: str | Path) -> Topology:
    """A JSON RTT matrix (`.json`, or text starting with `{`) or a Rocketfuel latency map."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError(f"{path}: {exc.strerror or exc}") from None
    if not text.strip():
        raise TopologyError(f"{path}: empty file")
    if path.suffix == ".json" or text.lstrip().startswith("{"):
        return parse_rtt_json(text, str(path))
    return parse_rocketfuel(text, str(path))


def to_us(ms: float) -> int:
    return round(ms * US_PER_MS)


def parse_rocketfuel(text: str, origin: str = "map") -> Topology:
    """`NODE NODE LATENCY_MS` per line; the mesh gets shortest-path delays, as in the paper."""
    names, links = rocketfuel_links(text, origin)
    return mesh_from_links(names, links, origin)


def rocketfuel_links(text: str, origin: str = "map") -> tuple[tuple[str, ...], dict]:
    """Node names, and {(i, j): latency_us} with i < j; a link may be listed in both directions."""
    index: dict[str, int] = {}
    links: dict[tuple[int, int], int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{origin}:{lineno}"
        if len(fields) != 3:
            raise TopologyError(f"{where}: expected 'NODE NODE LATENCY_MS', got {line.strip()!r}")
        a, b, latency = fields
        ms = _number(latency, where)
        if a == b:
            raise TopologyError(f"{where}: link from {a} to itself")
        ia, ib = (index.setdefault(name, len(index)) for name in (a, b))
        key = (min(ia, ib), max(ia, ib))
        us = to_us(ms)
        if links.setdefault(key, us) != us:
            raise TopologyError(
                f"{where}: link {a} - {b} listed with {ms} ms and {links[key] / US_PER_MS} ms"
            )
    return tuple(index), links


def mesh_from_links(
    names: tuple[str, ...], links: dict[tuple[int, int], int], origin: str = "map"
) -> Topology:
    """The full mesh over the linked locations, each pair at its shortest-path delay."""
    n = len(names)
    if n < 2:
        raise TopologyError(f"{origin}: needs at least two nodes")
    rtt = np.full((n, n), UNREACHABLE, dtype=np.int64)
    np.fill_diagonal(rtt, 0)
    for (ia, ib), us in links.items():
        rtt[ia, ib] = rtt[ib, ia] = us
    mesh = shortest_paths(rtt)
    if (mesh >= UNREACHABLE).any():
        lost = int(np.flatnonzero(mesh[0] >= UNREACHABLE)[0])
        raise TopologyError(
            f"{origin}: map is disconnected ({_components(mesh)} parts; e.g. no route from "
            f"{names[0]} to {names[lost]})"
        )
    _check_range(mesh, origin)
    return Topology(names, mesh, metric=True)


def parse_rtt_json(text: str, origin: str = "matrix") -> Topology:
    """`{"nodes": [names], "rtt": [[ms, ...], ...]}`: symmetric, non-negative, zero diagonal."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TopologyError(f"{origin}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(doc, dict) or "nodes" not in doc or "rtt" not in doc:
        raise TopologyError(f'{origin}: expected {{"nodes": [...], "rtt": [[...], ...]}}')
    names, rows = doc["nodes"], doc["rtt"]
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        raise TopologyError(f"{origin}: 'nodes' must be a list of names")
    if len(set(names)) != len(names):
        dup = next(x for x in names if names.count(x) > 1)
        raise TopologyError(f"{origin}: node {dup!r} listed twice")
    n = len(names)
    if n < 2:
        raise TopologyError(f"{origin}: needs at least two nodes")
    if not isinstance(rows, list) or len(rows) != n:
        raise TopologyError(f"{origin}: 'rtt' must have {n} rows, one per node")
    rtt = np.zeros((n, n), dtype=np.int64)
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != n:
            raise TopologyError(f"{origin}: rtt row {i} ({names[i]}) must have {n} values")
        for j, value in enumerate(row):
            where = f"{origin}: rtt[{i}][{j}]"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TopologyError(f"{where}: {value!r} is not a number")
            rtt[i, j] = to_us(_number(value, where))
    if np.diagonal(rtt).any():
        i = int(np.flatnonzero(np.diagonal(rtt))[0])
        raise TopologyError(f"{origin}: rtt[{i}][{i}] ({names[i]} to itself) must be 0")
    if (rtt != rtt.T).any():
        i, j = (int(x[0]) for x in np.nonzero(rtt != rtt.T))
        raise TopologyError(
            f"{origin}: rtt is asymmetric: {names[i]} -> {names[j]} is {rows[i][j]} ms "
            f"but {names[j]} -> {names[i]} is {rows[j][i]} ms"
        )
    _check_range(rtt, origin)
    return Topology(tuple(names), rtt, metric=False)


def shortest_paths(rtt_us: np.ndarray) -> np.ndarray:
    """All-pairs shortest RTTs (Floyd-Warshall, one vectorised row/column pass per pivot)."""
    dist = rtt_us.copy()
    for k in range(len(dist)):
        np.minimum(dist, dist[:, k, None] + dist[k], out=dist)
    return dist


def _number(value: str | float, where: str) -> float:
    try:
        ms = float(value)
    except ValueError:
        raise TopologyError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(ms):
        raise TopologyError(f"{where}: {value!r} is not a finite number")
    if ms < 0:
        raise TopologyError(f"{where}: negative RTT {value}")
    if ms * US_PER_MS >= MAX_TOTAL_US:
        raise TopologyError(f"{where}: RTT {value} ms is too large")
    return ms


def _check_range(rtt_us: np.ndarray, origin: str) -> None:
    n = len(rtt_us)
    if int(rtt_us.max()) * (n - 1) >= MAX_TOTAL_US:
        raise TopologyError(f"{origin}: RTTs too large (max {rtt_us.max() / US_PER_MS} ms)")


def _components(dist: np.ndarray) -> int:
    reach = dist < UNREACHABLE
    return len({row.tobytes() for row in reach})
