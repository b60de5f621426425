"""A small reference proxy that hands its flows over to the agent.

It connects each client to a fixed upstream, or, transparent (TPROXY), to the
address the client asked for, from the client's own address and port.

Each accepted connection gets a thread: connect upstream, register the pair
with the agent, relay; once `handover_after` bytes went through, hold the
senders, drain, and offload. A refused hand-over is retried a few times and
otherwise the proxy just keeps relaying. Not a production proxy: it is the
client library's worked example and the test and demo workload.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from mosto.wire.client import AgentClient
from mosto.wire.queues import queued
from mosto.wire.refusal import Refused

log = logging.getLogger("mosto.proxy")

CHUNK = 256 * 1024
TCP_REPAIR = 19  # <linux/tcp.h>; reading it needs no privilege
AGENT_LOST = "agent_lost"  # the agent connection broke: relay the flow to its end
SPLICED_WITHOUT_ANSWER = "spliced_without_answer"  # ... with our sockets taken
DRAIN_TIMEOUT_S = 3.0
# How long a held flow must stay quiet before the offload: past a sender's tail
# loss probe (Linux sends one 2 RTTs, at least 10 ms, after its last segment),
# which would otherwise land during the offload and make it refuse.
QUIET_FOR_S = 0.012
RETRY_BYTES = 1 << 20  # after a refusal, relay this much more before trying again
QUICK_RETRIES = 20  # hand-overs retried at once when a late segment spoiled one


@dataclass
class ProxyStats:
    flows: int = 0
    handed_over: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    relayed_bytes: int = 0
    handover_ms: list[float] = field(default_factory=list)  # hold + drain + offload
    offload_ms: list[float] = field(default_factory=list)  # the offload call alone
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **changes: int) -> None:
        with self.lock:
            for k, v in changes.items():
                setattr(self, k, getattr(self, k) + v)

    def to_json(self) -> dict:
        with self.lock:
            return {
                "flows": self.flows,
                "handed_over": self.handed_over,
                "refused": dict(self.refused),
                "relayed_bytes": self.relayed_bytes,
                "handover_ms": list(self.handover_ms),
                "offload_ms": list(self.offload_ms),
            }

    def refusal(self, code: str) -> None:
        with self.lock:
            self.refused[code] = self.refused.get(code, 0) + 1


class Relay:
    """One proxied flow: a = to the client, b = to the server."""

    def __init__(
        self,
        a: socket.socket,
        b: socket.socket,
        agent_path: str | None,
        handover_after: int | None,
        attempts: int,
        stats: ProxyStats,
        drain: bool = True,
    ):
        self.a, self.b = a, b
        self.agent_path = agent_path
        self.handover_after = handover_after
        self.attempts = attempts
        self.stats = stats
        self.drain = drain
        self.relayed = 0
        self.eof = {a: False, b: False}
        self.pending = {a: b"", b: b""}  # bytes read from the key, not yet written onward

    def _other(self, s: socket.socket) -> socket.socket:
        return self.b if s is self.a else self.a

    def _pump(self, timeout: float) -> bool:
        """Moves what is readable; False when both sides are done."""
        sel = selectors.DefaultSelector()
        for s in (self.a, self.b):
            if not self.eof[s] and not self.pending[s]:
                sel.register(s, selectors.EVENT_READ)
        ready = sel.select(timeout) if sel.get_map() else []
        sel.close()
        for key, _ in ready:
            s = self.a if key.fileobj is self.a else self.b
            try:
                data = s.recv(CHUNK)
            except ConnectionError:
                data = b""
            if not data:
                self.eof[s] = True
                try:
                    self._other(s).shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            self.pending[s] = data
        for s in (self.a, self.b):
            if self.pending[s]:
                self._other(s).sendall(self.pending[s])
                self.relayed += len(self.pending[s])
                self.stats.add(relayed_bytes=len(self.pending[s]))
                self.pending[s] = b""
        return not (self.eof[self.a] and self.eof[self.b])

    def _register(self, agent_path: str) -> AgentClient | None:
        """An agent connection with this flow registered, or None: a flow the
        agent will not take (a quota, say) or cannot (it is down) is relayed."""
        try:
            client = AgentClient(agent_path)
        except OSError as exc:
            log.warning("no agent (%s): relaying", exc)
            return None
        try:
            client.register(self.a, self.b)
        except (Refused, OSError) as exc:
            log.warning("not registered (%s): relaying", exc)
            self.stats.refusal(exc.code if isinstance(exc, Refused) else "agent_lost")
            client.close()
            return None
        return client

    def run(self) -> None:
        client = None
        try:
            if self.agent_path and self.handover_after is not None:
                client = self._register(self.agent_path)
            next_try = self.handover_after
            attempts, quick = self.attempts, QUICK_RETRIES
            while self._pump(0.5):
                if client and attempts and next_try is not None and self.relayed >= next_try:
                    refused = self._handover(client)
                    if refused is None or refused == SPLICED_WITHOUT_ANSWER:
                        return
                    if refused == AGENT_LOST:  # relay to the end, without an agent
                        client.close()
                        client = None
                        continue
                    # Data that came in during the attempt: try again at once, on a
                    # budget of its own (a busy host makes these common).
                    again = (
                        self.drain and refused in ("buffers_not_empty", "state_moved") and quick > 0
                    )
                    if again:
                        quick -= 1
                    else:
                        attempts -= 1
                    next_try = self.relayed + (0 if again else RETRY_BYTES)
        except Exception:
            log.exception("relay failed")
        finally:
            if client:
                client.close()
            self.a.close()
            self.b.close()

    def _quiet(self) -> bool:
        return all(queued(s) == (0, 0) for s in (self.a, self.b)) and not any(self.pending.values())

    def _handover(self, client: AgentClient) -> str | None:
        """None once handed over, else why not."""
        t0 = time.perf_counter()
        if self.drain:
            try:
                client.hold(self.a, self.b)
            except Refused as exc:  # not held: nothing to undo, keep relaying
                self.stats.refusal(exc.code)
                return exc.code
            except OSError:
                self.stats.refusal(AGENT_LOST)
                return AGENT_LOST
            if not self._drain(client):
                return "drain_timeout"
        t1 = time.perf_counter()
        try:
            splice = client.offload(self.a, self.b)
        except Refused as exc:  # offload lifts the hold either way
            log.info("hand-over refused (%s): %s", exc.code, exc.message)
            self.stats.refusal(exc.code)
            return exc.code
        except OSError:
            return self._agent_lost_in_offload()
        t2 = time.perf_counter()
        log.info("handed over as splice %s after %d bytes", splice["id"], self.relayed)
        self.stats.add(handed_over=1)
        with self.stats.lock:
            self.stats.handover_ms.append((t2 - t0) * 1e3)
            self.stats.offload_ms.append((t2 - t1) * 1e3)
        return None

    def _agent_lost_in_offload(self) -> str:
        """The agent went away during the offload. If it had put our sockets in
        repair mode it had the flow's entries installed or about to be, and a
        restarted agent keeps a complete splice: the sockets are closed, which
        in repair mode (or neutralised) sends nothing. Otherwise they are as
        they were and the proxy relays on."""
        in_repair = any(s.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR) for s in (self.a, self.b))
        self.stats.refusal(AGENT_LOST)
        if in_repair or any(_disconnected(s) for s in (self.a, self.b)):
            log.warning("agent lost during the offload, sockets in repair mode: closing them")
            return SPLICED_WITHOUT_ANSWER
        log.warning("agent lost before the offload took the sockets: relaying")
        return AGENT_LOST

    def _drain(self, client: AgentClient) -> bool:
        """Relays while the senders are held, until all is acked and nothing has
        come in for QUIET_FOR_S: a held sender stops only once it has used up
        the window it last saw, so a moment without data is not yet the end."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        quiet_since: float | None = None
        while True:
            now = time.monotonic()
            if self._quiet():
                quiet_since = quiet_since or now
                if now - quiet_since >= QUIET_FOR_S:
                    return True
            else:
                quiet_since = None
            if now > deadline or not self._pump(QUIET_FOR_S / 4):
                client.unhold(self.a, self.b)
                self.stats.refusal("drain_timeout")
                return False


