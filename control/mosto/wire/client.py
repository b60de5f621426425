"""The Python client of the offload agent, for proxies.

    client = AgentClient()                 # /run/mosto/agent.sock
    client.register(conn_a, conn_b)        # when both connections are up
    ...
    client.hold(conn_a, conn_b)            # bulk flows: stop the senders' data
    (relay what is queued; wait until both sockets' send queues are acked)
    splice = client.offload(conn_a, conn_b)  # raises a mosto.wire.refusal.Refused
    conn_a.close(); conn_b.close()         # neutralised by the agent: nothing is sent

conn_a is the connection to the client, conn_b the one to the server.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from mosto import failpoints
from mosto.wire import protocol, refusal
from mosto.wire.refusal import Refused

__all__ = ["AgentClient", "Refused"]


class AgentClient:
    def __init__(self, path: str = protocol.DEFAULT_SOCKET):
        self.path = path
        self._sock = self._connect()
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise ConnectionError(
                f"cannot reach the mosto agent at {self.path}: {exc.strerror}"
            ) from None
        return sock

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _recv(self) -> dict[str, Any]:
        reply, fds = protocol.recv(self._sock)
        for fd in fds:
            socket.close(fd)
        if reply is None:
            raise ConnectionError("the mosto agent closed the connection")
        if not reply.get("ok"):
            raise refusal.from_code(reply.get("error", ""), reply.get("message", ""))
        return reply

    def _call(self, doc: dict[str, Any], socks: tuple[socket.socket, ...] = ()) -> dict:
        """One request and its answer; a paged answer ("more": true on all pages
        but the last) is gathered into one: lists concatenated, the rest from the
        last page."""
        with self._lock:
            protocol.send(self._sock, doc, [s.fileno() for s in socks])
            failpoints.reach(f"proxy_{doc.get('op')}_sent")
            reply = self._recv()
            while reply.pop("more", False):
                page = self._recv()
                for key, value in page.items():
                    if isinstance(value, list) and isinstance(reply.get(key), list):
                        reply[key].extend(value)
                    else:
                        reply[key] = value
            reply.pop("more", None)
        return reply

    def register(self, conn_a: socket.socket, conn_b: socket.socket) -> dict:
        """Lets the data plane learn both peers' timestamps before the hand-over."""
        return self._call({"op": "register"}, (conn_a, conn_b))["flow"]

    def hold(self, conn_a: socket.socket, conn_b: socket.socket) -> None:
        self._call({"op": "hold"}, (conn_a, conn_b))

    def unhold(self, conn_a: socket.socket, conn_b: socket.socket) -> None:
        self._call({"op": "unhold"}, (conn_a, conn_b))

    def offload(self, conn_a: socket.socket, conn_b: socket.socket) -> dict:
        """The hand-over: the splice (a dict, see PROTOCOL.md), or a Refused."""
        return self._call({"op": "offload"}, (conn_a, conn_b))["splice"]

    def offload_many(
        self, pairs: Sequence[tuple[socket.socket, socket.socket]]
    ) -> list[dict | Refused]:
        """Hand-overs of up to 64 pairs in one request: for each pair, in order,
        its splice or its Refused (the other pairs are not affected)."""
        socks = tuple(s for pair in pairs for s in pair)
        results = self._call({"op": "offload_many"}, socks)["results"]
        return [
            r["splice"] if r.get("ok") else refusal.from_code(r["error"], r["message"])
            for r in results
        ]

    def release(self, splice_id: int) -> dict:
        return self._call({"op": "release", "splice": splice_id})["stats"]

    def list(self) -> list[dict]:
        return self._call({"op": "list"})["splices"]

    def stats(self) -> dict:
        reply = self._call({"op": "stats"})
        reply.pop("ok")
        return reply

    def watch(self) -> Iterator[dict]:
        """Events (spliced, fin, rst, removed) until the agent goes away."""
        sock = self._connect()
        with sock:
            protocol.send(sock, {"op": "watch"})
            while True:
                doc, fds = protocol.recv(sock)
                for fd in fds:
                    socket.close(fd)
                if doc is None:
                    return
                if "event" in doc:
                    yield doc
