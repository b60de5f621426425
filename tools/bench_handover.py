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
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from processes import REPO, Processes, mosto, proc_cpu, traffic, wait_for  # noqa: E402
from topology import PROXY_C4, SERVER4, topology  # noqa: E402

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


def host_busy() -> float:
    """Busy CPU seconds of the whole host, all cores: user, nice, system, irq and
    softirq (guest time is inside user already; idle, iowait and steal are not busy)."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:8]
    )
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(self, topo, procs: Processes, size: str):
        self.topo, self.procs, self.size = topo, procs, size
        self.rows: list[dict] = []

    def proxy(self, port: int, *extra: str, log: str, stats: Path | None = None):
        cmd = mosto(
            "proxy",
            "--listen",
            f"0.0.0.0:{port}",
            "--upstream",
            f"{SERVER4}:9000",
            *extra,
            *(["--stats-file", str(stats)] if stats else []),
        )
        p = self.procs.spawn(self.topo.proxy, cmd, log)
        if stats:
            wait_for(stats.exists, 10, f"the proxy on port {port}")
        else:
            time.sleep(0.5)
        return p

    def measure(self, name: str, host: str, port: int, pid: int | None) -> None:
        """One bulk download; the client only counts bytes (the tests check integrity)."""
        cpu0, busy0 = (proc_cpu(pid) if pid else 0.0), host_busy()
        out = self.topo.client.sh(
            *traffic("fetch", "--connect", f"{host}:{port}", "--size", self.size, "--no-verify")
        )
        cpu1, busy1 = (proc_cpu(pid) if pid else 0.0), host_busy()
        result = json.loads(out.stdout)
        assert result["ok"], result
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

    def quiet_handovers(self, port: int, flows: int, interval: float) -> dict:
        """flows quiet connections, one every interval seconds, each handed over as it
        connects (--handover-after 0)."""
        stats = self.procs.logdir / f"proxy-quiet-{port}.json"
        self.proxy(
            port,
            "--agent",
            self.topo.agent_socket,
            "--handover-after",
            "0",
            log=f"proxy-quiet-{port}.log",
            stats=stats,
        )
        t0 = time.monotonic()
        self.procs.spawn(
            self.topo.client,
            traffic(
                "idle",
                "--connect",
                f"{PROXY_C4}:{port}",
                "--count",
                str(flows),
                "--interval",
                str(interval),
                "--seconds",
                "60",
            ),
        )

        def done() -> dict | None:
            st = json.loads(stats.read_text())
            return st if st["handed_over"] + sum(st["refused"].values()) >= flows else None

        st = wait_for(done, 120, f"{flows} hand-overs")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="bulk transfer size (default 1G)")
    parser.add_argument("--flows", type=int, default=200, help="quiet flows for the burst")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="mosto-bench-"))
    with topology("mbench") as topo, Processes(logdir) as procs:
        procs.spawn(
            topo.server, traffic("serve", "--listen", "0.0.0.0:9000"), "server.log", ready=True
        )
        bench = Bench(topo, procs, args.size)
        print(f"bulk download of {args.size}, one flow:", file=sys.stderr)
        # veth carries 64 KiB GSO frames unless XDP is attached; a NIC never does.
        bench.measure("kernel forwarding, no XDP (veth GSO frames)", SERVER4, 9000, None)
        topo.start_agent(procs, "--mode", "native")
        print("XDP attached from here on (MTU-sized frames, as from a NIC):", file=sys.stderr)
        bench.measure("kernel forwarding (no proxy)", SERVER4, 9000, None)

        cfg = logdir / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(listen=f"{PROXY_C4}:8600", upstream=f"{SERVER4}:9000"))
        hap = procs.spawn(topo.proxy, ["haproxy", "-db", "-f", str(cfg)], "haproxy.log")
        time.sleep(0.5)
        bench.measure("haproxy 2.6, TCP mode", PROXY_C4, 8600, hap.pid)

        relay = bench.proxy(8700, "--agent", "", log="proxy-relay.log")
        bench.measure("Python proxy (relaying)", PROXY_C4, 8700, relay.pid)
        handing = bench.proxy(
            8800,
            "--agent",
            topo.agent_socket,
            "--handover-after",
            "1M",
            log="proxy-handover.log",
            stats=logdir / "proxy-handover.json",
        )
        bench.measure("Python proxy, handed over to XDP after 1 MiB", PROXY_C4, 8800, handing.pid)

        print("quiet flows, each handed over as it connects:", file=sys.stderr)
        latency = [
            bench.quiet_handovers(8900, args.flows // 4, 0.05),  # one at a time
            bench.quiet_handovers(8901, args.flows, 0.0),
        ]  # all at once

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
        "Written by `tools/bench_handover.py` (part of `make bench`, which also prints the",
        "XDP per-packet costs and the chain computation's timings). Every row of a table",
        "comes from the same run on the same machine: compare ratios within a table.",
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
