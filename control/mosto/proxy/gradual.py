"""The gradual delay before a hand-over (paper, V-B and its Fig. 4).

Removing a proxy that split a path lengthens the senders' control loop at
once: a download's server went round the proxy's server-side connection and
then goes round the whole path. Raising the delay in steps before the
hand-over lets the end points' RTT estimates (and the timeouts built on
them) follow, so the removal changes nothing they have not seen already.

The delay is applied in the proxy's relay loop (what is read waits in a
queue until its time), which works on any kernel. Its limit: with a kernel
TCP stack the proxy acknowledges what it receives at once, so a sender's
own RTT samples do not grow; what grows is the delay of the data toward the
receiver and of the ACK clock through the proxy (docs/paper.md, Fig. 4).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class GradualDelay:
    """step_ms per step up to target_ms (None: the RTT of the connection the
    sender is not on, measured when the ramp starts), each step held for
    step_rtts of the sender's loop (its connection's RTT plus the delay)."""

    step_ms: float = 10.0
    target_ms: float | None = None
    step_rtts: float = 4.0

    def __post_init__(self) -> None:
        if self.step_ms <= 0:
            raise ValueError(f"delay step must be > 0 ms, got {self.step_ms:g}")
        if self.target_ms is not None and self.target_ms < 0:
            raise ValueError(f"delay target must be >= 0 ms, got {self.target_ms:g}")
        if self.step_rtts <= 0:
            raise ValueError(f"step length must be > 0 RTTs, got {self.step_rtts:g}")

    def steps(self, target_ms: float) -> list[float]:
        """The delays in order, ms: step, 2 step, ..., target (the last may be shorter)."""
        out: list[float] = []
        d = self.step_ms
        while d < target_ms:
            out.append(d)
            d += self.step_ms
        if target_ms > 0:
            out.append(target_ms)
        return out


class Ramp:
    """Where a flow is in its gradual delay: start() with the target, then
    advance(now, loop_s) until done."""

    def __init__(self, spec: GradualDelay, target_ms: float, now: float):
        self.spec = spec
        self.target_ms = target_ms
        self._steps = spec.steps(target_ms)
        self._index = -1
        self._until = now  # the current step lasts until then
        self.delay_s = 0.0

    @property
    def done(self) -> bool:
        return self._index >= len(self._steps)

    def advance(self, now: float, loop_s: float) -> float | None:
        """The new delay (s) if a step begins now, else None. loop_s: the
        sender's loop as it is now (its RTT); a step lasts step_rtts of it
        plus the delay being added."""
        if self.done or now < self._until:
            return None
        self._index += 1
        if self.done:
            return None
        self.delay_s = self._steps[self._index] / 1e3
        self._until = now + self.spec.step_rtts * (loop_s + self.delay_s)
        return self.delay_s


class DelayQueue:
    """Bytes read from one side, each chunk released at its time."""

    def __init__(self) -> None:
        self._items: collections.deque[tuple[float, bytes]] = collections.deque()
        self.bytes = 0

    def __bool__(self) -> bool:
        return bool(self._items)

    def push(self, release_at: float, data: bytes) -> None:
        # Release times never go down (a shorter delay later must not reorder).
        if self._items and release_at < self._items[-1][0]:
            release_at = self._items[-1][0]
        self._items.append((release_at, data))
        self.bytes += len(data)

    def next_at(self) -> float | None:
        return self._items[0][0] if self._items else None

    def pop_due(self, now: float) -> bytes:
        """Everything due by now, joined (b"" if nothing)."""
        out = []
        while self._items and self._items[0][0] <= now:
            out.append(self._items.popleft()[1])
        data = b"".join(out)
        self.bytes -= len(data)
        return data

    def release_all(self) -> None:
        """Makes everything due now (a hold drains the flow)."""
        now = time.monotonic()
        self._items = collections.deque((now, d) for _, d in self._items)
