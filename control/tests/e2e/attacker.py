#!/usr/bin/env python3
"""What an unprivileged local user (or a proxy of another uid) does to the agent,
for test_security.py: each command prints one JSON document on stdout.

Run as a plain uid without capabilities (setpriv), in the proxy's network
namespace, or inside a user+network namespace of its own (unshare -Urn).
It speaks the wire protocol by hand: a real attacker does not use our client.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import errno
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

MAX = 64 * 1024
TCP_REPAIR, TCP_QUEUE_SEQ, TCP_MD5SIG = 19, 21, 14


def agent(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    s.settimeout(20)
    return s


def ask(s: socket.socket, doc: dict | bytes, socks: list = ()) -> dict:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    fds = [x if isinstance(x, int) else x.fileno() for x in socks]
    socket.send_fds(s, [data], fds)
    raw = s.recv(MAX)
    if not raw:
        return {"closed": True}
    return json.loads(raw)


def ask_all(s: socket.socket, doc: dict) -> list[dict]:
    """Every page of an answer."""
    s.send(json.dumps(doc).encode())
    pages = []
    while True:
        page = json.loads(s.recv(MAX))
        pages.append(page)
        if not page.get("more"):
            return pages


def code(answer: dict) -> str:
    return "ok" if answer.get("ok") else answer.get("error", "closed")


def tcp_state(s: socket.socket) -> int:
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def pair_to(server: str) -> tuple[socket.socket, socket.socket]:
    """Two quiet connections of our own (to the traffic server)."""
    a = socket.create_connection(endpoint(server))
    b = socket.create_connection(endpoint(server))
    return a, b


# -- commands ------------------------------------------------------------------


def forge(args) -> dict:
    """In a user+network namespace of our own: repair-mode sockets with the
    victim's four-tuples, offered to the agent as proof of ownership."""
    victim = json.loads(args.victim)
    c, srv = victim["client"], victim["server"]  # both as packets arrive at the proxy
    for cmd in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "addr", "add", f"{c['dst']}/32", "dev", "lo"],
        ["ip", "addr", "add", f"{srv['dst']}/32", "dev", "lo"],
        ["ip", "route", "add", f"{c['src']}/32", "dev", "lo"],
        ["ip", "route", "add", f"{srv['src']}/32", "dev", "lo"],
    ):
        subprocess.run(cmd, check=True, capture_output=True)

    def forged(local: tuple[str, int], peer: tuple[str, int]) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)  # root in our own namespace
        s.bind(local)
        s.connect(peer)  # repair mode: ESTABLISHED without a packet
        return s

    a = forged((c["dst"], c["dport"]), (c["src"], c["sport"]))
    b = forged((srv["dst"], srv["dport"]), (srv["src"], srv["sport"]))
    out = {"forged_state": [tcp_state(a), tcp_state(b)]}
    with agent(args.socket) as s:
        for op in ("register", "hold", "unhold", "offload"):
            out[op] = code(ask(s, {"op": op}, [a, b]))
        # The batch, the forged pair twice (each pair is answered on its own).
        many = ask(s, {"op": "offload_many"}, [a, b, a, b])
        out["offload_many"] = [code(r) for r in many.get("results", [many])]
        # Out of repair mode, in case the agent only looks at that.
        for x in (a, b):
            x.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, -1)
        out["offload_no_repair"] = code(ask(s, {"op": "offload"}, [a, b]))
        out["release"] = code(ask(s, {"op": "release", "splice": victim["id"]}))
        out["listed"] = ask(s, {"op": "list"}).get("splices")
    return out


