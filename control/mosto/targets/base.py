"""What every data-plane target (XDP, BMv2, the in-memory one) offers the agent:
one contract, one stats record, one event record, one set of errors.

Entries are keyed by their match (the flow as it arrives); each carries a
small integer id, its row in the target's stats, reused once the entry is
gone. Ids are the target's business; callers name entries by match.
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from mosto.dataplane.entry import Entry, FlowKey
from mosto.dataplane.learning import Learned


class TargetError(Exception):
    """An operation on the target failed; the message says why, in one line."""


class TableFull(TargetError):
    """No room for another entry."""


@dataclass(frozen=True)
class EntryStats:
    packets: int
    bytes: int  # whole frames as received, Ethernet header included
    last_seen_ns: int  # CLOCK_MONOTONIC (coarse); 0 = never
    tsval: int | None  # learning entries: the sender's latest TSval seen, if any
    # learning entries: every record of it (one per CPU on XDP), with seq and ack
    learned: tuple[Learned, ...] = ()


@dataclass(frozen=True)
class SpliceEvent:
    """A FIN or RST the data plane saw on an entry."""

    key: FlowKey
    entry_id: int  # -1 if the entry was gone by the time the event was read
    tcp_flags: int
    ts_ns: int  # CLOCK_MONOTONIC


class EventReader(Protocol):
    def poll(self, timeout_ms: int) -> int:
        """Delivers what has arrived, waiting up to timeout_ms; returns how many."""
        ...


class Target(Protocol):
    max_entries: int

    def add(self, entry: Entry) -> int:
        """Installs or replaces the entry for entry.match; its stats restart at 0."""
        ...

    def delete(self, match: FlowKey) -> bool:
        """False if there was no entry for match."""
        ...

    def entries(self) -> list[tuple[int, Entry]]:
        """Every entry with its id, by id."""
        ...

    def entry_id(self, match: FlowKey) -> int | None: ...

    def stats(self, match: FlowKey) -> EntryStats:
        """Raises TargetError when match has no entry."""
        ...

    def stats_many(self, matches: Iterable[FlowKey]) -> dict[FlowKey, EntryStats]:
        """Stats of many entries in as few reads as the target allows; matches
        without an entry are left out."""
        ...

    def forget_learned(self, match: FlowKey) -> None:
        """Drops a learning entry's record (the agent found it out of window):
        the next segment with a timestamp makes a new one. Counts stay."""
        ...

    def counters(self) -> dict[str, int]:
        """The global per-reason packet counters (mosto.dataplane.counters)."""
        ...

    def reset_counters(self) -> None: ...

    def events(
        self, on_event: Callable[[SpliceEvent], None]
    ) -> AbstractContextManager[EventReader]: ...

    def close(self) -> None: ...


class IdAllocator:
    """Entry ids 0..size-1, lowest free first, in O(log n): a heap of freed ids
    below a high-water mark (a table of 50,000 entries must not be scanned)."""

    def __init__(self, size: int, used: Iterable[int] = ()):
        self.size = size
        self._used = set(used)
        self._top = max(self._used, default=-1) + 1
        self._free = [i for i in range(self._top) if i not in self._used]
        heapq.heapify(self._free)

    def alloc(self) -> int:
        while self._free:
            entry_id = heapq.heappop(self._free)
            if entry_id not in self._used:
                break
        else:
            if self._top >= self.size:
                raise TableFull(f"table full ({self.size} entries)")
            entry_id, self._top = self._top, self._top + 1
        self._used.add(entry_id)
        return entry_id

    def free(self, entry_id: int) -> None:
        if entry_id in self._used:
            self._used.remove(entry_id)
            heapq.heappush(self._free, entry_id)


class Generations:
    """Track generations (ebpf/track.h): 32-bit, never 0 (untracked), from a
    random start, so a slot an earlier agent's entry wrote is not taken for
    the new entry's (the slots outlive the agent, pinned or in the switch)."""

    def __init__(self) -> None:
        self._last = secrets.randbits(32)

    def next(self) -> int:
        self._last = (self._last + 1) & 0xFFFFFFFF or 1
        return self._last
