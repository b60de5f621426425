"""Solution quality against shortest-path and minimax-path chains (paper V-A, Fig. 3).

For every pair of locations and r in ROUNDS, the relative improvement is
(cost of the baseline chain - cost of ours) / cost of ours, costs as in paper III-B.
Baselines on the full mesh: the shortest chain (least sum, then fewest hops: on a Rocketfuel
mesh, the direct connection), and two minimax chains, which ignore the sum and so differ only in
how they break the many ties of a map with whole-millisecond delays: the path in a minimum
spanning tree (Prim), and the widest-path variant of Dijkstra (a label changes only when the
largest hop strictly drops, so it keeps the direct connection when that is already minimax).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mosto.chains.lookup import twice_cost
from mosto.chains.pareto import precompute
from mosto.chains.topology import (
    Topology,
    mesh_from_links,
    parse_rocketfuel,
    rocketfuel_links,
    shortest_paths,
)

ROUNDS = (1, 5, 10)
# 9 sizes per map x 6 maps = 54 graphs of 7 to 115 nodes, like the paper's set; on a map of
# fewer than 115 nodes the sizes go up to the whole map.
SUBMAPS_PER_MAP, SUBMAP_MIN, SUBMAP_MAX = 9, 7, 115
MARK_BEGIN, MARK_END = "<!-- eval:begin -->", "<!-- eval:end -->"


def default_maps() -> Path:
    """The Rocketfuel maps of this checkout (data/rocketfuel/)."""
    return Path(__file__).resolve().parents[3] / "data" / "rocketfuel"


@dataclass
class PairCosts:
    """Per unordered pair, for each r: twice the cost and the chain's node count."""

    ours: dict[int, tuple[np.ndarray, np.ndarray]]
    shortest: dict[int, tuple[np.ndarray, np.ndarray]]
    minimax: dict[int, tuple[np.ndarray, np.ndarray]]  # minimum spanning tree paths
    widest: dict[int, tuple[np.ndarray, np.ndarray]]  # widest-path Dijkstra

    @staticmethod
    def concat(parts: list[PairCosts]) -> PairCosts:
        def join(field: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
            return {
                r: (
                    np.concatenate([getattr(p, field)[r][0] for p in parts]),
                    np.concatenate([getattr(p, field)[r][1] for p in parts]),
                )
                for r in ROUNDS
            }

        return PairCosts(*(join(f) for f in ("ours", "shortest", "minimax", "widest")))


def evaluate(topology: Topology) -> PairCosts:
    sets = precompute(topology)
    n = topology.size
    counts = np.diff(sets.pair_offsets)
    pair = np.repeat(np.arange(len(counts)), counts)
    nodes = np.diff(sets.path_offsets) + 1
    s, t = np.triu_indices(n, 1)
    direct = topology.rtt_us[s, t]
    if (shortest_paths(topology.rtt_us)[s, t] != direct).any():
        raise ValueError("evaluation expects a shortest-path mesh (a Rocketfuel map)")
    tree = [m[s, t] for m in _tree_paths(topology.rtt_us)]
    wide = [m[s, t] for m in _widest_paths(topology.rtt_us)]
    ours: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    shortest: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    minimax: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    widest: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for r in ROUNDS:
        shortest[r] = (twice_cost(direct, direct, r), np.full(len(s), 2))
        minimax[r] = (twice_cost(tree[0], tree[1], r), tree[2])
        widest[r] = (twice_cost(wide[0], wide[1], r), wide[2])
        if r == 1:  # the fewest-proxy chain of least sum: on this mesh, the direct one
            ours[r] = shortest[r]
            continue
        cost = twice_cost(sets.sum_us, sets.max_us, r)
        order = np.lexsort((sets.sum_us, nodes, cost, pair))
        first = order[sets.pair_offsets[:-1]]
        ours[r] = (cost[first], nodes[first])
    return PairCosts(ours, shortest, minimax, widest)


def _widest_paths(rtt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum, max and node count of the widest-path Dijkstra chain between every pair."""
    n = len(rtt)
    total = np.zeros((n, n), dtype=np.int64)
    worst = np.zeros((n, n), dtype=np.int64)
    nodes = np.ones((n, n), dtype=np.int64)
    never = np.iinfo(np.int64).max
    for src in range(n):
        label, parent = rtt[src].copy(), np.full(n, src)
        done = np.zeros(n, dtype=bool)
        done[src], label[src] = True, never
        for _ in range(n - 1):
            x = int(np.argmin(label))
            done[x] = True
            p = int(parent[x])
            total[src, x] = total[src, p] + rtt[p, x]
            worst[src, x] = max(worst[src, p], rtt[p, x])
            nodes[src, x] = nodes[src, p] + 1
            via = np.maximum(label[x], rtt[x])
            label[x] = never
            better = ~done & (via < label)
            label[better], parent[better] = via[better], x
    return total, worst, nodes


def _tree_paths(rtt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum, max and node count of the path between every pair in a minimum spanning tree (Prim;
    ties go to the lowest index, so the tree is deterministic)."""
    n = len(rtt)
    inside = np.zeros(n, dtype=bool)
    inside[0] = True
    best, parent = rtt[0].copy(), np.zeros(n, dtype=np.int64)
    adjacent: list[list[int]] = [[] for _ in range(n)]
    for _ in range(n - 1):
        j = int(np.argmin(np.where(inside, np.iinfo(np.int64).max, best)))
        inside[j] = True
        adjacent[j].append(int(parent[j]))
        adjacent[int(parent[j])].append(j)
        closer = ~inside & (rtt[j] < best)
        best[closer], parent[closer] = rtt[j][closer], j
    total = np.zeros((n, n), dtype=np.int64)
    worst = np.zeros((n, n), dtype=np.int64)
    nodes = np.ones((n, n), dtype=np.int64)
    for src in range(n):
        stack, seen = [src], {src}
        while stack:
            x = stack.pop()
            for y in adjacent[x]:
                if y not in seen:
                    seen.add(y)
                    total[src, y] = total[src, x] + rtt[x, y]
                    worst[src, y] = max(worst[src, x], rtt[x, y])
                    nodes[src, y] = nodes[src, x] + 1
                    stack.append(y)
    return total, worst, nodes


def submap(text: str, size: int, seed: int, origin: str) -> Topology:
    """A connected piece of a Rocketfuel map: grown from a random node by random adjacent links,
    meshed with shortest paths inside the piece."""
    names, links = rocketfuel_links(text, origin)
    rng = np.random.default_rng(seed)
    adjacent: list[list[int]] = [[] for _ in names]
    for a, b in links:
        adjacent[a].append(b)
        adjacent[b].append(a)
    chosen = [int(rng.integers(len(names)))]
    inside = set(chosen)
    frontier = [(chosen[0], y) for y in adjacent[chosen[0]]]
    while len(chosen) < size and frontier:
        _, y = frontier.pop(int(rng.integers(len(frontier))))
        if y in inside:
            continue
        inside.add(y)
        chosen.append(y)
        frontier.extend((y, z) for z in adjacent[y] if z not in inside)
    if len(chosen) < size:
        raise ValueError(f"{origin}: no connected piece of {size} nodes")
    local = {g: i for i, g in enumerate(chosen)}
    piece = {
        (min(local[a], local[b]), max(local[a], local[b])): us
        for (a, b), us in links.items()
        if a in local and b in local
    }
    return mesh_from_links(tuple(names[g] for g in chosen), piece, f"{origin}[{size}]")


def submap_sizes(nodes: int) -> list[int]:
    top = min(SUBMAP_MAX, nodes)
    return np.linspace(SUBMAP_MIN, top, SUBMAPS_PER_MAP).round().astype(int).tolist()


def improvement(base: np.ndarray, ours: np.ndarray) -> np.ndarray:
    return (base - ours) / ours


def run(maps: Path, docs: Path) -> str:
    """Evaluate the full maps and their sub-maps; write plots to docs/img, the table into
    docs/chains.md between the eval markers; return the table."""
    texts = {p.name.split(".")[0]: p.read_text() for p in sorted(maps.glob("*.latencies.intra"))}
    if not texts:
        raise ValueError(f"{maps}: no *.latencies.intra maps")
    full = [evaluate(parse_rocketfuel(text, name)) for name, text in texts.items()]
    pieces = [
        evaluate(submap(text, size, seed=size, origin=name))
        for name, text in texts.items()
        for size in submap_sizes(len(rocketfuel_links(text)[0]))
    ]
    sets = {
        f"{len(pieces)} sub-maps, {SUBMAP_MIN}-{SUBMAP_MAX} nodes": PairCosts.concat(pieces),
        f"{len(full)} full maps, {_sizes(texts)} nodes": PairCosts.concat(full),
    }
    (docs / "img").mkdir(parents=True, exist_ok=True)
    for (label, costs), stem in zip(sets.items(), ("submaps", "maps"), strict=True):
        plot(costs, label, docs / "img" / f"chains-fig3-{stem}.png")
    table = markdown(sets)
    page = docs / "chains.md"
    if page.exists() and MARK_BEGIN in (text := page.read_text()) and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        page.write_text(f"{head}{MARK_BEGIN}\n{table}\n{MARK_END}{rest.split(MARK_END, 1)[1]}")
    return table


def _sizes(texts: dict[str, str]) -> str:
    sizes = [len(rocketfuel_links(t)[0]) for t in texts.values()]
    return f"{min(sizes)}-{max(sizes)}"


def markdown(sets: dict[str, PairCosts]) -> str:
    head = (
        "| graphs | rounds | pairs | vs shortest: improved / p80 / p90 / max "
        "| vs minimax MST: improved / p80 / p90 / max "
        "| vs minimax Dijkstra: improved / p80 / p90 / max "
        "| proxies per chain: ours / MST (fewer) / Dijkstra (fewer) |\n"
        "|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for label, c in sets.items():
        for r in ROUNDS:
            ours, ours_nodes = c.ours[r]
            sp = improvement(c.shortest[r][0], ours)
            mm = improvement(c.minimax[r][0], ours)
            wd = improvement(c.widest[r][0], ours)
            mean, mm_nodes, wd_nodes = (
                ours_nodes.mean(),
                c.minimax[r][1].mean(),
                c.widest[r][1].mean(),
            )
            rows.append(
                f"| {label} | {r} | {len(ours)} | {_spread(sp)} | {_spread(mm)} | {_spread(wd)} "
                f"| {mean:.2f} / {mm_nodes:.2f} ({_pct(1 - mean / mm_nodes)}) "
                f"/ {wd_nodes:.2f} ({_pct(1 - mean / wd_nodes)}) |"
            )
    return "\n".join(rows) + "\n\n" + paper_claims(sets)


# The paper's statements in V-A, and how to measure each on our pairs: (claim, paper, measure).
CLAIMS = (
    ("1 round: pairs where minimax is > 40% worse", "10%", 1, "over40"),
    ("5 rounds: pairs improved vs minimax (by >= 5% / >= 10%), max", "~20%, up to 15%", 5, "gain"),
    (
        "10 rounds: pairs improved vs minimax (by >= 5% / >= 10%), max",
        "~20%, up to 10%",
        10,
        "gain",
    ),
    ("5 rounds: fewer proxies than minimax", "15%", 5, "proxies"),
    ("10 rounds: fewer proxies than minimax", "14%", 10, "proxies"),
)


def paper_claims(sets: dict[str, PairCosts]) -> str:
    """The paper's V-A figures next to ours, against both minimax baselines (Dijkstra / MST)."""
    rows = [
        "| claim (paper V-A) | paper | "
        + " | ".join(f"{label}: Dijkstra / MST" for label in sets)
        + " |",
        "|---|---|" + "---|" * len(sets),
    ]
    for claim, paper, r, measure in CLAIMS:
        cells = []
        for c in sets.values():
            ours, nodes = c.ours[r]
            both = []
            for base in (c.widest[r], c.minimax[r]):
                x = improvement(base[0], ours)
                if measure == "over40":
                    both.append(_pct((x > 0.4).mean()))
                elif measure == "gain":
                    both.append(
                        f"{_pct((x > 0).mean())} ({_pct((x >= 0.05).mean())} / "
                        f"{_pct((x >= 0.1).mean())}), {_pct(x.max())}"
                    )
                else:
                    both.append(_pct(1 - nodes.mean() / base[1].mean()))
            cells.append(" / ".join(both))
        rows.append(f"| {claim} | {paper} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _spread(x: np.ndarray) -> str:
    p80, p90 = np.percentile(x, [80, 90])
    return f"{_pct((x > 0).mean())} / {_pct(p80)} / {_pct(p90)} / {_pct(x.max())}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if abs(x) >= 0.095 or x == 0 else f"{100 * x:.1f}%"


def plot(costs: PairCosts, label: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ROUNDS), figsize=(12, 3.6), sharey=True)
    for ax, r in zip(axes, ROUNDS, strict=True):
        ours = costs.ours[r][0]
        for name, base, style in (
            ("vs shortest", costs.shortest, "-"),
            ("vs minimax (MST)", costs.minimax, "--"),
            ("vs minimax (Dijkstra)", costs.widest, ":"),
        ):
            x = np.sort(100 * improvement(base[r][0], ours))
            ax.plot(x, np.arange(1, len(x) + 1) / len(x), style, label=name)
        ax.set_title(f"{r} round{'s' if r > 1 else ''}")
        ax.set_xlabel("improvement of our chain [%]")
        ax.set_xscale("symlog", linthresh=1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CDF over location pairs")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Improvement over shortest and minimax chains ({label})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
