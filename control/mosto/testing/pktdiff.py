"""Readable packet mismatches for tests (both frames decoded by scapy), and an
independent checksum oracle."""

from __future__ import annotations

from scapy.layers.inet import IP, in4_chksum
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.layers.l2 import Ether
from scapy.utils import checksum


def _decode(frame: bytes) -> str:
    return str(Ether(frame).show2(dump=True))


def explain_mismatch(expected: bytes, actual: bytes) -> str:
    first = next(
        (i for i, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b),
        min(len(expected), len(actual)),
    )
    return (
        f"frames differ from byte {first} (expected {len(expected)} bytes, got {len(actual)})\n"
        f"--- expected\n{_decode(expected)}\n--- actual\n{_decode(actual)}\n"
        f"expected hex: {expected.hex()}\nactual hex:   {actual.hex()}"
    )


def checksums_verify(frame: bytes) -> bool:
    """Whether the IPv4 header and TCP checksums of a frame verify (scapy's sums)."""
    pkt = Ether(frame)
    l3 = pkt[IP] if IP in pkt else pkt[IPv6]
    l3_off = len(frame) - len(bytes(l3))
    if isinstance(l3, IP):
        ihl = l3.ihl * 4
        if checksum(frame[l3_off : l3_off + ihl]) != 0:
            return False
        segment = frame[l3_off + ihl : l3_off + l3.len]
        return in4_chksum(6, l3, segment) == 0
    segment = frame[l3_off + 40 : l3_off + 40 + l3.plen]
    return in6_chksum(6, l3, segment) == 0
