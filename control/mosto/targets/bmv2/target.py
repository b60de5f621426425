"""The BMv2 target: the P4 program of p4src/ on simple_switch_grpc, over P4Runtime.

It implements mosto.targets.base.Target. Entries are the rows of the
mosto_splice table; an entry's id rides in the row's P4Runtime metadata so a
second client (the CLI next to the agent) sees the same ids. The two
directions of a tracked flow are linked for the FIN/RST window check
(p4src/include/track.p4) through their action parameters: the switch's
registers cannot be written from here.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from p4.v1 import p4runtime_pb2

from mosto.dataplane import contract
from mosto.dataplane.counters import COUNTERS
from mosto.dataplane.entry import Entry, EntryError, FlowKey
from mosto.dataplane.learning import Learned, advance
from mosto.targets.base import (
    EntryStats,
    Generations,
    IdAllocator,
    SpliceEvent,
    TableFull,
    TargetError,
)
from mosto.targets.bmv2 import encoding as enc
from mosto.targets.bmv2.p4runtime import P4RuntimeClient, P4RuntimeError, update

L2_TABLE = "MostoIngress.l2_forward"
L2_ACTION = "MostoIngress.forward"

DEFAULT_GRPC_ADDR = "127.0.0.1:9559"
MAX_ENTRIES = contract.MAX_ENTRIES  # size of mosto_splice (shared/contract.h)
POLL_INTERVAL_S = 0.005


@dataclass(frozen=True)
class _Row:
    """What this client knows of a row of mosto_splice: enough to write it
    again (a peer's link) without reading it back."""

    id: int
    entry: Entry
    link: enc.Link
    idle_timeout_ns: int


@dataclass(frozen=True)
class IdleTimeoutRecord:
    key: FlowKey
    entry_id: int
    ts_ns: int


class EventPoller:
    """Delivers FIN/RST events and idle-timeout notifications to callbacks."""

    def __init__(
        self,
        target: Bmv2Target,
        on_event: Callable[[SpliceEvent], None],
        on_idle: Callable[[IdleTimeoutRecord], None] | None,
    ):
        self._t = target
        self._on_event = on_event
        self._on_idle = on_idle

    def poll(self, timeout_ms: int) -> int:
        """Waits up to timeout_ms for the first event, then drains; returns how many."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            self._t.pump()
            done = 0
            while self._t.fin_rst_events:
                self._on_event(self._t.fin_rst_events.popleft())
                done += 1
            while self._t.idle_events:
                record = self._t.idle_events.popleft()
                if self._on_idle is not None:
                    self._on_idle(record)
                    done += 1
            left = deadline - time.monotonic()
            if done or left <= 0:
                return done
            time.sleep(min(left, POLL_INTERVAL_S))


def _serialised(method):
    """One caller at a time: the agent calls from request, event and reaper
    threads, and a P4Runtime stream and its digest bookkeeping take no two."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class Bmv2Target:
    """A connection to simple_switch_grpc as its primary controller.

    With p4info and device_config (build/bmv2/mosto.p4info.txtpb and
    mosto.json), the pipeline is pushed first; without, the switch must be
    running it already. idle_timeout_ns > 0 arms BMv2's entry ageing for the
    entries added from here on: their idleness is reported on events().
    """

    max_entries = MAX_ENTRIES

    def __init__(
        self,
        grpc_addr: str = DEFAULT_GRPC_ADDR,
        device_id: int = 0,
        p4info: Path | str | None = None,
        device_config: Path | str | None = None,
        election_id: tuple[int, int] = (0, 1),
        idle_timeout_ns: int = 0,
    ):
        self.idle_timeout_ns = idle_timeout_ns
        self._lock = threading.RLock()
        self._ports: set[int] = set()
        try:
            self.client = P4RuntimeClient(grpc_addr, device_id, election_id)
        except P4RuntimeError as exc:
            raise TargetError(str(exc)) from None
        try:
            if p4info is not None and device_config is not None:
                info = self.client.set_pipeline(Path(p4info), Path(device_config))
            else:
                info = self.client.get_p4info()
            self.names = enc.P4Names(info)
            self._enable_digest()
            self._rows = {row.entry.match: row for row in self._read_rows()}
            self._alloc = IdAllocator(MAX_ENTRIES, (row.id for row in self._rows.values()))
            self._gens = Generations()
            self._learned: dict[FlowKey, Learned] = {}
            self._learn_reports: dict[FlowKey, int] = {}
            self.fin_rst_events: deque[SpliceEvent] = deque()
            self.idle_events: deque[IdleTimeoutRecord] = deque()
        except (P4RuntimeError, TargetError, ValueError) as exc:
            self.client.close()
            raise TargetError(str(exc)) from None

    # -- life cycle -------------------------------------------------------

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Bmv2Target:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, *updates: p4runtime_pb2.Update) -> None:
        try:
            self.client.write(updates)
        except P4RuntimeError as exc:
            raise TargetError(str(exc)) from None

    def _read(self, **entity) -> list[p4runtime_pb2.Entity]:
        try:
            return list(self.client.read([p4runtime_pb2.Entity(**entity)]))
        except P4RuntimeError as exc:
            raise TargetError(str(exc)) from None

    def _enable_digest(self) -> None:
        """Digests one per message, sent at once, and not de-duplicated (ack
        timeout 0): a learning entry's flow reports every frame."""
        de = p4runtime_pb2.DigestEntry(digest_id=self.names.digests[enc.EVENT_DIGEST])
        de.config.max_timeout_ns = 0
        de.config.max_list_size = 1
        de.config.ack_timeout_ns = 0
        try:
            self.client.write([update("INSERT", digest_entry=de)])
        except P4RuntimeError as exc:
            if exc.code != "ALREADY_EXISTS":
                raise
            self.client.write([update("MODIFY", digest_entry=de)])

    # -- ports ------------------------------------------------------------

    @_serialised
    def add_port(self, port: int) -> None:
        """Makes port a redirect target (mosto_tx_ports)."""
        if port in self._ports:
            return
        table = self.names.tables[enc.TX_PORTS_TABLE]
        te = p4runtime_pb2.TableEntry(table_id=table.id)
        field_id, bitwidth = table.fields["port"]
        te.match.add(field_id=field_id).exact.value = enc.encode_uint(port, bitwidth)
        te.action.action.action_id = self.names.actions["NoAction"].id
        try:
            self.client.write([update("INSERT", table_entry=te)])
        except P4RuntimeError as exc:
            if exc.code != "ALREADY_EXISTS":
                raise TargetError(f"cannot use port {port} as egress: {exc}") from None
        self._ports.add(port)

    @_serialised
    def add_l2(self, mac: str, port: int) -> None:
        """A plain forwarding entry: frames to mac that are not spliced leave by port
        (without one they go to the host port)."""
        table = self.names.tables[L2_TABLE]
        te = p4runtime_pb2.TableEntry(table_id=table.id)
        field_id, bitwidth = table.fields["dst_addr"]
        te.match.add(field_id=field_id).exact.value = enc.encode_uint(enc.mac_int(mac), bitwidth)
        action = self.names.actions[L2_ACTION]
        te.action.action.action_id = action.id
        param_id, bitwidth = action.params["port"]
        te.action.action.params.add(param_id=param_id, value=enc.encode_uint(port, bitwidth))
        try:
            self.client.write([update("INSERT", table_entry=te)])
        except P4RuntimeError as exc:
            raise TargetError(f"cannot forward {mac} to port {port}: {exc}") from None

    # -- entries ----------------------------------------------------------

    def _splice_rows(self, te: p4runtime_pb2.TableEntry | None = None):
        te = te or p4runtime_pb2.TableEntry(table_id=self.names.table_id(enc.SPLICE_TABLE))
        return [e.table_entry for e in self._read(table_entry=te)]

    def _read_rows(self) -> Iterator[_Row]:
        for te in self._splice_rows():
            entry_id, entry = enc.decode_entry(self.names, te)
            yield _Row(entry_id, entry, enc.decode_link(self.names, te), te.idle_timeout_ns)

    @_serialised
    def add(self, entry: Entry) -> int:
        """Installs or replaces one entry; returns its id. Stats restart at 0.
        A tracked entry is linked with the other direction's, if that is
        installed and tracked (as XdpTarget.add does)."""
        if not entry.learn:
            try:
                port = enc.egress_port(entry.egress)
            except EntryError as exc:
                raise TargetError(str(exc)) from None
            self.add_port(port)
        old = self._rows.get(entry.match)
        kind = "MODIFY" if old is not None else "INSERT"
        entry_id = old.id if old is not None else self._alloc.alloc()
        link = enc.Link(self._gens.next()) if entry.track is not None else enc.NO_LINK
        peer = self._peer_of(entry)
        if peer is not None:
            link = replace(link, peer_id=peer.id, peer_gen=peer.link.gen)
        te = enc.table_entry(self.names, entry, entry_id, self.idle_timeout_ns, link)
        te.counter_data.packet_count = 0  # a MODIFY would keep the direct counter
        te.counter_data.byte_count = 0
        try:
            self.client.write([update(kind, table_entry=te)])
        except P4RuntimeError as exc:
            if kind == "INSERT":
                self._alloc.free(entry_id)
            if exc.code == "RESOURCE_EXHAUSTED":
                raise TableFull(f"table full: {exc}") from None
            raise TargetError(str(exc)) from None
        stale = self._linked_peer(old) if old is not None else None
        self._rows[entry.match] = _Row(entry_id, entry, link, self.idle_timeout_ns)
        if peer is not None:
            self._link(peer, replace(peer.link, peer_id=entry_id, peer_gen=link.gen))
        if stale is not None and stale is not peer:
            self._link(stale, replace(stale.link, peer_id=contract.NO_PEER, peer_gen=0))
        self.pump()  # reports of the entry this one replaces are stale
        self._learned.pop(entry.match, None)
        self._learn_reports.pop(entry.match, None)
        return entry_id

    def _peer_of(self, entry: Entry) -> _Row | None:
        """The other direction's tracked entry, whose packets leave as the
        reverse of what entry matches (not entry's own row)."""
        peer = self._rows.get(entry.peer_match)
        return peer if peer is not None and entry.links_with(peer.entry) else None

    def _linked_peer(self, row: _Row) -> _Row | None:
        """The entry linked to row, if it still points at it."""
        peer = self._rows.get(row.entry.peer_match)
        if peer is None or peer is row or not row.link.gen:
            return None
        linked = (peer.link.peer_id, peer.link.peer_gen) == (row.id, row.link.gen)
        return peer if linked else None

    def _link(self, row: _Row, link: enc.Link) -> None:
        """Rewrites row's entry with link. Without counter_data, a MODIFY
        keeps the entry's direct counter (its stats go on)."""
        te = enc.table_entry(self.names, row.entry, row.id, row.idle_timeout_ns, link)
        try:
            self.client.write([update("MODIFY", table_entry=te)])
        except P4RuntimeError as exc:
            if exc.code == "NOT_FOUND":  # gone behind this client's back
                self._forget(row.entry.match)
                return
            raise TargetError(str(exc)) from None
        self._rows[row.entry.match] = replace(row, link=link)

    @_serialised
    def delete(self, match: FlowKey) -> bool:
        try:
            self.client.write([update("DELETE", table_entry=enc.match_key(self.names, match))])
        except P4RuntimeError as exc:
            if exc.code == "NOT_FOUND":
                self._forget(match)
                return False
            raise TargetError(str(exc)) from None
        row = self._rows.get(match)
        peer = self._linked_peer(row) if row is not None else None
        self._forget(match)
        self._learned.pop(match, None)
        self._learn_reports.pop(match, None)
        # The switch keeps the slot; its peer must read a quiet flow's state
        # (ebpf/track.h) from now on, as XdpTarget.delete makes it.
        if peer is not None:
            self._link(peer, replace(peer.link, peer_id=contract.NO_PEER, peer_gen=0))
        return True

    def _forget(self, match: FlowKey) -> None:
        row = self._rows.pop(match, None)
        if row is not None:
            self._alloc.free(row.id)

    @_serialised
    def entries(self) -> list[tuple[int, Entry]]:
        return sorted(
            (enc.decode_entry(self.names, te) for te in self._splice_rows()),
            key=lambda pair: pair[0],
        )

    @_serialised
    def entry_id(self, match: FlowKey) -> int | None:
        """The id of match's entry (as this client knows it), or None."""
        row = self._rows.get(match)
        return None if row is None else row.id

    # -- counters ---------------------------------------------------------

    @_serialised
    def stats(self, match: FlowKey) -> EntryStats:
        """Packets and bytes (frames as received) of one entry."""
        te = enc.match_key(self.names, match)
        dce = p4runtime_pb2.DirectCounterEntry(table_entry=te)
        rows = self._read(direct_counter_entry=dce)
        if not rows:
            raise TargetError(f"no entry for {match}")
        data = rows[0].direct_counter_entry.data
        last_seen = 0
        if self.idle_timeout_ns and data.packet_count:
            te.time_since_last_hit.elapsed_ns = 0
            for row in self._splice_rows(te):
                last_seen = time.monotonic_ns() - row.time_since_last_hit.elapsed_ns
        self.pump()
        return self._stats(match, data.packet_count, data.byte_count, last_seen)

    @_serialised
    def stats_many(self, matches: Iterable[FlowKey]) -> dict[FlowKey, EntryStats]:
        """One P4Runtime read of every direct counter of the splice table."""
        wanted = set(matches)
        table_id = self.names.table_id(enc.SPLICE_TABLE)
        dce = p4runtime_pb2.DirectCounterEntry(
            table_entry=p4runtime_pb2.TableEntry(table_id=table_id)
        )
        seen: dict[FlowKey, int] = {}
        if self.idle_timeout_ns:  # one more read, of every row's time since its last hit
            te = p4runtime_pb2.TableEntry(table_id=table_id)
            te.time_since_last_hit.elapsed_ns = 0
            now = time.monotonic_ns()
            for row in self._splice_rows(te):
                seen[enc.decode_match(self.names, row)] = now - row.time_since_last_hit.elapsed_ns
        out = {}
        for item in self._read(direct_counter_entry=dce):
            match = enc.decode_match(self.names, item.direct_counter_entry.table_entry)
            if match in wanted:
                data = item.direct_counter_entry.data
                last_seen = seen.get(match, 0) if data.packet_count else 0
                out[match] = self._stats(match, data.packet_count, data.byte_count, last_seen)
        self.pump()
        return out

    def _stats(self, match: FlowKey, packets: int, nbytes: int, last_seen: int) -> EntryStats:
        rec = self._learned.get(match)
        return EntryStats(
            packets, nbytes, last_seen, rec.tsval if rec else None, (rec,) if rec else ()
        )

    @_serialised
    def forget_learned(self, match: FlowKey) -> None:
        self.pump()  # what is reported by now goes too
        self._learned.pop(match, None)

    @_serialised
    def learn_reports(self, match: FlowKey) -> int:
        """How many frames of match's learning entry have been reported so far
        (at most its packet count; fewer while digests are on their way)."""
        self.pump()
        return self._learn_reports.get(match, 0)

    @_serialised
    def counters(self) -> dict[str, int]:
        counter_id = self.names.counters[enc.COUNTER_ARRAY]
        out = dict.fromkeys(COUNTERS, 0)
        for row in self._read(counter_entry=p4runtime_pb2.CounterEntry(counter_id=counter_id)):
            ce = row.counter_entry
            if ce.index.index < len(COUNTERS):
                out[COUNTERS[ce.index.index]] = ce.data.packet_count
        return out

    @_serialised
    def reset_counters(self) -> None:
        counter_id = self.names.counters[enc.COUNTER_ARRAY]
        self._write(
            *(
                update(
                    "MODIFY",
                    counter_entry=p4runtime_pb2.CounterEntry(
                        counter_id=counter_id,
                        index=p4runtime_pb2.Index(index=i),
                        data=p4runtime_pb2.CounterData(packet_count=0),
                    ),
                )
                for i in range(len(COUNTERS))
            )
        )

    # -- events -----------------------------------------------------------

    @_serialised
    def pump(self) -> None:
        """Takes in what the switch has sent on the stream: learned TSvals
        are recorded, events queued for events()."""
        now = time.monotonic_ns()
        while True:
            try:
                digest = self.client.digests.get_nowait()
            except queue.Empty:
                break
            ack = p4runtime_pb2.StreamMessageRequest()
            ack.digest_ack.digest_id = digest.digest_id
            ack.digest_ack.list_id = digest.list_id
            self.client.send(ack)
            for data in digest.data:
                d = enc.decode_digest(data)
                if d.learning:
                    self._learn_reports[d.key] = self._learn_reports.get(d.key, 0) + 1
                    if d.tsval is not None:  # the XDP program's learn_tsval()
                        rec = advance(self._learned.get(d.key), Learned(d.tsval, d.seq, d.ack))
                        if rec is not None:
                            self._learned[d.key] = rec
                if d.fin_rst:
                    entry_id = self.entry_id(d.key)
                    self.fin_rst_events.append(
                        SpliceEvent(d.key, -1 if entry_id is None else entry_id, d.tcp_flags, now)
                    )
        while True:
            try:
                note = self.client.idle_timeouts.get_nowait()
            except queue.Empty:
                break
            for te in note.table_entry:
                match = enc.decode_match(self.names, te)
                entry_id = self.entry_id(match)
                self.idle_events.append(
                    IdleTimeoutRecord(match, -1 if entry_id is None else entry_id, now)
                )

    @contextlib.contextmanager
    def events(
        self,
        on_event: Callable[[SpliceEvent], None],
        on_idle: Callable[[IdleTimeoutRecord], None] | None = None,
    ) -> Iterator[EventPoller]:
        """A reader of FIN/RST digests (and idle timeouts); call .poll(timeout_ms) on it."""
        yield EventPoller(self, on_event, on_idle)
