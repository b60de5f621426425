#!/usr/bin/env python3
"""Verifiable bulk transfers for tests, the demo and benchmarks.

    traffic.py serve --listen 0.0.0.0:9000
    traffic.py fetch --connect 10.1.0.2:8000 --size 64M [--upload] [--seed 7]

The client sends one header line, "SIZE DIRECTION SEED PACE"; the server then sends
SIZE bytes of the seed's pseudo-random stream (download) or reads SIZE bytes
and answers with their sha256 (upload). The client checks the sha256 against
the stream it can regenerate itself and prints a JSON result. Both sides
close with a FIN after the data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator

CHUNK = 1 << 20
PACE_BYTES = 64 << 10
TIMELINE_BIN_S = 0.1


def stream(size: int, seed: int) -> Iterator[bytes]:
    """A non-periodic stream: a splice that shifts data by any amount shows.
    A negative seed gives zeros, cheap to make, for measuring the path only."""
    rng = random.Random(seed)
    zeros = bytes(CHUNK)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        yield rng.randbytes(n) if seed >= 0 else zeros[:n]
        left -= n


def digest(size: int, seed: int) -> str:
    h = hashlib.sha256()
    for block in stream(size, seed):
        h.update(block)
    return h.hexdigest()


def _recv_exact_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        ch = sock.recv(1)
        if not ch:
            raise ConnectionError("closed before the header")
        line += ch
    return line


def _handle(conn: socket.socket) -> None:
    try:
        _serve_one(conn)
    except ConnectionError:
        pass  # the client stopped early (fetch --duration): its reset ends the flow


def _serve_one(conn: socket.socket) -> None:
    with conn:
        size, direction, seed, pace = _recv_exact_line(conn).split()
        size, seed, pace = int(size), int(seed), float(pace)
        if direction == b"idle":  # nothing to send, and no FIN until the client's
            while conn.recv(CHUNK):
                pass
            return
        if direction == b"down":
            for block in stream(size, seed):
                for i in range(0, len(block), PACE_BYTES):
                    conn.sendall(block[i : i + PACE_BYTES])
                    if pace:
                        time.sleep(pace)
        else:
            h, got = hashlib.sha256(), 0
            while got < size:
                data = conn.recv(CHUNK)
                if not data:
                    break
                h.update(data)
                got += len(data)
            conn.sendall(h.hexdigest().encode())
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(CHUNK):  # until the client's FIN
            pass


def serve(listen: tuple[str, int], cc: str | None = None) -> None:
    family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    if cc:  # per socket, so a namespace can use one it is not allowed by default (root)
        srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(listen)
    srv.listen(1024)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_handle, args=(conn,), daemon=True).start()


def fetch(
    addr: tuple[str, int],
    size: int,
    upload: bool,
    seed: int,
    pace: float = 0.0,
    read_pace: float = 0.0,
    timeline: str | None = None,
    duration: float | None = None,
    quiet_first: float = 0.0,
) -> dict:
    """pace: the sender sleeps this long after each PACE_BYTES (a slower flow, to hand
    over mid-stream); the server paces downloads, the client uploads. Downloads:
    timeline, a file for the bytes read per TIMELINE_BIN_S from the connect on
    (goodput over time); duration, stop reading after that many seconds (a
    bulk flow of a fixed length; the result says how much came, not ok).
    quiet_first: seconds between the connect and the header (a flow a proxy
    can hand over before it carries data)."""
    t0 = time.monotonic()
    wall0 = time.time()
    bins: list[int] = []
    sock = socket.create_connection(addr, timeout=120)
    time.sleep(quiet_first)
    sock.sendall(f"{size} {'up' if upload else 'down'} {seed} {pace}\n".encode())
    h, got, max_gap = hashlib.sha256(), 0, 0.0
    verify = seed >= 0
    if upload:
        for block in stream(size, seed):
            for i in range(0, len(block), PACE_BYTES):
                sock.sendall(block[i : i + PACE_BYTES])
                if pace:
                    time.sleep(pace)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while data := sock.recv(CHUNK):
            answer += data
        got_digest, got = answer.decode(), size
    else:
        last = time.monotonic()
        stopped = False
        while data := sock.recv(CHUNK):  # the server paces a download
            now = time.monotonic()
            max_gap, last = max(max_gap, now - last), now
            if timeline is not None:
                i = int((now - t0) / TIMELINE_BIN_S)
                bins.extend([0] * (i + 1 - len(bins)))
                bins[i] += len(data)
            if verify:
                h.update(data)
            got += len(data)
            if read_pace and got % PACE_BYTES < len(data):
                time.sleep(read_pace)  # a slow reader: data piles up on the way
                last = time.monotonic()
            if duration is not None and now - t0 >= duration:
                stopped = True
                break
        if not stopped:
            sock.shutdown(socket.SHUT_WR)
        got_digest = h.hexdigest()
    sock.close()
    seconds = time.monotonic() - t0
    if timeline is not None:
        doc = {"t0": wall0, "bin_s": TIMELINE_BIN_S, "bytes": bins}
        with open(timeline, "w") as f:
            json.dump(doc, f)
    if not upload and duration is not None and got < size:
        return {"ok": False, "stopped": True, "bytes": got, "seconds": seconds}
    expected = digest(size, seed) if verify else got_digest
    return {
        "ok": got_digest == expected and got == size,
        "bytes": got,
        "seconds": seconds,
        "sha256": got_digest,
        "expected": expected,
        "gbit_s": round(got * 8 / seconds / 1e9, 3),
        "longest_stall_ms": round(max_gap * 1e3, 1),  # downloads: between two reads
    }


def hold_open(addr: tuple[str, int], count: int, seconds: float, interval: float = 0.0) -> dict:
    """count quiet connections, one every interval seconds, kept open for seconds
    (hand-over benchmarks)."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(addr, timeout=30)
        s.sendall(b"0 idle 0 0\n")
        socks.append(s)
        time.sleep(interval)
    time.sleep(seconds)
    for s in socks:
        s.close()
    return {"ok": True, "flows": count}


