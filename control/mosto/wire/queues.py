"""A socket's queues, as the agent judges them: a proxy offloads only when both
of its connections have nothing unread and nothing unacknowledged (PROTOCOL.md).
Plain ioctls, so a proxy needs no privilege and no mosto internals to check."""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCINQ, SIOCOUTQ = 0x541B, 0x5411  # <linux/sockios.h>: FIONREAD, TIOCOUTQ


def ioctl_int(sock: socket.socket, request: int) -> int:
    buf = fcntl.ioctl(sock.fileno(), request, b"\0" * 4)
    return struct.unpack("i", buf)[0]


def queued(sock: socket.socket) -> tuple[int, int]:
    """Bytes received but unread, and bytes sent but not yet acknowledged."""
    return ioctl_int(sock, SIOCINQ), ioctl_int(sock, SIOCOUTQ)
