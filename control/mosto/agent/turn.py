"""One request's Python at a time: the workers take turns.

The GIL runs one thread's Python at a time anyway; what a pool of workers
adds is contention for it. Every system call a request makes (a hand-over
makes about a hundred) gives the GIL up, another worker takes it, and the
first waits to get it back: a futex round trip and a thread switch per call.
Measured with a burst of 1,000 quiet hand-overs over 8 agent connections,
16 workers spent 2.6x the agent CPU of one worker per hand-over and were
2.2x slower. A worker therefore runs its request while it holds the turn,
and gives the turn up only where it waits (a sleep, a flow lock another
request holds), so a request that waits for a peer does not hold the others
up, as a single worker would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Turn:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()

    def _mine(self) -> bool:
        return getattr(self._local, "held", False)

    @contextmanager
    def taken(self) -> Iterator[None]:
        """Runs the block in this thread's turn (at once if it has it)."""
        if self._mine():
            yield
            return
        self._lock.acquire()
        self._local.held = True
        try:
            yield
        finally:
            self._local.held = False
            self._lock.release()

    @contextmanager
    def given_up(self) -> Iterator[None]:
        """The block waits without the turn (a no-op for a thread without it)."""
        if not self._mine():
            yield
            return
        self._local.held = False
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
            self._local.held = True

    def sleep(self, seconds: float) -> None:
        with self.given_up():
            time.sleep(seconds)

    def acquire(self, lock: threading.Lock) -> None:
        """lock, taken without holding the turn while it is busy."""
        if lock.acquire(blocking=False):
            return
        with self.given_up():
            lock.acquire()
