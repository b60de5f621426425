"""The agent's Unix socket server: a bounded set of workers that wait on one
epoll set for every connection and each handle what they are woken for, the
request included; the data plane's event loop and the reaper beside them.

Sockets are watched one-shot (EPOLLONESHOT): an event wakes one worker and
disarms the socket until that worker has dealt with it and arms it again, so
a connection is one worker's at a time, and has one request in flight at
most. Its next message is read only once every page of the answer is sent:
answers come in order, and a client that does not read them has one answer
waiting in the agent at most. A request is read, run and answered by the
same thread: no hand-off to a pool and back, which cost two thread switches
and a fight for the GIL a request (a `list` of nothing took 187 us of agent
CPU that way, 70 us this way). Events for watchers are sent by the thread that
emits them, and what the socket does not take at once on EPOLLOUT.
Descriptors received are closed exactly once, whatever happens.
"""

from __future__ import annotations

import collections
import errno
import grp
import itertools
import logging
import os
import pwd
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from mosto.agent import paging, requests, sockdir, trust
from mosto.agent.core import Agent, Splice
from mosto.agent.heap import Heap
from mosto.agent.kernel import netinfo
from mosto.agent.trust import Caller
from mosto.wire import protocol, refusal

log = logging.getLogger("mosto.agent")

REAP_INTERVAL_S = 0.5
ACCEPT_BACKOFF_S = 0.2  # out of descriptors: stop accepting this long, keep serving
SO_PEERGROUPS = 59
MAX_GROUPS = 65536
WATCH_BACKLOG = 10000  # events queued for a watcher that does not read: then it is dropped


@dataclass
class Limits:
    connections: int = 1024
    connections_per_uid: int = 256  # root's are not counted
    workers: int = 16


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    caller: Caller
    out: collections.deque[bytes] = field(default_factory=collections.deque)
    later: Iterator[bytes] | None = None  # an answer's pages not made yet (paging.py)
    busy: bool = False
    watching: bool = False
    closed: bool = False
    wake: _Wake | None = None  # a watcher's sink in the agent
    # Held to send, to arm the socket and to close it: the worker that has the
    # connection's event, a thread pushing a watcher's event, and _close.
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Wake:
    """A watcher's sink in the agent: the events go out to its connection."""

    def __init__(self, server: AgentServer, conn: _Conn):
        self._server, self._conn = server, conn

    def put(self, event: dict[str, Any]) -> None:
        self._server._push(self._conn, protocol.encode(event))


def _credentials(conn: socket.socket) -> tuple[int, int, int, tuple[int, ...]]:
    pid, uid, gid = struct.unpack(
        "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    )
    groups: tuple[int, ...] = ()
    for room in (64, MAX_GROUPS):  # ERANGE: the peer is in more groups than room
        try:
            raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * room)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                continue
            break
        groups = struct.unpack(f"{len(raw) // 4}I", raw)
        break
    return pid, uid, gid, groups


