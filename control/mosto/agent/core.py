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
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from mosto import failpoints
from mosto.agent import anchor, trust
from mosto.agent.flowlock import FlowLocks
from mosto.agent.handover import Pair, build_entries, check_options, check_quiet, moved, pair_of
from mosto.agent.kernel import sockinfo
from mosto.agent.kernel.hold import Holds
from mosto.agent.kernel.netinfo import NoRoute, next_hop
from mosto.agent.kernel.neutral import Reservation, neutralise, no_queue, reserve
from mosto.agent.kernel.poke import poke, prompt_ack, receive_window, repair_window
from mosto.agent.kernel.repairlog import RepairLog, take_back
from mosto.agent.kernel.tcpstate import (
    TCP_ESTABLISHED,
    TcpState,
    enter_repair,
    leave_repair,
    read_state,
)
from mosto.agent.owned import Owned
from mosto.agent.trust import TRUSTED, Caller
from mosto.agent.turn import Turn
from mosto.agent.txerrors import TxErrors
from mosto.dataplane.entry import Entry, FlowKey
from mosto.targets.base import EntryStats, EventReader, SpliceEvent, TableFull, Target
from mosto.wire import refusal

log = logging.getLogger("mosto.agent")

TCP_FIN, TCP_RST = 0x01, 0x04
SETTLE_S = 0.002  # after install, for packets already past the data plane to land
# The data plane stamps entries with the coarse clock (bpf_ktime_get_coarse_ns):
# a packet may have passed up to one tick (10 ms at HZ=100) after its stamp.
COARSE_TICK_S = 0.010
PROBE_WAIT_MIN_S = 0.02  # for a probed peer's answer (or 4 RTTs, if longer)
PROBE_POLL_S = 0.001
_SPLICE_OWNER = object()  # _emit: look the owner up (a removed splice's id may be reused)
HOLD_TIMEOUT_S = 5.0  # a proxy drains in well under a second; a hold must not outlive it
IDLE_SCAN_MIN_S, IDLE_SCAN_MAX_S = 0.25, 30.0
# A flow that still carries packets this far into the grace after its RST or
# second FIN was not ended by them (the last ACK of a close comes well before).
ALIVE_AFTER_GRACE = 0.5

# A spliced socket as it was read for the entries, and the window it offered then.
Anchors = tuple[tuple[TcpState, int], tuple[TcpState, int]]


class _NoAnchor(Exception):
    """A side has no in-window TSval in the install's read: the peers are
    probed (outside repair mode) and the install tried once more."""


def _arriving(sock: socket.socket) -> FlowKey:
    """The flow of a connected socket as its peer's packets arrive."""
    (laddr, lport), (paddr, pport) = (
        sockinfo.endpoint(sock.getsockname()),
        sockinfo.endpoint(sock.getpeername()),
    )
    return FlowKey(paddr, laddr, pport, lport)


def _matches(s: Splice) -> tuple[FlowKey, FlowKey]:
    return s.to_server.match, s.to_client.match


def _reserve_end(match: FlowKey) -> Reservation | None:
    """The proxy's end of an inbound flow: bound to its destination, connected to its source."""
    family = socket.AF_INET if match.family == 4 else socket.AF_INET6
    return reserve(family, (str(match.dst), match.dport), (str(match.src), match.sport))


@dataclass
class Quotas:
    """Per-uid limits (root has none): entries of each kind one uid may have."""

    learning: int = 8192
    held: int = 256
    splices: int = 8192


