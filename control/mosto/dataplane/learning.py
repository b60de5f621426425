"""What a learning entry records: the TSval of a segment, with its seq and ack.

The hand-over anchors its timestamp deltas on a TSval the peer really sent.
A blind spoofer can put any TSval in a segment of the flow, but not (except
by rare luck) a seq and an ack inside the socket's windows; so the data plane
keeps all three and the agent checks them against the socket (agent/anchor.py).
The record only moves forward (MOSTO_LEARN_SEQ_BACK): every target applies
advance(), the XDP/tc program in C (learn_tsval), the others through this.
"""

from __future__ import annotations

from dataclasses import dataclass

from mosto.dataplane.contract import LEARN_SEQ_BACK

U32 = 1 << 32


@dataclass(frozen=True)
class Learned:
    tsval: int
    seq: int
    ack: int


def moves_forward(prev: Learned | None, seq: int) -> bool:
    """Whether a segment of seq may replace prev: ahead of it, or at most
    LEARN_SEQ_BACK behind (mod 2^32, as TCP compares sequence numbers)."""
    if prev is None:
        return True
    behind = (prev.seq - seq) % U32
    return behind <= LEARN_SEQ_BACK or behind >= U32 // 2


def advance(prev: Learned | None, seg: Learned) -> Learned | None:
    """The record after a segment with a timestamp."""
    return seg if moves_forward(prev, seg.seq) else prev