def _disconnected(s: socket.socket) -> bool:
    """Neutralised by the agent (disconnected in repair mode), so it has no peer."""
    try:
        s.getpeername()
    except OSError:
        return True
    return False


class Proxy:
    def __init__(
        self,
        listen: tuple[str, int],
        upstream: tuple[str, int] | None,
        agent_path: str | None,
        handover_after: int | None = None,
        attempts: int = 5,
        drain: bool = True,
    ):
        self.upstream = upstream
        self.drain = drain
        self.agent_path = agent_path
        self.handover_after = handover_after
        self.attempts = attempts
        self.stats = ProxyStats()
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if upstream is None:  # transparent: TPROXY delivers connections to any address
            self.listener.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
        self.listener.bind(listen)
        self.listener.listen(1024)

    def serve_forever(self) -> None:
        while True:
            a, _ = self.listener.accept()
            threading.Thread(target=self._flow, args=(a,), daemon=True).start()

    def _connect_upstream(self, a: socket.socket) -> socket.socket:
        if self.upstream is not None:
            return socket.create_connection(self.upstream)
        # Transparent: the same four-tuple on both sides, as if there were no proxy.
        b = socket.socket(a.family, socket.SOCK_STREAM)
        try:
            b.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
            b.bind(a.getpeername())
            b.connect(a.getsockname())
        except OSError:
            b.close()
            raise
        return b

    def _flow(self, a: socket.socket) -> None:
        self.stats.add(flows=1)
        try:
            b = self._connect_upstream(a)
        except OSError as exc:
            log.warning("upstream %s: %s", self.upstream or a.getsockname(), exc)
            a.close()
            return
        for s in (a, b):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Relay(
            a, b, self.agent_path, self.handover_after, self.attempts, self.stats, self.drain
        ).run()
