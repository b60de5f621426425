"""A small reference proxy that hands its flows over to the agent.

It connects each client to a fixed upstream, or, transparent (TPROXY), to the
address the client asked for, from the client's own address and port. In a
chain (route.py, ppv2.py) the ingress proxy looks up the proxies toward that
destination and connects to the first with a header naming the rest; a
chained proxy reads that header from its client side and does the same with
what is left, the last one connecting to the destination.

Each accepted connection gets a thread: connect upstream, register the pair
with the agent, relay; once the policy says so (bytes relayed, the end of
slow start, a time), optionally raise the relay's delay in steps
(gradual.py), then hold the senders, drain, and offload. A refused
hand-over is retried a few times and otherwise the proxy just keeps
relaying. Not a production proxy: it is the client library's worked example
and the test and demo workload.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mosto import failpoints
from mosto.proxy import ppv2, tcpinfo
from mosto.proxy.gradual import DelayQueue, GradualDelay, Ramp
from mosto.proxy.ppv2 import ChainHeader, HeaderError, Hop
from mosto.wire.client import AgentClient
from mosto.wire.queues import queued
from mosto.wire.refusal import Refused

if TYPE_CHECKING:  # the chain table needs numpy: only a proxy that looks chains up loads it
    from mosto.proxy.route import ChainRoutes, Network

log = logging.getLogger("mosto.proxy")

CHUNK = 256 * 1024
TCP_REPAIR = 19  # <linux/tcp.h>; reading it needs no privilege
AGENT_LOST = "agent_lost"  # the agent connection broke: relay the flow to its end
SPLICED_WITHOUT_ANSWER = "spliced_without_answer"  # ... with our sockets taken
DRAIN_TIMEOUT_S = 3.0
# How long a held flow must stay quiet before the offload: a held sender can
# still have a segment on its way. Not past a sender's tail loss probe (2 RTTs,
# at least 10 ms, after its last segment; 12 ms here before): the probe
# repeats a segment the proxy has, and the agent's freeze drops data segments
# between its read of the sockets and the entries, so waiting for it only
# lengthened every bulk hand-over's stall. A segment that lands before the
# freeze is a refusal the drain retries at once.
QUIET_FOR_S = 0.004
EVENTS_KEPT = 1000
RETRY_BYTES = 1 << 20  # after a refusal, relay this much more before trying again
# An agent that dies with our sockets in repair mode: how long its successor
# (a supervisor restarts it) may take to hand them back or finish the splice.
RECOVER_WAIT_S, RECOVER_POLL_S = 10.0, 0.02
QUICK_RETRIES = 20  # hand-overs retried at once when a late segment spoiled one
# A side is not read while this much of it waits in the delay queue (memory
# bound; 1 Gbit/s for 0.5 s of delay).
QUEUE_MAX = 64 << 20
SLOWSTART_POLL_S = 0.005  # slow start doubles per RTT: a small fraction of one
PUMP_S = 0.005  # loop wake-up while a ramp or a hand-over is under way
IDLE_PUMP_S = 0.1  # otherwise (a time trigger is at most this late on a quiet flow)
HEADER_TIMEOUT_S = 5.0  # a previous proxy sends its chain header at once
FASTOPEN_QUEUE = 256  # pending TCP Fast Open requests the listener takes
TCP_FASTOPEN_CONNECT = 30  # <linux/tcp.h>, 4.11; Python has no name for it


@dataclass
class ProxyStats:
    flows: int = 0
    handed_over: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    relayed_bytes: int = 0
    handover_ms: list[float] = field(default_factory=list)  # hold + drain + offload
    offload_ms: list[float] = field(default_factory=list)  # the offload call alone
    # what each flow went through, with wall-clock times (other processes
    # line them up with their own): trigger, slowstart_end, delay steps, ...
    events: list[dict] = field(default_factory=list)
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
                "events": list(self.events[-EVENTS_KEPT:]),
            }

    def event(self, name: str, **fields: object) -> None:
        log.info("%s %s", name, " ".join(f"{k}={v}" for k, v in fields.items()))
        with self.lock:
            self.events.append({"t": time.time(), "event": name, **fields})
            del self.events[:-EVENTS_KEPT]

    def refusal(self, code: str) -> None:
        with self.lock:
            self.refused[code] = self.refused.get(code, 0) + 1


@dataclass(frozen=True)
class Policy:
    """When a flow is handed over.

    on: "bytes" once after_bytes went through; "slowstart" once the proxy's
    sending socket left slow start (tcpinfo.py says why that signal), and
    after_bytes went through if given; "time" at_s seconds after the flow
    began. gradual: raise the relay's delay in steps first (gradual.py)."""

    on: str = "bytes"
    after_bytes: int | None = None
    at_s: float | None = None
    gradual: GradualDelay | None = None

    def __post_init__(self) -> None:
        if self.on not in ("bytes", "slowstart", "time"):
            raise ValueError(f"unknown hand-over trigger {self.on!r}")
        if self.on == "bytes" and self.after_bytes is None:
            raise ValueError("hand-over on bytes needs a byte count")
        if self.on == "time" and (self.at_s is None or self.at_s < 0):
            raise ValueError("hand-over on time needs a time >= 0 s")


