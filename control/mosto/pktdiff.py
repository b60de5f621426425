"""Readable packet mismatches for tests: both frames decoded by scapy."""

from __future__ import annotations

from scapy.layers.l2 import Ether


def _decode(frame: bytes) -> str:
    return Ether(frame).show2(dump=True)


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
