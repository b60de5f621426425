"""Choosing the chain for a transfer: slow-start rounds, and the cheapest Pareto point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # numpy is not imported at run time: `mosto chains lookup` needs none
    import numpy as np

IntOrArray = TypeVar("IntOrArray", int, "np.ndarray")

DEFAULT_ICW = 10  # segments, RFC 6928, as in the paper
DEFAULT_MSS = 1460  # bytes


def rounds_for_size(size: int, icw: int = DEFAULT_ICW, mss: int = DEFAULT_MSS) -> int:
    """Round trips slow start needs for `size` bytes: the window starts at `icw` segments and
    doubles every round, so r rounds carry icw * (2^r - 1) segments."""
    if size < 0:
        raise ValueError("size must be >= 0")
    if icw < 1 or mss < 1:
        raise ValueError("icw and mss must be >= 1")
    segments = -(-size // mss)
    rounds, carried, window = 1, icw, icw
    while carried < segments:
        window *= 2
        carried += window
        rounds += 1
    return rounds


def twice_cost(sum_us: IntOrArray, max_us: IntOrArray, rounds: int) -> IntOrArray:
    """2 x (0.5 * sum + (rounds - 1) * max), in integer microseconds: exact, so ties
    are ties. Works on ints and element-wise on integer arrays."""
    return sum_us + 2 * (rounds - 1) * max_us


def choose(sums: Sequence[int], maxes: Sequence[int], hops: Sequence[int], rounds: int) -> int:
    """Index of the cheapest point; on equal cost the fewest hops, then the smaller sum."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    best, best_rank = -1, (0, 0, 0)
    for i, (s, m, h) in enumerate(zip(sums, maxes, hops, strict=True)):
        rank = (s + 2 * (rounds - 1) * m, h, s)
        if best < 0 or rank < best_rank:
            best, best_rank = i, rank
    return best