def steal(args) -> dict:
    """Sockets of another uid's registered flow (passed to us): not ours to use."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
        u.connect(args.path)
        _, fds, _, _ = socket.recv_fds(u, 16, 2)
    a, b = (socket.socket(fileno=fd) for fd in fds)
    out = {}
    with agent(args.socket) as s:
        for op in ("register", "hold", "unhold", "offload"):
            out[op] = code(ask(s, {"op": op}, [a, b]))
    out["still_established"] = [tcp_state(a) == 1, tcp_state(b) == 1]
    return out


def share(args) -> dict:
    """The victim's side of steal: registers a pair of its own, then hands the
    descriptors to whoever connects to path."""
    a, b = pair_to(args.server)
    with agent(args.socket) as s:
        registered = code(ask(s, {"op": "register"}, [a, b]))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
        u.bind(args.path)
        os.chmod(args.path, 0o666)
        u.listen(1)
        print(json.dumps({"registered": registered}), flush=True)
        conn, _ = u.accept()
        socket.send_fds(conn, [b"x"], [a.fileno(), b.fileno()])
        conn.close()
    time.sleep(args.seconds)
    return {"registered": registered}


def looks(args) -> dict:
    """What list, stats and watch show us."""
    with agent(args.socket) as s:
        listed = [x for p in ask_all(s, {"op": "list"}) for x in p["splices"]]
        pages = ask_all(s, {"op": "stats"})
        stats = [x for p in pages for x in p["splices"]]
    with agent(args.socket) as w:
        w.send(b'{"op":"watch"}')
        first = json.loads(w.recv(MAX))
        w.settimeout(args.watch_seconds)
        events = []
        try:
            while True:
                events.append(json.loads(w.recv(MAX)))
        except TimeoutError:
            pass
    return {
        "list": [x["id"] for x in listed],
        "stats": [x["id"] for x in stats],
        "counters": "counters" in pages[-1],
        "watch": code(first),
        "events": events,
    }


def malformed(args) -> dict:
    """Requests no parser should survive, some carrying descriptors."""
    tcp = socket.create_connection(endpoint(args.server))
    r, w = os.pipe()
    cases: list[tuple[str, bytes, list]] = [
        ("not-json-with-fds", b"\x00garbage", [tcp, r]),
        ("empty-with-fds", b"", [tcp, r]),
        ("empty", b"", []),
        ("array-with-fds", b"[1,2]", [tcp, tcp]),
        ("tcp-and-pipe", b'{"op":"offload"}', [tcp, r]),
        ("pipe-and-tcp", b'{"op":"register"}', [r, tcp]),
        ("deep", b"[" * 60000, []),
        ("deep-object", b'{"op":' + b'{"a":' * 3000 + b"1" + b"}" * 3001, []),
        ("huge-int", b'{"op":"release","splice":' + b"7" * 60000 + b"}", []),
        ("op-list", b'{"op":["list"]}', []),
        ("op-null", b'{"op":null}', []),
        ("splice-string", b'{"op":"release","splice":"1"}', []),
        ("splice-float", b'{"op":"release","splice":1.5}', []),
        ("nan", b'{"op":"release","splice":NaN}', []),
        ("three-fds", b'{"op":"offload"}', [tcp, tcp, r]),
        ("list-with-fds", b'{"op":"list"}', [tcp, tcp]),
        ("same-socket", b'{"op":"offload"}', [tcp, tcp]),
        ("dup-socket", b'{"op":"register"}', [tcp, os.dup(tcp.fileno())]),
        ("not-utf8", b'{"op":"\xff"}', []),
    ]
    out = {}
    with agent(args.socket) as s:
        for name, data, fds in cases:
            try:
                out[name] = code(ask(s, data, fds))
            except OSError as exc:
                out[name] = f"oserror {exc.errno}"
        out["after"] = code(ask(s, {"op": "list"}))
    tcp.close()
    os.close(r)
    os.close(w)
    return out


def flood(args) -> dict:
    """Many idle connections: the agent must refuse the excess and keep serving."""
    held, refused, failed = [], 0, 0
    for _ in range(args.count):
        try:
            s = agent(args.socket)
        except OSError:
            failed += 1
            continue
        held.append(s)
    # An admitted connection gets nothing until it asks; a refused one gets
    # limit_reached and the close at once.
    for s in held:
        s.setblocking(False)
    time.sleep(0.5)
    for s in held:
        try:
            raw = s.recv(MAX)
        except BlockingIOError:
            continue
        refused += bool(raw) and json.loads(raw).get("error") == "limit_reached"
    print(json.dumps({"connected": len(held), "refused": refused, "failed": failed}), flush=True)
    sys.stdin.readline()  # the test checks the agent meanwhile
    for s in held:
        s.close()
    return {}


def pipeline(args) -> dict:
    """Requests sent as fast as the agent takes them, answers never read: once
    our receive queue is full the agent must stop reading us, and idle. Then,
    on a line from the test, every answer is read: all of them, in order."""
    s = agent(args.socket)
    s.setblocking(False)
    sent = 0
    while sent < args.count:
        try:
            s.send(json.dumps({"op": "list", "id": sent}).encode())
        except BlockingIOError:
            time.sleep(0.05)  # the agent answered some: our receive queue fills
            try:
                s.send(json.dumps({"op": "list", "id": sent}).encode())
            except BlockingIOError:
                break  # both queues full: the agent reads no more of ours
        sent += 1
    print(json.dumps({"sent": sent}), flush=True)
    sys.stdin.readline()
    s.settimeout(20)
    ids = [json.loads(s.recv(MAX))["id"] for _ in range(sent)]
    return {"sent": sent, "answered_in_order": ids == list(range(sent))}


def hold(args) -> dict:
    """Holds a pair of our own, then: closes the agent connection, or the flow,
    or keeps everything until killed."""
    a, b = pair_to(args.server)
    s = agent(args.socket)
    answer = ask(s, {"op": "hold"}, [a, b])
    print(
        json.dumps({"hold": code(answer), "ports": [a.getsockname()[1], b.getsockname()[1]]}),
        flush=True,
    )
    if args.then == "close-agent":
        s.close()
    elif args.then == "close-flow":
        a.close()
        b.close()
    time.sleep(args.seconds)
    return {}


def md5(args) -> dict:
    """Signed (TCP-MD5) connections offered for offload, and unsigned ones."""

    def key(s: socket.socket) -> None:
        addr = struct.pack("=HH4s", socket.AF_INET, 0, socket.inet_aton("127.0.0.1"))
        k = b"mosto-md5"
        s.setsockopt(
            socket.IPPROTO_TCP,
            TCP_MD5SIG,
            addr.ljust(128, b"\0") + struct.pack("=BBHI", 0, 0, len(k), 0) + k.ljust(80, b"\0"),
        )

    out = {}
    for signed in (True, False):
        srv = socket.socket()
        if signed:
            key(srv)
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        ends = []
        for _ in range(2):
            c = socket.socket()
            if signed:
                key(c)
            c.connect(srv.getsockname())
            ends.append(srv.accept()[0])
            ends.append(c)
        with agent(args.socket) as s:
            out["signed" if signed else "unsigned"] = code(
                ask(s, {"op": "offload"}, [ends[0], ends[2]])
            )
    return out


def race(args) -> dict:
    """Many requests at once on one pair: an ok offload must find both sockets
    closed and out of repair mode the moment it is answered. With --client, the
    first connection goes there: a pair whose peers sit behind one interface
    would hairpin, which the agent refuses on native XDP on veth."""
    if args.client:
        a, b = (
            socket.create_connection(endpoint(args.client)),
            socket.create_connection(endpoint(args.server)),
        )
    else:
        a, b = pair_to(args.server)
    ops = ["register", "hold", "unhold", "offload", "register", "offload", "hold", "offload"] * 4
    seen: list[dict] = []
    lock = threading.Lock()

    def one(op: str) -> None:
        with agent(args.socket) as s:
            answer = ask(s, {"op": op}, [a, b])
            look = {
                "op": op,
                "code": code(answer),
                "repair": [x.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR) for x in (a, b)],
                "state": [tcp_state(a), tcp_state(b)],
            }
        with lock:
            seen.append(look)

    with concurrent.futures.ThreadPoolExecutor(len(ops)) as pool:
        list(pool.map(one, ops))
    return {"answers": seen}


def tuple_free(args) -> dict:
    """Can we take this four-tuple: bind the local end (without and with
    SO_REUSEADDR), then connect to the peer?"""
    out = {}
    for reuse in (0, 1):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)
        s.settimeout(3)
        step = "bind"
        try:
            s.bind(endpoint(args.local))
            step = "connect"
            s.connect(endpoint(args.peer))
            out[f"reuse{reuse}"] = "connected"
        except OSError as exc:
            out[f"reuse{reuse}"] = f"{step} {errno.errorcode.get(exc.errno or 0, str(exc))}"
        finally:
            s.close()
    return out


def repair_denied(args) -> dict:
    """We cannot switch repair mode on ourselves: what the agent must not lend."""
    s = socket.create_connection(endpoint(args.server))
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        return {"repair": "allowed"}
    except OSError as exc:
        return {"repair": errno.errorcode[exc.errno or 0]}
    finally:
        s.close()


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tsval_spray(args) -> dict:
    """Off-path, from a peer host (raw socket, nothing else): segments of the
    flow src -> dst, each with a random seq and ack and the timestamp option
    TSval = --tsval (far in the peer's future), as fast as we can for --seconds."""
    import random

    (saddr, sport), (daddr, dport) = endpoint(args.src), endpoint(args.dst)
    src, dst = socket.inet_aton(saddr), socket.inet_aton(daddr)
    rng, sent = random.Random(), 0
    deadline = time.monotonic() + args.seconds
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        while time.monotonic() < deadline:
            opts = struct.pack("!BBBBII", 1, 1, 8, 10, args.tsval, rng.getrandbits(32))
            tcp = (
                struct.pack(
                    "!HHIIBBHHH",
                    sport,
                    dport,
                    rng.getrandbits(32),
                    rng.getrandbits(32),
                    8 << 4,
                    0x10,
                    512,
                    0,
                    0,
                )
                + opts
            )
            pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
            tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
            ip = struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0,
                20 + len(tcp),
                0,
                0x4000,
                64,
                socket.IPPROTO_TCP,
                0,
                src,
                dst,
            )
            ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
            raw.sendto(ip + tcp, (daddr, 0))
            sent += 1
    return {"sent": sent, "uid": os.getuid()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True)
    sub = p.add_subparsers(dest="cmd", required=True)
    x = sub.add_parser("forge")
    x.add_argument("--victim", required=True, help="the victim's splice, as list shows it")
    x = sub.add_parser("steal")
    x.add_argument("--path", required=True)
    x = sub.add_parser("share")
    x.add_argument("--path", required=True)
    x.add_argument("--server", required=True)
    x.add_argument("--seconds", type=float, default=10)
    x = sub.add_parser("looks")
    x.add_argument("--watch-seconds", type=float, default=1.0)
    x = sub.add_parser("malformed")
    x.add_argument("--server", required=True)
    x = sub.add_parser("flood")
    x.add_argument("--count", type=int, default=1100)
    x = sub.add_parser("pipeline")
    x.add_argument("--count", type=int, default=100000)
    x = sub.add_parser("hold")
    x.add_argument("--server", required=True)
    x.add_argument("--then", choices=["close-agent", "close-flow", "stay"], default="stay")
    x.add_argument("--seconds", type=float, default=30)
    sub.add_parser("md5")
    x = sub.add_parser("race")
    x.add_argument("--server", required=True)
    x.add_argument("--client", help="the first connection's peer (default: --server)")
    x = sub.add_parser("tuple")
    x.add_argument("--local", required=True)
    x.add_argument("--peer", required=True)
    x = sub.add_parser("repair")
    x.add_argument("--server", required=True)
    x = sub.add_parser("tsval-spray")
    x.add_argument("--src", required=True, help="the flow, as the spoofed segments claim it")
    x.add_argument("--dst", required=True)
    x.add_argument("--tsval", type=int, required=True)
    x.add_argument("--seconds", type=float, default=1.0)
    args = p.parse_args()
    fn = {
        "forge": forge,
        "steal": steal,
        "share": share,
        "looks": looks,
        "malformed": malformed,
        "flood": flood,
        "pipeline": pipeline,
        "hold": hold,
        "md5": md5,
        "race": race,
        "tuple": tuple_free,
        "repair": repair_denied,
        "tsval-spray": tsval_spray,
    }[args.cmd]
    print(json.dumps(fn(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
