"""Who is asking, and whether the sockets they pass prove what they claim.

Holding a connected socket is the proof that a flow is the caller's own. It
proves nothing if the socket lives in another network namespace (anyone can
make one, with any four-tuple, in repair mode), if it is the same connection
twice, or if it is in repair mode (only CAP_NET_ADMIN switches that on).
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from dataclasses import dataclass, field

from mosto.agent.kernel import netinfo, sockinfo
from mosto.agent.kernel.tcpstate import Address, TcpState
from mosto.wire import refusal

LOCAL_CACHE_S = 1.0  # addresses rarely change; a lookup costs a netlink round trip


@dataclass(frozen=True)
class Caller:
    """The peer of an agent connection (SO_PEERCRED, SO_PEERGROUPS)."""

    uid: int
    gid: int = 0
    groups: tuple[int, ...] = ()
    admin: bool = False  # in the operator's --admin-group
    conn: int = 0  # which agent connection: its holds end with it
    pid: int = field(default=0, compare=False)

    @property
    def root(self) -> bool:
        return self.uid == 0

    @property
    def sees_all(self) -> bool:
        return self.root or self.admin


TRUSTED = Caller(0)  # in-process callers (tests, the reaper)


_own_netns: int | None = None
_local: dict[Address, tuple[float, bool]] = {}
_local_used: dict[Address, float] = {}
_local_lock = threading.Lock()


def own_netns() -> int:
    global _own_netns
    if _own_netns is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            _own_netns = sockinfo.netns_cookie(s)
    return _own_netns


def _is_local(addr: Address) -> bool:
    """Answers at most LOCAL_CACHE_S old; refresh_local() keeps the ones in use
    fresh, so requests seldom wait for netlink."""
    now = time.monotonic()
    with _local_lock:
        hit = _local.get(addr)
        _local_used[addr] = now
    if hit and now - hit[0] < LOCAL_CACHE_S:
        return hit[1]
    local = sockinfo.is_local(addr)
    with _local_lock:
        _local[addr] = (now, local)
    return local


def refresh_local() -> None:
    """For the agent's reaper: looks again at the answers half LOCAL_CACHE_S old
    of the addresses asked about most recently (as netinfo.refresh does);
    forgets the ones not asked about in netinfo.KEEP_FRESH_S."""
    now = time.monotonic()
    with _local_lock:
        for addr in [a for a, used in _local_used.items() if now - used > netinfo.KEEP_FRESH_S]:
            del _local_used[addr]
            _local.pop(addr, None)
        due = sorted(
            (a for a, (at, _) in _local.items() if now - at >= LOCAL_CACHE_S / 2),
            key=lambda a: -_local_used.get(a, 0.0),
        )[: netinfo.REFRESH_MAX]
    for addr in due:
        try:
            local = sockinfo.is_local(addr)
        except OSError:  # no lookup (out of descriptors): the answer stands until it expires
            continue
        with _local_lock:
            if addr in _local_used:
                _local[addr] = (now, local)


def check_distinct(a: socket.socket, b: socket.socket) -> None:
    """Two descriptors of one socket (dup'd, or passed twice) are one connection."""
    if os.fstat(a.fileno()).st_ino == os.fstat(b.fileno()).st_ino:
        raise refusal.SameConnection("the client and server descriptors are the same socket")


def check_socket(sock: socket.socket, name: str) -> None:
    """Before anything reads the socket's TCP state: namespace and repair mode."""
    if sockinfo.netns_cookie(sock) != own_netns():
        raise refusal.WrongNamespace(
            f"the {name} socket is in another network namespace than the agent's"
        )
    if sockinfo.in_repair(sock):
        raise refusal.InRepair(f"the {name} socket is in TCP repair mode")


def check_local(sock: socket.socket, state: TcpState, name: str) -> None:
    """A transparent socket may have any local address, but setting IP_TRANSPARENT
    takes CAP_NET_ADMIN in this namespace; IP_FREEBIND, which does not, is no excuse."""
    if not sockinfo.transparent(sock) and not _is_local(state.local[0]):
        raise refusal.NotLocal(
            f"the {name} socket's local address {state.local[0]} is not an address of this host"
        )


def check_auth(sock: socket.socket, state: TcpState, name: str) -> None:
    """TCP-MD5 or TCP-AO: the data plane cannot re-sign translated segments."""
    if sockinfo.tcp_ao(sock):
        raise refusal.TcpAuth(f"the {name} connection uses TCP-AO")
    found = sockinfo.diag(sock.family, state.local, state.peer)
    ino = os.fstat(sock.fileno()).st_ino
    if found is None or found.inode != ino:
        raise refusal.NotEstablished(f"the {name} connection is gone from the kernel's table")
    if found.md5:
        raise refusal.TcpAuth(f"the {name} connection signs its segments with TCP-MD5")


def is_socket(fd: int) -> bool:
    return stat.S_ISSOCK(os.fstat(fd).st_mode)