def fetch_many(addr: tuple[str, int], size: int, upload: bool, seed: int, n: int) -> dict:
    """n flows at once, one thread each; ok only if every one arrived intact."""
    results: list[dict] = [{} for _ in range(n)]

    def one(i: int) -> None:
        try:
            results[i] = fetch(addr, size, upload, seed + i)
        except OSError as exc:
            results[i] = {"ok": False, "error": str(exc)}

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [r for r in results if not r.get("ok")]
    return {
        "ok": not failed,
        "flows": n,
        "failed": len(failed),
        "first_failure": failed[:1],
        "seconds": time.monotonic() - t0,
        "bytes": sum(r.get("bytes", 0) for r in results),
    }


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    mult = units.get(text[-1:].lower(), 1)
    return int(text[:-1] if mult > 1 else text) * mult


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", type=_hostport, required=True)
    s.add_argument("--cc", help="congestion control of the served connections")
    f = sub.add_parser("fetch")
    f.add_argument("--connect", type=_hostport, required=True)
    f.add_argument("--size", type=_size, required=True)
    f.add_argument("--upload", action="store_true")
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--pace", type=float, default=0.0, help="sleep per 64 KiB (seconds)")
    f.add_argument(
        "--read-pace",
        type=float,
        default=0.0,
        help="downloads: the client sleeps per 64 KiB read (a slow reader)",
    )
    f.add_argument(
        "--no-verify",
        action="store_true",
        help="zeros, no sha256: measures the path, not the hashing",
    )
    f.add_argument("--parallel", type=int, default=1, help="flows at once (seeds seed, seed+1..)")
    f.add_argument(
        "--timeline",
        metavar="FILE",
        help=f"downloads: bytes read per {TIMELINE_BIN_S:g} s bin, as JSON in FILE",
    )
    f.add_argument(
        "--duration", type=float, metavar="SECONDS", help="downloads: stop reading after this"
    )
    f.add_argument(
        "--quiet-first",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stay quiet this long after the connect, then ask (a proxy may hand the "
        "flow over before it carries data)",
    )
    h = sub.add_parser("idle", help="open quiet connections and keep them")
    h.add_argument("--connect", type=_hostport, required=True)
    h.add_argument("--count", type=int, default=1)
    h.add_argument("--seconds", type=float, default=5.0)
    h.add_argument("--interval", type=float, default=0.0, help="between two connects (s)")
    args = parser.parse_args()
    if (
        args.cmd == "fetch"
        and (args.timeline or args.duration)
        and (args.upload or args.parallel > 1)
    ):
        parser.error("--timeline and --duration are for a single download")
    if args.cmd == "serve":
        serve(args.listen, args.cc)
        return 0
    if args.cmd == "idle":
        print(json.dumps(hold_open(args.connect, args.count, args.seconds, args.interval)))
        return 0
    if args.no_verify:
        args.seed = -1
    if args.parallel == 1:
        result = fetch(
            args.connect,
            args.size,
            args.upload,
            args.seed,
            args.pace,
            args.read_pace,
            args.timeline,
            args.duration,
            args.quiet_first,
        )
    else:
        result = fetch_many(args.connect, args.size, args.upload, args.seed, args.parallel)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