@dataclass
class Held:
    """A held flow: whose, until when, and its socket's ends (to see it end)."""

    owner: int
    conn: int
    deadline: float
    family: int
    state: TcpState
    other: FlowKey | None = None  # the pair's other direction: the two end together


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
    ended_at: float | None = None  # when the RST or the second FIN was seen
    reported: set[str] = field(default_factory=set)  # events sent: one per kind and side
    owner: int | None = None  # the uid that spliced it; unknown after a restart

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
    owner: int | None = None  # the uid that registered it; unknown after a restart
    anchor: int | None = None  # the latest in-window TSval read: it outlives a reset


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
        self._splices: Owned[int, Splice] = Owned()
        self._by_match: dict[FlowKey, Splice] = {}  # both matches of every splice
        self._learning: Owned[FlowKey, Learning] = Owned()
        self._watchers: list[tuple[Any, int | None]] = []
        # Interfaces a splice must not hairpin through (native XDP on veth, app.py)
        self.no_hairpin: set[str] = set()
        self.tx_errors: TxErrors | None = None  # the XDP interfaces' xdp_tx_errors
        self.results: Counter[str] = Counter()  # hand-overs by outcome
        self.latencies: list[float] = []  # seconds, successful hand-overs
        self._last_id = 0
        self._init_trust()
        self._rebuild()

    # -- state from the target ---------------------------------------------

    def _rebuild(self) -> None:
        """Pairs the target's entries into splices (after a restart, say)."""
        entries = {e.match: (i, e) for i, e in self.target.entries()}
        for match, (_, e) in sorted(entries.items(), key=lambda kv: kv[1][0]):
            if e.learn:
                self._learning[match] = Learning(match)
                continue
            back = entries.get(e.peer_match)
            if back is None or back[1].learn or match in self._by_match:
                continue
            # The side is not stored; the entry with the lower id is called the client's.
            splice = Splice(self._new_id(), e, back[1])
            self._splices[splice.id] = splice
            self._index(splice)
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

    def _new_id(self) -> int:
        """Splice ids never repeat while the host is up, across agent restarts
        too: each is above the last and at least the microseconds since boot
        (CLOCK_BOOTTIME never goes back), and no agent makes one a microsecond.
        So a late release or event cannot name a newer splice. Under 2^53:
        exact in any JSON reader."""
        now_us = time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1000
        self._last_id = max(self._last_id + 1, now_us)
        return self._last_id

    def _emit(self, event: dict[str, Any], owner: Any = _SPLICE_OWNER) -> None:
        """To every watcher allowed to see the splice's events (owner: its uid, or
        None if unknown; by default the owner of the splice the event names)."""
        event["time"] = time.time()
        if owner is _SPLICE_OWNER:
            ref = event.get("splice")
            found = self._splices.get(ref["id"] if isinstance(ref, dict) else ref)  # type: ignore[arg-type]
            owner = found.owner if found else None
        for q, only in list(self._watchers):
            if only is None or only == owner:
                q.put(event)

    def watch(self, q: Any = None, caller: Caller = TRUSTED) -> Any:
        """A queue (or q, anything with put()) that gets the events caller may see."""
        q = queue.Queue() if q is None else q
        with self._lock:
            self._watchers.append((q, None if caller.sees_all else caller.uid))
        return q

    def unwatch(self, q: Any) -> None:
        with self._lock:
            self._watchers = [w for w in self._watchers if w[0] is not q]

    # -- requests -----------------------------------------------------------
    # Every request takes the Caller it comes from (TRUSTED: in-process). A flow
    # belongs to the uid that registered, held or spliced it; only that uid or
    # root may act on it, and others see only their own.

    def _init_trust(self) -> None:
        self.quotas = Quotas()
        self.hold_timeout = HOLD_TIMEOUT_S
        self.turn = Turn()  # the server's workers take turns (turn.py)
        self._flow_locks = FlowLocks(self.turn)
        self._held: Owned[FlowKey, Held] = Owned()
        self._reservations: dict[int, list[Reservation]] = {}
        self.results_by_uid: dict[int, Counter[str]] = {}
        self.repairlog: RepairLog | None = None

    @staticmethod
    def _tcp_state(sock: socket.socket, name: str) -> TcpState:
        if (
            sock.family not in (socket.AF_INET, socket.AF_INET6)
            or sock.type != socket.SOCK_STREAM
            or sock.proto not in (0, socket.IPPROTO_TCP)
        ):
            raise refusal.NotTcp(f"the {name} descriptor is not a TCP socket")
        trust.check_socket(sock, name)
        try:
            sock.getpeername()
        except OSError:
            raise refusal.NotConnected(f"the {name} socket is not connected") from None
        state = read_state(sock)
        trust.check_local(sock, state, name)
        return state

    def _states(
        self, a: socket.socket, b: socket.socket, established: bool = True
    ) -> tuple[TcpState, TcpState]:
        """Every request with sockets but unhold: a flow past ESTABLISHED (a FIN
        came) is ending, and nothing is to be learned, held or spliced of it."""
        states = self._tcp_state(a, "client"), self._tcp_state(b, "server")
        trust.check_distinct(a, b)
        for name, st in zip(("client", "server"), states, strict=True):
            if established and st.info.state != TCP_ESTABLISHED:
                raise refusal.NotEstablished(f"{name} connection is in TCP state {st.info.state}")
        return states

    @staticmethod
    def _flows(a: socket.socket, b: socket.socket) -> Pair:
        """The flows to lock, from the addresses alone: the other checks run under
        the lock (a concurrent request of ours may have the sockets in repair mode)."""
        flows = []
        for sock, name in ((a, "client"), (b, "server")):
            if (
                sock.family not in (socket.AF_INET, socket.AF_INET6)
                or sock.type != socket.SOCK_STREAM
            ):
                raise refusal.NotTcp(f"the {name} descriptor is not a TCP socket")
            try:
                flows.append(_arriving(sock))
            except OSError:
                raise refusal.NotConnected(f"the {name} socket is not connected") from None
        return Pair(*flows)

    def _check_owner(self, caller: Caller, *flows: FlowKey) -> None:
        if caller.root:
            return
        for flow in flows:
            found = (self._learning.get(flow), self._held.get(flow), self._by_match.get(flow))
            if {x.owner for x in found if x is not None} - {None, caller.uid}:
                raise refusal.NotOwner(f"{flow} belongs to another user")

    def _count(self, caller: Caller, what: str) -> int:
        pool: Any = {"learning": self._learning, "held": self._held, "splices": self._splices}
        return int(pool[what].count(caller.uid))

    def _check_quota(self, caller: Caller, what: str, adding: int) -> None:
        """adding: entries (one per direction); held flows have two each."""
        if caller.root:
            return
        limit = getattr(self.quotas, what)
        per, unit = {"held": (2, "held flows"), "learning": (1, "learning entries")}.get(
            what, (1, what)
        )
        if self._count(caller, what) + adding > limit * per:
            raise refusal.LimitReached(f"uid {caller.uid} has its {limit} {unit} already")

    def register(
        self, a: socket.socket, b: socket.socket, caller: Caller = TRUSTED
    ) -> dict[str, Any]:
        """Learning entries for both inbound directions (for the TSvals)."""
        pair = self._flows(a, b)
        with self._flow_locks.locked(pair.from_client, pair.from_server):
            pair = pair_of(*self._states(a, b))
            with self._lock:
                self._check_owner(caller, pair.from_client, pair.from_server)
                new = [f for f in (pair.from_client, pair.from_server) if f not in self._learning]
                self._check_quota(caller, "learning", len(new))
                for flow in (pair.from_client, pair.from_server):
                    self._require_free(flow)
                # Registered again: keep the entry, and the TSval it may have learned
                # (a peer answers probes only twice a second: tcp_invalid_ratelimit).
                for flow in new:
                    self._add(Entry.learning(flow))
                    self._learning[flow] = Learning(flow, owner=caller.uid)
                for flow in (pair.from_client, pair.from_server):
                    learn = self._learning[flow]
                    if learn.owner is None:  # rebuilt: whoever proves it
                        del self._learning[flow]
                        learn.owner = caller.uid
                        self._learning[flow] = learn
            failpoints.reach("register")
            # A quiet peer may never send again: make each send one segment now.
            with self._repairing(caller, a, b):
                prompt_ack(a)
                prompt_ack(b)
        return {"client": pair.from_client.to_json(), "server": pair.from_server.to_json()}

    def hold(self, a: socket.socket, b: socket.socket, caller: Caller = TRUSTED) -> None:
        if self.holds is None:
            raise refusal.BadRequest("this agent runs without holds (--no-hold)")
        pair = self._flows(a, b)
        with self._flow_locks.locked(pair.from_client, pair.from_server):
            s_a, s_b = self._states(a, b)
            pair = pair_of(s_a, s_b)
            with self._lock:
                self._check_owner(caller, pair.from_client, pair.from_server)
                new = [f for f in (pair.from_client, pair.from_server) if f not in self._held]
                self._check_quota(caller, "held", len(new))
                deadline = time.monotonic() + self.hold_timeout
                for flow, sock, st, other in (
                    (pair.from_client, a, s_a, pair.from_server),
                    (pair.from_server, b, s_b, pair.from_client),
                ):
                    self._held[flow] = Held(
                        caller.uid, caller.conn, deadline, sock.family, st, other
                    )
            self.holds.hold(pair.from_client, pair.from_server)  # one nftables transaction
            failpoints.reach("hold")

    def unhold(self, a: socket.socket, b: socket.socket, caller: Caller = TRUSTED) -> None:
        pair = self._flows(a, b)
        with self._flow_locks.locked(pair.from_client, pair.from_server):
            pair = pair_of(*self._states(a, b, established=False))  # lifting is always allowed
            with self._lock:
                self._check_owner(caller, pair.from_client, pair.from_server)
            self._unhold(pair)

    def _unhold(self, pair: Pair) -> None:
        with self._lock:
            for flow in (pair.from_client, pair.from_server):
                self._held.pop(flow, None)
        if self.holds is not None:
            self.holds.release(pair.from_client, pair.from_server)

    def _drop_holds(self, flows: list[FlowKey], why: str) -> None:
        with self._lock:
            for flow in flows:
                self._held.pop(flow, None)
        if self.holds is not None and flows:
            self.holds.release(*flows)
        if flows:
            log.info("%d holds lifted: %s", len(flows), why)

    def drop_caller(self, caller: Caller) -> None:
        """The caller's agent connection closed: its holds go with it."""
        with self._lock:
            mine = [f for f, h in self._held.items() if h.conn == caller.conn]
        self._drop_holds(mine, f"connection of uid {caller.uid} closed")

    def expire_holds(self) -> None:
        """Holds past their timeout, and holds whose connection is no longer
        established (the flow ended, or the proxy closed its socket)."""
        now = time.monotonic()
        with self._lock:
            held = list(self._held.items())
        expired = [f for f, h in held if now >= h.deadline]
        ended = []
        for flow, h in held:
            if flow in expired:
                continue
            try:
                found = sockinfo.diag(h.family, h.state.local, h.state.peer)
            except sockinfo.DiagError:
                continue
            if found is None or found.state != TCP_ESTABLISHED:
                ended.append(flow)
                if h.other is not None and h.other not in ended:
                    ended.append(h.other)  # a FIN on one side: the other sender waits on nothing
        self._drop_holds(expired, "timed out")
        self._drop_holds(ended, "flow ended")

    def _require_free(self, flow: FlowKey) -> None:
        s = self._by_match.get(flow)
        if s is not None:
            raise refusal.AlreadySpliced(f"{flow} is spliced already (splice {s.id})")

    def _index(self, s: Splice) -> None:
        """Splices by their entries' matches: requests and events find theirs
        without a walk over every splice (there may be tens of thousands)."""
        self._by_match[s.to_server.match] = s
        self._by_match[s.to_client.match] = s

    def _unindex(self, s: Splice) -> None:
        for m in _matches(s):
            if self._by_match.get(m) is s:
                del self._by_match[m]

    def _add(self, entry: Entry) -> int:
        try:
            return self.target.add(entry)
        except TableFull as exc:
            raise refusal.TableFull(str(exc)) from None

    def _anchors(self, sides) -> tuple[int, int]:
        """The TSvals to anchor the hand-over on, each from a segment that was
        in the socket's window (anchor.py), when the install's own read found
        none for a side (its flows have learning entries: _learn). A side
        whose record is missing or out of window (a spoofer's, say) is learned
        afresh: its record is dropped and the peer probed, and its answer gets
        a few RTTs to arrive. Refuses if a side still has none."""
        wins = {flow: anchor.read_windows(sock) for sock, _, flow in sides}
        found = {flow: self._anchor(flow, wins[flow]) for _, _, flow in sides}
        missing = [(sock, st, flow) for sock, st, flow in sides if found[flow] is None]
        if missing:
            for sock, _, flow in missing:
                st = self.target.stats_many([flow]).get(flow)
                if st is not None and st.learned:
                    log.warning("%s: no learned TSval was in window (spoofed?): relearning", flow)
                self.target.forget_learned(flow)
                prompt_ack(sock)
            wait = max(PROBE_WAIT_MIN_S, max(4 * st.info.rtt_us / 1e6 for _, st, _ in missing))
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and None in found.values():
                self.turn.sleep(PROBE_POLL_S)
                for _, _, flow in missing:
                    if found[flow] is None:
                        found[flow] = self._anchor(flow, wins[flow])
        (_, _, client), (_, _, server) = sides
        tsvals = found[client], found[server]
        if tsvals[0] is None or tsvals[1] is None:
            who = "client" if tsvals[0] is None else "server"
            raise refusal.TimestampsUnknown(f"no TSval from the {who} in window yet")
        return tsvals[0], tsvals[1]

    def _learn(self, sides, owner: int | None) -> None:
        """A learning entry for each side that has none (never registered, or
        idled out): its TSvals are learned from now on."""
        with self._lock:
            for _, _, flow in sides:
                if flow not in self._learning and self.target.entry_id(flow) is None:
                    self._add(Entry.learning(flow))
                    self._learning[flow] = Learning(flow, owner=owner)

    @staticmethod
    def _last_passed(got: dict[FlowKey, EntryStats]) -> float | None:
        """When the data plane last passed a packet of either inbound flow to the
        proxy (monotonic seconds), from one read of both entries' stats; None if
        it cannot tell (a flow without a learning entry)."""
        if len(got) < 2:
            return None
        return max(st.last_seen_ns for st in got.values()) / 1e9

    def _needs_settle(
        self, last_passed: float | None, read_at: float, frozen: bool = False
    ) -> bool:
        """Whether a packet the data plane passed before the entries may still be
        on its way to a socket read at read_at. A quiet flow's last packet passed
        long before: no wait. A frozen pair (hold.py) gets no data segment past
        prerouting from the freeze on, and what passed before it landed before
        the read (entering repair takes and releases each socket's lock, which
        runs its backlog): no wait, though a bulk flow's last packet is recent
        (a bare FIN the freeze lets pass may still land late: it costs the peer
        a retransmission of the FIN, through the splice).
        A switch's packets have a wire to cross, and a flow without a learning
        entry has no stamp: those always wait."""
        if self.port_map is not None:
            return True
        if frozen:
            return False
        if last_passed is None:
            return True
        return last_passed + COARSE_TICK_S + SETTLE_S >= read_at

    def _anchor(self, flow: FlowKey, windows: anchor.Windows) -> int | None:
        return self._anchor_in(flow, windows, self.target.stats_many([flow]).get(flow))

    def _anchor_in(
        self, flow: FlowKey, windows: anchor.Windows, st: EntryStats | None
    ) -> int | None:
        """The latest in-window TSval the data plane recorded for flow (st: its
        stats, None if it has no entry), or the last one found before its
        entry was reset (a rolled-back hand-over re-installs the learning
        entry): any TSval the sender used is safe."""
        rec = anchor.pick(st.learned, windows) if st is not None else None
        learning = self._learning.get(flow)
        if rec is not None:
            if learning is not None:
                learning.anchor = rec.tsval
            return rec.tsval
        return learning.anchor if learning is not None else None

    def _cached_anchor(self, flow: FlowKey) -> int | None:
        with self._lock:
            learning = self._learning.get(flow)
            return learning.anchor if learning is not None else None

    def offload(self, a: socket.socket, b: socket.socket, caller: Caller = TRUSTED) -> Splice:
        """The hand-over. On success both sockets are closed without a packet
        (neutralised) and the agent keeps the four-tuples; on refusal they are
        as they were."""
        t0 = time.perf_counter()
        mine = self.results_by_uid.setdefault(caller.uid, Counter())
        try:
            splice = self._offload(a, b, caller)
        except refusal.Refused as exc:
            self.results[exc.code] += 1
            mine[exc.code] += 1
            raise
        self.results["ok"] += 1
        mine["ok"] += 1
        self.latencies.append(time.perf_counter() - t0)
        failpoints.reach("offload_done")
        self._emit({"event": "spliced", "splice": splice.to_json()}, splice.owner)
        return splice

    def offload_many(
        self, pairs: Sequence[tuple[socket.socket, socket.socket]], caller: Caller = TRUSTED
    ) -> list[Splice | refusal.Refused]:
        """offload() of each pair in turn, in one request: each pair's splice,
        or the refusal of that pair alone."""
        out: list[Splice | refusal.Refused] = []
        for a, b in pairs:
            try:
                out.append(self.offload(a, b, caller))
            except refusal.Refused as exc:
                out.append(exc)
        return out

    def _offload(self, a: socket.socket, b: socket.socket, caller: Caller) -> Splice:
        pair = self._flows(a, b)
        with self._flow_locks.locked(pair.from_client, pair.from_server), ExitStack() as repairing:
            s_a, s_b = self._states(a, b)  # refuses sockets already in repair mode
            # From here to the answer they go in and out of repair mode (probes,
            # the read, the kick): written down all along, for a next agent.
            repairing.enter_context(self._repairing(caller, a, b))
            pair = pair_of(s_a, s_b)
            with self._lock:  # before the try: a refusal lifts the hold, but only the owner's
                self._check_owner(caller, pair.from_client, pair.from_server)
            try:
                with self._lock:
                    self._check_quota(caller, "splices", 1)
                trust.check_auth(a, s_a, "client")
                trust.check_auth(b, s_b, "server")
                check_quiet(s_a, s_b)
                check_options(s_a, s_b)
                try:
                    to_server_hop, to_client_hop = next_hop(s_b.peer[0]), next_hop(s_a.peer[0])
                except NoRoute as exc:
                    raise refusal.NoRoute(str(exc)) from None
                hairpin = to_server_hop.ifname == to_client_hop.ifname
                if hairpin and to_server_hop.ifname in self.no_hairpin:
                    raise refusal.HairpinUnsafe(
                        f"client and server are both reached through {to_server_hop.ifname}, "
                        "native XDP on veth, where XDP_TX stalls: attach it generic or tc"
                    )
                sides = ((a, s_a, pair.from_client), (b, s_b, pair.from_server))
                tsvals: tuple[int | None, int | None] | None = (None, None)
                if s_a.info.timestamps:
                    self._learn(sides, caller.uid)
                    tsvals = None  # from the install's own read, if it can
                with self._lock:
                    for flow in (pair.from_client, pair.from_server):
                        self._require_free(flow)
                # Outside the agent's lock (this flow's lock is held): _commit
                # takes it for the table changes only.
                hops = (to_server_hop, to_client_hop)
                try:
                    splice, anchors = self._frozen_install(a, b, pair, *hops, tsvals, caller.uid)
                except _NoAnchor:  # out of repair again: probe the peers, and wait
                    tsvals = self._anchors(sides)
                    splice, anchors = self._frozen_install(a, b, pair, *hops, tsvals, caller.uid)
            except BaseException:
                if self._lift_hold(pair):  # a refusal: the proxy keeps relaying
                    self._kick(a, b, pair)
                raise
            if self._lift_hold(pair):
                # No timestamp option: the answer to the first poke, translated,
                # may reach the other peer before its own poke and carry a TSval
                # ahead of the clock read for it, and PAWS would drop that poke.
                self._kick(a, b, pair, anchors, (None, None))
            return splice

    @contextmanager
    def _repairing(self, caller: Caller, a: socket.socket, b: socket.socket) -> Iterator[None]:
        """Around anything that may put the sockets in repair mode: written down
        for a next agent (repairlog.py), in case this one dies before they are
        out again."""
        if self.repairlog is None:
            yield
            return
        record = self.repairlog.write(caller.uid, caller.pid, a, b)
        try:
            yield
        finally:
            self.repairlog.clear(record)

    def recover_repairs(self) -> int:
        """A dead agent's proxy sockets still in repair mode, taken back from
        whoever holds them: neutralised if their splice is in the data plane
        (the proxy sees them disconnected), else out of repair mode and the
        peer prompted (the proxy relays on). Before reserve_rebuilt(): the
        neutralised sockets free the four-tuples it reserves."""
        if self.repairlog is None:
            return 0
        done = 0
        for rec in self.repairlog.records():
            for wanted, inode in rec.socks:
                sock = take_back(wanted, inode, rec.pid)
                if sock is None:  # closed, with or without its process: nothing to do
                    continue
                try:
                    if sockinfo.in_repair(sock):
                        self._finish_repair(sock)
                        done += 1
                except OSError as exc:
                    log.warning("could not finish a dead agent's repair of %s: %s", sock, exc)
                finally:
                    sock.close()
            self.repairlog.discard(rec.path)
        return done

    def _finish_repair(self, sock: socket.socket) -> None:
        arriving = _arriving(sock)
        if arriving in self._by_match:
            neutralise(sock)
            log.warning("%s: spliced by a dead agent; the proxy's socket neutralised", arriving)
            return
        no_queue(sock)
        leave_repair(sock)
        try:
            prompt_ack(sock, self._cached_anchor(arriving))
        except OSError as exc:  # nothing is lost; the sender may wait for its RTO
            log.warning("could not prompt a peer to acknowledge: %s", exc)
        log.warning("%s: a dead agent's hand-over undone; the proxy's socket back", arriving)

    def _frozen_install(self, a, b, pair: Pair, *args) -> tuple[Splice, Anchors]:
        """_install, with a held pair frozen meanwhile (hold.py: no late data
        segment can move a socket between its read and the entries)."""
        frozen = self.holds is not None and self._is_held(pair)
        if frozen:
            assert self.holds is not None
            self.holds.freeze(pair.from_client, pair.from_server)
        try:
            return self._install(a, b, pair, *args, frozen=frozen)
        finally:
            if frozen:
                assert self.holds is not None
                self.holds.thaw(pair.from_client, pair.from_server)

    def _is_held(self, pair: Pair) -> bool:
        return self.holds is not None and any(
            self.holds.held(f) for f in (pair.from_client, pair.from_server)
        )

    def _lift_hold(self, pair: Pair) -> bool:
        """Lifts the pair's hold; True if there was one."""
        held = self._is_held(pair)
        self._unhold(pair)
        return held

    def _kick(
        self,
        a: socket.socket,
        b: socket.socket,
        pair: Pair,
        anchors: Anchors | None = None,
        tsvals: tuple[int | None, int | None] | None = None,
    ) -> None:
        """The hold kept the senders' windows shut: make both peers acknowledge
        now (poke.py), through the splice if spliced, else to the proxy's
        sockets, so no sender waits for a retransmission timeout. A spliced
        pair is poked as its sockets were read for the entries (anchors): a
        later TS clock could run ahead of the translated peer's TSvals, and the
        peer would drop those by PAWS."""
        if tsvals is None:  # not spliced: echo what was found in window, if anything
            tsvals = (self._cached_anchor(pair.from_client), self._cached_anchor(pair.from_server))
        for i, (sock, peer_tsval) in enumerate(((a, tsvals[0]), (b, tsvals[1]))):
            try:
                if anchors is not None:
                    state, window = anchors[i]
                    poke(state, window, peer_tsval)
                else:
                    prompt_ack(sock, peer_tsval)
            except OSError as exc:  # nothing is lost; a sender may wait for its RTO
                log.warning("could not prompt a peer to acknowledge: %s", exc)

    def _install(
        self, a, b, pair, to_server_hop, to_client_hop, tsvals, owner: int, *, frozen: bool = False
    ) -> tuple[Splice, Anchors]:
        """The splice, and the sockets as its entries were built from them."""
        entered: list[socket.socket] = []  # repair is only ever switched off on these
        reservations: list[Reservation] = []
        try:
            failpoints.reach("offload_before_repair")
            for sock in (a, b):
                enter_repair(sock)
                entered.append(sock)
            failpoints.reach("offload_in_repair")
            read_at = time.monotonic()
            r_a, r_b = read_state(a, repair=True), read_state(b, repair=True)
            check_quiet(r_a, r_b)
            # Read after the sockets: what passed the data plane before them,
            # and the TSvals it learned.
            got = self.target.stats_many([pair.from_client, pair.from_server])
            last_passed = self._last_passed(got)
            w_a, w_b = repair_window(a), repair_window(b)
            anchors = ((r_a, receive_window(a, r_a, w_a)), (r_b, receive_window(b, r_b, w_b)))
            if tsvals is None:
                found = [
                    self._anchor_in(flow, anchor.windows(r, w), got.get(flow))
                    for flow, r, w in ((pair.from_client, r_a, w_a), (pair.from_server, r_b, w_b))
                ]
                if None in found:
                    raise _NoAnchor
                tsvals = (found[0], found[1])
            cs, sc = (
                self._on_port(e)
                for e in build_entries(r_a, r_b, to_server_hop, to_client_hop, *tsvals)
            )

            def verify() -> None:
                failpoints.reach("offload_installed")
                if self._needs_settle(last_passed, read_at, frozen):
                    self.turn.sleep(SETTLE_S)
                v_a, v_b = read_state(a, repair=True), read_state(b, repair=True)
                change = moved(r_a, v_a) or moved(r_b, v_b)
                if change:
                    raise refusal.StateMoved(f"a socket changed during the hand-over: {change}")
                # Bound before the originals go, so the ports never look free.
                for sock, st in ((a, v_a), (b, v_b)):
                    reservations.append(
                        Reservation(sock.family, sock.getsockname(), st.snd_nxt, st.rcv_nxt)
                    )
                peers = [sock.getpeername() for sock in (a, b)]
                for sock in (a, b):
                    neutralise(sock)
                    entered.remove(sock)  # out of repair, and closed: nothing to give back
                for r, peer in list(zip(reservations, peers, strict=True)):
                    try:
                        r.connect(peer)
                    except OSError as exc:  # the flow is the data plane's now: keep it
                        log.warning("four-tuple to %s not reserved: %s", peer, exc.strerror)
                        r.close()
                        reservations.remove(r)
                failpoints.reach("offload_neutralised")

            splice = self._commit(cs, sc, verify, owner)
            with self._lock:
                self._reservations[splice.id] = reservations
            return splice, anchors
        except Exception as exc:
            for r in reservations:
                r.close()
            for sock in entered:
                no_queue(sock)
                leave_repair(sock)
            if isinstance(exc, (refusal.Refused, _NoAnchor)):
                raise
            log.exception("hand-over failed")
            raise refusal.Internal(f"{type(exc).__name__}: {exc}") from None

    def _commit(
        self, cs: Entry, sc: Entry, verify: Callable[[], None], owner: int | None = None
    ) -> Splice:
        """Installs both directions, then verify(); if either fails, each flow goes
        back to what the proxy had (its learning entry, or nothing). The lock
        is held for the table changes only, not across verify() and its settle
        time: other flows' hand-overs go on meanwhile (this flow's requests wait
        on its flow lock)."""
        installed: list[FlowKey] = []
        try:
            with self._lock:
                learning = {f: f in self._learning for f in (cs.match, sc.match)}
                self._add(cs)
                installed.append(cs.match)
                self._add(sc)
                installed.append(sc.match)
            verify()
        except Exception as exc:
            with self._lock:
                for flow in installed:
                    if learning[flow]:
                        self.target.add(Entry.learning(flow))
                    else:
                        self.target.delete(flow)
            if isinstance(exc, refusal.Refused):
                raise
            log.exception("hand-over failed")
            raise refusal.Internal(f"{type(exc).__name__}: {exc}") from None
        with self._lock:
            for flow in installed:
                self._learning.pop(flow, None)
            splice = Splice(self._new_id(), cs, sc, owner=owner)
            self._splices[splice.id] = splice
            self._index(splice)
        log.info("splice %d: %s <-> %s", splice.id, cs.match, cs.out_flow)
        return splice

    def reserve_rebuilt(self) -> int:
        """Reservations for splices a previous agent left (its sockets died with it)."""
        made = 0
        with self._lock:
            for s in self._splices.values():
                if s.id in self._reservations:
                    continue
                got = [_reserve_end(e.match) for e in (s.to_server, s.to_client)]
                self._reservations[s.id] = [r for r in got if r is not None]
                made += len(self._reservations[s.id])
        return made

    def _on_port(self, entry: Entry) -> Entry:
        if self.port_map is None:
            return entry
        ports = self.port_map

        def port(ifname: int | str) -> int:
            if not isinstance(ifname, str) or ifname not in ports:
                raise refusal.NoRoute(
                    f"interface {ifname} has no data-plane port (agent option --port {ifname}=N)"
                )
            return ports[ifname]

        ingress = None if entry.ingress is None else port(entry.ingress)
        return replace(entry, egress=port(entry.egress), ingress=ingress)

    def release(
        self, splice_id: int, reason: str = "released", caller: Caller = TRUSTED
    ) -> dict[str, Any]:
        with self._lock:
            splice = self._splices.get(splice_id)
            if splice is None or not (caller.sees_all or splice.owner == caller.uid):
                raise refusal.NotFound(f"no splice {splice_id}")
            if not caller.root and splice.owner != caller.uid:
                raise refusal.NotOwner(f"splice {splice_id} belongs to another user")
            del self._splices[splice_id]
            self._unindex(splice)
            stats = self._splice_stats(splice)
            self.target.delete(splice.to_server.match)
            self.target.delete(splice.to_client.match)
            for r in self._reservations.pop(splice_id, []):
                r.close()
        log.info("splice %d removed: %s", splice_id, reason)
        event = {"event": "removed", "splice": splice_id, "reason": reason, **stats}
        self._emit(event, splice.owner)
        return stats

    def _splice_stats(self, splice: Splice, got: dict | None = None) -> dict[str, Any]:
        """got: stats read already (of many splices at once)."""
        out: dict[str, Any] = {}
        if got is None:
            got = self.target.stats_many([splice.to_server.match, splice.to_client.match])
        for name, e in (("to_server", splice.to_server), ("to_client", splice.to_client)):
            st = got.get(e.match)
            out[name] = {"packets": st.packets, "bytes": st.bytes} if st else None
        return out

    def _visible(self, caller: Caller) -> list[Splice]:
        mine = self._splices.values() if caller.sees_all else self._splices.by_owner(caller.uid)
        return sorted(mine, key=lambda s: s.id)

    def listed(self, caller: Caller = TRUSTED) -> list[Splice]:
        """The caller's splices as of now, by id: a reference each, for an
        answer made page by page (paging.py)."""
        with self._lock:
            return self._visible(caller)

    def with_stats(self, splices: Sequence[Splice]) -> list[dict[str, Any]]:
        """Each splice and its entries' counters, read in one batch, without the
        agent's lock (a splice's fields are read whole, under the GIL)."""
        got = self.target.stats_many([m for s in splices for m in _matches(s)])
        return [{**s.to_json(), **self._splice_stats(s, got)} for s in splices]

    def totals(self, caller: Caller = TRUSTED) -> dict[str, Any]:
        """stats' other fields: everything for root and admins; a caller's own
        learning entries and hand-overs otherwise (the data plane's counters are
        global)."""
        with self._lock:
            if caller.sees_all:
                return {
                    "learning": len(self._learning),
                    "handovers": dict(self.results),
                    "counters": self.target.counters(),
                }
            return {
                "learning": self._count(caller, "learning"),
                "handovers": dict(self.results_by_uid.get(caller.uid, {})),
            }

    def list(self, caller: Caller = TRUSTED) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.listed(caller)]

    def stats(self, caller: Caller = TRUSTED) -> dict[str, Any]:
        return {"splices": self.with_stats(self.listed(caller)), **self.totals(caller)}

    # -- lifecycle ----------------------------------------------------------

    def events(self) -> AbstractContextManager[EventReader]:
        """The data plane's FIN/RST events, delivered to on_event by .poll()."""

        def deliver(ev: SpliceEvent) -> None:
            self.on_event(ev.key, ev.tcp_flags)

        return self.target.events(deliver)

    def on_event(self, match: FlowKey, tcp_flags: int) -> None:
        """A FIN or RST the data plane saw. It is a network peer's word, and may
        be spoofed: the splice only ends if the flow then falls quiet (reap()).
        Watchers hear of the first FIN from each side and the first RST only,
        however many a peer sends."""
        now = time.monotonic()
        with self._lock:
            if match in self._learning:
                self._learning[match].remove_at = now + self.grace
                return
            s = self._by_match.get(match)
            if s is None:
                return
            side = "client" if s.to_server.match == match else "server"
            kind = "rst" if tcp_flags & TCP_RST else "fin"
            report = kind if kind == "rst" else f"fin_{side}"
            if report not in s.reported:
                s.reported.add(report)
                self._emit({"event": kind, "splice": s.id, "from": side})
            if kind == "rst":
                s.end_reason = "reset"
            elif side == "client":
                s.fin_from_client = True
            else:
                s.fin_from_server = True
            if s.fin_from_client and s.fin_from_server and not s.end_reason:
                s.end_reason = "closed"
            if s.end_reason and s.remove_at is None:
                s.ended_at = now
                s.remove_at = now + self.grace  # the last ACK must still pass

    def _still_alive(self, s: Splice, seen: dict[FlowKey, float]) -> bool:
        """Packets kept coming well after the RST or FINs that ended s: a peer's
        stack ignored them (RFC 5961: a blind spoofed RST or FIN is out of
        window), so the flow lives and its entries stay."""
        assert s.ended_at is not None
        settled = s.ended_at + self.grace * ALIVE_AFTER_GRACE
        return any(seen.get(m, 0) > settled for m in _matches(s))

    def idle_scan_interval(self) -> float:
        """How often reap() must look for idle entries: a tenth of the idle
        timeout, so an idle flow goes at most 10% late, and no scans of a big
        table twice a second for a timeout of minutes."""
        return min(max(self.idle_timeout / 10, IDLE_SCAN_MIN_S), IDLE_SCAN_MAX_S)

    def reap(self, scan_idle: bool = True) -> None:
        """Removes ended splices after their grace period and, with scan_idle,
        idle splices and learning entries. The stats are read in one batch,
        outside the lock: requests never wait for a read of the whole table.
        The XDP interfaces' xdp_tx_errors are checked too."""
        if self.tx_errors is not None:
            self.tx_errors.check()
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
        ending = [s for s in splices if s.remove_at is not None and now >= s.remove_at]
        if ending and not scan_idle:
            seen = self._last_seen_all([m for s in ending for m in _matches(s)])
        ending_ids = {s.id for s in ending}
        due: list[tuple[int, str]] = []
        for s in splices:
            last = max(s.created, seen.get(s.to_server.match, 0), seen.get(s.to_client.match, 0))
            if s.id in ending_ids:
                if self._still_alive(s, seen):
                    self._revive(s)
                else:
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

    def _revive(self, s: Splice) -> None:
        with self._lock:
            log.warning("splice %d: %s, but the flow goes on: kept", s.id, s.end_reason)
            self._emit({"event": "kept", "splice": s.id, "after": s.end_reason})
            s.end_reason, s.remove_at, s.ended_at = "", None, None
            s.fin_from_client = s.fin_from_server = False
            s.reported.clear()

    def _last_seen_all(self, matches: Sequence[FlowKey]) -> dict[FlowKey, float]:
        """Last-seen of each entry in seconds on the monotonic clock (the data
        plane's clock is CLOCK_MONOTONIC); entries never hit are left out."""
        return {
            m: st.last_seen_ns / 1e9
            for m, st in self.target.stats_many(matches).items()
            if st.last_seen_ns
        }
