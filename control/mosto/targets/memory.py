"""A target that keeps its table in a dict: for unit tests of the agent's state
machine (pairing, reaping, rollback, release) without root or a kernel. It
forwards nothing; tests play the data plane by calling hit() and fin_rst()."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

from mosto.dataplane.counters import COUNTERS
from mosto.dataplane.entry import Entry, FlowKey
from mosto.dataplane.learning import Learned, advance
from mosto.targets.base import EntryStats, IdAllocator, SpliceEvent, TargetError


class _Reader:
    def __init__(self, target: MemoryTarget, on_event: Callable[[SpliceEvent], None]):
        self._target = target
        self._on_event = on_event

    def poll(self, timeout_ms: int) -> int:
        with self._target._cond:
            if not self._target.pending:
                self._target._cond.wait(timeout_ms / 1000)
            events, self._target.pending = self._target.pending, []
        for ev in events:
            self._on_event(ev)
        return len(events)


class MemoryTarget:
    def __init__(self, max_entries: int = 65536):
        self.max_entries = max_entries
        self.table: dict[FlowKey, tuple[int, Entry]] = {}
        self._stats: dict[int, EntryStats] = {}
        self._ids = IdAllocator(max_entries)
        self._cond = threading.Condition()
        self.pending: list[SpliceEvent] = []
        self.fail_next_add: Exception | None = None  # a test makes the next add() fail
        self.reads = 0  # stats calls, single or batched: what a test of cost looks at

    def add(self, entry: Entry) -> int:
        if self.fail_next_add is not None:
            exc, self.fail_next_add = self.fail_next_add, None
            raise exc
        old = self.table.get(entry.match)
        entry_id = old[0] if old else self._ids.alloc()
        self.table[entry.match] = (entry_id, entry)
        self._stats[entry_id] = EntryStats(0, 0, 0, None)
        return entry_id

    def delete(self, match: FlowKey) -> bool:
        old = self.table.pop(match, None)
        if old is None:
            return False
        self._ids.free(old[0])
        self._stats.pop(old[0], None)
        return True

    def entries(self) -> list[tuple[int, Entry]]:
        return sorted(self.table.values(), key=lambda pair: pair[0])

    def entry_id(self, match: FlowKey) -> int | None:
        found = self.table.get(match)
        return found[0] if found else None

    def stats(self, match: FlowKey) -> EntryStats:
        self.reads += 1
        found = self.table.get(match)
        if found is None:
            raise TargetError(f"no entry for {match}")
        return self._stats[found[0]]

    def stats_many(self, matches: Iterable[FlowKey]) -> dict[FlowKey, EntryStats]:
        self.reads += 1
        return {m: self._stats[self.table[m][0]] for m in matches if m in self.table}

    def forget_learned(self, match: FlowKey) -> None:
        found = self.table.get(match)
        if found is not None:
            self._stats[found[0]] = replace(self._stats[found[0]], tsval=None, learned=())

    def counters(self) -> dict[str, int]:
        return dict.fromkeys(COUNTERS, 0)

    def reset_counters(self) -> None:
        pass

    @contextlib.contextmanager
    def events(self, on_event: Callable[[SpliceEvent], None]) -> Iterator[_Reader]:
        yield _Reader(self, on_event)

    def close(self) -> None:
        pass

    # -- the test's side: what a data plane would do ------------------------

    def hit(
        self,
        match: FlowKey,
        nbytes: int = 100,
        tsval: int | None = None,
        seq: int = 0,
        ack: int = 0,
    ) -> None:
        """One frame of match went through (now, on CLOCK_MONOTONIC); with a
        TSval, recorded as a learning entry would (learning.advance)."""
        entry_id, _ = self.table[match]
        st = self._stats[entry_id]
        prev = st.learned[-1] if st.learned else None
        rec = advance(prev, Learned(tsval, seq, ack)) if tsval is not None else prev
        self._stats[entry_id] = EntryStats(
            st.packets + 1,
            st.bytes + nbytes,
            time.monotonic_ns(),
            rec.tsval if rec is not None else None,
            (rec,) if rec is not None else (),
        )

    def fin_rst(self, match: FlowKey, tcp_flags: int) -> None:
        found = self.table.get(match)
        with self._cond:
            self.pending.append(
                SpliceEvent(match, found[0] if found else -1, tcp_flags, time.monotonic_ns())
            )
            self._cond.notify_all()
