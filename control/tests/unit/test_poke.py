"""The segment that prompts a peer to acknowledge (agent/kernel/poke.py), built
by hand for speed, checked against scapy's reading of it."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from mosto.agent.kernel.poke import segment
from mosto.agent.kernel.tcpstate import TcpInfo, TcpState

ip = ipaddress.ip_address


def state(local: str, peer: str, timestamps: bool) -> TcpState:
    info = TcpInfo(1, timestamps, True, True, 7, 7, 1448, 1460, 100)
    return TcpState(
        local=(ip(local), 8000),
        peer=(ip(peer), 40000),
        info=info,
        inq=0,
        outq=0,
        snd_nxt=5,  # the repeat starts at 4: one byte before snd_nxt
        rcv_nxt=0xFFFFFFFF,
        ts_clock=123456 if timestamps else None,
    )


@pytest.mark.parametrize("timestamps", [True, False])
@pytest.mark.parametrize("local,peer", [("10.1.0.2", "10.1.0.1"), ("fd01::2", "fd01::1")])
def test_segment_is_a_one_byte_repeat_with_our_ack_window_and_clock(local, peer, timestamps):
    raw = segment(state(local, peer, timestamps), window=511, peer_tsval=777)
    pkt = IP(raw) if ":" not in local else IPv6(raw)
    tcp = pkt[TCP]
    assert (pkt.src, pkt.dst, tcp.sport, tcp.dport) == (local, peer, 8000, 40000)
    assert (tcp.seq, tcp.ack, tcp.flags, tcp.window) == (4, 0xFFFFFFFF, "A", 511)
    assert bytes(tcp.payload) == b"\0"
    ts = dict(tcp.options).get("Timestamp")
    assert ts == ((123456, 777) if timestamps else None)
    # scapy recomputes the checksums when they are deleted: they must agree
    want = pkt.copy()
    del want[TCP].chksum
    if IP in want:
        del want[IP].chksum
    assert bytes(want.__class__(bytes(want))) == raw
