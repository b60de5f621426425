#!/usr/bin/env python3
"""The paper's Fig. 5: the time to transfer 10 to 500 KB over a long path
(Ireland to California, about 180 ms), direct, through MOSTO with one proxy
and with three, and from a front-end next to the client over a warm,
pre-established connection (the paper's CloudFront best case).
`mosto repro fig5` (root).

    client -0- inp -R/3- trp1 -R/6- trp2 -R/6- egp -R/3- server   (RTTs; R = --rtt)

One chain topology (tools/topology.py) serves every series; a node runs only
what its series needs, and the others forward:
- direct: the client connects to the server.
- mosto_1: the client connects to trp2, the one proxy in the middle (the
  paper's EC2 Virginia); its chain table knows only itself and the server.
- mosto_3: the client connects to inp, next to it; its table has inp, trp1
  and egp (the paper's testbed: two more proxies on the path), and it looks
  the chain up per transfer as the ingress proxy does (tools/wan.py); trp1 and
  egp follow its header.
- warm_frontend: a front-end on inp holds one connection to the server,
  warmed by a transfer before the runs, with slow start after idle off on
  the server, so its window stays open between requests (CloudFront's best
  case: a pre-established connection); it relays each client's request over
  it and streams the answer back.
Both tables come from one RTT matrix measured on the links (ICMP echoes)
and `mosto chains precompute`. The proxies run without an agent: a flow of
at most 500 KB ends in slow start, before MOSTO would hand it over, so the
hand-over cannot change these times. Each ingress proxy is told the size of
the transfers it gets (--expect-bytes, one listening port per size): the
lookup proxy's knowledge of the transfer, as in the paper.

Runs interleave (for each run, each size, each series) so a change of the
machine's load spreads over all series alike. The client verifies every
transfer (sha256).

Subcommands run inside the namespaces: `client`, `origin`, `frontend`.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import traffic  # noqa: E402

SERVER_PORT = 9000  # traffic.py serve: one transfer per connection
ORIGIN_PORT = 9001  # the warm front-end's origin: many transfers per connection
FRONTEND_PORT = 7000
CHAINED_PORT = 8100
INGRESS_PORT = 8000  # + the size's index
WARM_BYTES = 16 << 20
PAUSE_S = 0.05  # between two transfers: the last one's FINs are done
INP, TRP1, TRP2, EGP = 0, 1, 2, 3  # proxies by position


# ---- in the namespaces -------------------------------------------------------


def _line(sock: socket.socket) -> bytes:
    out = b""
    while not out.endswith(b"\n"):
        ch = sock.recv(1)
        if not ch:
            return b""
        out += ch
    return out


def _set_cc(sock: socket.socket, cc: str | None) -> None:
    if cc:  # per socket: a namespace allows only the host's list, root any
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())


def origin(listen: tuple[str, int], cc: str | None) -> None:
    """Like traffic.py serve, but a connection carries one transfer per
    header line until the peer closes (a front-end's back-end connection)."""

    def one(conn: socket.socket) -> None:
        while line := _line(conn):
            size, _, seed, _ = line.split()
            for block in traffic.stream(int(size), int(seed)):
                conn.sendall(block)

    _serve(listen, cc, one)


def _serve(listen: tuple[str, int], cc: str | None, one: Callable[[socket.socket], None]) -> None:
    """Says ready, then serves every connection with one(conn), a thread each
    (TCP_NODELAY on, closed after)."""
    srv = socket.create_server(listen)
    _set_cc(srv, cc)
    print("ready", flush=True)

    def run(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            one(conn)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=run, args=(conn,), daemon=True).start()


def frontend(
    listen: tuple[str, int], origin_addr: tuple[str, int], warm: int, cc: str | None
) -> None:
    """One back-end connection, warmed with `warm` bytes; each client's
    request goes over it in turn and its answer streams back as it comes."""
    back = socket.create_connection(origin_addr)
    back.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lock = threading.Lock()

    def fetch_into(size: int, seed: int, out: socket.socket | None) -> None:
        back.sendall(f"{size} down {seed} 0\n".encode())
        left = size
        while left:
            data = back.recv(min(left, 1 << 20))
            if not data:
                raise ConnectionError("origin closed")
            left -= len(data)
            if out is not None:
                out.sendall(data)

    fetch_into(warm, -1, None)

    def one(conn: socket.socket) -> None:
        size, _, seed, _ = _line(conn).split()
        with lock:  # one request at a time on the shared connection
            fetch_into(int(size), int(seed), conn)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(1 << 16):
            pass

    _serve(listen, cc, one)


def client(plan: list[list]) -> None:
    """[series, host, port, size] per transfer, in order; one JSON line each."""
    for seed, (series, host, port, size) in enumerate(plan):
        try:
            r = traffic.fetch((host, port), size, False, seed)
        except OSError as exc:
            r = {"ok": False, "seconds": 0.0, "error": str(exc)}
        doc = {"series": series, "size": size, "ms": round(r["seconds"] * 1e3, 2), "ok": r["ok"]}
        print(json.dumps(doc), flush=True)
        time.sleep(PAUSE_S)


# ---- the experiment ----------------------------------------------------------


def specs(rtt_ms: float):
    from topology import LinkSpec

    third, sixth = rtt_ms / 3, rtt_ms / 6
    return [LinkSpec(0)] + [LinkSpec(rtt / 2) for rtt in (third, sixth, sixth, third)]


def _me(*args: str) -> list[str]:
    from processes import BIN

    return [str(BIN / "python"), str(Path(__file__).resolve()), *args]


def _sysctls(ch, fastopen: bool) -> None:
    """Every transfer starts afresh: no metrics cached from the last one (an
    ssthresh learned from a loss would end the next slow start early). The
    server and the front-end keep a warm connection's window across idle
    times (the best case of a pre-established connection). With fastopen,
    the proxies both send and take TCP Fast Open SYNs."""
    for node in ch.nodes:
        node.sh("sysctl", "-qw", "net.ipv4.tcp_no_metrics_save=1")
    for node in (ch.server, ch.proxies[INP]):
        node.sh("sysctl", "-qw", "net.ipv4.tcp_slow_start_after_idle=0")
    if fastopen:
        for node in ch.proxies:
            node.sh("sysctl", "-qw", "net.ipv4.tcp_fastopen=3")


def _sub(matrix: dict, names: list[str]) -> dict:
    idx = [matrix["nodes"].index(n) for n in names]
    return {"nodes": names, "rtt": [[matrix["rtt"][i][j] for j in idx] for i in idx]}


def _start(
    ch, procs, logdir: Path, sizes: list[int], matrix: dict, cc: str | None, fastopen: bool
) -> dict:
    """Everything the series need, once: servers, proxies, the front-end, all
    sending with cc. The addresses the client connects to, per series and size."""
    import wan
    from processes import mosto, wait_for
    from processes import traffic as traffic_cmd

    server = ch.server4
    ccopt = ["--cc", cc] if cc else []
    procs.spawn(
        ch.server,
        traffic_cmd("serve", "--listen", f"0.0.0.0:{SERVER_PORT}", *ccopt),
        "server.log",
        ready=True,
    )
    procs.spawn(
        ch.server,
        _me("origin", "--listen", f"0.0.0.0:{ORIGIN_PORT}", *ccopt),
        "origin.log",
        ready=True,
    )
    popt = ["--agent", "", *ccopt, *["--fastopen"] * fastopen]
    deployments = {"mosto_3": [INP, TRP1, EGP], "mosto_1": [TRP2]}
    tables = {}
    stats: dict[str, list[Path]] = {}
    for series, ks in deployments.items():
        names = [wan.role(ch, k) for k in ks]
        tables[series] = wan.precompute(
            _sub(matrix, [*names, wan.SERVER]), logdir / f"{series}.npz"
        )
        for k in ks[1:]:
            cmd = wan.proxy_args(ch, k, tables[series], names, SERVER_PORT, 0, False, CHAINED_PORT)
            log = f"{series}-{wan.role(ch, k)}"
            path = logdir / f"{log}.json"
            procs.spawn(ch.proxies[k], mosto(*cmd, *popt, "--stats-file", str(path)), f"{log}.log")
            stats.setdefault(series, []).append(path)
        for i, size in enumerate(sizes):
            port = INGRESS_PORT + i
            cmd = wan.proxy_args(
                ch,
                ks[0],
                tables[series],
                names,
                SERVER_PORT,
                size,
                True,
                port,
                peer_port=CHAINED_PORT,
            )
            log = f"{series}-{wan.role(ch, ks[0])}-{size}"
            path = logdir / f"{log}.json"
            procs.spawn(
                ch.proxies[ks[0]],
                mosto(*cmd, *popt, "--stats-file", str(path)),
                f"{log}.log",
            )
            stats.setdefault(series, []).append(path)
    warm = _me(
        "frontend", "--listen", f"0.0.0.0:{FRONTEND_PORT}", "--origin", f"{server}:{ORIGIN_PORT}"
    )
    warm += ["--warm", str(WARM_BYTES), *ccopt]
    procs.spawn(ch.proxies[INP], warm, "frontend.log", ready=True)
    for paths in stats.values():
        for path in paths:
            wait_for(path.exists, 30, "the proxies")
    where = {}
    for i, size in enumerate(sizes):
        where[("direct", size)] = (server, SERVER_PORT)
        where[("mosto_1", size)] = (wan.listen_addr(ch, TRP2), INGRESS_PORT + i)
        where[("mosto_3", size)] = (wan.listen_addr(ch, INP), INGRESS_PORT + i)
        where[("warm_frontend", size)] = (wan.listen_addr(ch, INP), FRONTEND_PORT)
    return {"where": where, "stats": stats, "tables": {k: str(v) for k, v in tables.items()}}


def run(
    rtt_ms: float,
    sizes_kb: list[int],
    runs: int,
    out: Path,
    cc: str | None = None,
    fastopen: bool = False,
) -> tuple[dict, dict]:
    """fig5.json's document and the details (every transfer, the matrix, the
    chains the ingress proxies picked). cc: the senders' congestion control
    (None: the kernel's); fastopen: TCP Fast Open between the chain's proxies.
    One pass of all transfers first, not counted: TCP Fast Open cookies
    fetched, every process past its first connection."""
    import wan
    from processes import Processes
    from topology import chain

    from mosto.repro.fig5 import KB, SERIES, figure

    out.mkdir(parents=True, exist_ok=True)
    logdir = out / "fig5-logs"
    logdir.mkdir(exist_ok=True)
    sizes = [kb * KB for kb in sizes_kb]
    with chain(specs(rtt_ms), prefix="f5", xdp=False) as ch, Processes(logdir) as procs:
        _sysctls(ch, fastopen)
        default_cc = ch.server.sh("sysctl", "-n", "net.ipv4.tcp_congestion_control").stdout
        used_cc = cc or default_cc.strip()
        t0 = time.monotonic()
        matrix = wan.rtt_matrix(ch)
        print(
            f"fig5: RTT matrix measured ({time.monotonic() - t0:.1f} s): {json.dumps(matrix)}",
            flush=True,
        )
        setup = _start(ch, procs, logdir, sizes, matrix, cc, fastopen)
        plan = [
            [series, *setup["where"][(series, size)], size]
            for _ in range(runs + 1)
            for size in sizes
            for series in SERIES
        ]
        print(f"fig5: {len(plan)} transfers ({runs} per series and size), interleaved", flush=True)
        p = procs.spawn(
            ch.client,
            _me("client", "--plan", json.dumps(plan)),
            "client.log",
            stdout=subprocess.PIPE,
        )
        results = []
        per_run = len(SERIES) * len(sizes)
        for line in p.stdout:
            results.append(json.loads(line))
            if len(results) % per_run == 0:
                done = len(results) // per_run - 1
                what = f"run {done}/{runs}" if done else "warm-up pass (not counted)"
                print(f"fig5:   {what} done", flush=True)
        p.wait()
        time.sleep(0.3)  # the proxies' stats files are rewritten 5 times a second
        chains = {}
        for series, paths in setup["stats"].items():
            for path in paths:
                for ev in json.loads(path.read_text())["events"]:
                    if ev["event"] == "chain":
                        chains.setdefault(series, {}).setdefault(path.stem, ev["path"])
    if len(results) != len(plan):
        raise RuntimeError(f"{len(results)} of {len(plan)} transfers reported (see {logdir})")
    bad = [r for r in results if not r["ok"]]
    if bad:
        raise RuntimeError(f"{len(bad)} transfers failed, e.g. {bad[0]} (see {logdir})")
    warmup, counted = results[:per_run], results[per_run:]
    times = {
        s: {
            kb: [r["ms"] for r in counted if r["series"] == s and r["size"] == kb * KB]
            for kb in sizes_kb
        }
        for s in SERIES
    }
    doc = figure(rtt_ms, sizes_kb, times)
    detail = {
        "rtt_ms": rtt_ms,
        "links_rtt_ms": [spec.rtt_ms for spec in specs(rtt_ms)],
        "runs": runs,
        "matrix": matrix,
        "chains": chains,
        "cc": used_cc,
        "fastopen": fastopen,
        "warmup": warmup,
        "transfers": counted,
    }
    return doc, detail


def table(doc: dict) -> str:
    from mosto.repro.fig5 import SERIES, compare

    lines = ["size KB  " + "  ".join(f"{s:>22}" for s in SERIES) + "   (mean / p50 / p95 ms)"]
    for i, kb in enumerate(doc["sizes_kb"]):
        cells = []
        for s in SERIES:
            v = doc["series"][s]
            cells.append(f"{v['mean_ms'][i]:>6.0f} /{v['p50_ms'][i]:>6.0f} /{v['p95_ms'][i]:>6.0f}")
        lines.append(f"{kb:>7}  " + "  ".join(f"{c:>22}" for c in cells))
    lines.append("")
    lines.append("size KB  mosto_1 vs direct  mosto_3 vs direct  mosto_1 vs warm  mosto_3 vs warm")
    for row in compare(doc):
        lines.append(
            f"{row['size_kb']:>7}  {row['mosto_1_faster_than_direct_pct']:>+15.0f}%  "
            f"{row['mosto_3_faster_than_direct_pct']:>+15.0f}%  "
            f"{row['mosto_1_slower_than_warm_pct']:>+13.0f}%  "
            f"{row['mosto_3_slower_than_warm_pct']:>+13.0f}%"
        )
    lines.append("(faster than direct: direct/mosto - 1; slower than warm: mosto/warm - 1)")
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = {
        "direct": "direct",
        "mosto_1": "MOSTO, 1 proxy",
        "mosto_3": "MOSTO, 3 proxies",
        "warm_frontend": "warm front-end (CloudFront best case)",
    }
    sizes = doc["sizes_kb"]
    x = np.arange(len(sizes))
    width = 0.2
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (name, label) in enumerate(labels.items()):
        s = doc["series"][name]
        mean, p50, p95 = (np.array(s[k]) for k in ("mean_ms", "p50_ms", "p95_ms"))
        xs = x + (i - 1.5) * width
        ax.bar(xs, mean, width, label=label)
        ax.errorbar(
            xs, p50, yerr=[np.zeros_like(p50), p95 - p50], fmt="k.", ms=3, lw=0.8, capsize=2
        )
    ax.set_xticks(x, [f"{kb} KB" for kb in sizes])
    ax.set_ylabel("transfer time (ms)")
    ax.set_title(
        f"Transfer time over a {doc['rtt_ms']:g} ms path: bars mean; dot p50, whisker to p95"
    )
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("client", help="the transfers of a plan, one JSON line each")
    c.add_argument("--plan", required=True, help="JSON [[series, host, port, size], ...]")
    o = sub.add_parser("origin", help="a server of many transfers per connection")
    o.add_argument("--listen", type=traffic._hostport, required=True)
    o.add_argument("--cc", help="congestion control of its connections")
    f = sub.add_parser("frontend", help="a front-end over one warm back-end connection")
    f.add_argument("--listen", type=traffic._hostport, required=True)
    f.add_argument("--origin", type=traffic._hostport, required=True)
    f.add_argument("--warm", type=int, default=WARM_BYTES, help="bytes fetched to warm it up")
    f.add_argument("--cc", help="congestion control of its client connections")
    args = parser.parse_args()
    if args.cmd == "client":
        client(json.loads(args.plan))
    elif args.cmd == "origin":
        origin(args.listen, args.cc)
    else:
        frontend(args.listen, args.origin, args.warm, args.cc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
