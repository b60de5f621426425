#!/usr/bin/env python3
"""The delay line measured: ping RTT against the setting, loss against the
setting, and bulk TCP throughput across delayed links and a chain.

    tools/bench_delayline.py [--size 2G] [--repeat 3] [--quick]

Prints three tables and writes build/bench/delayline.json. Needs root and
build/delayline (`make build/delayline`). Exits 1 when a bulk flow across one
50 ms-RTT link (the chain's default, XDP-ready interfaces) stays under
1 Gbit/s: the floor tools/delayline/README.md promises.

Bulk: one TCP download (tools/traffic.py, zeros, no hashing), the server's
kernel default congestion control, 128 MiB socket buffers; the figure is the
whole transfer's average, slow start included; the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rtt  # noqa: E402
from processes import REPO, Processes, proc_cpu  # noqa: E402
from topology import DELAYLINE, LinkSpec, chain  # noqa: E402

OUT = REPO / "build" / "bench" / "delayline.json"
PORT = 9000
FLOOR_GBIT_S = 1.0
FLOOR_RTT_MS = 50
# A delay line with no delay to speak of: what the line itself costs.
NO_DELAY_MS = 0.001
RTT_SETTINGS_MS = (10, 50, 200)
LOSS_SETTINGS = (0.01, 0.05)
Z95 = 1.96


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    mult = units.get(text[-1:].lower(), 1)
    return int(text[:-1] if mult > 1 else text) * mult


def _quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def _late(link) -> dict:
    return {d: (c["late_avg_us"], c["late_max_us"]) for d, c in link.counters.items()}


def bench_rtt(count: int) -> list[dict]:
    rows = []
    for setting in RTT_SETTINGS_MS:
        interval = max(0.005, setting / 1e4)
        with chain([LinkSpec(setting / 2)], prefix="wanb") as ch:
            results = {
                addr: rtt.ping(ch.client, addr, count, interval, timeout=1 + setting / 1e3)
                for addr in (ch.server4, ch.server6)
            }
        for addr, r in results.items():
            err = [x - setting for x in r["rtt_ms"]]
            rows.append(
                {
                    "rtt_ms": setting,
                    "family": "IPv6" if ":" in addr else "IPv4",
                    "pings": count,
                    "received": r["received"],
                    "err_min_ms": round(min(err), 3),
                    "err_p50_ms": round(statistics.median(err), 3),
                    "err_p90_ms": round(_quantile(err, 0.9), 3),
                    "err_p99_ms": round(_quantile(err, 0.99), 3),
                    "err_max_ms": round(max(err), 3),
                    "line_late_us": _late(ch.links[0]),
                }
            )
    return rows


def bench_loss(count: int) -> list[dict]:
    rows = []
    for p in LOSS_SETTINGS:
        with chain([LinkSpec(1, loss=p, loss_back=0.0)], prefix="wanb") as ch:
            r = rtt.ping(ch.client, ch.server4, count, 0.001)
        lost = count - r["received"]
        rate = lost / count
        half = Z95 * math.sqrt(rate * (1 - rate) / count)
        rows.append(
            {
                "setting": p,
                "pings": count,
                "lost": lost,
                "measured": round(rate, 4),
                "ci95": [round(rate - half, 4), round(rate + half, 4)],
                "line_lost": ch.links[0].counters["ab"]["lost"],
            }
        )
    return rows


def _bulk_once(specs, xdp: bool, size: int) -> dict:
    with chain(specs, prefix="wanb", xdp=xdp) as ch, Processes(ch.run_dir) as procs:
        serve = [sys.executable, str(REPO / "tools" / "traffic.py"), "serve"]
        procs.spawn(ch.server, [*serve, "--listen", f"0.0.0.0:{PORT}"], "serve.log", ready=True)
        pids = [link.pid for link in ch.links if link.pid]
        cpu0 = sum(proc_cpu(pid) for pid in pids)
        fetch = [sys.executable, str(REPO / "tools" / "traffic.py"), "fetch", "--no-verify"]
        fetch += ["--connect", f"{ch.server4}:{PORT}", "--size", str(size)]
        result = json.loads(ch.client.sh(*fetch).stdout)
        cpu = sum(proc_cpu(pid) for pid in pids) - cpu0
    counters = [link.counters["ba"] for link in ch.links if link.counters]
    return {
        "gbit_s": result["gbit_s"],
        "seconds": round(result["seconds"], 2),
        "line_cpu_s": round(cpu, 2),
        "queue_drop": sum(c["queue_drop"] for c in counters),
        "rx_drop": sum(c["rx_drop"] for c in counters),
        "late_avg_us": max((c["late_avg_us"] for c in counters), default=0),
        "late_max_us": max((c["late_max_us"] for c in counters), default=0),
        "bytes_per_frame": (
            round(counters[0]["bytes"] / counters[0]["forwarded"]) if counters else None
        ),
    }


def bulk_cases() -> list[tuple[str, list[LinkSpec], bool]]:
    one_thread = ("--one-thread",)
    half = FLOOR_RTT_MS / 2
    chain_specs = [LinkSpec(10), *[LinkSpec(5)] * 3]
    return [
        ("veth, no delay line", [LinkSpec()], True),
        ("delay line, 0 ms", [LinkSpec(NO_DELAY_MS)], True),
        ("10 ms RTT", [LinkSpec(5)], True),
        ("50 ms RTT", [LinkSpec(half)], True),
        ("50 ms RTT, --one-thread", [LinkSpec(half, extra=one_thread)], True),
        ("200 ms RTT", [LinkSpec(100)], True),
        ("1 proxy, 2 links, 50 ms RTT", [LinkSpec(half / 2)] * 2, True),
        ("1 proxy, 2 links, 50 ms RTT, TSO", [LinkSpec(half / 2)] * 2, False),
        ("3 proxies, 4 links, 50 ms RTT", chain_specs, True),
        ("3 proxies, 4 links, 50 ms RTT, TSO", chain_specs, False),
    ]


def bench_bulk(size: int, repeat: int) -> list[dict]:
    rows = []
    for label, specs, xdp in bulk_cases():
        runs = [_bulk_once(specs, xdp, size) for _ in range(repeat)]
        best = sorted(runs, key=lambda r: r["gbit_s"])[len(runs) // 2]  # the median run
        rows.append(
            {
                "case": label,
                "rtt_ms": sum(s.rtt_ms for s in specs),
                "xdp_ready": xdp,
                "bytes": size,
                "gbit_s_runs": [r["gbit_s"] for r in runs],
                **best,
            }
        )
        print(f"  {label}: {[r['gbit_s'] for r in runs]} Gbit/s", flush=True)
    return rows


def _table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    cells = [[h for h, _ in cols]] + [[str(r[k]) for _, k in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=_size, default=2 << 30, help="bytes per bulk flow")
    parser.add_argument("--repeat", type=int, default=3, help="bulk runs per case")
    parser.add_argument("--pings", type=int, default=300, help="echoes per RTT setting")
    parser.add_argument("--quick", action="store_true", help="512M, one run, fewer pings")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_delayline: needs root (namespaces, packet sockets)", file=sys.stderr)
        return 2
    if not os.access(DELAYLINE, os.X_OK):
        print(f"bench_delayline: {DELAYLINE} missing: make build/delayline", file=sys.stderr)
        return 2
    if args.quick:
        args.size, args.repeat, args.pings = 512 << 20, 1, 100
    started = time.time()
    machine = {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }
    print("RTT: ping across one link, error against the setting (ms)", flush=True)
    rtt_rows = bench_rtt(args.pings)
    print(
        _table(
            rtt_rows,
            [
                ("RTT ms", "rtt_ms"),
                ("family", "family"),
                ("min", "err_min_ms"),
                ("p50", "err_p50_ms"),
                ("p90", "err_p90_ms"),
                ("p99", "err_p99_ms"),
                ("max", "err_max_ms"),
            ],
        )
    )
    print("\nloss: ping toward the server lossy, back clean (5000 echoes)", flush=True)
    loss_rows = bench_loss(5000 if not args.quick else 2000)
    print(
        _table(
            loss_rows,
            [
                ("setting", "setting"),
                ("lost", "lost"),
                ("measured", "measured"),
                ("95% interval", "ci95"),
                ("line counted", "line_lost"),
            ],
        )
    )
    print(f"\nbulk: one TCP download of {args.size >> 20} MiB, median of {args.repeat}", flush=True)
    bulk_rows = bench_bulk(args.size, args.repeat)
    print(
        _table(
            bulk_rows,
            [
                ("case", "case"),
                ("Gbit/s", "gbit_s"),
                ("runs", "gbit_s_runs"),
                ("line CPU s", "line_cpu_s"),
                ("B/frame", "bytes_per_frame"),
                ("queue drops", "queue_drop"),
                ("rx drops", "rx_drop"),
                ("late avg us", "late_avg_us"),
                ("late max us", "late_max_us"),
            ],
        )
    )
    machine["loadavg_at_end"] = os.getloadavg()
    machine["seconds"] = round(time.time() - started)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine, "rtt": rtt_rows, "loss": loss_rows, "bulk": bulk_rows}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    floor = next(r for r in bulk_rows if r["case"] == f"{FLOOR_RTT_MS} ms RTT")
    met = floor["gbit_s"] >= FLOOR_GBIT_S
    print(
        f"\n{FLOOR_GBIT_S:g} Gbit/s at {FLOOR_RTT_MS} ms RTT: "
        f"{'met' if met else 'MISSED'} ({floor['gbit_s']} Gbit/s); wrote {OUT}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
