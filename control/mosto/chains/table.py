"""The precomputed chain table: its file format, and access by location names.

File: an uncompressed numpy `.npz` (no pickles) with
  format        "mosto-chains/1"
  nodes         (n,) location names
  pair_offsets  (n(n-1)/2 + 1,) int64: points of unordered pair p = (s, t), s < t, in row-major
                order of the upper triangle, are pair_offsets[p] : pair_offsets[p + 1]
  sum_us        int64 per point: sum of the hop RTTs, microseconds
  max_us        int64 per point: largest hop RTT, microseconds
  path_offsets  int64 (points + 1,): point i visits paths[path_offsets[i] : path_offsets[i + 1]]
  paths         int32 node indices from s to t; t -> s uses the same chains reversed
  shortest_max_us, shortest_offsets, shortest_paths
                per pair: the fewest-proxy chain of least sum (for one-round transfers,
                whose cost ignores the max); its sum is that of the pair's last point
A pair's points are in increasing max (so decreasing sum); no point dominates another.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mosto.chains.lookup import choose, twice_cost
from mosto.chains.pareto import ParetoSets, pair_index
from mosto.chains.topology import US_PER_MS

FORMAT = "mosto-chains/1"
ARRAYS = (
    "pair_offsets",
    "sum_us",
    "max_us",
    "path_offsets",
    "paths",
    "shortest_max_us",
    "shortest_offsets",
    "shortest_paths",
)


class TableError(ValueError):
    """A table file that cannot be used, or a name it does not know; one-line message."""


@dataclass(frozen=True)
class Chain:
    path: tuple[str, ...]
    sum_us: int
    max_us: int

    @property
    def proxies(self) -> int:
        return len(self.path)

    def cost_ms(self, rounds: int) -> float:
        """Slow-start transfer time of `rounds` rounds over this chain (paper III-B)."""
        return twice_cost(self.sum_us, self.max_us, rounds) / (2 * US_PER_MS)

    def to_json(self, rounds: int) -> dict[str, object]:
        return {
            "path": list(self.path),
            "sum": self.sum_us / US_PER_MS,
            "max": self.max_us / US_PER_MS,
            "cost": self.cost_ms(rounds),
        }


class ChainTable:
    """Pareto chains for every pair of locations; `lookup` picks one per transfer."""

    def __init__(self, names: tuple[str, ...], sets: ParetoSets) -> None:
        self.names = names
        self.sets = sets
        self._index = {name: i for i, name in enumerate(names)}
        # Plain lists: a lookup touches a handful of entries, and list indexing is the fastest.
        self._offsets = sets.pair_offsets.tolist()
        self._sums = sets.sum_us.tolist()
        self._maxes = sets.max_us.tolist()
        self._hops = np.diff(sets.path_offsets).tolist()
        self._short = sets.shortest_offsets.tolist()

    @property
    def points(self) -> int:
        return len(self._sums)

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise TableError(f"unknown node {name!r}") from None

    def chains(self, src: str, dst: str) -> list[Chain]:
        """The Pareto set from src to dst, in increasing max RTT."""
        s, t = self.index(src), self.index(dst)
        if s == t:
            return [Chain((src,), 0, 0)]
        lo, hi = self._span(s, t)
        return [self._chain(i, s > t) for i in range(lo, hi)]

    def lookup(self, src: str, dst: str, rounds: int) -> Chain:
        """The chain with the smallest 0.5 * sum + (rounds - 1) * max; on equal cost the fewest
        proxies, then the smaller sum.  For rounds >= 2 a cheapest chain is Pareto-optimal."""
        if rounds < 1:
            raise ValueError("rounds must be >= 1")
        s, t = self.index(src), self.index(dst)
        if s == t:
            return Chain((src,), 0, 0)
        lo, hi = self._span(s, t)
        if rounds == 1:  # cost = sum / 2: any max will do, so the fewest proxies
            p = pair_index(len(self.names), s, t)
            nodes = self.sets.shortest_paths[self._short[p] : self._short[p + 1]].tolist()
            return self._named(nodes, s > t, self._sums[hi - 1], int(self.sets.shortest_max_us[p]))
        best = choose(self._sums[lo:hi], self._maxes[lo:hi], self._hops[lo:hi], rounds)
        return self._chain(lo + best, s > t)

    def _span(self, s: int, t: int) -> tuple[int, int]:
        p = pair_index(len(self.names), s, t)
        return self._offsets[p], self._offsets[p + 1]

    def _chain(self, i: int, reverse: bool) -> Chain:
        po = self.sets.path_offsets
        nodes = self.sets.paths[po[i] : po[i + 1]].tolist()
        return self._named(nodes, reverse, self._sums[i], self._maxes[i])

    def _named(self, nodes: list[int], reverse: bool, sum_us: int, max_us: int) -> Chain:
        if reverse:
            nodes.reverse()
        return Chain(tuple(self.names[x] for x in nodes), sum_us, max_us)

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as out:
            np.savez(
                out,
                format=np.array(FORMAT),
                nodes=np.array(self.names, dtype=str),
                **{name: getattr(self.sets, name) for name in ARRAYS},
            )

    @classmethod
    def load(cls, path: str | Path) -> ChainTable:
        try:
            with np.load(path, allow_pickle=False) as data:
                if "format" not in data or str(data["format"]) != FORMAT:
                    raise TableError(f"{path}: not a {FORMAT} table")
                names = tuple(str(x) for x in data["nodes"])
                arrays = {name: data[name] for name in ARRAYS}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            if isinstance(exc, TableError):
                raise
            raise TableError(f"{path}: cannot read chain table ({exc})") from None
        n = len(names)
        pairs = n * (n - 1) // 2 + 1
        if len(arrays["pair_offsets"]) != pairs or len(arrays["shortest_offsets"]) != pairs:
            raise TableError(f"{path}: table is inconsistent with its {n} nodes")
        return cls(names, ParetoSets(n=n, **arrays))
