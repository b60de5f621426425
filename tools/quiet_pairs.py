#!/usr/bin/env python3
"""Quiet proxied flows for the hand-over benchmark, run inside the proxy's
namespace of a tools/topology.py topology (nsenter --net):

    quiet_pairs.py run --client-ns NS --server-ns NS --agent SOCK --flows N
        [--connections C] [--batch K] [--sources S] [--agent-pid PID] [--sync]
    quiet_pairs.py install --pin-dir DIR --first K --count N

run: N quiet TCP pairs, as a proxy has them: a client (a process of this
script in the client's namespace) connects to a listener here, which connects
on to a listener in the server's namespace (another one, there: descriptors
are limited per process). Then, over C agent connections (a thread
each): register every pair (AgentClient.register), offload every pair
(AgentClient.offload, timed alone; with --batch K, AgentClient.offload_many
of K pairs at a time), release the splices, close everything. With
--sources S the client's connections come from S addresses of its own, in
turn (a proxy's clients are many hosts: each new one is a next hop the agent
has not looked up yet).
With --sync it waits for a line on stdin between register and offload (the
benchmark attaches a profiler then). Prints progress on stderr and one JSON
result on stdout: each offload's latency, each phase's wall time, this
process's CPU in the agent calls (thread CPU time around each call), and the
agent's CPU (utime + stime from /proc) over each phase.

install: N made-up splices (two entries each) in the pinned XDP maps, for a
restarted agent to rebuild: real addresses, MACs and egress interfaces,
ports no real flow uses. Here, because egress interfaces are looked up in
this namespace.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import ipaddress
import json
import random
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from processes import proc_cpu  # noqa: E402
from topology import CLIENT4, MACS, PROXY_C4, PROXY_S4, SERVER4  # noqa: E402

from mosto.wire.client import AgentClient, Refused  # noqa: E402


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))


def log(msg: str) -> None:
    print(f"    {msg}", file=sys.stderr, flush=True)


def ends(ns: str, *args: str) -> subprocess.Popen:
    """This script's `ends` in namespace ns, once it is listening or connected."""
    p = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns}", sys.executable, __file__, "ends", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return p


def expect(p: subprocess.Popen, word: str) -> None:
    line = p.stdout.readline().strip()
    if line != word:
        raise RuntimeError(f"quiet_pairs.py ends said {line!r}, not {word!r}")


def make_pairs(args) -> tuple[list, list]:
    """The proxy's [(client side, server side)] and the two processes holding the
    other ends (the client's and the server's: descriptors are limited per process)."""
    n = str(args.flows)
    server = ends(
        args.server_ns, "--listen", f"{SERVER4}:{args.server_port}", "--count", n,
        "--seed", str(1 << 32),
    )  # fmt: skip
    expect(server, "ready")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((PROXY_C4, args.port))
    listener.listen(4096)
    client = ends(
        args.client_ns, "--connect", f"{PROXY_C4}:{args.port}", "--count", n,
        "--sources", str(args.sources),
    )  # fmt: skip
    pairs = []
    with listener:
        for _ in range(args.flows):
            a, _ = listener.accept()
            b = socket.create_connection((SERVER4, args.server_port))
            for sock in (a, b):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pairs.append((a, b))
    for p in (client, server):
        expect(p, "held")
    return pairs, [client, server]


def hold_ends(args) -> None:
    """`ends`: count connections (made or accepted), kept until stdin closes."""
    raise_fd_limit(args.count + 256)
    host, _, port = (args.listen or args.connect).rpartition(":")
    socks = []
    if args.listen:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, int(port)))
        srv.listen(4096)
        print("ready", flush=True)
        socks = [srv.accept()[0] for _ in range(args.count)]
        srv.close()
    else:
        sources = client_sources(args.sources)
        socks = [
            socket.create_connection(
                (host, int(port)), source_address=(sources[i % len(sources)], 0)
            )
            for i in range(args.count)
        ]
    print("held", flush=True)
    for line in sys.stdin:  # "verify N": the exchange; EOF: close and go
        if line.startswith("verify"):
            print(json.dumps(exchange(socks, int(line.split()[1]), args.seed)), flush=True)
    for s in socks:
        s.close()


