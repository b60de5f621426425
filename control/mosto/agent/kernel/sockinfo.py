"""Facts about a passed socket that decide whether the agent may trust it:
its network namespace, repair mode, transparency, TCP-MD5/TCP-AO, identity.

TCP_MD5SIG cannot be read back, so MD5 is read from sock_diag (the
INET_DIAG_MD5SIG attribute, which the kernel adds for CAP_NET_ADMIN callers
when INET_DIAG_INFO is asked for); TCP-AO from getsockopt(TCP_AO_INFO).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from dataclasses import dataclass

from pyroute2 import IPRoute, NetlinkError

from mosto.agent.kernel import netinfo
from mosto.agent.kernel.tcpstate import TCP_REPAIR, Address, plain_address
from mosto.agent.kernel.threadsock import thread_socket

SO_NETNS_COOKIE = 71  # <asm-generic/socket.h>, Linux 5.14
IP_TRANSPARENT, IPV6_TRANSPARENT = 19, 75
TCP_AO_INFO = 40  # <linux/tcp.h>, Linux 6.7
SOCK_DIAG_BY_FAMILY, NETLINK_SOCK_DIAG = 20, 4
NLMSG_ERROR, NLM_F_REQUEST = 2, 1
INET_DIAG_INFO, INET_DIAG_MD5SIG = 2, 18
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
RTN_LOCAL = 2
_DIAG_MSG_LEN = 72  # struct inet_diag_msg


class DiagError(Exception):
    pass


def netns_cookie(sock: socket.socket) -> int:
    return struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def in_repair(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR) != 0


def transparent(sock: socket.socket) -> bool:
    """IP(V6)_TRANSPARENT: only CAP_NET_ADMIN (or NET_RAW) in the socket's netns sets it."""
    if sock.family == socket.AF_INET6:
        return sock.getsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT) != 0
    return sock.getsockopt(socket.IPPROTO_IP, IP_TRANSPARENT) != 0


_ao_in_kernel = True  # until a getsockopt says otherwise (ENOPROTOOPT)


def tcp_ao(sock: socket.socket) -> bool:
    global _ao_in_kernel
    if not _ao_in_kernel:
        return False
    try:
        sock.getsockopt(socket.IPPROTO_TCP, TCP_AO_INFO, 48)
    except OSError as exc:
        if exc.errno == errno.ENOPROTOOPT:  # no TCP-AO in this kernel: never ask again
            _ao_in_kernel = False
            return False
        if exc.errno in (errno.ENOENT, errno.EINVAL):
            return False  # no AO key on this socket
        raise
    return True


def is_local(addr: Address) -> bool:
    """Whether addr is one of this network namespace's own addresses. Only the
    kernel's answer says no: a lookup that fails (pyroute2 opens an event loop
    per thread, which fails with EMFILE) raises, it is no answer to cache."""

    def get(ipr: IPRoute) -> list:
        try:
            return list(ipr.route("get", dst=str(addr)))
        except NetlinkError:  # no route at all
            return []

    routes = netinfo.rtnl(get)
    return bool(routes) and routes[0]["type"] == RTN_LOCAL


@dataclass(frozen=True)
class Diag:
    inode: int
    uid: int
    state: int
    md5: bool


def _packed(addr: Address) -> bytes:
    return addr.packed.ljust(16, b"\0")


def diag(
    family: int, local: tuple[Address, int], peer: tuple[Address, int], want_inode: int = 0
) -> Diag | None:
    """The socket with this four-tuple in the agent's netns, or None if there is none."""
    la, pa = local[0], peer[0]
    if family == socket.AF_INET6 and la.version == 4:  # a v4-mapped socket is hashed as v4
        family = socket.AF_INET
    sockid = (
        struct.pack("!HH", local[1], peer[1])
        + _packed(la)
        + _packed(pa)
        + struct.pack("=III", 0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    )
    ext = 1 << (INET_DIAG_INFO - 1)  # the aux attributes, MD5SIG among them, come with it
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, ext, 0, 0xFFFFFFFF)  # any state
    body = req + sockid
    data = _diag_round_trip(body)
    length, kind = struct.unpack_from("=IH", data)
    if kind == NLMSG_ERROR:
        (err,) = struct.unpack_from("=i", data, 16)
        if -err == errno.ENOENT:
            return None
        raise DiagError(f"sock_diag: {os.strerror(-err)}")
    msg = 16
    state = data[msg + 1]
    uid, inode = struct.unpack_from("=II", data, msg + _DIAG_MSG_LEN - 8)
    md5 = False
    off = msg + _DIAG_MSG_LEN
    while off + 4 <= length:
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            break
        md5 = md5 or atype == INET_DIAG_MD5SIG
        off += (alen + 3) & ~3
    return Diag(inode, uid, state, md5)


_diag = threading.local()  # each thread's sequence number on its sock_diag socket
_DIAG_BUF = 8192  # one socket's answer: the message, TCP_INFO and a few attributes
_DIAG_STALE_MAX = 4  # late answers skipped (a request cut short by an exception)


def _diag_round_trip(body: bytes) -> bytes:
    """One request on the thread's netlink socket (threadsock.py); the answer
    to this request's sequence number, any late answer to an earlier one skipped."""
    nl = thread_socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    _diag.seq = seq = (getattr(_diag, "seq", 0) + 1) & 0xFFFFFFFF
    hdr = struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0)
    nl.send(hdr + body)
    for _ in range(_DIAG_STALE_MAX + 1):
        data = nl.recv(_DIAG_BUF)
        if len(data) >= 16 and struct.unpack_from("=I", data, 8)[0] == seq:
            return data
    raise DiagError("sock_diag: no answer to the request")


def endpoint(addr: tuple) -> tuple[Address, int]:
    return plain_address(addr[0]), addr[1]
