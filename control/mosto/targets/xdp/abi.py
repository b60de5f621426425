"""ctypes mirrors of ebpf/splice_abi.h, and the Entry <-> map record encoding.
Sizes and flags come from shared/contract.h (mosto.dataplane.contract); the
layouts are checked field by field against the object's BTF
(control/tests/kernel/test_xdp_target.py)."""

from __future__ import annotations

import ctypes
import ipaddress
import socket

from mosto.dataplane import contract
from mosto.dataplane.entry import Entry, FlowKey, Track

MAX_ENTRIES = contract.MAX_ENTRIES
SPLICE_F_TS = contract.SPLICE_F_TS
SPLICE_F_NAT = contract.SPLICE_F_NAT
SPLICE_F_LEARN = contract.SPLICE_F_LEARN
NO_PEER = contract.NO_PEER


_u32x4 = ctypes.c_uint32 * 4
_u8x6 = ctypes.c_uint8 * 6


class SpliceKey(ctypes.Structure):
    _fields_ = [
        ("saddr", _u32x4),
        ("daddr", _u32x4),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class SpliceEntry(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("seq_delta", ctypes.c_uint32),
        ("ack_delta", ctypes.c_uint32),
        ("tsval_delta", ctypes.c_uint32),
        ("tsecr_delta", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("track_gen", ctypes.c_uint32),
        ("track_snd_nxt", ctypes.c_uint32),
        ("track_ack", ctypes.c_uint32),
        ("peer_id", ctypes.c_uint32),
        ("peer_gen", ctypes.c_uint32),
        ("new_saddr", _u32x4),
        ("new_daddr", _u32x4),
        ("new_sport", ctypes.c_uint16),
        ("new_dport", ctypes.c_uint16),
        ("smac", _u8x6),
        ("dmac", _u8x6),
        ("wscale_shift", ctypes.c_int8),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class SpliceStats(ctypes.Structure):
    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("last_tsval", ctypes.c_uint32),
        ("has_tsval", ctypes.c_uint32),
        ("learn_seq", ctypes.c_uint32),
        ("learn_ack", ctypes.c_uint32),
    ]


class SpliceTrack(ctypes.Structure):
    _fields_ = [
        ("gen", ctypes.c_uint32),
        ("snd_nxt", ctypes.c_uint32),
        ("ack", ctypes.c_uint32),
    ]


class SpliceEvent(ctypes.Structure):
    _fields_ = [
        ("key", SpliceKey),
        ("id", ctypes.c_uint32),
        ("tcp_flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("ts_ns", ctypes.c_uint64),
    ]


def _addr_words(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ctypes.Array:
    """Network byte order, as the packet carries it; IPv4 in the first word."""
    raw = addr.packed.ljust(16, b"\0")
    return _u32x4.from_buffer_copy(raw)


def _addr_from_words(words: ctypes.Array, family: int):
    raw = bytes(words)
    return ipaddress.ip_address(raw[:4] if family == socket.AF_INET else raw)


def _family(key: FlowKey) -> int:
    return socket.AF_INET if key.family == 4 else socket.AF_INET6


def encode_key(key: FlowKey) -> SpliceKey:
    return SpliceKey(
        saddr=_addr_words(key.src),
        daddr=_addr_words(key.dst),
        sport=socket.htons(key.sport),
        dport=socket.htons(key.dport),
        family=_family(key),
    )


def decode_key(key: SpliceKey) -> FlowKey:
    return FlowKey(
        _addr_from_words(key.saddr, key.family),
        _addr_from_words(key.daddr, key.family),
        socket.ntohs(key.sport),
        socket.ntohs(key.dport),
    )


def _mac_bytes(mac: str) -> ctypes.Array:
    return _u8x6(*bytes.fromhex(mac.replace(":", "")))


def _mac_str(mac: ctypes.Array) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def encode_entry(
    entry: Entry, entry_id: int, egress_ifindex: int, ingress_ifindex: int = 0, gen: int = 0
) -> SpliceEntry:
    """gen: the entry's track generation (0 for an entry without track); the
    peer link is set apart (link())."""
    if entry.learn:
        return SpliceEntry(id=entry_id, flags=SPLICE_F_LEARN, peer_id=NO_PEER)
    value = SpliceEntry(
        id=entry_id,
        peer_id=NO_PEER,
        seq_delta=entry.seq_delta,
        ack_delta=entry.ack_delta,
        egress_ifindex=egress_ifindex,
        ingress_ifindex=ingress_ifindex,
        smac=_mac_bytes(entry.smac),
        dmac=_mac_bytes(entry.dmac),
        wscale_shift=entry.wscale_shift,
    )
    if entry.timestamps:
        value.flags |= SPLICE_F_TS
        value.tsval_delta = entry.tsval_delta
        value.tsecr_delta = entry.tsecr_delta
    if entry.track is not None:
        value.track_gen = gen
        value.track_snd_nxt = entry.track.snd_nxt
        value.track_ack = entry.track.ack
    if entry.rewrite:
        value.flags |= SPLICE_F_NAT
        value.new_saddr = _addr_words(entry.rewrite.src)
        value.new_daddr = _addr_words(entry.rewrite.dst)
        value.new_sport = socket.htons(entry.rewrite.sport)
        value.new_dport = socket.htons(entry.rewrite.dport)
    return value


def decode_entry(
    key: SpliceKey, value: SpliceEntry, egress: int | str, ingress: int | str | None = None
) -> Entry:
    if value.flags & SPLICE_F_LEARN:
        return Entry.learning(decode_key(key))
    rewrite = None
    if value.flags & SPLICE_F_NAT:
        rewrite = FlowKey(
            _addr_from_words(value.new_saddr, key.family),
            _addr_from_words(value.new_daddr, key.family),
            socket.ntohs(value.new_sport),
            socket.ntohs(value.new_dport),
        )
    ts = bool(value.flags & SPLICE_F_TS)
    track = Track(value.track_snd_nxt, value.track_ack) if value.track_gen else None
    return Entry(
        match=decode_key(key),
        seq_delta=value.seq_delta,
        ack_delta=value.ack_delta,
        smac=_mac_str(value.smac),
        dmac=_mac_str(value.dmac),
        egress=egress,
        tsval_delta=value.tsval_delta if ts else None,
        tsecr_delta=value.tsecr_delta if ts else None,
        wscale_shift=value.wscale_shift,
        rewrite=rewrite,
        ingress=ingress,
        track=track,
    )
