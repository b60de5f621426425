"""Which learned TSval the hand-over anchors on (agent/anchor.py), and how a
learning entry's record moves (dataplane/learning.py): pure Python, no root."""

from __future__ import annotations

import random

from mosto.agent.anchor import Windows, in_window, pick
from mosto.dataplane.contract import LEARN_SEQ_BACK
from mosto.dataplane.learning import U32, Learned, advance

W = Windows(rcv_nxt=U32 - 1000, rcv_wnd=1 << 20, snd_nxt=500, max_window=1 << 18)


def test_the_peers_own_segments_are_in_window():
    # the answer to a probe: seq == rcv_nxt, ack == snd_nxt; a full segment just
    # received; the last ACK of a flight acknowledged before the last bytes were sent
    for seq, ack in ((W.rcv_nxt, W.snd_nxt), (W.rcv_nxt - 1448, W.snd_nxt), (5, W.snd_nxt - 9000)):
        assert in_window(Learned(1, seq % U32, ack % U32), W)


def test_out_of_window_seq_or_ack_is_refused():
    assert not in_window(Learned(1, (W.rcv_nxt + (1 << 21)) % U32, W.snd_nxt), W)
    assert not in_window(Learned(1, (W.rcv_nxt - (1 << 21)) % U32, W.snd_nxt), W)
    assert not in_window(Learned(1, W.rcv_nxt, W.snd_nxt + 1), W)  # acks what was never sent
    assert not in_window(Learned(1, W.rcv_nxt, (W.snd_nxt - (1 << 19)) % U32), W)


def test_a_blind_spray_almost_never_passes():
    rng = random.Random(7)
    hits = sum(
        in_window(Learned(0xFFFF0000, rng.randrange(U32), rng.randrange(U32)), W)
        for _ in range(100_000)
    )
    # odds (2 * 2^20 / 2^32) * (2^18 / 2^32): about 1.5e-8 a segment
    assert hits == 0


def test_pick_takes_the_latest_in_window_record():
    spoofed = Learned(0xFFFF0000, 12345, 678)
    real_old, real_new = Learned(10, W.rcv_nxt - 3000, W.snd_nxt), Learned(11, W.rcv_nxt, 500)
    assert pick([real_old, real_new, spoofed], W) == real_new
    assert pick([spoofed], W) is None


def test_record_moves_forward_only():
    rec = Learned(500, 1_000_000, 1)
    assert advance(rec, Learned(9, 1_000_000 - LEARN_SEQ_BACK - 1, 1)) == rec
    assert advance(rec, Learned(9, 1_000_000 - LEARN_SEQ_BACK, 1)).tsval == 9
    assert advance(rec, Learned(9, (1_000_000 + (1 << 31) - 1) % U32, 1)).tsval == 9
    assert advance(None, Learned(9, 0, 0)).tsval == 9
