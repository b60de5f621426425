"""Fig. 5's numbers from the measured transfer times: per series and size,
the mean and percentiles; fig5.json's shape. Pure functions (no root)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

SERIES = ("direct", "mosto_1", "mosto_3", "warm_frontend")
SIZES_KB = (10, 50, 100, 200, 500)
KB = 1000  # the paper's KB


def stats(times_ms: Sequence[float]) -> tuple[float, float, float]:
    """mean, p50, p95 (linear interpolation between order statistics)."""
    a = np.asarray(times_ms, dtype=float)
    if not len(a):
        raise ValueError("no transfer times")
    return (
        round(float(a.mean()), 2),
        round(float(np.percentile(a, 50)), 2),
        round(float(np.percentile(a, 95)), 2),
    )


def figure(
    rtt_ms: float, sizes_kb: Sequence[int], times: Mapping[str, Mapping[int, Sequence[float]]]
) -> dict:
    """fig5.json: {"rtt_ms", "sizes_kb", "series": {name: {"mean_ms", "p50_ms",
    "p95_ms"}}}, every list in the order of sizes_kb."""
    series = {}
    for name in SERIES:
        rows = [stats(times[name][size]) for size in sizes_kb]
        series[name] = {
            "mean_ms": [r[0] for r in rows],
            "p50_ms": [r[1] for r in rows],
            "p95_ms": [r[2] for r in rows],
        }
    return {"rtt_ms": rtt_ms, "sizes_kb": list(sizes_kb), "series": series}


def compare(doc: dict) -> list[dict]:
    """Per size, what the paper compares (means): how much faster MOSTO is
    than direct (time_direct / time_mosto - 1, in %), and how much slower
    than the warm front-end (time_mosto / time_warm - 1)."""
    s = doc["series"]
    out = []
    for i, size in enumerate(doc["sizes_kb"]):
        d, w = s["direct"]["mean_ms"][i], s["warm_frontend"]["mean_ms"][i]
        row: dict = {"size_kb": size}
        for name in ("mosto_1", "mosto_3"):
            m = s[name]["mean_ms"][i]
            row[f"{name}_faster_than_direct_pct"] = round(100 * (d / m - 1), 1)
            row[f"{name}_slower_than_warm_pct"] = round(100 * (m / w - 1), 1)
        out.append(row)
    return out