class AgentServer:
    def __init__(
        self,
        agent: Agent,
        path: str = protocol.DEFAULT_SOCKET,
        mode: int = 0o660,
        owner: str | None = None,
        group: str | None = None,
        limits: Limits | None = None,
        admin_group: str | None = None,
        heap: Heap | None = None,
    ):
        self.agent = agent
        self.heap = heap  # the collector's policy (heap.py); the agent's, not a test's
        self.path = path
        self.limits = limits or Limits()
        self.admin_gid = grp.getgrnam(admin_group).gr_gid if admin_group else None
        self._stop = threading.Event()
        sockdir.prepare(path)
        self._remove_stale(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old_umask = os.umask(0o177)  # no moment where the socket is open to all
        try:
            self._listener.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        if owner or group:
            os.chown(
                path,
                pwd.getpwnam(owner).pw_uid if owner else -1,
                grp.getgrnam(group).gr_gid if group else -1,
            )
        self._listener.listen(128)
        self._listener.setblocking(False)
        self._ep = select.epoll()
        self._watched: dict[int, _Conn | str] = {}  # fd: its connection, or "listen", "wake"
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._state_lock = threading.Lock()  # the connections, their counts, accepting
        self._conns: set[_Conn] = set()
        self._per_uid: collections.Counter[int] = collections.Counter()
        self._ids = itertools.count(1)
        self._accept_paused_until = 0.0

    @staticmethod
    def _remove_stale(path: str) -> None:
        """A socket an agent that died left; a live agent's is not taken over."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise sockdir.UnsafeDirectory(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
            return
        finally:
            probe.close()
        raise sockdir.UnsafeDirectory(f"another agent serves on {path}")

    # -- serving ---------------------------------------------------------

    def serve_forever(self) -> None:
        """Serves until shutdown(): this thread and the other workers alike."""
        background = [
            threading.Thread(target=self._events_loop, daemon=True, name="events"),
            threading.Thread(target=self._reap_loop, daemon=True, name="reaper"),
        ]
        workers = [
            threading.Thread(target=self._serve, daemon=True, name=f"request-{i}")
            for i in range(1, self.limits.workers)
        ]
        if self.heap is not None:
            self.heap.settle()
        for t in background:
            t.start()
        self._watch(self._listener, "listen")
        self._watch(self._wake_r, "wake")
        for t in workers:
            t.start()
        try:
            self._serve()
        finally:
            self._stop.set()
            for t in workers:
                t.join()
            self._listener.close()
            if os.path.exists(self.path):
                os.unlink(self.path)
            for conn in list(self._conns):
                self._close(conn)
            self._ep.close()

    def _serve(self) -> None:
        """A worker: waits for one event of any connection (each is watched
        one-shot, so no other worker has it meanwhile), handles it, the request
        it brings included, and arms the socket again."""
        while not self._stop.is_set():
            self._resume_accepting()
            for fd, mask in self._ep.poll(0.2, 1):
                self._event(fd, mask)

    def _event(self, fd: int, mask: int) -> None:
        """Apart from _serve, so that no worker's frame keeps a closed
        connection alive while it waits (it goes by reference counting)."""
        what = self._watched.get(fd)
        try:
            if what == "listen":
                self._accept()
            elif what == "wake":
                self._drain_wake()
            elif isinstance(what, _Conn):
                self._ready(what, mask)
        except Exception:  # one fault must not stop this worker, or the rest
            if isinstance(what, _Conn):
                log.exception("connection of uid %d", what.caller.uid)
                self._close(what)
            else:
                log.exception("%s", what)

    def shutdown(self) -> None:
        """From a signal handler or another thread: the workers end and clean up."""
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _accept(self) -> None:
        try:
            for _ in range(64):
                try:
                    sock, _ = self._listener.accept()
                except BlockingIOError:
                    return
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.warning("accept: %s; pausing %.1f s", exc.strerror, ACCEPT_BACKOFF_S)
                        with self._state_lock:
                            self._accept_paused_until = time.monotonic() + ACCEPT_BACKOFF_S
                        return
                    if self._stop.is_set():
                        return
                    raise
                self._admit(sock)
        finally:
            if not self._accept_paused_until and not self._stop.is_set():
                self._rearm(self._listener, select.EPOLLIN)

    def _resume_accepting(self) -> None:
        if not self._accept_paused_until or time.monotonic() < self._accept_paused_until:
            return
        with self._state_lock:
            if self._accept_paused_until and time.monotonic() >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                self._rearm(self._listener, select.EPOLLIN)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            pid, uid, gid, groups = _credentials(sock)
        except OSError:
            sock.close()
            return
        admin = self.admin_gid is not None and (gid == self.admin_gid or self.admin_gid in groups)
        with self._state_lock:
            caller = Caller(uid, gid, groups, admin, next(self._ids), pid)
            why = None
            if len(self._conns) >= self.limits.connections:
                why = f"the agent serves {self.limits.connections} connections already"
            elif not caller.root and self._per_uid[uid] >= self.limits.connections_per_uid:
                why = f"uid {uid} has {self.limits.connections_per_uid} connections already"
            if not why:
                conn = _Conn(sock, caller)
                self._conns.add(conn)
                self._per_uid[uid] += 1
                self._watch(sock, conn)
                return
        try:
            sock.send(protocol.encode(_error(refusal.LimitReached(why))))
        except OSError:
            pass
        sock.close()

    def _watch(self, sock: socket.socket, what: _Conn | str) -> None:
        """Armed for what it has to read first (one-shot, as every socket here)."""
        self._watched[sock.fileno()] = what
        self._ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLONESHOT)

    def _rearm(self, sock: socket.socket, events: int) -> None:
        self._ep.modify(sock.fileno(), events | select.EPOLLONESHOT)

    def _arm(self, conn: _Conn) -> None:
        """Under conn.lock, after an event of conn's (which disarmed it): watched
        for room to write while pages of an answer wait, else for its next
        request unless one is in flight. A client that does not read its
        answers is not read from: what waits for it is one answer's pages at
        most. A busy connection with nothing to send stays disarmed; whoever
        answers arms it."""
        if conn.out or conn.later is not None:
            events = select.EPOLLOUT  # a hang-up is reported with it
        else:
            events = 0 if conn.busy else select.EPOLLIN
        if events and not conn.closed:
            self._rearm(conn.sock, events)

    def _ready(self, conn: _Conn, mask: int) -> None:
        """conn's event, which disarmed it: handled, and the socket armed again
        once, at the end (by _work if it brought a request). Arming it sooner
        would let another worker take its next request while this one runs,
        and answer out of order."""
        if mask & select.EPOLLOUT:
            with conn.lock:
                sent = self._flush(conn)
            if not sent:
                self._close(conn)
                return
        request = None
        if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            if not conn.closed and not conn.busy:
                request = self._read(conn)
        if request is not None:
            self._work(conn, *request)
            return
        with conn.lock:
            self._arm(conn)

    def _read(self, conn: _Conn) -> tuple[dict[str, Any], list[int]] | None:
        """The connection's next request, marked busy; None if there is none
        (an error answered, or the connection closed)."""
        try:
            doc, fds = protocol.recv(conn.sock)
        except BlockingIOError:
            return None
        except protocol.ProtocolError as exc:  # its descriptors are closed already
            self._answer(conn, [_error(refusal.BadRequest(str(exc)))])
            return None
        except OSError:
            self._close(conn)
            return None
        if doc is None:
            if _peer_gone(conn.sock):
                self._close(conn)
            else:  # a datagram of zero bytes reads like an EOF, but the peer is there
                self._answer(conn, [_error(refusal.BadRequest("an empty message"))])
            return None
        if conn.watching:  # a watcher has nothing more to ask
            for fd in fds:
                os.close(fd)
            return None
        conn.busy = True
        return doc, fds

    def _work(self, conn: _Conn, doc: dict[str, Any], fds: list[int]) -> None:
        """The request, in the worker that read it; its answer sent as far as
        the socket takes it, the rest when there is room (EPOLLOUT)."""
        with self.agent.turn.taken():
            answers = self.handle(doc, fds, conn.caller)
        watch = False
        if doc.get("op") == "watch":
            answers = list(answers)
            watch = answers[-1].get("ok") is True
        with conn.lock:
            if conn.closed:
                return
            conn.later = _encoded(answers)
            conn.busy = False
            if watch:
                conn.watching = True
                conn.wake = _Wake(self, conn)
            sent = self._flush(conn)
            self._arm(conn)
        if not sent:
            self._close(conn)
        elif watch and conn.wake is not None:
            self.agent.watch(conn.wake, conn.caller)

    def _push(self, conn: _Conn, page: bytes) -> None:
        """An event for a watcher, from whichever thread emits it."""
        with conn.lock:
            if conn.closed:
                return
            full = len(conn.out) >= WATCH_BACKLOG
            if not full:
                conn.out.append(page)
                if self._flush(conn):
                    # Not this thread's event: armed for room to write if pages
                    # wait (a watcher has no request whose order could suffer).
                    if conn.out:
                        self._arm(conn)
                    return
        if full:
            log.warning("watcher of uid %d does not read; dropped", conn.caller.uid)
        self._close(conn)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        finally:
            if not self._stop.is_set():
                self._rearm(self._wake_r, select.EPOLLIN)

    def _answer(self, conn: _Conn, answers: list[dict[str, Any]]) -> None:
        with conn.lock:
            conn.out.extend(protocol.encode(a) for a in answers)
            sent = self._flush(conn)
        if not sent:
            self._close(conn)

    def _flush(self, conn: _Conn) -> bool:
        """Under conn.lock: the pages waiting, as far as the socket takes them
        (arming is the caller's). False if the socket is broken: the caller
        closes it once it has let go of the lock (closing takes the agent's
        lock, which the emitters of events hold while they push)."""
        while not conn.closed:
            if not conn.out:
                page = next(conn.later, None) if conn.later is not None else None
                if page is None:
                    conn.later = None
                    break
                conn.out.append(page)
            try:
                conn.sock.send(conn.out[0])
            except BlockingIOError:
                break
            except OSError:
                return False
            conn.out.popleft()
        return True

    def _close(self, conn: _Conn) -> None:
        with self._state_lock:
            if conn in self._conns:
                self._conns.discard(conn)
                self._per_uid[conn.caller.uid] -= 1
                if self._per_uid[conn.caller.uid] <= 0:
                    del self._per_uid[conn.caller.uid]
        with conn.lock:  # a worker arms the socket under it, if still open
            if conn.closed:
                return
            conn.closed = True
            conn.later = None  # its listing's splices, if pages of one were waiting
            self._watched.pop(conn.sock.fileno(), None)
            self._ep.unregister(conn.sock.fileno())
            conn.sock.close()
        wake, conn.wake = conn.wake, None  # it points back at conn: no cycle left
        if wake is not None:
            self.agent.unwatch(wake)
        self.agent.drop_caller(conn.caller)  # its holds go with it

    # -- requests --------------------------------------------------------

    def handle(
        self, doc: dict[str, Any], fds: list[int], caller: Caller = trust.TRUSTED
    ) -> Iterable[dict[str, Any]]:
        """One request, answered in one page or more (a listing's made as they
        are sent); the descriptors are closed here (ours are copies), exactly
        once."""
        socks: list[socket.socket] = []
        rid = requests.echoed_id(doc.get("id"))
        try:
            req = requests.parse(doc, len(fds))
            rid = req.id
            for i, fd in enumerate(fds):
                if not trust.is_socket(fd):
                    name = ("client", "server")[i % 2]
                    raise refusal.NotTcp(f"the {name} descriptor is not a socket")
            while fds:  # each descriptor is owned by its socket object once made
                socks.append(socket.socket(fileno=fds[0]))
                fds.pop(0)
            answers = self._dispatch(req, socks, caller)
        except refusal.Refused as exc:
            answers = [_error(exc)]
        except Exception as exc:  # the proxy gets an answer whatever happens
            log.exception("request %s failed", doc.get("op"))
            answers = [_error(refusal.Internal(f"{type(exc).__name__}: {exc}"))]
        finally:
            for s in socks:
                s.close()
            for fd in fds:
                os.close(fd)
        return _echoing(answers, rid, doc.get("op"))

    def _dispatch(
        self, req: requests.Request, socks: list[socket.socket], caller: Caller
    ) -> Iterable[dict[str, Any]]:
        agent = self.agent
        if req.op == "register":
            return [{"ok": True, "flow": agent.register(socks[0], socks[1], caller)}]
        if req.op == "hold":
            agent.hold(socks[0], socks[1], caller)
            return [{"ok": True}]
        if req.op == "unhold":
            agent.unhold(socks[0], socks[1], caller)
            return [{"ok": True}]
        if req.op == "offload":
            return [{"ok": True, "splice": agent.offload(socks[0], socks[1], caller).to_json()}]
        if req.op == "offload_many":
            pairs = list(zip(socks[::2], socks[1::2], strict=True))
            results = [
                _error(got)
                if isinstance(got, refusal.Refused)
                else {"ok": True, "splice": got.to_json()}
                for got in agent.offload_many(pairs, caller)
            ]
            return paging.pages({"ok": True, "results": results}, "results")
        if req.op == "release":
            assert req.splice is not None
            return [{"ok": True, "stats": agent.release(req.splice, caller=caller)}]
        if req.op == "list":
            splices = agent.listed(caller)
            return paging.made_as_sent(
                splices, _as_json, "splices", {"ok": True, "count": len(splices)}
            )
        if req.op == "stats":
            splices = agent.listed(caller)
            rest = {"ok": True, **agent.totals(caller), "count": len(splices)}
            return paging.made_as_sent(splices, agent.with_stats, "splices", rest)
        return [{"ok": True}]  # watch: events follow

    # -- background --------------------------------------------------------

    def _events_loop(self) -> None:
        with self.agent.events() as ring:
            while not self._stop.is_set():
                ring.poll(200)

    def _reap_loop(self) -> None:
        last_scan = time.monotonic()
        while not self._stop.wait(REAP_INTERVAL_S):
            scan = time.monotonic() - last_scan >= self.agent.idle_scan_interval()
            try:
                self.agent.reap(scan_idle=scan)
            except Exception:
                log.exception("reaper")
            if scan:
                last_scan = time.monotonic()
            try:
                self.agent.expire_holds()
            except Exception:
                log.exception("holds")
            try:  # the caches hand-overs read: no netlink round trip in a request
                netinfo.refresh()
                trust.refresh_local()
            except Exception:
                log.exception("route cache")
            if self.heap is not None:
                self.heap.tick()


def _peer_gone(sock: socket.socket) -> bool:
    p = select.poll()
    p.register(sock, select.POLLRDHUP)
    return any(ev & (select.POLLRDHUP | select.POLLHUP) for _, ev in p.poll(0))


def _echoing(answers: Iterable[dict[str, Any]], rid: Any, op: Any) -> Iterator[dict[str, Any]]:
    """The answers with the request's id; a failure while they are made (a
    listing's pages are made as they are sent) ends them with an internal
    error (the client gathers pages up to the first without "more")."""
    try:
        for a in answers:
            if rid is not None:
                a["id"] = rid
            yield a
    except Exception as exc:
        log.exception("answer to %s failed", op)
        err = _error(refusal.Internal(f"{type(exc).__name__}: {exc}"))
        if rid is not None:
            err["id"] = rid
        yield err


def _encoded(answers: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    try:
        for a in answers:
            yield protocol.encode(a)
    except protocol.ProtocolError as exc:
        yield protocol.encode(_error(refusal.Internal(str(exc))))


def _as_json(splices: Sequence[Splice]) -> list[dict[str, Any]]:
    return [s.to_json() for s in splices]


def _error(exc: refusal.Refused) -> dict[str, Any]:
    return {"ok": False, "error": exc.code, "message": exc.message}
