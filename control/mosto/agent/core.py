"""The offload agent: turns two quiet proxy sockets into data-plane entries,
and looks after the entries until the flow ends.

The agent owns one target (mosto.targets.base.Target). Its view
of the splices is derived from the target's table, so a restarted agent
rebuilds it from the pinned maps and spliced flows never notice.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from mosto.agent.handover import build_entries, check_options, check_quiet, moved, pair_of
from mosto.agent.kernel.hold import Holds
from mosto.agent.kernel.netinfo import NoRoute, next_hop
from mosto.agent.kernel.tcpstate import TcpState, enter_repair, leave_repair, probe_peer, read_state
from mosto.dataplane.entry import Entry, FlowKey
from mosto.targets.base import EventReader, SpliceEvent, TableFull, Target
from mosto.wire import refusal

log = logging.getLogger("mosto.agent")

TCP_FIN, TCP_RST = 0x01, 0x04
SETTLE_S = 0.002  # after install, for packets already past the data plane to land
PROBE_WAIT_MIN_S = 0.02  # for a probed peer's answer (or 4 RTTs, if longer)
PROBE_POLL_S = 0.001
IDLE_SCAN_MIN_S, IDLE_SCAN_MAX_S = 0.25, 30.0


def _out_flow(e: Entry) -> FlowKey:
    """The flow a translated packet leaves as."""
    return e.rewrite or e.match


@dataclass
class Splice:
    id: int
    to_server: Entry  # matches what the client sends
    to_client: Entry  # matches what the server sends
    created: float = field(default_factory=time.monotonic)
    fin_from_client: bool = False
    fin_from_server: bool = False
    remove_at: float | None = None  # set once the flow has ended
    end_reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client": self.to_server.match.to_json(),
            "server": self.to_client.match.to_json(),  # as it arrives, like register's
            "entries": [self.to_server.to_json(), self.to_client.to_json()],
            "age_s": round(time.monotonic() - self.created, 3),
            "state": self.end_reason or "active",
        }


@dataclass
class Learning:
    """A learning entry: the flow's proxy registered it and still owns it."""

    match: FlowKey
    created: float = field(default_factory=time.monotonic)
    remove_at: float | None = None


