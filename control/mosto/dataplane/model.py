"""Reference model of the splice data plane: the oracle both targets are held to.

It works on raw frames and is written independently of the C: it finds the
headers by offset, edits the bytes, and fixes checksums by RFC 1624 eqn. 3
applied to the whole changed region (~HC + ~sum(old region) + sum(new region)),
where the XDP program adds per-field deltas. For frames whose checksums were
correct on input the two give identical bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from scapy.utils import checksum as ones_complement_checksum  # ~sum, folded

from mosto.dataplane.contract import (
    IPV6_EXT_MAX,
    IPV6_EXT_UNITS,
    TCP_ACK,
    TRACK_SEQ_AHEAD,
    VLAN_MAX,
)
from mosto.dataplane.entry import Entry, FlowKey, Track
from mosto.dataplane.learning import Learned

ETH_HLEN = 14
VLAN_HLEN = 4
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
VLAN_TPIDS = (ETH_P_8021Q, ETH_P_8021AD)
IPPROTO_TCP = 6
IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS = 0, 43, 44, 60
IPV6_EXT_WALKED = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS)
IPV6_EXT_UNIT = 8
TCP_HLEN = 20
TCP_FIN, TCP_RST = 0x01, 0x04
U32 = 1 << 32
TCP_OPT_MAX_LEN = 40
TCPOPT_EOL, TCPOPT_NOP, TCPOPT_SACK, TCPOPT_TS = 0, 1, 5, 8


class Verdict(Enum):
    PASS = "pass"  # untouched, to the host's stack
    DROP = "drop"
    FORWARD = "forward"  # translated, out of the entry's egress


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    frame: bytes
    counter: str  # the mosto_counter this frame lands in (without tx/redirect split)
    entry: Entry | None = None  # the entry hit, if any
    event_flags: int = 0  # FIN/RST reported to user space
    learned_tsval: int | None = None  # learning entries: the TSval recorded
    learned: Learned | None = None  # ... with the frame's seq and ack (learning.advance)
    event_refused: bool = False  # a FIN/RST the window check kept back (event_out_of_window)


class _Untranslatable(Exception):
    pass


def _sum16(data: bytes) -> int:
    """One's complement sum of data (big-endian words, odd length zero-padded)."""
    return 0xFFFF & ~ones_complement_checksum(data)


