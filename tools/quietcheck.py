#!/usr/bin/env python3
"""Records every TCP FIN or RST the local stack sends on the given interfaces,
until SIGTERM, then writes them as JSON. Run inside the proxy's namespace: the
data plane's own (XDP-redirected) frames bypass packet taps, so whatever this
sees came from the proxy host's sockets.

    quietcheck.py pc ps --out /tmp/fin-rst.json
    quietcheck.py pc ps --all --out /tmp/tcp.json   # every TCP segment, with its time
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
TCP_FIN, TCP_RST = 0x01, 0x04


def tcp_fin_rst(frame: bytes, every: bool = False) -> dict | None:
    """src/dst/ports/flags of an Ethernet frame carrying TCP with FIN or RST
    (every: any TCP segment)."""
    proto = struct.unpack_from("!H", frame, 12)[0]
    if proto == 0x0800 and frame[23] == 6:
        l4 = 14 + (frame[14] & 0xF) * 4
        end = 14 + struct.unpack_from("!H", frame, 16)[0]  # IPv4 total length
        src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
    elif proto == 0x86DD and frame[20] == 6:
        l4 = 54
        end = l4 + struct.unpack_from("!H", frame, 18)[0]  # IPv6 payload length
        src = socket.inet_ntop(socket.AF_INET6, frame[22:38])
        dst = socket.inet_ntop(socket.AF_INET6, frame[38:54])
    else:
        return None
    if len(frame) < l4 + 14:
        return None
    sport, dport = struct.unpack_from("!HH", frame, l4)
    flags = frame[l4 + 13]
    if not every and not flags & (TCP_FIN | TCP_RST):
        return None
    payload = end - l4 - (frame[l4 + 12] >> 4) * 4
    return {
        "src": src,
        "dst": dst,
        "sport": sport,
        "dport": dport,
        "flags": flags,
        "payload": payload,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("interfaces", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--all", action="store_true", help="every TCP segment, not only FIN/RST")
    args = parser.parse_args()
    sel = selectors.DefaultSelector()
    for ifname in args.interfaces:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((ifname, ETH_P_ALL))
        sel.register(s, selectors.EVENT_READ)
    seen: list[dict] = []
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while running:
        for key, _ in sel.select(0.2):
            frame, addr = key.fileobj.recvfrom(65535)
            if addr[2] != socket.PACKET_OUTGOING:
                continue
            hit = tcp_fin_rst(frame, args.all)
            if hit:
                seen.append({**hit, "interface": addr[0], "time": time.time()})
    with open(args.out, "w") as f:
        json.dump(seen, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
