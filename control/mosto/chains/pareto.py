"""All Pareto-optimal chains in (sum of RTTs, max RTT) between every pair of proxy locations.

The paper's idea (III-B): add the mesh edges in increasing RTT and keep all-pairs shortest paths
up to date; when the edges of RTT M are in, a pair whose shortest sum just dropped has a new
Pareto point (sum, M).  Fewest proxies on ties comes from packing the hop count under the sum:
key = sum << HOP_BITS | hops, so "shorter key" means "smaller sum, then fewer hops", and keys add
up along a chain like plain distances.

Inserting edge (u, v) with key c only improves pairs (s, t) where s gets closer to v through u
and t gets closer to u through v (the other pairs already have something as good), so each
insertion touches the block S x T instead of the whole matrix; most insertions only improve
(u, v) itself.  Edges that improve nothing are skipped, and the sweep stops once every pair has
reached its shortest sum: later edges cannot create Pareto points.

One-round transfers are the exception to "Pareto points suffice": their cost is the sum alone,
so the fewest-proxy chain among those of least sum may be dominated in max (on a shortest-path
mesh it is the direct connection).  It is kept per pair too, as `shortest`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mosto.chains.topology import UNREACHABLE, Topology, TopologyError

HOP_BITS = 16
HOP_MASK = (1 << HOP_BITS) - 1
# Two chains joined by an edge have at most 2(n - 1) + 1 hops: that must fit in HOP_BITS.
MAX_NODES = 1 << (HOP_BITS - 1)


@dataclass(frozen=True)
class ParetoSets:
    """Pareto chains of every unordered pair s < t (those of t -> s are the same, reversed).

    Pair (s, t) has the points `pair_offsets[p] : pair_offsets[p + 1]`, p = pair_index(n, s, t),
    in increasing max RTT (so decreasing sum).  Point i runs through the nodes
    `paths[path_offsets[i] : path_offsets[i + 1]]`, from s to t.  The fewest-proxy chain of
    least sum of pair p runs through `shortest_paths[shortest_offsets[p] : ...[p + 1]]`; its
    sum is that of the pair's last point, its max is `shortest_max_us[p]`.
    """

    n: int
    pair_offsets: np.ndarray
    sum_us: np.ndarray
    max_us: np.ndarray
    path_offsets: np.ndarray
    paths: np.ndarray
    shortest_max_us: np.ndarray
    shortest_offsets: np.ndarray
    shortest_paths: np.ndarray


def pair_index(n: int, s: int, t: int) -> int:
    """Index of the unordered pair {s, t}, s != t, in row-major order of the upper triangle."""
    if s > t:
        s, t = t, s
    return s * n - s * (s + 1) // 2 + t - s - 1


def precompute(topology: Topology) -> ParetoSets:
    rtt = topology.rtt_us
    n = len(rtt)
    if n > MAX_NODES:
        raise TopologyError(f"at most {MAX_NODES} locations, got {n}")
    # On a shortest-path mesh the direct connection is the shortest chain, and the sweep can stop
    # early; otherwise it runs to the end, where its state holds the shortest chains.
    state, weights = _sweep(rtt, stop_at=rtt if topology.metric else None)
    points = _read_points(state, weights)
    s, t = np.triu_indices(n, 1)
    if topology.metric:
        short_offsets, short_paths = np.arange(0, 2 * len(s) + 1, 2), np.c_[s, t].ravel()
    else:
        short_offsets, short_paths = _walk(state, s, t, state.key[s, t] & HOP_MASK)
    return ParetoSets(
        n=n,
        **points,
        shortest_max_us=_max_hop(rtt, short_offsets, short_paths),
        shortest_offsets=short_offsets,
        shortest_paths=short_paths.astype(np.int32),
    )


class _Sweep:
    """State of the sweep: all-pairs keys, and for each pair the chain that achieves its key.

    A chain is stored once, when it is found, as (first hop, entry of the remainder): the
    remainder's entry is never changed afterwards, so the chain stays readable after the pair
    has found better ones.  Entry -1 is the direct edge to the destination.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.key = np.full((n, n), UNREACHABLE, dtype=np.int64)
        np.fill_diagonal(self.key, 0)
        self.nxt = np.zeros((n, n), dtype=np.int32)  # first hop of the current chain
        self.entry = np.full((n, n), -1, dtype=np.int64)  # entry of the current chain
        self.hops: list[np.ndarray] = []  # per entry: its first hop
        self.parents: list[np.ndarray] = []  # per entry: the entry of the rest of the chain
        self.entries = 0
        self.marked: list[np.ndarray] = []  # pairs s < t whose sum dropped in this level
        self.marked_edges: list[int] = []
        self.points: list[tuple[np.ndarray, ...]] = []

    def insert(self, u: int, v: int, c: int, diff: np.ndarray, gap: np.ndarray) -> None:
        """Add edge u - v with key c, if it improves anything."""
        key, n = self.key, self.n
        ku, kv = key[u], key[v]  # rows = columns: the matrix stays symmetric
        np.subtract(kv, ku, out=diff)
        np.abs(diff, out=gap)
        if np.count_nonzero(gap > c) == 2:  # only u -> v and v -> u improve
            if key[u, v] >> HOP_BITS > c >> HOP_BITS:
                self.marked_edges.append(u * n + v)
            key[u, v] = key[v, u] = c
            self.nxt[u, v], self.nxt[v, u] = v, u
            self.entry[u, v] = self.entry[v, u] = -1
            return
        sources = np.flatnonzero(diff > c)  # s reaches v better through u
        targets = np.flatnonzero(diff < -c)  # t is reached from u better through v
        cand = ku[sources, None] + (kv[targets] + c)
        old = key[sources[:, None], targets]
        si, ti = np.nonzero(cand < old)
        s, t, new = sources[si], targets[ti], cand[si, ti]
        dropped = (new >> HOP_BITS) < (old[si, ti] >> HOP_BITS)
        self.marked.append(np.minimum(s, t)[dropped] * n + np.maximum(s, t)[dropped])
        key[s, t] = new
        key[t, s] = new
        hop_s = np.where(sources == u, v, self.nxt[sources, u])[si]
        hop_t = np.where(targets == v, u, self.nxt[targets, v])[ti]
        self.nxt[s, t] = hop_s
        self.nxt[t, s] = hop_t
        k = len(s)
        self.entry[s, t] = np.arange(self.entries, self.entries + k)
        self.entry[t, s] = np.arange(self.entries + k, self.entries + 2 * k)
        self.entries += 2 * k
        self.hops.append(np.concatenate([hop_s, hop_t]))
        self.parents.append(np.concatenate([self.entry[hop_s, t], self.entry[hop_t, s]]))

    def close_level(self, level: int) -> None:
        """Record the pairs whose sum dropped in this level as Pareto points."""
        if self.marked_edges:
            self.marked.append(np.array(self.marked_edges, dtype=np.int64))
            self.marked_edges.clear()
        if not self.marked:
            return
        pair = np.unique(np.concatenate(self.marked))
        self.marked.clear()
        s, t = np.divmod(pair, self.n)
        self.points.append((s, t, np.full(len(s), level), self.key[s, t], self.entry[s, t]))