def _incremental(check: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3 over a whole region: HC' = ~(~HC + ~m + m')."""
    total = (~check & 0xFFFF) + (~_sum16(old) & 0xFFFF) + _sum16(new)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _add32(buf: bytearray, off: int, delta: int) -> None:
    (value,) = struct.unpack_from("!I", buf, off)
    struct.pack_into("!I", buf, off, (value + delta) & 0xFFFFFFFF)


def _options(buf: bytearray, start: int, length: int, entry: Entry) -> int | None:
    """Rewrites SACK and timestamps in place (a learning entry: nothing) and
    returns the TSval found, if any; raises on malformed options."""
    off, seen, tsval = 0, set(), None
    while off < length:
        kind = buf[start + off]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            off += 1
            continue
        if off + 1 >= length:
            raise _Untranslatable("option length byte missing")
        size = buf[start + off + 1]
        if size < 2 or off + size > length:
            raise _Untranslatable("bad option length")
        if kind in (TCPOPT_SACK, TCPOPT_TS):
            if kind in seen:
                raise _Untranslatable("option repeated")
            seen.add(kind)
        if kind == TCPOPT_SACK:
            if size not in (10, 18, 26, 34):
                raise _Untranslatable("bad SACK length")
            for edge in range(start + off + 2, start + off + size, 4):
                if not entry.learn:
                    _add32(buf, edge, entry.ack_delta)
        elif kind == TCPOPT_TS:
            if size != 10:
                raise _Untranslatable("bad timestamp length")
            (tsval,) = struct.unpack_from("!I", buf, start + off + 2)
            if entry.tsval_delta is not None and entry.tsecr_delta is not None:
                if not entry.learn:
                    _add32(buf, start + off + 2, entry.tsval_delta)
                    _add32(buf, start + off + 6, entry.tsecr_delta)
        off += size
    return tsval


def _window(window: int, shift: int) -> int:
    return min(window << shift, 0xFFFF) if shift >= 0 else window >> -shift


class _Headers(NamedTuple):
    counter: str  # '' when the frame parsed up to the fixed TCP header
    l3: int = 0
    l4: int = 0
    ver: int = 0
    first_fragment: bool = False  # offset 0, more fragments follow
    ipv6_ext: bool = False  # TCP behind IPv6 extension headers


def _tags(frame: bytes, meta_tags: int) -> tuple[str, int, int]:
    """(counter or '', ethertype after the tags, l3 offset)."""
    (proto,) = struct.unpack_from("!H", frame, 12)
    l3, tags = ETH_HLEN, meta_tags
    while proto in VLAN_TPIDS:
        if tags >= VLAN_MAX:
            return "drop_deep_headers", 0, 0
        if len(frame) < l3 + VLAN_HLEN:
            return "pass_truncated", 0, 0
        (proto,) = struct.unpack_from("!H", frame, l3 + 2)
        l3, tags = l3 + VLAN_HLEN, tags + 1
    return "", proto, l3


def _ipv6_ext(frame: bytes, l3: int) -> _Headers:
    """Walks the extension headers after the fixed IPv6 header to TCP."""
    nexthdr, off, walked, units, first = frame[l3 + 6], l3 + 40, 0, 0, False
    while nexthdr != IPPROTO_TCP:
        if nexthdr not in IPV6_EXT_WALKED:
            return _Headers("pass_not_tcp")
        if walked == IPV6_EXT_MAX:
            return _Headers("drop_deep_headers")
        if len(frame) < off + IPV6_EXT_UNIT:
            return _Headers("pass_truncated")
        size = 1 if nexthdr == IPPROTO_FRAGMENT else frame[off + 1] + 1
        if units + size > IPV6_EXT_UNITS:
            return _Headers("drop_deep_headers")
        if len(frame) < off + size * IPV6_EXT_UNIT:
            return _Headers("pass_truncated")
        if nexthdr == IPPROTO_FRAGMENT:
            (frag,) = struct.unpack_from("!H", frame, off + 2)
            if frag & 0xFFF8:
                return _Headers("pass_fragment")
            first = first or bool(frag & 1)  # M = 0 at offset 0: an atomic fragment
        nexthdr, off = frame[off], off + size * IPV6_EXT_UNIT
        walked, units = walked + 1, units + size
    return _Headers("", l3, off, 6, first, walked > 0)


def _parse(frame: bytes, meta_tags: int = 0) -> _Headers:
    """The headers up to TCP; meta_tags: VLAN tags outside the frame (tc)."""
    if len(frame) < ETH_HLEN:
        return _Headers("pass_truncated")
    counter, proto, l3 = _tags(frame, meta_tags)
    if counter:
        return _Headers(counter)
    if proto == ETH_P_IP:
        if len(frame) < l3 + 20:
            return _Headers("pass_truncated")
        version, ihl = frame[l3] >> 4, frame[l3] & 0xF
        if version != 4 or ihl < 5:
            return _Headers("pass_bad_ip")
        (frag,) = struct.unpack_from("!H", frame, l3 + 6)
        if frag & 0x1FFF:
            return _Headers("pass_fragment")
        if frame[l3 + 9] != IPPROTO_TCP:
            return _Headers("pass_not_tcp")
        if len(frame) < l3 + ihl * 4:
            return _Headers("pass_truncated")
        h = _Headers("", l3, l3 + ihl * 4, 4, first_fragment=bool(frag & 0x2000))
    elif proto == ETH_P_IPV6:
        if len(frame) < l3 + 40:
            return _Headers("pass_truncated")
        if frame[l3] >> 4 != 6:
            return _Headers("pass_bad_ip")
        h = _ipv6_ext(frame, l3)
        if h.counter:
            return h
    else:
        return _Headers("pass_not_ip")
    if len(frame) < h.l4 + TCP_HLEN:
        # A first fragment splitting the TCP header: RFC 1858's tiny fragment.
        return _Headers("drop_fragment" if h.first_fragment else "pass_truncated")
    return h


def flow_of(frame: bytes) -> FlowKey | None:
    """The flow direction a frame belongs to, or None if it does not parse."""
    h = _parse(frame)
    if h.counter:
        return None
    l3, l4, ver = h.l3, h.l4, h.ver
    alen, src_off = (4, 12) if ver == 4 else (16, 8)
    src = ipaddress.ip_address(frame[l3 + src_off : l3 + src_off + alen])
    dst = ipaddress.ip_address(frame[l3 + src_off + alen : l3 + src_off + 2 * alen])
    sport, dport = struct.unpack_from("!HH", frame, l4)
    return FlowKey(src, dst, sport, dport)


def splice(
    frame: bytes,
    table: Mapping[FlowKey, Entry],
    ingress: int | str = 0,
    meta_tags: int = 0,
    state: MutableMapping[FlowKey, Track] | None = None,
) -> Outcome:
    """What the data plane does with one frame, given its splice table, the
    port (interface) it came in by, and VLAN tags outside the frame (tc).
    state holds, by match, what tracked entries hit so far know of their
    senders (the targets' track slots); a caller drops an entry's state when
    it installs the entry again. Without it, every frame sees install states."""
    h = _parse(frame, meta_tags)
    if h.counter:
        verdict = Verdict.DROP if h.counter.startswith("drop_") else Verdict.PASS
        return Outcome(verdict, frame, h.counter)
    l3, l4, ver = h.l3, h.l4, h.ver
    flow = flow_of(frame)
    entry = table.get(flow) if flow is not None else None
    if entry is None:
        return Outcome(Verdict.PASS, frame, "pass_miss")
    if entry.ingress is not None and entry.ingress != ingress:
        return Outcome(Verdict.DROP, frame, "drop_wrong_ingress", entry)
    event = frame[l4 + 13] & (TCP_FIN | TCP_RST)
    if entry.learn:
        # Behind IPv6 extension headers nothing is learned: spliced, such a
        # flow's segments are dropped, so its hand-over had better be refused.
        tsval = None if h.ipv6_ext else _learn(frame, l4, entry)
        seq, ack = struct.unpack_from("!II", frame, l4 + 4)
        learned = Learned(tsval, seq, ack) if tsval is not None else None
        return Outcome(Verdict.PASS, frame, "pass_learn", entry, event, tsval, learned)
    # Dropped, a frame reaches no receiver: it reports nothing.
    if h.first_fragment:
        return Outcome(Verdict.DROP, frame, "drop_fragment", entry)
    if h.ipv6_ext:
        return Outcome(Verdict.DROP, frame, "drop_ipv6_ext", entry)
    states = state if state is not None else {}
    report, after = _track(frame, l3, l4, entry, table, states)
    try:
        out = _translate(bytearray(frame), entry, l3, l4, ver)
    except _Untranslatable:
        return Outcome(Verdict.DROP, frame, "drop_bad_tcp", entry)
    if after is not None:
        states[entry.match] = after
    refused = bool(event) and not report
    return Outcome(
        Verdict.FORWARD, out, "hit", entry, 0 if refused else event, event_refused=refused
    )


def _serial_le(a: int, b: int) -> bool:
    return (b - a) % U32 < U32 // 2


def _track(
    frame: bytes,
    l3: int,
    l4: int,
    entry: Entry,
    table: Mapping[FlowKey, Entry],
    states: Mapping[FlowKey, Track],
) -> tuple[bool, Track | None]:
    """RFC 5961 for a tracked entry (ebpf/track.h says why): whether its
    FIN/RST is reported, and its sender's state after the segment."""
    flags = frame[l4 + 13]
    if entry.track is None:
        return True, None
    own = states.get(entry.match, entry.track)
    peer_entry = table.get(entry.peer_match)
    linked = peer_entry is not None and entry.links_with(peer_entry)
    peer = states.get(entry.peer_match) if linked else None
    if peer is None:  # a quiet flow's, mirrored from the install state
        peer = Track(snd_nxt=entry.track.ack, ack=entry.track.snd_nxt)
    seq, ack = struct.unpack_from("!II", frame, l4 + 4)
    ack_out = (ack + entry.ack_delta) % U32
    ack_ok = bool(flags & TCP_ACK) and _serial_le(own.ack, ack_out)
    ack_ok = ack_ok and _serial_le(ack_out, peer.snd_nxt)
    seq_ok = _serial_le(seq, (own.snd_nxt + TRACK_SEQ_AHEAD) % U32)
    if flags & TCP_RST:
        return seq == peer.ack, own
    report = ack_ok and seq_ok
    if ack_ok and seq_ok:
        end = (seq + _payload_len(frame, l3, l4) + bool(flags & TCP_FIN)) % U32
        own = Track(end if _serial_le(own.snd_nxt, end) else own.snd_nxt, ack_out)
    return report, own


def _payload_len(frame: bytes, l3: int, l4: int) -> int:
    """Payload bytes as the IP header gives them."""
    if frame[l3] >> 4 == 4:
        (ip_len,) = struct.unpack_from("!H", frame, l3 + 2)
    else:
        (payload,) = struct.unpack_from("!H", frame, l3 + 4)
        ip_len = 40 + payload
    return max(ip_len - (l4 - l3) - (frame[l4 + 12] >> 4) * 4, 0)


def _learn(frame: bytes, l4: int, entry: Entry) -> int | None:
    """The TSval of a well-formed TCP header, if it has one."""
    hlen = (frame[l4 + 12] >> 4) * 4
    if hlen < TCP_HLEN or l4 + hlen > len(frame):
        return None
    try:
        return _options(bytearray(frame), l4 + TCP_HLEN, hlen - TCP_HLEN, entry)
    except _Untranslatable:
        return None


def _translate(buf: bytearray, entry: Entry, l3: int, l4: int, ver: int) -> bytes:
    doff = buf[l4 + 12] >> 4
    hlen = doff * 4
    if doff < 5 or l4 + hlen > len(buf):
        raise _Untranslatable("bad data offset")
    # The checksummed region we may touch: pseudo-header addresses + TCP header.
    addr_off, addr_len = (l3 + 12, 8) if ver == 4 else (l3 + 8, 32)

    def region(b: bytes | bytearray) -> bytes:
        tcp = bytearray(b[l4 : l4 + hlen])
        tcp[16:18] = b"\0\0"  # the checksum field is not part of what it sums
        return bytes(b[addr_off : addr_off + addr_len]) + bytes(tcp)

    old_region = region(buf)
    old_ip_header = bytes(buf[l3 : l3 + 20])
    _options(buf, l4 + TCP_HLEN, hlen - TCP_HLEN, entry)
    _add32(buf, l4 + 4, entry.seq_delta)
    _add32(buf, l4 + 8, entry.ack_delta)
    if entry.wscale_shift:
        (window,) = struct.unpack_from("!H", buf, l4 + 14)
        struct.pack_into("!H", buf, l4 + 14, _window(window, entry.wscale_shift))
    if entry.rewrite:
        rw = entry.rewrite
        buf[addr_off : addr_off + addr_len] = rw.src.packed + rw.dst.packed
        struct.pack_into("!HH", buf, l4, rw.sport, rw.dport)
        if ver == 4:
            new_ip_header = bytes(buf[l3 : l3 + 20])
            (ip_check,) = struct.unpack_from("!H", buf, l3 + 10)
            old_h = old_ip_header[:10] + b"\0\0" + old_ip_header[12:]
            new_h = new_ip_header[:10] + b"\0\0" + new_ip_header[12:]
            struct.pack_into("!H", buf, l3 + 10, _incremental(ip_check, old_h, new_h))
    (check,) = struct.unpack_from("!H", buf, l4 + 16)
    struct.pack_into("!H", buf, l4 + 16, _incremental(check, old_region, region(buf)))
    buf[0:12] = bytes.fromhex(entry.dmac.replace(":", "")) + bytes.fromhex(
        entry.smac.replace(":", "")
    )
    return bytes(buf)