SOURCES_FIRST = 20  # --sources: CLIENT4's subnet from .20 on (the topology uses .1 and .2)


def client_sources(n: int) -> list[str]:
    """n addresses of the client's interface to connect from (added, on-link for
    the proxy; the namespace takes them when it goes); CLIENT4 alone if n <= 1."""
    if n <= 1:
        return [CLIENT4]
    if SOURCES_FIRST + n > 255:
        raise SystemExit(f"--sources {n}: at most {255 - SOURCES_FIRST}")
    shown = json.loads(
        subprocess.run(
            ["ip", "-j", "-4", "addr"], check=True, capture_output=True, text=True
        ).stdout
    )
    dev = next(i["ifname"] for i in shown for a in i["addr_info"] if a["local"] == CLIENT4)
    base = ipaddress.ip_address(CLIENT4)
    out = [str(base + SOURCES_FIRST - 1 + i) for i in range(n)]
    for addr in out:
        subprocess.run(["ip", "addr", "replace", f"{addr}/24", "dev", dev], check=True)
    return out


FIN_WAVE = 250  # FINs sent at once by exchange(): a proxy host's flows do not all end in 1 ms


def exchange(socks: list, size: int, seed0: int) -> dict:
    """Through every connection (spliced by now): send a header naming a seed and
    size bytes of that seed's stream, read the peer's and check its sha256
    against the stream regenerated here, then a FIN each way (in waves: a FIN
    dropped by an overflowing backlog comes again 200 ms later, and the agent
    takes a splice whose packets go on after its FINs for a spoofed FIN's, which
    it keeps). Sizes fit the socket buffers, so no side waits for the other."""
    from traffic import digest, stream

    for i, s in enumerate(socks):
        s.sendall(struct.pack("!Q", seed0 + i))
        for block in stream(size, seed0 + i):
            s.sendall(block)
    ok = bad = 0
    for s in socks:
        data = b""
        while len(data) < 8 + size:
            chunk = s.recv(8 + size - len(data))
            if not chunk:
                break
            data += chunk
        seed = struct.unpack("!Q", data[:8])[0] if len(data) >= 8 else -1
        good = len(data) == 8 + size and hashlib.sha256(data[8:]).hexdigest() == digest(size, seed)
        ok, bad = ok + good, bad + (not good)
    for k, s in enumerate(socks):
        s.shutdown(socket.SHUT_WR)
        if k % FIN_WAVE == FIN_WAVE - 1:
            time.sleep(0.002)  # 10,000 FINs at once overflow a veth's backlog
    eof = sum(1 for s in socks if s.recv(1) == b"")  # the peer's FIN, nothing more
    return {"ok": ok, "bad": bad, "fin": eof}


