"""Which learned TSval a hand-over may anchor its timestamp deltas on.

The translated clocks start at the proxy sockets' own clocks and move with
the peers' TSvals from the anchor on (handover.build_entries), so an anchor
ahead of the peer's real clock turns every translated TSval into one from the
past, and the other end drops the flow by PAWS. Any TSval the peer really
sent is safe. A blind spoofer can send segments of the flow with any TSval,
as it can any RST; so, as a TCP stack does (RFC 9293 3.10.7.4, RFC 5961 5.2),
a record counts only if its segment was acceptable to the socket: its seq
within the receive window around rcv_nxt and its ack within the peer's
largest window behind snd_nxt. A spoofed segment passes both with odds of
about (2 * rcv_wnd / 2^32) * (max_window / 2^32); a real one, even the last
of a bulk transfer, always does.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass

from mosto.agent.kernel.poke import RepairWindow, repair_window
from mosto.agent.kernel.tcpstate import TcpState, enter_repair, leave_repair, read_state
from mosto.dataplane.learning import Learned

U32 = 1 << 32
# A window smaller than an unscaled one widens to it: a peer's last segment
# may be a full one behind rcv_nxt even when our window has closed since.
WINDOW_FLOOR = 0xFFFF


@dataclass(frozen=True)
class Windows:
    """One socket's sequence space, as its peer's segments must fit it."""

    rcv_nxt: int
    rcv_wnd: int  # what we offered, bytes
    snd_nxt: int
    max_window: int  # the largest window the peer offered, bytes


def windows(state: TcpState, w: RepairWindow) -> Windows:
    """From a read in repair mode (state) and the socket's repair_window()."""
    assert state.rcv_nxt is not None and state.snd_nxt is not None
    return Windows(state.rcv_nxt, w.rcv_wnd, state.snd_nxt, w.max_window)


def read_windows(sock: socket.socket) -> Windows:
    """The windows of a live socket, through a moment in repair mode."""
    enter_repair(sock)
    try:
        state = read_state(sock, repair=True)
        w = repair_window(sock)
    finally:
        leave_repair(sock)
    return windows(state, w)


def in_window(rec: Learned, w: Windows) -> bool:
    span = max(w.rcv_wnd, WINDOW_FLOOR)
    ahead = (rec.seq - w.rcv_nxt) % U32
    seq_ok = ahead <= span or U32 - ahead <= span
    ack_ok = (w.snd_nxt - rec.ack) % U32 <= max(w.max_window, WINDOW_FLOOR)
    return seq_ok and ack_ok


def pick(records: Sequence[Learned], w: Windows) -> Learned | None:
    """The latest record (records come oldest first) whose segment was in window."""
    return next((r for r in reversed(records) if in_window(r, w)), None)
