#!/usr/bin/env python3
"""Both directions of one TCP connection from a fixed source port, checked by
sha256 (the splice entries of test_tc_path.py need the four-tuple in advance).

    xfer.py serve HOST PORT
    xfer.py fetch SRC SPORT DST DPORT UP DOWN

The client sends "UP DOWN SEED\\n" and UP bytes; the server answers with their
sha256 and then sends DOWN bytes; the client checks both and prints JSON.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from traffic import CHUNK, digest, stream  # noqa: E402  (the data the e2e transfers use)


def recv_line(sock: socket.socket) -> str:
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError("peer closed mid-line")
        line += byte
    return line.decode().strip()


def serve(host: str, port: int) -> None:
    srv = socket.create_server((host, port))
    print("listening", flush=True)
    conn, _ = srv.accept()
    up, down, seed = (int(x) for x in recv_line(conn).split())
    h, got = hashlib.sha256(), 0
    while got < up:
        data = conn.recv(min(CHUNK, up - got))
        if not data:
            break
        h.update(data)
        got += len(data)
    conn.sendall(f"{h.hexdigest()}\n".encode())
    for block in stream(down, seed + 1):
        conn.sendall(block)
    conn.close()


def fetch(src: str, sport: int, dst: str, dport: int, up: int, down: int) -> dict:
    seed = 7
    sock = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(30)
    sock.bind((src, sport))
    sock.connect((dst, dport))
    sock.sendall(f"{up} {down} {seed}\n".encode())
    for block in stream(up, seed):
        sock.sendall(block)
    up_ok = recv_line(sock) == digest(up, seed)
    h, got = hashlib.sha256(), 0
    while data := sock.recv(CHUNK):
        h.update(data)
        got += len(data)
    sock.close()
    return {"up_ok": up_ok, "down_ok": got == down and h.hexdigest() == digest(down, seed + 1)}


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        a = sys.argv[2:]
        print(json.dumps(fetch(a[0], int(a[1]), a[2], int(a[3]), int(a[4]), int(a[5]))))
