#!/usr/bin/env python3
"""Hand-over benchmark, all measured in one run on one topology (tools/topology.py):

  bulk download through: plain kernel forwarding (no proxy), haproxy (TCP
  mode), the Python reference proxy, and the same proxy handing the flow over
  to XDP after 1 MiB; throughput, the proxy process's CPU, and the host's CPU
  (all cores, client and server included);
  hand-over latency (p50/p99) and hand-overs per second, on quiet flows.

Writes docs/benchmarks.md and prints the same table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from topology import PROXY_C4, SERVER4, topology  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
TICK = os.sysconf("SC_CLK_TCK")
HAPROXY_CFG = """global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bench
    bind {listen}
    default_backend servers
backend servers
    server s1 {upstream}
"""


def proc_cpu(pid: int) -> float:
    """User + system seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def host_busy() -> float:
    """Busy CPU seconds of the whole host, all cores: user, nice, system, irq and
    softirq (guest time is inside user already; idle, iowait and steal are not busy)."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:8]
    )
    return (user + nice + system + irq + softirq) / TICK


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(self, topo, size: str, tmp: Path):
        self.topo, self.size, self.tmp = topo, size, tmp
        self.rows: list[dict] = []

    def fetch(self, host: str, port: int) -> dict:
        out = self.topo.client.sh(
            str(BIN / "python"),
            str(REPO / "tools/traffic.py"),
            "fetch",
            "--connect",
            f"{host}:{port}",
            "--size",
            self.size,
            "--no-verify",  # the tests check integrity; here the client must be cheap
        )
        result = json.loads(out.stdout)
        assert result["ok"], result
        return result

    def measure(self, name: str, host: str, port: int, pid: int | None) -> dict:
        cpu0, busy0 = (proc_cpu(pid) if pid else 0.0), host_busy()
        result = self.fetch(host, port)
        cpu1, busy1 = (proc_cpu(pid) if pid else 0.0), host_busy()
        row = {
            "path": name,
            "gbit_s": result["gbit_s"],
            "seconds": round(result["seconds"], 2),
            "proxy_cpu_s": round(cpu1 - cpu0, 2),
            "host_cpu_s": round(busy1 - busy0, 2),
            "longest_stall_ms": result["longest_stall_ms"],
        }
        print(f"  {name}: {row}", file=sys.stderr)
        self.rows.append(row)
        return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="bulk transfer size (default 1G)")
    parser.add_argument("--flows", type=int, default=200, help="quiet flows for latency")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mosto-bench-"))
    procs: list[subprocess.Popen] = []

    def spawn(ns, cmd: list[str], log: str) -> subprocess.Popen:
        p = ns.popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / log, "w"))
        procs.append(p)
        return p

    def wait_file(path: Path) -> None:
        for _ in range(200):
            if path.exists():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{path} did not appear")

    with topology("mbench") as topo:
        try:
            spawn(
                topo.server,
                [
                    str(BIN / "python"),
                    str(REPO / "tools/traffic.py"),
                    "serve",
                    "--listen",
                    "0.0.0.0:9000",
                ],
                "server.log",
            )
            time.sleep(0.5)
            bench = Bench(topo, args.size, tmp)
            mosto = str(BIN / "mosto")

            def proxy_cmd(port: int, *extra: str) -> list[str]:
                return [
                    mosto,
                    "proxy",
                    "--listen",
                    f"0.0.0.0:{port}",
                    "--upstream",
                    f"{SERVER4}:9000",
                    *extra,
                ]

            print(f"bulk download of {args.size}, one flow:", file=sys.stderr)
            # veth carries 64 KiB GSO frames unless XDP is attached; a NIC never does.
            bench.measure("kernel forwarding, no XDP (veth GSO frames)", SERVER4, 9000, None)
            spawn(
                topo.proxy,
                [
                    mosto,
                    "agent",
                    "pc",
                    "ps",
                    "--mode",
                    "native",
                    "--pin-dir",
                    topo.pin_dir,
                    "--socket",
                    topo.agent_socket,
                ],
                "agent.log",
            )
            wait_file(Path(topo.agent_socket))
            print("XDP attached from here on (MTU-sized frames, as from a NIC):", file=sys.stderr)
            bench.measure("kernel forwarding (no proxy)", SERVER4, 9000, None)

            cfg = tmp / "haproxy.cfg"
            cfg.write_text(
                HAPROXY_CFG.format(listen=f"{PROXY_C4}:8600", upstream=f"{SERVER4}:9000")
            )
            hap = spawn(topo.proxy, ["haproxy", "-db", "-f", str(cfg)], "haproxy.log")
            time.sleep(0.5)
            bench.measure("haproxy 2.6, TCP mode", PROXY_C4, 8600, hap.pid)
            hap.terminate()

            plain = spawn(topo.proxy, proxy_cmd(8700, "--agent", ""), "proxy-plain.log")
            time.sleep(0.5)
            bench.measure("Python proxy (relaying)", PROXY_C4, 8700, plain.pid)
            plain.terminate()

            stats = tmp / "proxy-handover.json"
            proxy = spawn(
                topo.proxy,
                proxy_cmd(
                    8800,
                    "--agent",
                    topo.agent_socket,
                    "--handover-after",
                    "1M",
                    "--stats-file",
                    str(stats),
                ),
                "proxy-handover.log",
            )
            wait_file(stats)
            bench.measure("Python proxy, handed over to XDP after 1 MiB", PROXY_C4, 8800, proxy.pid)

            def quiet_handovers(port: int, flows: int, interval: float) -> dict:
                """flows quiet connections, one every interval seconds, each handed over
                as it connects (--handover-after 0)."""
                stats = tmp / f"proxy-quiet-{port}.json"
                spawn(
                    topo.proxy,
                    proxy_cmd(
                        port,
                        "--agent",
                        topo.agent_socket,
                        "--handover-after",
                        "0",
                        "--stats-file",
                        str(stats),
                    ),
                    f"proxy-quiet-{port}.log",
                )
                wait_file(stats)
                t0 = time.monotonic()
                procs.append(
                    topo.client.popen(
                        [
                            str(BIN / "python"),
                            str(REPO / "tools/traffic.py"),
                            "idle",
                            "--connect",
                            f"{PROXY_C4}:{port}",
                            "--count",
                            str(flows),
                            "--interval",
                            str(interval),
                            "--seconds",
                            "60",
                        ],
                        stdout=subprocess.DEVNULL,
                    )
                )
                while True:
                    st = json.loads(stats.read_text())
                    if st["handed_over"] + sum(st["refused"].values()) >= flows:
                        break
                    if time.monotonic() - t0 > 120:
                        raise RuntimeError(f"hand-overs stalled: {st}")
                    time.sleep(0.01)
                elapsed = time.monotonic() - t0
                row = {
                    "flows": flows,
                    "interval_ms": interval * 1e3,
                    "handed_over": st["handed_over"],
                    "refused": st["refused"],
                    "offload_p50_ms": round(statistics.median(st["offload_ms"]), 2),
                    "offload_p99_ms": round(pct(st["offload_ms"], 0.99), 2),
                    "handover_p50_ms": round(statistics.median(st["handover_ms"]), 2),
                    "handover_p99_ms": round(pct(st["handover_ms"], 0.99), 2),
                    "per_second": round(st["handed_over"] / elapsed, 1),
                }
                print(f"  {row}", file=sys.stderr)
                return row

            print("quiet flows, each handed over as it connects:", file=sys.stderr)
            latency = [
                quiet_handovers(8900, args.flows // 4, 0.05),  # one at a time
                quiet_handovers(8901, args.flows, 0.0),
            ]  # all at once
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(5)
                    except subprocess.TimeoutExpired:
                        p.kill()

    report = render(args.size, bench.rows, latency)
    Path(args.out).write_text(report)
    print(report)
    print(f"(written to {args.out})")
    return 0


def render(size: str, rows: list[dict], lat: list[dict]) -> str:
    base = rows[1]["gbit_s"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`tools/bench_handover.py`, `tools/bench_xdp.py`,",
        "`tools/bench_chains.py`); every row of a table comes from the same run, on the",
        "same machine, so compare ratios within a table rather than absolute numbers.",
        "",
        f"## Bulk transfer ({size} download, one flow, veth, 2 cores)",
        "",
        "Proxy CPU: user + system seconds of the proxy process during the transfer.",
        "Host CPU: busy seconds of all cores (client, server, softirq included).",
        "Longest stall: the longest gap between two reads at the client.",
        "Ratios are to kernel forwarding with XDP attached (the second row): with no XDP",
        "program, veth moves 64 KiB GSO frames, which no real NIC does.",
        "",
        "| path | Gbit/s | x forwarding | seconds | proxy CPU s | host CPU s | longest stall ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['path']} | {r['gbit_s']} | {r['gbit_s'] / base:.2f} | {r['seconds']} "
            f"| {r['proxy_cpu_s']} | {r['host_cpu_s']} | {r['longest_stall_ms']} |"
        )
    lines += [
        "",
        "## Hand-over (quiet flows, handed over as they connect)",
        "",
        "Offload: the agent call alone. Hand-over: hold + drain + offload, as the proxy",
        "sees it. One at a time: a new flow every 50 ms (latency without queueing); all",
        "at once: every flow connects together (the agent serialises hand-overs).",
        "",
        "| flows | arriving | handed over | refused | offload p50 ms | p99 ms "
        "| hand-over p50 ms | p99 ms | hand-overs/s |",
        "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['flows']} | {'one at a time' if r['interval_ms'] else 'all at once'} "
            f"| {r['handed_over']} | {r['refused'] or '-'} | {r['offload_p50_ms']} "
            f"| {r['offload_p99_ms']} | {r['handover_p50_ms']} | {r['handover_p99_ms']} "
            f"| {r['per_second']} |"
            for r in lat
        ),
        "",
        "Hand-overs/s counts from the first connect to the last hand-over.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
