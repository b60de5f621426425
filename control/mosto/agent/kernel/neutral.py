"""After a hand-over: the proxy's sockets disconnected without a packet, and the
flow's four-tuples kept by sockets of the agent's own.

A socket in repair mode lets its holder set sequence numbers, bind over ports
in use and connect without a handshake, so none goes back to a proxy in it:
connect(AF_UNSPEC) in repair mode closes a connection silently (tcp_disconnect
sends no RST under repair), and TCP_REPAIR_OFF_NO_WP then leaves repair
without the window probe. The proxy is left with a closed, ordinary socket.

That frees the four-tuple, while packets of it are spliced: a reservation is
a socket of the agent bound to the same local end and connected in repair
mode (no handshake, nothing sent) to the same peer, so the kernel's
established table refuses the tuple to anyone else until the splice ends.
It stays in repair mode and in the agent's hands only; closing it in repair
mode sends nothing either.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import struct

from mosto.agent.kernel.sockinfo import IP_TRANSPARENT, IPV6_TRANSPARENT
from mosto.agent.kernel.tcpstate import (
    TCP_QUEUE_SEQ,
    TCP_RECV_QUEUE,
    TCP_REPAIR,
    TCP_REPAIR_OFF_NO_WP,
    TCP_REPAIR_ON,
    TCP_REPAIR_QUEUE,
    TCP_SEND_QUEUE,
)

log = logging.getLogger("mosto.agent")
TCP_NO_QUEUE = 0
_libc = ctypes.CDLL(None, use_errno=True)


class _SockaddrUnspec(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("data", ctypes.c_ubyte * 26)]


def disconnect(sock: socket.socket) -> None:
    """connect(AF_UNSPEC): with repair on, the connection is dropped silently."""
    addr = _SockaddrUnspec(socket.AF_UNSPEC)
    if _libc.connect(sock.fileno(), ctypes.byref(addr), ctypes.sizeof(addr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"disconnect: {os.strerror(err)}")


def no_queue(sock: socket.socket) -> None:
    """Repair mode leaves a queue selected, and TCP_QUEUE_SEQ on a closed socket
    checks only that: unselected, nobody sets sequence numbers after we leave."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)


def neutralise(sock: socket.socket) -> None:
    """The socket must be in repair mode, switched on by the agent."""
    disconnect(sock)
    no_queue(sock)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)


class Reservation:
    """An agent-owned socket holding one four-tuple; bind() first, then, once the
    original connection is gone, connect()."""

    def __init__(self, family: int, local: tuple, snd_nxt: int | None, rcv_nxt: int | None):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
            # A transparent proxy's ends are not local addresses.
            if family == socket.AF_INET6:
                self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                self.sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
            # Repair mode binds over the port in use (SK_FORCE_REUSE), so the port
            # never looks free, not even between the disconnect and the connect.
            self.sock.bind(local)
            for queue, seq in ((TCP_SEND_QUEUE, snd_nxt), (TCP_RECV_QUEUE, rcv_nxt)):
                if seq is not None:
                    self.sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)
                    self.sock.setsockopt(
                        socket.IPPROTO_TCP, TCP_QUEUE_SEQ, struct.pack("I", seq)
                    )  # a u32: an int option would be a signed C int
        except OSError:
            self.sock.close()
            raise

    def connect(self, peer: tuple) -> None:
        self.sock.connect(peer)  # repair mode: ESTABLISHED at once, no SYN

    def close(self) -> None:
        self.sock.close()  # still in repair mode: nothing is sent


def reserve(family: int, local: tuple, peer: tuple) -> Reservation | None:
    """A reservation for a four-tuple nobody holds (a restarted agent's splices)."""
    try:
        r = Reservation(family, local, None, None)
    except OSError as exc:
        log.warning("cannot reserve %s -> %s: %s", local, peer, exc.strerror)
        return None
    try:
        r.connect(peer)
    except OSError as exc:
        log.warning("cannot reserve %s -> %s: %s", local, peer, exc.strerror)
        r.close()
        return None
    return r
