"""Hand-over arithmetic and refusals: pure functions on TcpState records."""

from __future__ import annotations

import ipaddress

import pytest

from mosto.agent.handover import build_entries, check_options, check_quiet, moved
from mosto.agent.kernel.netinfo import NextHop
from mosto.agent.kernel.tcpstate import TcpInfo, TcpState
from mosto.wire import refusal

U32 = 1 << 32
ip = ipaddress.ip_address
C, PA, PB, S = ip("10.1.0.1"), ip("10.1.0.2"), ip("10.2.0.2"), ip("10.2.0.1")
TO_S = NextHop("ps", 3, "02:00:00:00:02:02", "02:00:00:00:02:01")
TO_C = NextHop("pc", 2, "02:00:00:00:01:02", "02:00:00:00:01:01")


def info(**kw) -> TcpInfo:
    base = dict(
        state=1,
        timestamps=True,
        sack=True,
        wscale=True,
        snd_wscale=7,
        rcv_wscale=7,
        snd_mss=1448,
        advmss=1460,
        rtt_us=100,
    )
    return TcpInfo(**{**base, **kw})


def state(local, peer, snd_nxt, rcv_nxt, ts_clock=1000, **kw) -> TcpState:
    return TcpState(local, peer, info(**kw), 0, 0, snd_nxt, rcv_nxt, ts_clock)


def test_deltas_translate_each_direction_onto_the_other_connection():
    a = state((PA, 8000), (C, 40000), snd_nxt=5000, rcv_nxt=100, ts_clock=7000)
    b = state((PB, 50000), (S, 80), snd_nxt=2**32 - 10, rcv_nxt=900_000, ts_clock=123)
    cs, sc = build_entries(a, b, TO_S, TO_C, client_tsval=555, server_tsval=2**32 - 1)
    # The client's next byte (A.rcv_nxt) is the server's next byte (B.snd_nxt).
    assert (100 + cs.seq_delta) % U32 == b.snd_nxt
    assert (a.snd_nxt + cs.ack_delta) % U32 == b.rcv_nxt
    assert (b.rcv_nxt + sc.seq_delta) % U32 == a.snd_nxt
    assert (b.snd_nxt + sc.ack_delta) % U32 == a.rcv_nxt
    # Translated clocks start at our sockets' clocks; echoes map back exactly.
    assert (555 + cs.tsval_delta) % U32 == b.ts_clock
    assert (2**32 - 1 + sc.tsval_delta) % U32 == a.ts_clock
    assert (a.ts_clock + cs.tsecr_delta) % U32 == 2**32 - 1
    assert (b.ts_clock + sc.tsecr_delta) % U32 == 555
    # Non-transparent proxy: addresses and ports are rewritten.
    assert cs.match.src == C and cs.rewrite.src == PB and cs.rewrite.dport == 80
    assert sc.match.src == S and sc.rewrite.dst == C and sc.rewrite.sport == 8000
    assert (cs.egress, cs.dmac, sc.egress, sc.dmac) == ("ps", TO_S.dmac, "pc", TO_C.dmac)
    # Each direction is taken only from the interface its sender is reached by.
    assert (cs.ingress, sc.ingress) == ("pc", "ps")


def test_window_scale_shift_is_senders_scale_minus_what_the_receiver_assumes():
    a = state((PA, 8000), (C, 40000), 1, 1, snd_wscale=9, rcv_wscale=7)
    b = state((PB, 50000), (S, 80), 1, 1, snd_wscale=2, rcv_wscale=5)
    cs, sc = build_entries(a, b, TO_S, TO_C, 1, 1)
    assert cs.wscale_shift == 9 - 5  # the client scales by 9; the server reads ours by 5
    assert sc.wscale_shift == 2 - 7


def test_transparent_proxy_needs_no_rewrite():
    a = state((S, 80), (C, 40000), 1, 1)
    b = state((C, 40000), (S, 80), 1, 1)
    cs, sc = build_entries(a, b, TO_S, TO_C, 1, 1)
    assert cs.rewrite is None and sc.rewrite is None


def test_without_timestamps_no_tsvals_are_needed():
    a = state((PA, 8000), (C, 40000), 1, 1, timestamps=False)
    b = state((PB, 50000), (S, 80), 1, 1, timestamps=False)
    cs, sc = build_entries(a, b, TO_S, TO_C, None, None)
    assert not cs.timestamps and not sc.timestamps


def test_refusals_name_what_they_saw():
    a = state((PA, 8000), (C, 40000), 1, 1)
    b = state((PB, 50000), (S, 80), 1, 1)
    with pytest.raises(refusal.TimestampsUnknown, match="client"):
        build_entries(a, b, TO_S, TO_C, None, 5)
    with pytest.raises(refusal.OptionsIncompatible, match="timestamps are on for the client"):
        check_options(a, state((PB, 50000), (S, 80), 1, 1, timestamps=False))
    with pytest.raises(refusal.OptionsIncompatible, match="1588-byte segments"):
        check_options(a, state((PB, 50000), (S, 80), 1, 1, advmss=1600))
    with pytest.raises(refusal.NotEstablished, match="server connection is in TCP state 8"):
        check_quiet(a, state((PB, 50000), (S, 80), 1, 1, state=8))
    queued = TcpState((PA, 8000), (C, 40000), info(), 10, 0, 1, 1, 1)
    with pytest.raises(refusal.BuffersNotEmpty, match="10 bytes unread"):
        check_quiet(queued, b)
    v6 = state((ip("fd02::2"), 5), (ip("fd02::1"), 80), 1, 1)
    with pytest.raises(refusal.WrongFamily):
        check_quiet(a, v6)
    assert moved(a, a) is None
    assert moved(a, state((PA, 8000), (C, 40000), 1, 2)) == "rcv_nxt 1 -> 2"
