"""The agent's heap and Python's cyclic garbage collector.

A full collection walks every object the agent holds, with the GIL held:
about 150 ns an object here, and an agent holds some 50,000 objects of its
own at start and about 18 more per splice. At 9,000 splices each full
collection stopped the agent for 15 ms or more, inside whatever hand-overs
were in flight: the longest offloads of a one-at-a-time run.

So what is alive is frozen (gc.freeze: moved where no collection looks): at
start, and at each tick of the reaper, after a collection of what came since
the last. The automatic collector stays on, and walks only what was made
since the last tick. Splices and connections are freed by reference counting
when they go (tested), frozen or not. A cycle that becomes garbage after it
was frozen waits for the full pass every FULL_PASS_S: the one pause that
grows with the table, and a rare one.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("mosto.agent")

FULL_PASS_S = 600.0  # bounds what frozen cycles can keep: ten minutes of them


class Heap:
    def __init__(self, full_pass_s: float = FULL_PASS_S):
        self.full_pass_s = full_pass_s
        self._last_full = time.monotonic()

    def settle(self) -> None:
        """Start-up over (imports, the target, rebuilt splices): all of it frozen."""
        gc.collect()
        gc.freeze()
        self._last_full = time.monotonic()

    def tick(self) -> None:
        """From the reaper: collects what is not frozen, and freezes what is left;
        every full_pass_s, the frozen objects as well."""
        now = time.monotonic()
        if now - self._last_full >= self.full_pass_s:
            t0 = time.perf_counter()
            gc.unfreeze()
            found = gc.collect()
            gc.freeze()
            self._last_full = now
            log.debug(
                "full collection: %d unreachable, %.1f ms", found, (time.perf_counter() - t0) * 1e3
            )
            return
        gc.collect()
        gc.freeze()
