#!/usr/bin/env python3
"""ICMP echo round-trip times, IPv4 and IPv6, as JSON (this host has no ping).

    rtt.py ADDR [--count 20] [--interval 0.01] [--size 56]

Prints {"sent": N, "received": M, "rtt_ms": [...], "lost": [seq, ...]}. The
send time is taken just before sendto, the receive time is the kernel's
(SO_TIMESTAMPNS), so the scheduler's wake-up latency is not in the figure.
Echoes go out on a fixed schedule whatever the answers, many in flight at
once on a long path. Needs root (raw sockets). From Python: `ping(ns, addr)`.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

from scapy.utils import checksum  # the Internet checksum (RFC 1071)

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129
ICMP_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, id, seq
TIMESTAMP_CMSG_SPACE = socket.CMSG_SPACE(16)  # struct timespec
IPV4_HEADER_WORDS_MASK = 0x0F
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python lacks the name


def _request(v6: bool, ident: int, seq: int, payload: bytes) -> bytes:
    if v6:  # the kernel fills in the ICMPv6 checksum (pseudo-header)
        return ICMP_HEADER.pack(ICMP6_ECHO_REQUEST, 0, 0, ident, seq) + payload
    header = ICMP_HEADER.pack(ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = checksum(header + payload)
    return ICMP_HEADER.pack(ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


def _reply(v6: bool, packet: bytes, ident: int) -> int | None:
    """The sequence number of our echo reply, else None."""
    if not v6:  # raw IPv4 sockets see the IP header
        packet = packet[(packet[0] & IPV4_HEADER_WORDS_MASK) * 4 :]
    if len(packet) < ICMP_HEADER.size:
        return None
    kind, _, _, rid, seq = ICMP_HEADER.unpack_from(packet)
    want = ICMP6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY
    return seq if kind == want and rid == ident else None


def _rx_time_ns(ancdata) -> int:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", data[:16])
            return sec * 1_000_000_000 + nsec
    return time.time_ns()


def measure(addr: str, count: int, interval: float, size: int, timeout: float) -> dict:
    v6 = ":" in addr
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    sock = socket.socket(family, socket.SOCK_RAW, proto)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    ident = os.getpid() & 0xFFFF
    payload = bytes(size)
    sent: dict[int, int] = {}
    rtts: dict[int, float] = {}
    next_send = time.monotonic()
    seq = 0
    deadline = None
    while True:
        now = time.monotonic()
        if seq < count and now >= next_send:
            packet = _request(v6, ident, seq, payload)
            sent[seq] = time.time_ns()
            sock.sendto(packet, (addr, 0))
            seq += 1
            next_send += interval
            if seq == count:
                deadline = now + timeout
            continue
        if deadline is not None and (len(rtts) == count or now >= deadline):
            break
        wait = (next_send if seq < count else deadline) - now
        ready, _, _ = select.select([sock], [], [], max(wait, 0))
        if not ready:
            continue
        packet, ancdata, _, _ = sock.recvmsg(65535, TIMESTAMP_CMSG_SPACE)
        rseq = _reply(v6, packet, ident)
        if rseq is not None and rseq in sent and rseq not in rtts:
            rtts[rseq] = (_rx_time_ns(ancdata) - sent[rseq]) / 1e6
    sock.close()
    return {
        "sent": count,
        "received": len(rtts),
        "rtt_ms": [round(rtts[s], 4) for s in sorted(rtts)],
        "lost": [s for s in range(count) if s not in rtts],
    }


def ping(
    ns,
    addr: str,
    count: int = 20,
    interval: float = 0.01,
    size: int = 56,
    timeout: float = 2.0,
) -> dict:
    """measure() run inside namespace ns (a netns.Namespace)."""
    cmd = [sys.executable, os.path.abspath(__file__), addr, "--count", str(count)]
    cmd += ["--interval", str(interval), "--size", str(size), "--timeout", str(timeout)]
    out = ns.sh(*cmd, check=False).stdout
    return json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("addr")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between echoes")
    parser.add_argument("--size", type=int, default=56, help="payload bytes")
    parser.add_argument(
        "--timeout", type=float, default=2.0, help="wait for answers after the last echo (s)"
    )
    args = parser.parse_args()
    result = measure(args.addr, args.count, args.interval, args.size, args.timeout)
    print(json.dumps(result))
    return 0 if result["received"] else 1


if __name__ == "__main__":
    sys.exit(main())