def _sweep(rtt: np.ndarray, stop_at: np.ndarray | None) -> tuple[_Sweep, list[int]]:
    """Insert mesh edges level by level (one level per distinct RTT); stop early once every
    pair's sum is down to `stop_at`, its shortest sum."""
    n = len(rtt)
    state = _Sweep(n)
    upper_u, upper_v = np.triu_indices(n, 1)
    rtt_upper = rtt[upper_u, upper_v]
    order = np.argsort(rtt_upper, kind="stable")
    upper_u, upper_v, rtt_upper = upper_u[order], upper_v[order], rtt_upper[order]
    starts = np.flatnonzero(np.r_[True, rtt_upper[1:] != rtt_upper[:-1]])
    ends = np.r_[starts[1:], len(rtt_upper)]

    weights: list[int] = []
    diff = np.empty(n, dtype=np.int64)
    gap = np.empty(n, dtype=np.int64)
    since_check = 0
    for level, (lo, hi) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        weight = int(rtt_upper[lo])
        weights.append(weight)
        c = (weight << HOP_BITS) + 1
        us, vs = upper_u[lo:hi], upper_v[lo:hi]
        useful = state.key[us, vs] > c  # keys only shrink: an edge beaten now stays beaten
        for u, v in zip(us[useful].tolist(), vs[useful].tolist(), strict=True):
            if state.key[u, v] > c:
                state.insert(u, v, c, diff, gap)
        state.close_level(level)
        since_check += hi - lo
        if stop_at is not None and since_check >= n:  # amortised: a check costs n^2
            since_check = 0
            if not ((state.key >> HOP_BITS) > stop_at).any():
                break
    return state, weights


def _read_points(state: _Sweep, weights: list[int]) -> dict[str, np.ndarray]:
    n = state.n
    s, t, level, key, entry = (np.concatenate(c) for c in zip(*state.points, strict=True))
    order = np.argsort(s * n + t, kind="stable")  # by pair; within a pair, by level
    s, t, level, key, entry = (a[order] for a in (s, t, level, key, entry))
    path_offsets, paths = _walk(state, s, t, key & HOP_MASK, entry)
    pidx = s * n - s * (s + 1) // 2 + t - s - 1
    counts = np.bincount(pidx, minlength=n * (n - 1) // 2)
    return {
        "pair_offsets": np.r_[0, np.cumsum(counts)],
        "sum_us": key >> HOP_BITS,
        "max_us": np.asarray(weights, dtype=np.int64)[level],
        "path_offsets": path_offsets,
        "paths": paths,
    }


def _walk(
    state: _Sweep, s: np.ndarray, t: np.ndarray, hops: np.ndarray, entry: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Node sequences of chains s -> t recorded as `entry` (default: the current chains)."""
    if entry is None:
        entry = state.entry[s, t]
    hop_of = np.concatenate([*state.hops, np.zeros(0, dtype=np.int32)])
    parent_of = np.concatenate([*state.parents, np.zeros(1, dtype=np.int64)])
    offsets = np.r_[0, np.cumsum(hops + 1)]
    paths = np.empty(offsets[-1], dtype=np.int32)
    paths[offsets[:-1]] = s
    # Entry -1 is the direct edge: after its first hop comes the destination.
    node = np.where(entry >= 0, hop_of[np.maximum(entry, 0)] if len(hop_of) else 0, t)
    at = np.where(entry >= 0, parent_of[np.maximum(entry, 0)], -1)
    live = np.arange(len(s))
    for j in range(1, int(hops.max(initial=0)) + 1):
        live = live[hops[live] >= j]
        paths[offsets[live] + j] = node[live]
        inner, direct = live[at[live] >= 0], live[at[live] < 0]
        node[inner], at[inner] = hop_of[at[inner]], parent_of[at[inner]]
        node[direct] = t[direct]
    if not (paths[offsets[1:] - 1] == t).all():
        raise AssertionError("a recorded chain does not reach its destination")
    return offsets, paths


def _max_hop(rtt: np.ndarray, offsets: np.ndarray, paths: np.ndarray) -> np.ndarray:
    """Largest hop RTT of each chain."""
    hop = rtt[paths[:-1], paths[1:]]
    hop[offsets[1:-1] - 1] = -1  # from the end of one chain to the start of the next
    return np.maximum.reduceat(hop, offsets[:-1])