def _rtt_s(sock: socket.socket) -> float:
    """The socket's smoothed RTT in seconds, 0 if it cannot say (closed)."""
    try:
        return tcpinfo.read(sock).rtt_us / 1e6
    except OSError:
        return 0.0


class Relay:
    """One proxied flow: a = to the client, b = to the server."""

    def __init__(
        self,
        a: socket.socket,
        b: socket.socket,
        agent_path: str | None,
        policy: Policy | None,
        attempts: int,
        stats: ProxyStats,
        drain: bool = True,
    ):
        self.a, self.b = a, b
        self.agent_path = agent_path
        self.policy = policy
        self.attempts = attempts
        self.stats = stats
        self.drain = drain
        self.relayed = 0
        self.started = time.monotonic()
        self.eof = {a: False, b: False}
        self.shut = {a: False, b: False}  # the other side was shut down after our EOF
        self.queue = {a: DelayQueue(), b: DelayQueue()}  # read from the key, to go onward
        self.sent = {a: 0, b: 0}  # bytes written to the key
        self.delay_s = 0.0
        self.ramp: Ramp | None = None
        self._next_probe = 0.0

    def _other(self, s: socket.socket) -> socket.socket:
        return self.b if s is self.a else self.a

    def _pump(self, timeout: float) -> bool:
        """Moves what is readable and due; False when both sides are done."""
        sel = selectors.DefaultSelector()
        for s in (self.a, self.b):
            if not self.eof[s] and self.queue[s].bytes < QUEUE_MAX:
                sel.register(s, selectors.EVENT_READ)
        due = [t for t in (self.queue[s].next_at() for s in (self.a, self.b)) if t is not None]
        if due:
            timeout = max(0.0, min(timeout, min(due) - time.monotonic()))
        ready = sel.select(timeout) if sel.get_map() else []
        if not sel.get_map() and due:
            time.sleep(timeout)
        sel.close()
        for key, _ in ready:
            s = self.a if key.fileobj is self.a else self.b
            try:
                data = s.recv(CHUNK)
            except ConnectionError:
                data = b""
            if not data:
                self.eof[s] = True
                continue
            self.queue[s].push(time.monotonic() + self.delay_s, data)
        now = time.monotonic()
        for s in (self.a, self.b):
            data = self.queue[s].pop_due(now)
            if data:
                self._other(s).sendall(data)
                self.sent[self._other(s)] += len(data)
                self.relayed += len(data)
                self.stats.add(relayed_bytes=len(data))
            if self.eof[s] and not self.queue[s] and not self.shut[s]:
                self.shut[s] = True  # our FIN goes after the last delayed byte
                try:
                    self._other(s).shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        return not (self.shut[self.a] and self.shut[self.b])

    def _sending(self) -> socket.socket:
        """The proxy's sending socket: the one it wrote the most to (a download's
        is the client's)."""
        return self.a if self.sent[self.a] >= self.sent[self.b] else self.b

    def _due(self) -> bool:
        """The policy's moment has come."""
        p = self.policy
        assert p is not None
        if p.after_bytes is not None and self.relayed < p.after_bytes:
            return False
        if p.on == "bytes":
            return True
        if p.on == "time":
            return time.monotonic() - self.started >= (p.at_s or 0.0)
        now = time.monotonic()
        if now < self._next_probe:  # TCP_INFO costs a syscall: every SLOWSTART_POLL_S
            return False
        self._next_probe = now + SLOWSTART_POLL_S
        try:
            info = tcpinfo.read(self._sending())
        except OSError:  # the connection went meanwhile: the relay loop will see it
            return False
        if info.left_slow_start:
            self.stats.event(
                "slowstart_end",
                cwnd=info.cwnd,
                ssthresh=info.ssthresh,
                rtt_ms=info.rtt_us / 1e3,
                bytes=self.relayed,
            )
            return True
        return False

    def _ramp_step(self) -> bool:
        """Advances the gradual delay; True once it is complete."""
        spec = self.policy.gradual if self.policy else None
        if spec is None:
            return True
        now = time.monotonic()
        sending = self._sending()
        if self.ramp is None:
            # What the removal adds to the sender's loop is the connection it is
            # not on: for a download, the proxy's connection to the client, the
            # proxy's own sending socket, whose RTT it measures best.
            target = spec.target_ms
            if target is None:
                target = _rtt_s(sending) * 1e3
            self.ramp = Ramp(spec, target, now)
            self.stats.event("ramp_start", target_ms=round(target, 2))
        # The sender's loop: its own connection's RTT (the one the proxy is not
        # sending on) plus the delay the proxy adds now.
        other = _rtt_s(self._other(sending))
        new = self.ramp.advance(now, other)
        if new is not None:
            self.delay_s = new
            self.stats.event("delay", delay_ms=round(new * 1e3, 2))
        return self.ramp.done

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
            failpoints.reach("proxy_registered")
        except (Refused, OSError) as exc:
            log.warning("not registered (%s): relaying", exc)
            self.stats.refusal(exc.code if isinstance(exc, Refused) else "agent_lost")
            client.close()
            return None
        return client

    def run(self) -> None:
        client = None
        try:
            policy = self.policy
            if self.agent_path and policy is not None:
                client = self._register(self.agent_path)
            attempts, quick = self.attempts, QUICK_RETRIES
            triggered = False
            retry_at: int | None = None  # after a refusal, relay up to here first
            while self._pump(PUMP_S if triggered else IDLE_PUMP_S):
                if not (client and attempts):
                    continue
                if retry_at is not None and self.relayed < retry_at:
                    continue
                if not triggered:
                    triggered = self._due()
                    if triggered:
                        self.stats.event("trigger", bytes=self.relayed)
                if not triggered or not self._ramp_step():
                    continue
                refused = self._handover(client)
                if refused is None or refused == SPLICED_WITHOUT_ANSWER:
                    return
                if refused == AGENT_LOST:  # relay to the end, without an agent
                    client.close()
                    client = None
                    continue
                # Data that came in during the attempt: try again at once, on a
                # budget of its own (a busy host makes these common).
                again = self.drain and refused in ("buffers_not_empty", "state_moved") and quick > 0
                if again:
                    quick -= 1
                else:
                    attempts -= 1
                retry_at = self.relayed + (0 if again else RETRY_BYTES)
        except Exception:
            log.exception("relay failed")
        finally:
            if client:
                client.close()
            self.a.close()
            self.b.close()

    def _quiet(self) -> bool:
        return all(queued(s) == (0, 0) for s in (self.a, self.b)) and not any(
            self.queue[s] for s in (self.a, self.b)
        )

    def _handover(self, client: AgentClient) -> str | None:
        """None once handed over, else why not."""
        t0 = time.perf_counter()
        if self.drain:
            try:
                client.hold(self.a, self.b)
                failpoints.reach("proxy_held")
            except Refused as exc:  # not held: nothing to undo, keep relaying
                self.stats.refusal(exc.code)
                return exc.code
            except OSError:
                self.stats.refusal(AGENT_LOST)
                return AGENT_LOST
            # Whatever waits in the delay queue goes now: the drain needs it acked.
            self.delay_s = 0.0
            for q in self.queue.values():
                q.release_all()
            if not self._drain(client):
                return "drain_timeout"
        t1 = time.perf_counter()
        try:
            splice = client.offload(self.a, self.b)
        except Refused as exc:  # offload lifts the hold either way
            log.info("hand-over refused (%s): %s", exc.code, exc.message)
            self.stats.refusal(exc.code)
            self.stats.event("refused", code=exc.code)
            return exc.code
        except OSError:
            return self._agent_lost_in_offload()
        t2 = time.perf_counter()
        failpoints.reach("proxy_handed_over")
        log.info("handed over as splice %s after %d bytes", splice["id"], self.relayed)
        self.stats.add(handed_over=1)
        self.stats.event("handed_over", bytes=self.relayed, ms=round((t2 - t0) * 1e3, 2))
        with self.stats.lock:
            self.stats.handover_ms.append((t2 - t0) * 1e3)
            self.stats.offload_ms.append((t2 - t1) * 1e3)
        return None

    def _agent_lost_in_offload(self) -> str:
        """The agent went away during the offload. Sockets it had not yet put in
        repair mode are as they were: relay on. Sockets in repair mode are the
        next agent's to finish (PROTOCOL.md, "the agent dies"): it disconnects
        them if their splice is in the data plane (close them: that sends
        nothing) or takes them out of repair mode (relay on). If no agent comes
        back in time they are closed, in repair mode, silently."""
        self.stats.refusal(AGENT_LOST)
        deadline = time.monotonic() + RECOVER_WAIT_S
        while True:
            if any(_disconnected(s) for s in (self.a, self.b)):
                log.warning("agent lost during the offload, the flow spliced: closing our sockets")
                return SPLICED_WITHOUT_ANSWER
            if not any(s.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR) for s in (self.a, self.b)):
                log.warning("agent lost during the offload, our sockets as they were: relaying")
                return AGENT_LOST
            if time.monotonic() > deadline:
                log.warning("agent lost during the offload and not back: closing our sockets")
                return SPLICED_WITHOUT_ANSWER
            time.sleep(RECOVER_POLL_S)

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


