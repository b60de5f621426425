"""The few TCP_INFO fields the proxy decides by (Linux `struct tcp_info`).

Why these: the proxy only helps a flow while its sender is in slow start
(shorter loops grow the window faster); once slow start is over the proxy
can go (paper, IV-C). The kernel itself says when that is: slow start is
`snd_cwnd < snd_ssthresh`, and ssthresh stays at "infinite" (0x7fffffff)
until the congestion control first decides the pipe is full. CUBIC (and
Reno) set it on the first loss or when HyStart sees the delay grow; BBR sets
it when it leaves STARTUP (the bandwidth stopped growing for three rounds).
So "ssthresh is finite" is the end of the initial slow start for every
congestion control the kernel has, read without guessing from sending rates
as the paper's Miniproxy had to. Not `cwnd >= ssthresh`: right after the
decision cwnd is often below ssthresh (CUBIC in loss recovery, BBR draining
its queue), which the kernel's own test would call slow start again.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

INFINITE_SSTHRESH = 0x7FFFFFFF
# Offsets in struct tcp_info (include/uapi/linux/tcp.h), stable since 2.6:
# 8 bytes of u8 fields, then u32s: rto at 8 ... rtt at 68, rttvar 72,
# snd_ssthresh 76, snd_cwnd 80, total_retrans 100; min_rtt (4.6+) at 148.
_HEAD = struct.Struct("=B7x")
_U32 = struct.Struct("=I")
_LEN = 152
_OFFSETS = {"rtt_us": 68, "rttvar_us": 72, "ssthresh": 76, "cwnd": 80, "total_retrans": 100}
_MIN_RTT = 148


@dataclass(frozen=True)
class TcpInfo:
    state: int
    rtt_us: int  # smoothed RTT
    rttvar_us: int
    ssthresh: int  # segments; INFINITE_SSTHRESH until the first decision
    cwnd: int  # segments
    total_retrans: int
    min_rtt_us: int | None  # None on kernels before 4.6

    @property
    def in_slow_start(self) -> bool:
        """The kernel's own test (tcp_in_slow_start)."""
        return self.cwnd < self.ssthresh

    @property
    def left_slow_start(self) -> bool:
        """The initial slow start is over: the congestion control set ssthresh."""
        return self.ssthresh < INFINITE_SSTHRESH


def read(sock: socket.socket) -> TcpInfo:
    """TCP_INFO of a connected TCP socket (OSError if it is none)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _LEN)
    if len(raw) < _OFFSETS["total_retrans"] + 4:
        raise OSError(f"TCP_INFO too short ({len(raw)} bytes)")
    fields = {k: _U32.unpack_from(raw, off)[0] for k, off in _OFFSETS.items()}
    min_rtt = _U32.unpack_from(raw, _MIN_RTT)[0] if len(raw) >= _MIN_RTT + 4 else None
    return TcpInfo(state=_HEAD.unpack_from(raw)[0], min_rtt_us=min_rtt, **fields)
