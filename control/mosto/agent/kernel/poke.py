"""Making a TCP peer acknowledge now, without waiting for a timer.

After a held hand-over (agent/kernel/hold.py) the senders' windows are shut,
waiting for ACKs the hold kept back. The agent sends each peer, from the
proxy's address, a segment that repeats the last byte the proxy sent it: the
peer answers at once with an ACK (RFC 9293: a retransmission is acknowledged
at once, and a data-bearing segment escapes Linux's rate limit on answers to
out-of-window segments, unlike the zero-length window probe of TCP_REPAIR_OFF).
That ACK goes through the splice to the other end point, which learns that
everything it sent was received, and its window reopens. The segment itself
carries the proxy socket's current acknowledgement and window, so a sender
on this side is unblocked by it directly.

The peer already has the byte it repeats, so the peer discards it; its only
trace is a D-SACK block in the answer.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from scapy.utils import checksum  # the Internet checksum (RFC 1071)

from mosto.agent.kernel.tcpstate import TcpState, enter_repair, leave_repair, read_state
from mosto.agent.kernel.threadsock import thread_socket

TCP_REPAIR_WINDOW = 29  # <linux/tcp.h>: struct tcp_repair_window
_REPAIR_WINDOW = struct.Struct("=5I")  # snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup
U32, WINDOW_MAX = 1 << 32, 0xFFFF
IPPROTO_TCP, IPV4_HLEN, IP_DF, TTL = 6, 20, 0x4000, 64
TCP_HLEN, TCP_FLAG_ACK = 20, 0x10
NOP, TCPOPT_TIMESTAMP, TCPOLEN_TIMESTAMP = 1, 8, 10
PAYLOAD = b"\0"  # the repeated byte: the peer has it already and discards this copy


@dataclass(frozen=True)
class RepairWindow:
    """struct tcp_repair_window, in bytes: what the peer offered (snd_wnd, and
    the largest it ever did: max_window) and what we offered (rcv_wnd at rcv_wup)."""

    snd_wl1: int
    snd_wnd: int
    max_window: int
    rcv_wnd: int
    rcv_wup: int


def repair_window(sock: socket.socket) -> RepairWindow:
    """The socket's windows; it must be in repair mode."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, _REPAIR_WINDOW.size)
    return RepairWindow(*_REPAIR_WINDOW.unpack(raw))


def receive_window(sock: socket.socket, state: TcpState, w: RepairWindow | None = None) -> int:
    """The window field the socket would advertise now (in repair mode): what is
    left of the window it last offered, in its own scale. Never less than it
    offered: shrinking a window is what RFC 9293 asks a receiver not to do.
    w: the socket's repair_window(), if read already."""
    w = repair_window(sock) if w is None else w
    rcv_wnd, rcv_wup = w.rcv_wnd, w.rcv_wup
    assert state.rcv_nxt is not None
    left = (rcv_wup + rcv_wnd - state.rcv_nxt) % U32
    if left >= U32 // 2:  # the right edge is behind rcv_nxt: nothing is left
        left = 0
    return min(left >> state.info.rcv_wscale, WINDOW_MAX)


def segment(state: TcpState, window: int, peer_tsval: int | None) -> bytes:
    """The repeat of the last byte sent, as an IP packet from the proxy's end.
    Built with struct, not scapy: it is on the hand-over's path, and a scapy
    build costs milliseconds (tests check these bytes against scapy's parse)."""
    assert state.snd_nxt is not None and state.rcv_nxt is not None
    (laddr, lport), (paddr, pport) = state.local, state.peer
    options = b""
    if state.info.timestamps and state.ts_clock is not None and peer_tsval is not None:
        options = struct.pack(
            "!BBBBII", NOP, NOP, TCPOPT_TIMESTAMP, TCPOLEN_TIMESTAMP, state.ts_clock, peer_tsval
        )
    doff = (TCP_HLEN + len(options)) // 4
    header = struct.pack(
        "!HHIIBBHHH",
        lport,
        pport,
        (state.snd_nxt - 1) % U32,
        state.rcv_nxt,
        doff << 4,
        TCP_FLAG_ACK,
        window,
        0,
        0,
    )
    tcp = header + options + PAYLOAD
    if laddr.version == 4:
        pseudo = laddr.packed + paddr.packed + struct.pack("!BBH", 0, IPPROTO_TCP, len(tcp))
    else:
        pseudo = laddr.packed + paddr.packed + struct.pack("!I3xB", len(tcp), IPPROTO_TCP)
    csum = checksum(pseudo + tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    if laddr.version == 4:
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            IPV4_HLEN + len(tcp),
            0,
            IP_DF,
            TTL,
            IPPROTO_TCP,
            0,
            laddr.packed,
            paddr.packed,
        )
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    else:
        ip = struct.pack(
            "!IHBB16s16s", 6 << 28, len(tcp), IPPROTO_TCP, TTL, laddr.packed, paddr.packed
        )
    return ip + tcp


def poke(state: TcpState, window: int, peer_tsval: int | None) -> None:
    """Sends segment() to the peer of the socket state was read from in repair
    mode (sequence numbers and TS clock); window: receive_window() of it."""
    packet = segment(state, window, peer_tsval)
    family = socket.AF_INET if state.peer[0].version == 4 else socket.AF_INET6
    raw = thread_socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)  # send-only
    raw.sendto(packet, (str(state.peer[0]), 0))


def prompt_ack(sock: socket.socket, peer_tsval: int | None = None) -> None:
    """Makes the peer of a live socket send us a segment now (the agent learns
    its TSval from it): poke() through a moment in repair mode. Unlike the
    window probe of TCP_REPAIR_OFF, it is answered at once however recently
    the peer answered another, and a hold (which keeps back zero-length
    segments) lets it pass."""
    enter_repair(sock)
    try:
        state = read_state(sock, repair=True)
        poke(state, receive_window(sock, state), peer_tsval or 0)
    finally:
        leave_repair(sock)