def _fastopen_connect(hop: Hop) -> socket.socket:
    """A connection whose first write (the chain header) goes in its SYN when
    the kernel holds a Fast Open cookie for hop (after a first connection),
    so the next proxy learns its own next hop half a round trip after the
    SYN left instead of one and a half; without a cookie, a plain connect."""
    s = socket.socket(socket.AF_INET6 if hop.addr.version == 6 else socket.AF_INET)
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
        s.connect(hop.sockaddr)
    except OSError:
        s.close()
        raise
    return s


def _disconnected(s: socket.socket) -> bool:
    """Neutralised by the agent (disconnected in repair mode), so it has no peer."""
    try:
        s.getpeername()
    except OSError:
        return True
    return False


@dataclass(frozen=True)
class Chained:
    """A proxy inside a chain: its client side is the previous proxy, which
    starts with a chain header; only these networks may send one (a header
    names any destination: from anyone else it would make an open relay)."""

    trusted: tuple[Network, ...]

    def allows(self, peer: Hop) -> bool:
        return any(peer.addr.version == n.version and peer.addr in n for n in self.trusted)


class Proxy:
    """upstream: where every flow goes (None: transparent, where the client
    asked, or with chained: where its header says). routes: look up the
    proxies toward that destination (the ingress proxy)."""

    def __init__(
        self,
        listen: tuple[str, int],
        upstream: tuple[str, int] | None,
        agent_path: str | None,
        policy: Policy | None = None,
        attempts: int = 5,
        drain: bool = True,
        cc: str | None = None,
        routes: ChainRoutes | None = None,
        chained: Chained | None = None,
        fastopen: bool = False,
    ):
        if chained is not None and (upstream is not None or routes is not None):
            raise ValueError("a chained proxy takes its next hop from the header")
        self.upstream = upstream
        self.routes = routes
        self.chained = chained
        self.fastopen = fastopen
        self.cc = cc
        self.drain = drain
        self.agent_path = agent_path
        self.policy = policy
        self.attempts = attempts
        self.stats = ProxyStats()
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if upstream is None and chained is None:  # transparent: TPROXY gives us any address
            self.listener.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
        if fastopen:  # a previous proxy's header may come in its SYN
            self.listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, FASTOPEN_QUEUE)
        self.listener.bind(listen)
        self.listener.listen(1024)

    def serve_forever(self) -> None:
        while True:
            a, _ = self.listener.accept()
            threading.Thread(target=self._flow, args=(a,), daemon=True).start()

    def _transparent_connect(self, a: socket.socket) -> socket.socket:
        # The same four-tuple on both sides, as if there were no proxy.
        b = socket.socket(a.family, socket.SOCK_STREAM)
        try:
            b.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
            b.bind(a.getpeername())
            b.connect(a.getsockname())
        except OSError:
            b.close()
            raise
        return b

    def _connect_upstream(self, a: socket.socket) -> tuple[socket.socket, bytes]:
        """The connection onward and the header to start it with (b"" for none)."""
        client = Hop.of(*a.getpeername()[:2])
        if self.chained is not None:
            if not self.chained.allows(client):
                raise HeaderError(f"chain header from {client}, not a trusted proxy")
            header = ppv2.read(a, HEADER_TIMEOUT_S)
            source, destination, hops = header.source, header.destination, header.rest
        else:
            source = client
            if self.upstream is not None:
                destination = Hop.of(*self.upstream)
            else:
                destination = Hop.of(*a.getsockname()[:2])
            route = self.routes.route(destination) if self.routes else None
            hops = route.hops if route else ()
            if route is not None:
                self.stats.event("chain", path=list(route.path), rounds=route.rounds)
        if not hops:
            if self.upstream is None and self.chained is None:
                return self._transparent_connect(a), b""
            return socket.create_connection(destination.sockaddr), b""
        if source.family != destination.family:  # a v4 client of a v6 server, say
            source = Hop.of("::" if destination.addr.version == 6 else "0.0.0.0", 0)
        onward = ChainHeader(source, destination, hops[1:]).encode()
        if self.fastopen:
            return _fastopen_connect(hops[0]), onward
        return socket.create_connection(hops[0].sockaddr), onward

    def _flow(self, a: socket.socket) -> None:
        self.stats.add(flows=1)
        try:
            b, header = self._connect_upstream(a)
        except (OSError, ValueError) as exc:  # HeaderError is a ValueError
            log.warning("no connection onward: %s", exc)
            self.stats.refusal("no_upstream")
            a.close()
            return
        try:
            # Part of B's byte stream before the client's first byte: the
            # offload's sequence deltas, taken from the sockets, include it.
            b.sendall(header)
        except OSError as exc:
            log.warning("chain header not sent: %s", exc)
            a.close()
            b.close()
            return
        for s in (a, b):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.cc:
                try:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, self.cc.encode())
                except OSError as exc:
                    log.warning("congestion control %s: %s", self.cc, exc.strerror)
        Relay(a, b, self.agent_path, self.policy, self.attempts, self.stats, self.drain).run()
