"""The chain header: PROXY protocol v2 with one TLV of ours (PPV2.md beside this file).

A proxy of a chain starts its connection to the next proxy with this header:
the address block says who the client is and where the flow finally goes,
TLV PP2_TYPE_MOSTO_CHAIN lists the proxies still to pass, the next one first.
The last proxy connects to the destination and sends no header.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
VERSION = 0x2
CMD_LOCAL, CMD_PROXY = 0x0, 0x1
AF_INET, AF_INET6 = 0x1, 0x2
TRANSPORT_STREAM = 0x1
PP2_TYPE_MIN_CUSTOM, PP2_TYPE_MAX_CUSTOM = 0xE0, 0xEF
PP2_TYPE_MOSTO_CHAIN = 0xE0  # ours, in the range the spec leaves to applications
MAX_HOPS = 16  # a longer chain is a loop or an attack, not a path
# The whole header, at most: addresses (IPv6) and a full chain, with room for
# a few TLVs a sender may add (we ignore them).
MAX_HEADER = 1024

_FIXED = struct.Struct("!12sBBH")  # signature, version|command, family|transport, length
_TLV = struct.Struct("!BH")
_PORT = struct.Struct("!H")
_ADDR_LEN = {AF_INET: 4, AF_INET6: 16}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class HeaderError(ValueError):
    """Bytes that are not a chain header we accept; the message says why, in one line."""


class Incomplete(HeaderError):
    """More bytes are needed: `needed` in all, from the start of the header."""

    def __init__(self, needed: int):
        super().__init__(f"incomplete header: {needed} bytes needed")
        self.needed = needed


@dataclass(frozen=True)
class Hop:
    """An address and a TCP port."""

    addr: Address
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} out of range")

    @classmethod
    def of(cls, host: str, port: int) -> Hop:
        """From a socket address; an IPv4-mapped IPv6 one (a dual-stack
        listener's peer) is the IPv4 address it maps."""
        addr = ipaddress.ip_address(host.strip("[]").split("%")[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return cls(addr, port)

    @classmethod
    def parse(cls, text: str) -> Hop:
        """HOST:PORT, [V6]:PORT too."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return cls.of(host, int(port))

    @property
    def family(self) -> int:
        return AF_INET if self.addr.version == 4 else AF_INET6

    @property
    def sockaddr(self) -> tuple[str, int]:
        return str(self.addr), self.port

    def __str__(self) -> str:
        host = f"[{self.addr}]" if self.addr.version == 6 else str(self.addr)
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ChainHeader:
    """source: the client; destination: the flow's final server; rest: the
    proxies after the receiver, in order (empty: the receiver is the last)."""

    source: Hop
    destination: Hop
    rest: tuple[Hop, ...] = ()

    def __post_init__(self) -> None:
        if self.source.family != self.destination.family:
            raise ValueError("source and destination must be of one address family")
        if len(self.rest) > MAX_HOPS:
            raise ValueError(f"chain of {len(self.rest)} hops (at most {MAX_HOPS})")

    def encode(self) -> bytes:
        fam = self.destination.family
        body = (
            self.source.addr.packed
            + self.destination.addr.packed
            + _PORT.pack(self.source.port)
            + _PORT.pack(self.destination.port)
        )
        hops = b"".join(bytes([h.family]) + h.addr.packed + _PORT.pack(h.port) for h in self.rest)
        body += _TLV.pack(PP2_TYPE_MOSTO_CHAIN, len(hops)) + hops
        head = _FIXED.pack(
            SIGNATURE, VERSION << 4 | CMD_PROXY, fam << 4 | TRANSPORT_STREAM, len(body)
        )
        return head + body


def decode(data: bytes) -> tuple[ChainHeader, int]:
    """The header at the start of data and its length in bytes. Incomplete if
    data stops short of it; HeaderError if it is not one we accept."""
    if len(data) < _FIXED.size:
        if not SIGNATURE.startswith(data[: len(SIGNATURE)]):
            raise HeaderError("no PROXY v2 signature")
        raise Incomplete(_FIXED.size)
    sig, ver_cmd, fam_proto, length = _FIXED.unpack_from(data)
    if sig != SIGNATURE:
        raise HeaderError("no PROXY v2 signature")
    if ver_cmd >> 4 != VERSION:
        raise HeaderError(f"PROXY protocol version {ver_cmd >> 4}, not 2")
    if ver_cmd & 0xF != CMD_PROXY:
        what = "LOCAL" if ver_cmd & 0xF == CMD_LOCAL else f"command {ver_cmd & 0xF}"
        raise HeaderError(f"{what} header: a chain header is a PROXY one")
    fam, proto = fam_proto >> 4, fam_proto & 0xF
    if fam not in _ADDR_LEN or proto != TRANSPORT_STREAM:
        raise HeaderError(f"address family/transport {fam_proto:#04x}: not TCP over IPv4 or IPv6")
    total = _FIXED.size + length
    if total > MAX_HEADER:
        raise HeaderError(f"header of {total} bytes (at most {MAX_HEADER})")
    if len(data) < total:
        raise Incomplete(total)
    body = data[_FIXED.size : total]
    n = _ADDR_LEN[fam]
    if len(body) < 2 * n + 4:
        raise HeaderError(f"address block of {len(body)} bytes, {2 * n + 4} needed")
    src, dst = _address(fam, body[:n]), _address(fam, body[n : 2 * n])
    sport, dport = struct.unpack_from("!HH", body, 2 * n)
    rest = _chain_tlv(body[2 * n + 4 :])
    return ChainHeader(Hop(src, sport), Hop(dst, dport), rest), total


def _address(fam: int, raw: bytes) -> Address:
    return ipaddress.IPv4Address(raw) if fam == AF_INET else ipaddress.IPv6Address(raw)


def _chain_tlv(tlvs: bytes) -> tuple[Hop, ...]:
    """The hops of our TLV; other TLVs are skipped, as the spec asks."""
    rest: tuple[Hop, ...] | None = None
    i = 0
    while i < len(tlvs):
        if len(tlvs) - i < _TLV.size:
            raise HeaderError(f"truncated TLV at offset {i}")
        kind, length = _TLV.unpack_from(tlvs, i)
        i += _TLV.size
        if len(tlvs) - i < length:
            raise HeaderError(f"TLV {kind:#04x} of {length} bytes overruns the header")
        if kind == PP2_TYPE_MOSTO_CHAIN:
            if rest is not None:
                raise HeaderError("two chain TLVs")
            rest = _hops(tlvs[i : i + length])
        i += length
    if rest is None:
        raise HeaderError(f"no chain TLV ({PP2_TYPE_MOSTO_CHAIN:#04x})")
    return rest


def _hops(raw: bytes) -> tuple[Hop, ...]:
    hops: list[Hop] = []
    i = 0
    while i < len(raw):
        fam = raw[i]
        if fam not in _ADDR_LEN:
            raise HeaderError(f"chain hop {len(hops)}: unknown address family {fam:#04x}")
        n = _ADDR_LEN[fam]
        if len(raw) - i < 1 + n + 2:
            raise HeaderError(f"chain hop {len(hops)} truncated")
        addr = _address(fam, raw[i + 1 : i + 1 + n])
        hops.append(Hop(addr, _PORT.unpack_from(raw, i + 1 + n)[0]))
        i += 1 + n + 2
        if len(hops) > MAX_HOPS:
            raise HeaderError(f"chain of more than {MAX_HOPS} hops")
    return tuple(hops)


def read(sock: socket.socket, timeout: float) -> ChainHeader:
    """Reads exactly one header from sock (nothing of what follows it), within
    timeout seconds; HeaderError if what comes is not one, or too slowly."""
    deadline = time.monotonic() + timeout
    data = b""
    need = _FIXED.size
    while True:
        while len(data) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HeaderError(f"no complete header within {timeout:g} s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(need - len(data))
            except TimeoutError:
                continue
            finally:
                sock.settimeout(None)
            if not chunk:
                raise HeaderError(f"connection closed after {len(data)} bytes of header")
            data += chunk
        try:
            header, _ = decode(data)
        except Incomplete as more:
            need = more.needed
            continue
        return header
