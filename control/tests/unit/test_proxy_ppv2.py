"""The chain header codec (mosto.proxy.ppv2): round trips, the bytes the spec
fixes, and malformed input refused with a reason; a real socket pair for read()."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mosto.proxy import ppv2
from mosto.proxy.ppv2 import ChainHeader, HeaderError, Hop, Incomplete

ports = st.integers(0, 0xFFFF)
v4 = st.builds(Hop, st.ip_addresses(v=4), ports)
v6 = st.builds(Hop, st.ip_addresses(v=6), ports)
any_hop = st.one_of(v4, v6)
chain = st.lists(any_hop, max_size=ppv2.MAX_HOPS).map(tuple)
headers = st.one_of(st.builds(ChainHeader, v4, v4, chain), st.builds(ChainHeader, v6, v6, chain))


@given(headers, st.binary(max_size=64))
def test_round_trip_and_what_follows_is_left_alone(header, payload):
    raw = header.encode()
    got, used = ppv2.decode(raw + payload)
    assert got == header and used == len(raw)


@given(headers, st.data())
def test_every_prefix_is_incomplete_and_says_how_much_is_needed(header, data):
    raw = header.encode()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(Incomplete) as exc:
        ppv2.decode(raw[:cut])
    assert cut < exc.value.needed <= len(raw)


@given(headers, st.integers(0xF0, 0xFF), st.binary(max_size=40))
def test_other_tlvs_are_skipped(header, kind, value):
    raw = bytearray(header.encode())
    tlv = struct.pack("!BH", kind, len(value)) + value
    struct.pack_into("!H", raw, 14, struct.unpack_from("!H", raw, 14)[0] + len(tlv))
    assert ppv2.decode(bytes(raw) + tlv)[0] == header


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_are_refused_with_a_reason(raw):
    """Never another exception; a header found depends on its own bytes only."""
    try:
        header, used = ppv2.decode(raw)
    except HeaderError as exc:
        assert str(exc)
        return
    assert used <= len(raw) and ppv2.decode(raw[:used]) == (header, used)


@given(headers, st.data())
def test_a_header_with_a_byte_changed_is_a_header_or_refused(header, data):
    raw = bytearray(header.encode())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    try:
        got, used = ppv2.decode(bytes(raw))
    except HeaderError:
        return
    assert used <= len(raw) and ppv2.decode(got.encode())[0] == got


def test_the_bytes_the_spec_fixes():
    h = ChainHeader(
        Hop.of("10.1.0.1", 40000), Hop.of("10.4.0.2", 9000), (Hop.of("10.2.0.2", 8000),)
    )
    raw = h.encode()
    assert raw[:12] == b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
    assert raw[12] == 0x21 and raw[13] == 0x11  # v2 PROXY, TCP over IPv4
    assert struct.unpack_from("!H", raw, 14)[0] == len(raw) - 16
    assert raw[16:28] == bytes([10, 1, 0, 1, 10, 4, 0, 2]) + struct.pack("!HH", 40000, 9000)
    assert raw[28:31] == bytes([0xE0, 0, 7])
    assert raw[31:] == bytes([1, 10, 2, 0, 2]) + struct.pack("!H", 8000)
    six = ChainHeader(Hop.of("fd01::1", 1), Hop.of("fd04::2", 2)).encode()
    assert six[13] == 0x21 and struct.unpack_from("!H", six, 14)[0] == 36 + 3


def _good() -> bytes:
    return ChainHeader(
        Hop.of("10.1.0.1", 1), Hop.of("10.4.0.2", 2), (Hop.of("10.2.0.2", 3),)
    ).encode()


def _patched(offset: int, value: bytes) -> bytes:
    raw = bytearray(_good())
    raw[offset : offset + len(value)] = value
    return bytes(raw)


def _with_tlvs(tlvs: bytes) -> bytes:
    """A v4 header with the given TLV bytes after its addresses."""
    body = bytes(12) + tlvs
    return ppv2.SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "no PROXY v2 signature"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY v2 signature"),
        (b"\r\n\r\n\x01", "no PROXY v2 signature"),
        (_patched(12, b"\x11"), "version 1"),
        (_patched(12, b"\x20"), "LOCAL header"),
        (_patched(12, b"\x22"), "command 2"),
        (_patched(13, b"\x12"), "not TCP"),
        (_patched(13, b"\x31"), "not TCP"),
        (_patched(14, b"\x04\x00"), "at most 1024"),
        (_with_tlvs(b""), "no chain TLV"),
        (_with_tlvs(b"\xe0\x00"), "truncated TLV"),
        (_with_tlvs(b"\xe0\x00\x09" + bytes(7)), "overruns"),
        (_with_tlvs(b"\xe0\x00\x07\x05" + bytes(6)), "unknown address family 0x05"),
        (_with_tlvs(b"\xe0\x00\x05\x01" + bytes(4)), "hop 0 truncated"),
        (_with_tlvs(b"\xe0\x00\x00\xe0\x00\x00"), "two chain TLVs"),
        (
            _with_tlvs(b"\xe0" + struct.pack("!H", 7 * 17) + (b"\x01" + bytes(6)) * 17),
            "more than 16",
        ),
    ],
)
def test_malformed_headers_are_refused_with_a_reason(raw, reason):
    with pytest.raises(HeaderError, match=reason) as exc:
        ppv2.decode(raw)
    assert not isinstance(exc.value, Incomplete)


def test_short_address_block_is_refused():
    body = bytes(8)  # IPv4 needs 12
    raw = ppv2.SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body
    with pytest.raises(HeaderError, match="address block of 8 bytes"):
        ppv2.decode(raw)


def test_what_cannot_be_encoded_is_refused():
    with pytest.raises(ValueError, match="one address family"):
        ChainHeader(Hop.of("10.1.0.1", 1), Hop.of("fd04::2", 2))
    with pytest.raises(ValueError, match="at most 16"):
        ChainHeader(Hop.of("10.1.0.1", 1), Hop.of("10.4.0.2", 2), (Hop.of("10.0.0.1", 1),) * 17)
    with pytest.raises(ValueError, match="out of range"):
        Hop.of("10.1.0.1", 70000)


@pytest.mark.parametrize(
    ("text", "hop"),
    [("10.2.0.2:8000", ("10.2.0.2", 8000)), ("[fd02::2]:8000", ("fd02::2", 8000))],
)
def test_hop_text(text, hop):
    parsed = Hop.parse(text)
    assert parsed.sockaddr == hop and str(parsed) == text
    assert parsed.addr == ipaddress.ip_address(hop[0])


@pytest.mark.parametrize("text", ["10.2.0.2", "10.2.0.2:x", "name:80", ":80"])
def test_bad_hop_text(text):
    with pytest.raises(ValueError):
        Hop.parse(text)


def test_read_takes_the_header_and_nothing_after_it():
    a, b = socket.socketpair()
    header = ChainHeader(Hop.of("fd01::1", 5), Hop.of("fd04::2", 9000), (Hop.of("fd03::2", 8000),))
    raw = header.encode()
    with a, b:

        def dribble() -> None:  # a byte at a time: read() must not care
            for i in range(len(raw)):
                a.send(raw[i : i + 1])
            a.send(b"payload")

        t = threading.Thread(target=dribble)
        t.start()
        assert ppv2.read(b, timeout=5) == header
        t.join()
        assert b.recv(100) == b"payload"


def test_read_gives_up_on_a_slow_or_closed_peer():
    a, b = socket.socketpair()
    with a, b:
        a.send(_good()[:10])
        with pytest.raises(HeaderError, match="within 0.2 s"):
            ppv2.read(b, timeout=0.2)
        a.close()
        with pytest.raises(HeaderError, match="closed after 0 bytes"):
            ppv2.read(b, timeout=1)
