"""One netlink request and its answer, on a socket the calling thread keeps
(threadsock.py): the agent's route, link, neighbour and sock_diag lookups.

Not pyroute2, for these: a route lookup through pyroute2 0.9.7 cost 256 us of
CPU in the thread that opened its socket and 626 us in any other (it builds
and closes an asyncio event loop per request there, and fails with EMFILE
when the process is out of descriptors); the same request here costs 9 us.
A hand-over looks up both peers, and a proxy's clients are many addresses.
"""

from __future__ import annotations

import os
import socket
import struct
import threading

from mosto.agent.kernel.threadsock import thread_socket

NLMSG = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, seq, pid
NLA = struct.Struct("=HH")  # struct nlattr: length, type
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
KERNEL = 0  # the kernel's port id
NLA_ALIGN = 4
ANSWER_MAX = 32768  # one answer: a link's attributes are the longest, a few KiB
STALE_MAX = 4  # late answers skipped (a request cut short by an exception)

_thread = threading.local()  # seq: the thread's last sequence number, per protocol


class NetlinkError(Exception):
    """The kernel's answer was an error (its errno): no such route, entry or socket."""

    def __init__(self, err: int, what: str):
        super().__init__(f"{what}: {os.strerror(err)}")
        self.errno = err


class NoAnswer(OSError):
    """No answer to the request came (only late answers to earlier ones): like
    a request that could not be made, no answer of the kernel's."""


def request(proto: int, kind: int, body: bytes, what: str) -> tuple[int, bytes]:
    """The answer (its type and payload) to one request of this kind. Raises
    NetlinkError if the kernel answered with an error, OSError if the request
    could not be made (out of descriptors, say) or got no answer (NoAnswer)."""
    nl = thread_socket(socket.AF_NETLINK, socket.SOCK_DGRAM, proto)
    last: dict[int, int] = _thread.__dict__.setdefault("seq", {})
    last[proto] = seq = (last.get(proto, 0) + 1) & 0xFFFFFFFF
    nl.send(NLMSG.pack(NLMSG.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body)
    for _ in range(STALE_MAX + 1):
        data, (sender, _) = nl.recvfrom(ANSWER_MAX)
        if sender != KERNEL or len(data) < NLMSG.size:
            continue  # only the kernel answers (no other process may write here, anyway)
        length, answer, _, got, _ = NLMSG.unpack_from(data)
        if got != seq:
            continue
        payload = data[NLMSG.size : min(length, len(data))]
        if answer == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", payload)
            if err:
                raise NetlinkError(-err, what)
        return answer, payload
    raise NoAnswer(f"{what}: no answer to the request")


def attributes(payload: bytes, start: int) -> dict[int, bytes]:
    """The attributes after a message's fixed part (the first of each type)."""
    found: dict[int, bytes] = {}
    off = start
    while off + NLA.size <= len(payload):
        length, kind = NLA.unpack_from(payload, off)
        if length < NLA.size or off + length > len(payload):
            break
        found.setdefault(kind & 0x3FFF, payload[off + NLA.size : off + length])  # no flag bits
        off += (length + NLA_ALIGN - 1) & ~(NLA_ALIGN - 1)
    return found


def attribute(kind: int, value: bytes) -> bytes:
    pad = -(NLA.size + len(value)) % NLA_ALIGN
    return NLA.pack(NLA.size + len(value), kind) + value + b"\0" * pad
