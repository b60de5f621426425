"""The agent's wire format: one JSON document per SOCK_SEQPACKET message,
socket descriptors attached with SCM_RIGHTS. See PROTOCOL.md."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

DEFAULT_SOCKET = "/run/mosto/agent.sock"
MAX_MESSAGE = 64 * 1024
MAX_FDS = 128  # offload_many: 64 pairs (mosto.agent.requests.MAX_BATCH)
MAX_DEPTH = 8  # requests are flat; answers nest a few levels (splice > entries > entry)
MAX_NUMBER_DIGITS = 20  # a u64 fits; Python would otherwise parse 4,300-digit integers


class ProtocolError(Exception):
    pass


def send(sock: socket.socket, doc: dict[str, Any], fds: list[int] | None = None) -> None:
    data = encode(doc)
    socket.send_fds(sock, [data], fds or [])


def encode(doc: dict[str, Any]) -> bytes:
    data = json.dumps(doc, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the descriptors it carried; (None, []) when the peer closed.
    A malformed message raises ProtocolError with its descriptors already closed."""
    data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS + 1)
    try:
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            raise ProtocolError("message or descriptors truncated")
        if len(fds) > MAX_FDS:
            raise ProtocolError(f"at most {MAX_FDS} descriptors, got {len(fds)}")
        if not data:
            if fds:  # an empty datagram with descriptors: not an EOF
                raise ProtocolError("an empty message")
            return None, []
        return decode(data), fds
    except ProtocolError:
        for fd in fds:
            os.close(fd)
        raise


def _depth(data: bytes) -> int:
    """Bracket nesting outside strings, found before json.loads recurses."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _number(text: str) -> int | float:
    if len(text) > MAX_NUMBER_DIGITS:
        raise ProtocolError(f"a number of {len(text)} digits")
    return float(text) if any(c in text for c in ".eE") else int(text)


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A key given twice is ambiguous (json.loads would keep the last): refused."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        keys = [k for k, _ in pairs]
        dup = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise ProtocolError(f"key {dup[:32]!r} given twice")
    return doc


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not JSON")


_decoder = json.JSONDecoder(
    parse_int=_number,
    parse_float=_number,
    parse_constant=_no_constant,
    object_pairs_hook=_no_repeats,
)


def decode(data: bytes) -> dict[str, Any]:
    # No deeper than its opening brackets (strings' included): most messages
    # need no walk byte by byte.
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _depth(data) > MAX_DEPTH:
        raise ProtocolError(f"JSON nested deeper than {MAX_DEPTH}")
    try:
        doc = _decoder.decode(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("a message must be a JSON object")
    return doc
