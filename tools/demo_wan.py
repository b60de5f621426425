#!/usr/bin/env python3
"""`make demo-wan`: a 100 ms path cut by three proxies (the paper's chain:
InP, TrP, EgP; four links of 25 ms RTT, delay lines rate-limited to
200 Mbit/s toward the client). The RTTs between the proxies and to the
server are measured on the links and made into a chain table (`mosto chains
precompute`); the ingress proxy looks the chain up for each flow and the
others follow its header (tools/wan.py). Each proxy runs an agent and
`--handover-on slowstart --gradual`. A bulk download shows, as they happen,
each proxy seeing its sending socket leave slow start, raising its delay in
steps and handing over to XDP; then 1 MB transfers, straight to the server
and through the proxies, are timed. Removes everything it made."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wan  # noqa: E402
from processes import Processes, traffic  # noqa: E402
from repro_fig4 import start_agent_on  # noqa: E402
from topology import LinkSpec, chain  # noqa: E402

RTT_MS = 100.0
LINKS = 4
RATE = 200_000_000
SERVER_PORT, PROXY_PORT = 9000, 8000
BULK = "256M"
SMALL = "1M"
SMALL_RUNS = 5


def wan_size(text: str) -> int:
    return int(text[:-1]) << {"K": 10, "M": 20, "G": 30}[text[-1]]


def specs() -> list[LinkSpec]:
    one_way = RTT_MS / LINKS / 2
    queue = int(RATE / 8 * (one_way + 2 * one_way) / 1e3)  # the delay plus one link-BDP
    return [LinkSpec(one_way, rate_back_bps=RATE, queue_bytes=queue)] * LINKS


def describe(role: str, ev: dict, t0: float) -> str:
    t = f"{ev['t'] - t0:6.2f} s  {role:<4}"
    kind = ev["event"]
    if kind == "slowstart_end":
        return (
            f"{t} left slow start after {ev['bytes'] / 1e6:.1f} MB (cwnd {ev['cwnd']}, "
            f"ssthresh {ev['ssthresh']}, srtt {ev['rtt_ms']:.1f} ms)"
        )
    if kind == "chain":
        return f"{t} looked the chain up: {' -> '.join(ev['path'])} ({ev['rounds']} rounds)"
    if kind == "ramp_start":
        return f"{t} gradual delay toward {ev['target_ms']:.1f} ms"
    if kind == "delay":
        return f"{t}   delay now {ev['delay_ms']:.1f} ms"
    if kind == "handed_over":
        return f"{t} handed over to XDP ({ev['ms']:.0f} ms hold, drain, offload)"
    if kind == "refused":
        return f"{t} hand-over refused: {ev['code']}"
    return f"{t} {kind}"


def watch(stats: dict[str, Path], t0: float, stop: threading.Event) -> None:
    """Prints every proxy's new events as they come (stats files, 5 Hz)."""
    seen = {role: 0 for role in stats}
    while not stop.wait(0.1):
        lines = []
        for role, path in stats.items():
            try:
                events = json.loads(path.read_text())["events"]
            except (OSError, ValueError):
                continue
            lines += [(e["t"], describe(role, e, t0)) for e in events[seen[role] :]]
            seen[role] = len(events)
        for _, line in sorted(lines):
            if "trigger" not in line:
                print(f"      {line}", flush=True)


def fetch_s(ns, addr: str, size: str) -> float:
    out = ns.sh(*traffic("fetch", "--connect", addr, "--size", size), check=False)
    result = json.loads(out.stdout) if out.stdout.strip() else {}
    if not result.get("ok"):
        raise SystemExit(f"demo-wan: a {size} transfer to {addr} failed: {out.stderr.strip()}")
    return float(result["seconds"])


def run(ch, procs: Processes) -> bool:
    print(f"      {' - '.join(n.name for n in ch.nodes)}; round trip {ch.rtt_ms:g} ms")
    matrix = wan.rtt_matrix(ch)
    print("      RTTs measured between the proxies and to the server (ms, ICMP echoes):")
    print("      " + " ".join(f"{name:>7}" for name in ["", *matrix["nodes"]]))
    for name, row in zip(matrix["nodes"], matrix["rtt"], strict=True):
        print("      " + " ".join(f"{x:>7}" for x in [name, *(f"{v:.1f}" for v in row)]))
    table = wan.precompute(matrix, procs.logdir / "chains.npz")
    path = wan.lookup(table, "inp", wan_size(BULK))
    print(f"      mosto chains precompute; lookup for {BULK}: {' -> '.join(path)}")
    procs.spawn(
        ch.server, traffic("serve", "--listen", f"0.0.0.0:{SERVER_PORT}"), "server.log", ready=True
    )
    extra = {}
    for k, node in enumerate(ch.proxies):
        sock = start_agent_on(ch, procs, node, wan.role(ch, k), "native")
        extra[k] = ["--agent", str(sock), "--handover-on", "slowstart", "--gradual"]
    ks = list(range(len(ch.proxies)))
    stats = wan.start_proxies(ch, procs, table, ks, SERVER_PORT, wan_size(BULK), extra)
    inp = f"{wan.listen_addr(ch, 0)}:{PROXY_PORT}"

    print(f"\n[2/4] a {BULK} download through the three proxies; what each one does:")
    stop = threading.Event()
    t0 = time.time()
    watcher = threading.Thread(target=watch, args=(stats, t0, stop), daemon=True)
    watcher.start()
    out = ch.client.sh(*traffic("fetch", "--connect", inp, "--size", BULK), check=False)
    time.sleep(0.4)
    stop.set()
    watcher.join()
    bulk = json.loads(out.stdout) if out.stdout.strip() else {"ok": False}
    handed = {r: json.loads(p.read_text())["handed_over"] for r, p in stats.items()}
    print(
        f"      {BULK}: {'intact (sha256 match)' if bulk['ok'] else 'FAILED'}, "
        f"{bulk.get('seconds', 0):.2f} s; handed over: "
        + ", ".join(f"{r} {'yes' if n else 'no'}" for r, n in handed.items())
    )

    print(f"\n[3/4] {SMALL} transfers, {SMALL_RUNS} each (fresh connections):")
    direct = [fetch_s(ch.client, f"{ch.server4}:{SERVER_PORT}", SMALL) for _ in range(SMALL_RUNS)]
    chained = [fetch_s(ch.client, inp, SMALL) for _ in range(SMALL_RUNS)]
    d, c = statistics.median(direct), statistics.median(chained)
    print(f"      straight to the server (one {RTT_MS:g} ms loop):  median {d * 1e3:.0f} ms")
    print(
        f"      through mosto (four {RTT_MS / LINKS:g} ms loops):    median {c * 1e3:.0f} ms "
        f"({d / c:.1f} times as fast)"
    )
    return bool(bulk["ok"]) and all(handed.values())


def main() -> int:
    print("mosto demo-wan: slow start on a 100 ms path, cut by three proxies that hand over")
    print("\n[1/4] the chain: client - InP - TrP - EgP - server, four delay lines")
    logdir = Path(tempfile.mkdtemp(prefix="mosto-demo-wan-"))
    ok = False
    with chain(specs(), prefix="dwan") as ch:
        try:
            with Processes(logdir) as procs:
                ok = run(ch, procs)
        finally:
            for node in ch.proxies:
                subprocess.run(["rm", "-rf", f"/sys/fs/bpf/{node.name}"], check=False)
            print(
                f"\n[4/4] tearing down (processes, namespaces, delay lines, pins); logs in {logdir}"
            )
    print("\ndemo-wan " + ("finished" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
