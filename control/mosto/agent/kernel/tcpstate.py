"""What the kernel knows of a connected TCP socket, read through its fd.

Sequence numbers need TCP_REPAIR (CAP_NET_ADMIN): in repair mode
TCP_QUEUE_SEQ reads the send queue's write_seq (snd_nxt once everything is
sent) and the receive queue's rcv_nxt. The rest comes from TCP_INFO,
TCP_MAXSEG, TCP_TIMESTAMP (the socket's own TS clock) and the queue ioctls.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import socket
import struct
import weakref
from dataclasses import dataclass

from mosto.wire.queues import queued

TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_TIMESTAMP = 24
TCP_RECV_QUEUE, TCP_SEND_QUEUE = 1, 2
TCP_REPAIR_ON, TCP_REPAIR_OFF, TCP_REPAIR_OFF_NO_WP = 1, 0, -1
TCP_ESTABLISHED = 1
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 1, 2, 4
_TCP_INFO_LEN = 104  # up to tcpi_total_retrans: every field read here

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=65536)  # a hand-over parses each end thrice; peers repeat
def plain_address(addr: str) -> Address:
    """IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are IPv4 on the wire."""
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class TcpInfo:
    state: int
    timestamps: bool
    sack: bool
    wscale: bool
    snd_wscale: int  # the peer's shift: how we read its windows
    rcv_wscale: int  # our shift: how the peer reads our windows
    snd_mss: int
    advmss: int
    rtt_us: int  # smoothed RTT


@dataclass(frozen=True)
class TcpState:
    """One connection as seen from the proxy's socket."""

    local: tuple[Address, int]
    peer: tuple[Address, int]
    info: TcpInfo
    inq: int  # bytes received, not read by the proxy
    outq: int  # bytes written, not yet acknowledged by the peer
    snd_nxt: int | None = None  # only in repair mode
    rcv_nxt: int | None = None
    ts_clock: int | None = None  # this socket's TSval clock now; only in repair mode


def tcp_info(sock: socket.socket) -> TcpInfo:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    state, options, wscales = raw[0], raw[5], raw[6]
    (snd_mss,) = struct.unpack_from("=I", raw, 16)
    (rtt_us,) = struct.unpack_from("=I", raw, 68)
    (advmss,) = struct.unpack_from("=I", raw, 84)
    return TcpInfo(
        state=state,
        timestamps=bool(options & TCPI_OPT_TIMESTAMPS),
        sack=bool(options & TCPI_OPT_SACK),
        wscale=bool(options & TCPI_OPT_WSCALE),
        snd_wscale=wscales & 0xF,
        rcv_wscale=wscales >> 4,
        snd_mss=snd_mss,
        advmss=advmss,
        rtt_us=rtt_us,
    )


def _endpoint(addr: tuple) -> tuple[Address, int]:
    return plain_address(addr[0]), addr[1]


def read_state(sock: socket.socket, repair: bool = False) -> TcpState:
    """Reads the socket; with repair=True it must already be in repair mode."""
    snd_nxt = rcv_nxt = ts_clock = None
    if repair:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        snd_nxt = _u32_opt(sock, TCP_QUEUE_SEQ)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        rcv_nxt = _u32_opt(sock, TCP_QUEUE_SEQ)
    info = tcp_info(sock)
    inq, outq = queued(sock)
    if repair and info.timestamps:  # only the entries and pokes use it, from such a read
        ts_clock = _u32_opt(sock, TCP_TIMESTAMP)
    return TcpState(
        local=_endpoint(sock.getsockname()),
        peer=_endpoint(sock.getpeername()),
        info=info,
        inq=inq,
        outq=outq,
        snd_nxt=snd_nxt,
        rcv_nxt=rcv_nxt,
        ts_clock=ts_clock,
    )


def _u32_opt(sock: socket.socket, opt: int) -> int:
    return struct.unpack("I", sock.getsockopt(socket.IPPROTO_TCP, opt, 4))[0]


# Leaving repair mode sets the socket's sk_reuse to SK_NO_REUSE: the proxy's
# SO_REUSEADDR (which lets it bind its port again past a TIME_WAIT) would be
# lost. Kept here between enter and leave, and put back.
_reuse: weakref.WeakKeyDictionary[socket.socket, int] = weakref.WeakKeyDictionary()


def enter_repair(sock: socket.socket) -> None:
    _reuse[sock] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)


def leave_repair(sock: socket.socket) -> None:
    """Back to normal operation, without the window probe a plain exit sends,
    and with SO_REUSEADDR as it was."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
    reuse = _reuse.pop(sock, 0)
    if reuse:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)


def probe_repair() -> str | None:
    """Why this process cannot use TCP_REPAIR, in one line, or None if it can:
    a loopback connection of its own is put in repair mode and back."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        with socket.create_connection(srv.getsockname()) as c:
            conn, _ = srv.accept()
            with conn:
                try:
                    enter_repair(c)
                except OSError as exc:
                    if exc.errno == errno.EPERM:
                        return "TCP_REPAIR needs CAP_NET_ADMIN: run the agent as root"
                    return (
                        f"this kernel has no TCP_REPAIR ({exc.strerror}; CONFIG_CHECKPOINT_RESTORE)"
                    )
                c.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
    return None
