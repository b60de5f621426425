"""Sockets the agent's threads keep: one of each kind per thread, made on its
first use. Made per request they cost a socket() and a close() a hand-over
each; kept per thread, each is used by one request at a time, and lives in
the namespace its thread stays in (netinfo.netns)."""

from __future__ import annotations

import socket
import threading

_mine = threading.local()


def thread_socket(family: int, kind: int, proto: int) -> socket.socket:
    socks: dict[tuple[int, int, int], socket.socket] | None = getattr(_mine, "socks", None)
    if socks is None:
        socks = _mine.socks = {}
    key = (family, kind, proto)
    if key not in socks:
        socks[key] = socket.socket(family, kind, proto)
    return socks[key]