class Agent:
    def __init__(
        self,
        target: Target,
        holds: Holds | None = None,
        idle_timeout: float = 300.0,
        grace: float = 2.0,
        port_map: dict[str, int] | None = None,
    ):
        """port_map: a switch target's port for each host interface a peer is
        reached through; without it, entries leave by that interface (XDP)."""
        self.target = target
        self.port_map = port_map
        self.holds = holds
        self.idle_timeout = idle_timeout
        self.grace = grace
        self._lock = threading.RLock()
        self._splices: dict[int, Splice] = {}
        self._learning: dict[FlowKey, Learning] = {}
        self._watchers: list[queue.Queue] = []
        self.results: Counter[str] = Counter()  # hand-overs by outcome
        self.latencies: list[float] = []  # seconds, successful hand-overs
        self._rebuild()

    # -- state from the target ---------------------------------------------

    def _rebuild(self) -> None:
        """Pairs the target's entries into splices (after a restart, say)."""
        entries = {e.match: (i, e) for i, e in self.target.entries()}
        for match, (i, e) in sorted(entries.items(), key=lambda kv: kv[1][0]):
            if e.learn:
                self._learning[match] = Learning(match)
                continue
            back = entries.get(_out_flow(e).reversed())
            if (
                back is None
                or back[1].learn
                or any(s.to_client.match == match for s in self._splices.values())
            ):
                continue
            # The side is not stored; the entry with the lower id is called the client's.
            self._splices[i] = Splice(i, e, back[1])
        orphans = (
            set(entries)
            - set(self._learning)
            - {m for s in self._splices.values() for m in (s.to_server.match, s.to_client.match)}
        )
        for m in orphans:
            # Half a splice cannot carry a flow: an agent died between the two
            # installs, or someone added it by hand. It would translate one
            # direction of a flow the proxy may still own, so it goes.
            log.warning("entry %s has no reverse entry: removed", m)
            self.target.delete(m)
        if self._splices or self._learning:
            log.info(
                "rebuilt %d splices and %d learning entries from the data plane",
                len(self._splices),
                len(self._learning),
            )

    def _emit(self, event: dict[str, Any]) -> None:
        event["time"] = time.time()
        for q in list(self._watchers):
            q.put(event)

    def watch(self) -> queue.Queue:
        q: queue.Queue = queue.Queue()
        with self._lock:
            self._watchers.append(q)
        return q

    def unwatch(self, q: queue.Queue) -> None:
        with self._lock:
            if q in self._watchers:
                self._watchers.remove(q)

    # -- requests -----------------------------------------------------------

    @staticmethod
    def _tcp_state(sock: socket.socket, name: str) -> TcpState:
        if (
            sock.family not in (socket.AF_INET, socket.AF_INET6)
            or sock.type != socket.SOCK_STREAM
            or sock.proto not in (0, socket.IPPROTO_TCP)
        ):
            raise refusal.NotTcp(f"the {name} descriptor is not a TCP socket")
        try:
            sock.getpeername()
        except OSError:
            raise refusal.NotConnected(f"the {name} socket is not connected") from None
        return read_state(sock)

    def _states(self, a: socket.socket, b: socket.socket) -> tuple[TcpState, TcpState]:
        return self._tcp_state(a, "client"), self._tcp_state(b, "server")

    def register(self, a: socket.socket, b: socket.socket) -> dict[str, Any]:
        """Learning entries for both inbound directions (for the TSvals)."""
        pair = pair_of(*self._states(a, b))
        with self._lock:
            for flow in (pair.from_client, pair.from_server):
                self._require_free(flow)
            for flow in (pair.from_client, pair.from_server):
                self._add(Entry.learning(flow))
                self._learning[flow] = Learning(flow)
        # A quiet peer may never send again: make each send one segment now.
        probe_peer(a)
        probe_peer(b)
        return {"client": pair.from_client.to_json(), "server": pair.from_server.to_json()}

    def hold(self, a: socket.socket, b: socket.socket) -> None:
        if self.holds is None:
            raise refusal.BadRequest("this agent runs without holds (--no-hold)")
        pair = pair_of(*self._states(a, b))
        self.holds.hold(pair.from_client, pair.from_server)

    def unhold(self, a: socket.socket, b: socket.socket) -> None:
        self._unhold(pair_of(*self._states(a, b)))

    def _unhold(self, pair) -> None:
        if self.holds is not None:
            self.holds.release(pair.from_client, pair.from_server)

    def _require_free(self, flow: FlowKey) -> None:
        for s in self._splices.values():
            if flow in (s.to_server.match, s.to_client.match):
                raise refusal.AlreadySpliced(f"{flow} is spliced already (splice {s.id})")

    def _add(self, entry: Entry) -> int:
        try:
            return self.target.add(entry)
        except TableFull as exc:
            raise refusal.TableFull(str(exc)) from None

    def _await_tsvals(self, sides) -> None:
        """Probes the peers whose TSval the data plane has not learned yet and
        gives the answers a few RTTs to arrive. A flow that was never registered,
        or whose learning entry idled out, gets one now."""
        with self._lock:
            for _, _, flow in sides:
                if flow not in self._learning and self.target.entry_id(flow) is None:
                    self._add(Entry.learning(flow))
                    self._learning[flow] = Learning(flow)
        missing = [
            (sock, st)
            for sock, st, flow in sides
            if flow in self._learning and self._learned_tsval(flow) is None
        ]
        if not missing:
            return
        for sock, _ in missing:
            probe_peer(sock)
        wait = max(PROBE_WAIT_MIN_S, max(4 * st.info.rtt_us / 1e6 for _, st in missing))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if all(self._learned_tsval(flow) is not None for _, _, flow in sides):
                return
            time.sleep(PROBE_POLL_S)

    def _learned_tsval(self, flow: FlowKey) -> int | None:
        st = self.target.stats_many([flow]).get(flow)
        return None if st is None else st.tsval

    def offload(self, a: socket.socket, b: socket.socket) -> Splice:
        """The hand-over. On success both sockets are left in repair mode, so
        closing them sends nothing; on refusal they are as they were."""
        t0 = time.perf_counter()
        try:
            splice = self._offload(a, b)
        except refusal.Refused as exc:
            self.results[exc.code] += 1
            raise
        self.results["ok"] += 1
        self.latencies.append(time.perf_counter() - t0)
        self._emit({"event": "spliced", "splice": splice.to_json()})
        return splice

    def _offload(self, a: socket.socket, b: socket.socket) -> Splice:
        s_a, s_b = self._states(a, b)
        pair = pair_of(s_a, s_b)
        try:
            check_quiet(s_a, s_b)
            check_options(s_a, s_b)
            try:
                to_server_hop, to_client_hop = next_hop(s_b.peer[0]), next_hop(s_a.peer[0])
            except NoRoute as exc:
                raise refusal.NoRoute(str(exc)) from None
            if s_a.info.timestamps:
                self._await_tsvals(((a, s_a, pair.from_client), (b, s_b, pair.from_server)))
            with self._lock:
                for flow in (pair.from_client, pair.from_server):
                    self._require_free(flow)
                tsvals = (
                    self._learned_tsval(pair.from_client),
                    self._learned_tsval(pair.from_server),
                )
                return self._install(a, b, pair, to_server_hop, to_client_hop, tsvals)
        finally:
            self._unhold(pair)

    def _install(self, a, b, pair, to_server_hop, to_client_hop, tsvals) -> Splice:
        enter_repair(a)
        enter_repair(b)
        try:
            r_a, r_b = read_state(a, repair=True), read_state(b, repair=True)
            check_quiet(r_a, r_b)
            cs, sc = (
                self._on_port(e)
                for e in build_entries(r_a, r_b, to_server_hop, to_client_hop, *tsvals)
            )

            def verify() -> None:
                time.sleep(SETTLE_S)
                v_a, v_b = read_state(a, repair=True), read_state(b, repair=True)
                change = moved(r_a, v_a) or moved(r_b, v_b)
                if change:
                    raise refusal.StateMoved(f"a socket changed during the hand-over: {change}")

            return self._commit(cs, sc, verify)
        except Exception as exc:
            leave_repair(a)
            leave_repair(b)
            if isinstance(exc, refusal.Refused):
                raise
            log.exception("hand-over failed")
            raise refusal.Internal(f"{type(exc).__name__}: {exc}") from None

    def _commit(self, cs: Entry, sc: Entry, verify: Callable[[], None]) -> Splice:
        """Installs both directions, then verify(); if either fails, each flow goes
        back to what the proxy had (its learning entry, or nothing)."""
        learning = {f: f in self._learning for f in (cs.match, sc.match)}
        installed: list[FlowKey] = []
        try:
            splice_id = self._add(cs)
            installed.append(cs.match)
            self._add(sc)
            installed.append(sc.match)
            verify()
        except Exception as exc:
            for flow in installed:
                if learning[flow]:
                    self.target.add(Entry.learning(flow))
                else:
                    self.target.delete(flow)
            if isinstance(exc, refusal.Refused):
                raise
            log.exception("hand-over failed")
            raise refusal.Internal(f"{type(exc).__name__}: {exc}") from None
        for flow in installed:
            self._learning.pop(flow, None)
        splice = Splice(splice_id, cs, sc)
        self._splices[splice_id] = splice
        log.info("splice %d: %s <-> %s", splice_id, cs.match, _out_flow(cs))
        return splice

    def _on_port(self, entry: Entry) -> Entry:
        if self.port_map is None:
            return entry
        if entry.egress not in self.port_map:
            raise refusal.NoRoute(
                f"interface {entry.egress} has no data-plane port "
                f"(agent option --port {entry.egress}=N)"
            )
        return replace(entry, egress=self.port_map[entry.egress])

    def release(self, splice_id: int, reason: str = "released") -> dict[str, Any]:
        with self._lock:
            splice = self._splices.pop(splice_id, None)
            if splice is None:
                raise refusal.NotFound(f"no splice {splice_id}")
            stats = self._splice_stats(splice)
            self.target.delete(splice.to_server.match)
            self.target.delete(splice.to_client.match)
        log.info("splice %d removed: %s", splice_id, reason)
        self._emit({"event": "removed", "splice": splice_id, "reason": reason, **stats})
        return stats

    def _splice_stats(self, splice: Splice) -> dict[str, Any]:
        out: dict[str, Any] = {}
        got = self.target.stats_many([splice.to_server.match, splice.to_client.match])
        for name, e in (("to_server", splice.to_server), ("to_client", splice.to_client)):
            st = got.get(e.match)
            out[name] = {"packets": st.packets, "bytes": st.bytes} if st else None
        return out

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s.to_json() for s in sorted(self._splices.values(), key=lambda s: s.id)]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            splices = [
                {**s.to_json(), **self._splice_stats(s)}
                for s in sorted(self._splices.values(), key=lambda s: s.id)
            ]
            return {
                "splices": splices,
                "learning": len(self._learning),
                "handovers": dict(self.results),
                "counters": self.target.counters(),
            }

    # -- lifecycle ----------------------------------------------------------

    def events(self) -> AbstractContextManager[EventReader]:
        """The data plane's FIN/RST events, delivered to on_event by .poll()."""

        def deliver(ev: SpliceEvent) -> None:
            self.on_event(ev.key, ev.tcp_flags)

        return self.target.events(deliver)

    def on_event(self, match: FlowKey, tcp_flags: int) -> None:
        """A FIN or RST the data plane saw."""
        now = time.monotonic()
        with self._lock:
            if match in self._learning:
                self._learning[match].remove_at = now + self.grace
                return
            for s in self._splices.values():
                from_client = s.to_server.match == match
                if not from_client and s.to_client.match != match:
                    continue
                kind = "rst" if tcp_flags & TCP_RST else "fin"
                self._emit(
                    {"event": kind, "splice": s.id, "from": "client" if from_client else "server"}
                )
                if tcp_flags & TCP_RST:
                    s.end_reason = "reset"
                elif from_client:
                    s.fin_from_client = True
                else:
                    s.fin_from_server = True
                if s.fin_from_client and s.fin_from_server and not s.end_reason:
                    s.end_reason = "closed"
                if s.end_reason and s.remove_at is None:
                    s.remove_at = now + self.grace  # the last ACK must still pass
                return

    def idle_scan_interval(self) -> float:
        """How often reap() must look for idle entries: a tenth of the idle
        timeout, so an idle flow goes at most 10% late, and no scans of a big
        table twice a second for a timeout of minutes."""
        return min(max(self.idle_timeout / 10, IDLE_SCAN_MIN_S), IDLE_SCAN_MAX_S)

    def reap(self, scan_idle: bool = True) -> None:
        """Removes ended splices after their grace period and, with scan_idle,
        idle splices and learning entries. The stats are read in one batch,
        outside the lock: requests never wait for a read of the whole table."""
        now = time.monotonic()
        with self._lock:
            splices = list(self._splices.values())
            learning = list(self._learning.values())
        if not scan_idle:
            splices = [s for s in splices if s.remove_at is not None]
            learning = [learn for learn in learning if learn.remove_at is not None]
        matches = [m for s in splices for m in (s.to_server.match, s.to_client.match)]
        seen: dict[FlowKey, float] = {}
        if scan_idle:
            seen = self._last_seen_all(matches + [learn.match for learn in learning])
        due: list[tuple[int, str]] = []
        for s in splices:
            last = max(s.created, seen.get(s.to_server.match, 0), seen.get(s.to_client.match, 0))
            if s.remove_at is not None and now >= s.remove_at:
                due.append((s.id, s.end_reason))
            elif scan_idle and now - last > self.idle_timeout:
                due.append((s.id, "idle"))
        with self._lock:
            for learn in learning:
                ended = learn.remove_at is not None and now >= learn.remove_at
                last = max(learn.created, seen.get(learn.match, 0))
                idle = scan_idle and now - last > self.idle_timeout
                if (ended or idle) and self._learning.get(learn.match) is learn:
                    self.target.delete(learn.match)
                    del self._learning[learn.match]
        for splice_id, reason in due:
            try:
                self.release(splice_id, reason)
            except refusal.NotFound:
                pass

    def _last_seen_all(self, matches: Sequence[FlowKey]) -> dict[FlowKey, float]:
        """Last-seen of each entry in seconds on the monotonic clock (the data
        plane's clock is CLOCK_MONOTONIC); entries never hit are left out."""
        return {
            m: st.last_seen_ns / 1e9
            for m, st in self.target.stats_many(matches).items()
            if st.last_seen_ns
        }