def in_parallel(work, shares: list) -> list:
    """work(i, share) in one thread per share; their results in order."""
    results: list = [None] * len(shares)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = work(i, shares[i])
        except BaseException as exc:  # reported, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(shares))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def run(args) -> dict:
    raise_fd_limit(2 * args.flows + 1024)
    t0 = time.monotonic()
    pairs, helpers = make_pairs(args)
    log(f"{len(pairs)} quiet pairs in {time.monotonic() - t0:.1f} s")
    conns = [AgentClient(args.agent) for _ in range(args.connections)]
    shares = [pairs[i :: args.connections] for i in range(args.connections)]

    def agent_cpu() -> float:
        return proc_cpu(args.agent_pid) if args.agent_pid else 0.0

    def register(i: int, share: list) -> float:
        cpu = 0.0
        for a, b in share:
            c0 = time.thread_time()
            conns[i].register(a, b)
            cpu += time.thread_time() - c0
        return cpu

    def offload(i: int, share: list) -> dict:
        out = {"ms": [], "cpu": 0.0, "splices": [], "refused": Counter()}
        if args.batch > 1:
            return offload_batches(i, share, out)
        for a, b in share:
            c0, t = time.thread_time(), time.perf_counter()
            try:
                splice = conns[i].offload(a, b)
            except Refused as exc:
                out["refused"][exc.code] += 1
                continue
            out["ms"].append((time.perf_counter() - t) * 1e3)
            out["cpu"] += time.thread_time() - c0
            out["splices"].append(splice["id"])
            a.close()  # neutralised: nothing is sent
            b.close()
        return out

    def offload_batches(i: int, share: list, out: dict) -> dict:
        """offload_many of args.batch pairs at a time: each flow's latency is its
        batch's, from the send to the answer."""
        for k in range(0, len(share), args.batch):
            batch = share[k : k + args.batch]
            c0, t = time.thread_time(), time.perf_counter()
            got = conns[i].offload_many(batch)
            ms = (time.perf_counter() - t) * 1e3
            out["cpu"] += time.thread_time() - c0
            for (a, b), splice in zip(batch, got, strict=True):
                if isinstance(splice, Refused):
                    out["refused"][splice.code] += 1
                    continue
                out["ms"].append(ms)
                out["splices"].append(splice["id"])
                a.close()
                b.close()
        return out

    cpu0, t0 = agent_cpu(), time.monotonic()
    reg_cpu = sum(in_parallel(register, shares))
    register_s, agent_register_s = time.monotonic() - t0, agent_cpu() - cpu0
    log(f"registered in {register_s:.2f} s")
    time.sleep(0.3)  # the probed peers' answers: every TSval learned
    if args.sync:
        print(json.dumps({"phase": "registered"}), flush=True)
        sys.stdin.readline()
    removed: dict[int, str] = {}
    if args.verify:  # every removal the agent reports, for the check below
        threading.Thread(target=watch_removals, args=(args.agent, removed), daemon=True).start()
        time.sleep(0.2)
    cpu0, t0 = agent_cpu(), time.monotonic()
    got = in_parallel(offload, shares)
    offload_s, agent_offload_s = time.monotonic() - t0, agent_cpu() - cpu0
    if args.sync:
        print(json.dumps({"phase": "offloaded"}), flush=True)
    offloaded = sum(len(g["splices"]) for g in got)
    refused = sum((g["refused"] for g in got), Counter())
    log(f"{offloaded} offloaded in {offload_s:.2f} s, refused {dict(refused) or 'none'}")

    def release(i: int, share: list) -> None:
        for splice_id in share:
            conns[i].release(splice_id)

    t0 = time.monotonic()
    verified: dict = {}
    if args.verify:  # the flows carry data end to end, then close: the agent removes them
        for p in helpers:
            p.stdin.write(f"verify {args.verify}\n")
            p.stdin.flush()
        verified = {
            name: json.loads(p.stdout.readline())
            for name, p in zip(("client", "server"), helpers, strict=True)
        }
        spliced = {sid for g in got for sid in g["splices"]}
        deadline = time.monotonic() + 60
        while not spliced <= set(removed) and time.monotonic() < deadline:
            time.sleep(0.2)
        verified["removed"] = dict(Counter(removed.get(sid, "not removed") for sid in spliced))
    else:
        in_parallel(release, [g["splices"] for g in got])
    release_s = time.monotonic() - t0
    for conn in conns:
        conn.close()
    for a, b in pairs:
        a.close()
        b.close()
    for p in helpers:
        p.communicate("")  # stdin closed: they close their ends and exit
    ms = [m for g in got for m in g["ms"]]
    return {
        "flows": args.flows,
        "connections": args.connections,
        "batch": args.batch,
        "sources": args.sources,
        "offloaded": offloaded,
        "refused": dict(refused),
        "offload_ms": ms,
        "register_s": register_s,
        "offload_s": offload_s,
        "release_s": release_s,
        "proxy_cpu_register_s": reg_cpu,
        "proxy_cpu_offload_s": sum(g["cpu"] for g in got),
        "agent_cpu_register_s": agent_register_s,
        "agent_cpu_offload_s": agent_offload_s,
        **({"verified": verified} if args.verify else {}),
    }


