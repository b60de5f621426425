"""The agent's Unix socket server, its data-plane event loop and reaper, and
its Prometheus metrics. One thread per proxy connection: hand-overs are
serialised by the agent's lock, everything else runs side by side."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from mosto.agent.core import Agent
from mosto.wire import protocol, refusal

log = logging.getLogger("mosto.agent")

REAP_INTERVAL_S = 0.5
FD_OPS = {"register", "hold", "unhold", "offload"}


class AgentServer:
    def __init__(
        self,
        agent: Agent,
        path: str = protocol.DEFAULT_SOCKET,
        mode: int = 0o660,
        owner: str | None = None,
        group: str | None = None,
    ):
        self.agent = agent
        self.path = path
        self._stop = threading.Event()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # a stale socket of an agent that died
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(path)
        os.chmod(path, mode)
        if owner or group:
            os.chown(
                path,
                pwd.getpwnam(owner).pw_uid if owner else -1,
                grp.getgrnam(group).gr_gid if group else -1,
            )
        self._listener.listen(128)

    # -- serving ---------------------------------------------------------

    def serve_forever(self) -> None:
        threads = [
            threading.Thread(target=self._events_loop, daemon=True, name="events"),
            threading.Thread(target=self._reap_loop, daemon=True, name="reaper"),
        ]
        for t in threads:
            t.start()
        self._listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def shutdown(self) -> None:
        self._stop.set()
        self._listener.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while not self._stop.is_set():
                try:
                    doc, fds = protocol.recv(conn)
                except protocol.ProtocolError as exc:
                    protocol.send(conn, _error(refusal.BadRequest(str(exc))))
                    continue
                except OSError:
                    return
                if doc is None:
                    return
                if doc.get("op") == "watch":
                    self._watch(conn)
                    return
                protocol.send(conn, self.handle(doc, fds))

    def handle(self, doc: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """One request; the descriptors are closed afterwards (ours are copies)."""
        socks = []
        try:
            op = doc.get("op")
            if op in FD_OPS:
                if len(fds) != 2:
                    raise refusal.BadRequest(
                        f"{op} needs 2 descriptors (client, server), got {len(fds)}"
                    )
                socks = [socket.socket(fileno=fd) for fd in fds]
                fds = []
            handler: Callable[..., Any] | None = (
                {
                    "register": lambda: {"flow": self.agent.register(*socks)},
                    "hold": lambda: self.agent.hold(*socks),
                    "unhold": lambda: self.agent.unhold(*socks),
                    "offload": lambda: {"splice": self.agent.offload(*socks).to_json()},
                    "release": lambda: {"stats": self.agent.release(_splice_id(doc))},
                    "list": lambda: {"splices": self.agent.list()},
                    "stats": self.agent.stats,
                }.get(op)
                if isinstance(op, str)
                else None
            )
            if handler is None:
                raise refusal.BadRequest(f"unknown op {op!r}")
            return {"ok": True, **(handler() or {})}
        except refusal.Refused as exc:
            return _error(exc)
        except Exception as exc:  # the proxy gets an answer whatever happens
            log.exception("request %s failed", doc.get("op"))
            return _error(refusal.Internal(f"{type(exc).__name__}: {exc}"))
        finally:
            for s in socks:
                s.close()
            for fd in fds:
                os.close(fd)

    def _watch(self, conn: socket.socket) -> None:
        q = self.agent.watch()
        try:
            protocol.send(conn, {"ok": True})
            while not self._stop.is_set():
                try:
                    protocol.send(conn, q.get(timeout=1.0))
                except queue.Empty:
                    continue
        except OSError:
            pass  # the watcher went away
        finally:
            self.agent.unwatch(q)

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


def _splice_id(doc: dict[str, Any]) -> int:
    value = doc.get("splice")
    if isinstance(value, bool) or not isinstance(value, int):
        raise refusal.BadRequest("release needs an integer 'splice'")
    return value


def _error(exc: refusal.Refused) -> dict[str, Any]:
    return {"ok": False, "error": exc.code, "message": exc.message}
