"""The agent's wire format: one JSON document per SOCK_SEQPACKET message,
socket descriptors attached with SCM_RIGHTS. See PROTOCOL.md."""

from __future__ import annotations

import json
import socket
from typing import Any

DEFAULT_SOCKET = "/run/mosto/agent.sock"
MAX_MESSAGE = 64 * 1024
MAX_FDS = 2


class ProtocolError(Exception):
    pass


def send(sock: socket.socket, doc: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(doc, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    socket.send_fds(sock, [data], fds or [])


def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the descriptors it carried; (None, []) when the peer closed."""
    data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for fd in fds:
            socket.close(fd)
        raise ProtocolError("message or descriptors truncated")
    if not data:
        return None, fds
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("a message must be a JSON object")
    return doc, fds
