"""One lock per flow: requests that name the same flow (or share a socket) run
one after the other; requests for other flows are not held up."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from mosto.agent.turn import Turn
from mosto.dataplane.entry import FlowKey


def _order(k: FlowKey) -> tuple[int, int, int, int, int]:
    """A total order of flows, cheaper than formatting them."""
    return k.family, int(k.src), int(k.dst), k.sport, k.dport


class FlowLocks:
    def __init__(self, turn: Turn) -> None:
        self._turn = turn  # given up while a flow's lock is busy
        self._mutex = threading.Lock()
        self._locks: dict[FlowKey, tuple[threading.Lock, list[int]]] = {}

    @contextmanager
    def locked(self, *flows: FlowKey) -> Iterator[None]:
        keys = sorted(set(flows), key=_order)  # one global order: no deadlock
        with self._mutex:
            entries = []
            for k in keys:
                entry = self._locks.setdefault(k, (threading.Lock(), [0]))
                entry[1][0] += 1
                entries.append(entry)
        acquired: list[threading.Lock] = []
        try:
            for lock, _ in entries:
                self._turn.acquire(lock)
                acquired.append(lock)
            yield
        finally:
            for lock in reversed(acquired):
                lock.release()
            with self._mutex:
                for k, (_, users) in zip(keys, entries, strict=True):
                    users[0] -= 1
                    if users[0] == 0:
                        del self._locks[k]

    def __len__(self) -> int:
        with self._mutex:
            return len(self._locks)