def watch_removals(agent: str, removed: dict[int, str]) -> None:
    """The agent's removed events: splice id -> reason (ids are unique among
    live splices, and this run's splices are all live until they end)."""
    for event in AgentClient(agent).watch():
        if event.get("event") == "removed":
            removed[event["splice"]] = event["reason"]


@functools.cache
def ifindex(name: str) -> int:
    return socket.if_nametoindex(name)  # in this (the proxy's) namespace


def fake_splice(i: int):
    """Splice i of the made-up ones: a non-transparent proxy's two entries. The
    proxy listens on 7001, 7003 ... (client side) and reaches a server on 7002,
    7004 ... from local ports 10000..29999: nothing real uses those, nor the
    ephemeral range, and every four-tuple is unique."""
    from mosto.dataplane.entry import U32, Entry, FlowKey

    ip = ipaddress.ip_address
    client, proxy_c, proxy_s, server = ip(CLIENT4), ip(PROXY_C4), ip(PROXY_S4), ip(SERVER4)
    port, group = 10000 + i % 20000, i // 20000
    listen, upstream = 7001 + 2 * group, 7002 + 2 * group
    rng = random.Random(i)
    seq, ack, ts_cs, ts_sc = (rng.randrange(U32) for _ in range(4))
    cs = Entry(
        match=FlowKey(client, proxy_c, port, listen),
        seq_delta=seq,
        ack_delta=ack,
        smac=MACS["ps"],
        dmac=MACS["s0"],
        egress=ifindex("ps"),
        tsval_delta=ts_cs,
        tsecr_delta=-ts_sc % U32,
        rewrite=FlowKey(proxy_s, server, port, upstream),
    )
    sc = Entry(
        match=FlowKey(server, proxy_s, upstream, port),
        seq_delta=-ack % U32,
        ack_delta=-seq % U32,
        smac=MACS["pc"],
        dmac=MACS["c0"],
        egress=ifindex("pc"),
        tsval_delta=ts_sc,
        tsecr_delta=-ts_cs % U32,
        rewrite=FlowKey(proxy_c, client, listen, port),
    )
    return cs, sc


def install(args) -> dict:
    from mosto.targets.xdp.target import XdpTarget

    t0 = time.monotonic()
    with XdpTarget(pin_dir=args.pin_dir, load=True) as target:
        for i in range(args.first, args.first + args.count):
            for entry in fake_splice(i):
                target.add(entry)
        total = len(list(target._raw_entries()))
    return {"installed": args.count, "entries": total, "seconds": time.monotonic() - t0}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--client-ns", required=True)
    r.add_argument("--server-ns", required=True)
    r.add_argument("--agent", required=True, help="the agent's socket")
    r.add_argument("--agent-pid", type=int, help="for the agent's CPU over each phase")
    r.add_argument("--flows", type=int, default=200)
    r.add_argument("--connections", type=int, default=1, help="agent connections (threads)")
    r.add_argument("--batch", type=int, default=1, help="pairs per request (offload_many when > 1)")
    r.add_argument("--port", type=int, default=8950, help="the listener here (client side)")
    r.add_argument("--sources", type=int, default=1, help="client addresses, in turn")
    r.add_argument("--server-port", type=int, default=9100, help="the server's listener")
    r.add_argument("--sync", action="store_true", help="wait for stdin between the phases")
    r.add_argument(
        "--verify",
        type=int,
        default=0,
        metavar="BYTES",
        help="after the offloads, BYTES each way through every flow (sha256-checked), "
        "then FINs; the agent's removals instead of releases",
    )
    e = sub.add_parser("ends", help="(for run) hold the client's or the server's ends")
    e.add_argument("--listen")
    e.add_argument("--connect")
    e.add_argument("--count", type=int, required=True)
    e.add_argument("--seed", type=int, default=0, help="first seed of what it sends (verify)")
    e.add_argument("--sources", type=int, default=1, help="addresses to connect from (--connect)")
    i = sub.add_parser("install")
    i.add_argument("--pin-dir", required=True)
    i.add_argument("--first", type=int, default=0)
    i.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    if args.cmd == "ends":
        hold_ends(args)
        return 0
    result = run(args) if args.cmd == "run" else install(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
