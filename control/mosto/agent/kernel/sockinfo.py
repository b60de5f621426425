"""Facts about a passed socket that decide whether the agent may trust it:
its network namespace, repair mode, transparency, TCP-MD5/TCP-AO, identity.

TCP_MD5SIG cannot be read back, so MD5 is read from sock_diag (the
INET_DIAG_MD5SIG attribute, which the kernel adds for CAP_NET_ADMIN callers
when INET_DIAG_INFO is asked for); TCP-AO from getsockopt(TCP_AO_INFO).
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from mosto.agent.kernel import netlink, rtnetlink
from mosto.agent.kernel.tcpstate import TCP_REPAIR, Address, plain_address

SO_NETNS_COOKIE = 71  # <asm-generic/socket.h>, Linux 5.14
IP_TRANSPARENT, IPV6_TRANSPARENT = 19, 75
TCP_AO_INFO = 40  # <linux/tcp.h>, Linux 6.7
SOCK_DIAG_BY_FAMILY, NETLINK_SOCK_DIAG = 20, 4
INET_DIAG_INFO, INET_DIAG_MD5SIG = 2, 18
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
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
    kernel's answer says no: a lookup that fails (out of descriptors, say)
    raises, it is no answer to cache."""
    try:
        return rtnetlink.route(addr).kind == rtnetlink.RTN_LOCAL
    except netlink.NetlinkError:  # no route at all
        return False


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
    try:
        _, payload = netlink.request(NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, body, "sock_diag")
    except netlink.NetlinkError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise DiagError(str(exc)) from None
    except netlink.NoAnswer as exc:
        raise DiagError(str(exc)) from None
    state = payload[1]
    uid, inode = struct.unpack_from("=II", payload, _DIAG_MSG_LEN - 8)
    md5 = INET_DIAG_MD5SIG in netlink.attributes(payload, _DIAG_MSG_LEN)
    return Diag(inode, uid, state, md5)


def endpoint(addr: tuple) -> tuple[Address, int]:
    return plain_address(addr[0]), addr[1]
