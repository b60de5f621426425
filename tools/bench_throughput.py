#!/usr/bin/env python3
"""Bulk-download throughput by path and hook, uncontended and contended, in one run.

One flow at a time from the server to the client of tools/topology.py's three
namespaces, through the proxy namespace by:
  forward   plain kernel forwarding: hook none (no program), xdp (the splice
            program attached natively to the proxy's veths, no entries) and tc
            (attached at clsact ingress, no entries);
  haproxy   haproxy in TCP mode (hook none);
  relay     the Python reference proxy relaying (`mosto proxy --agent ''`);
  splice    the same proxy handing the flow over after 1 MiB, to the agent's
            program on the xdp hook and on the tc hook;
each uncontended and contended (a busy loop pinned to one core for the whole
row). Per row: Gbit/s, host CPU seconds per GB (busy time of all cores from
/proc/stat, softirq included, the hog's own time taken out), the proxy
process's CPU seconds. Rows repeat --repeats times, interleaved (every row of a
round before the next round), and the median is reported with the spread.
Also the splice program's per-packet cost on both hooks (tools/bench_xdp.py's
BPF_PROG_TEST_RUN fixtures), and the issue-12 ratios from the same run.

Writes build/bench/throughput.json and docs/benchmarks-throughput.md, and
prints the report. `--quick` is a smoke run (short rows, one round): its
numbers mean nothing, its JSON has every row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_xdp  # noqa: E402
from processes import REPO, Processes, proc_cpu, traffic, wait_for  # noqa: E402
from topology import PROXY_C4, SERVER4, Topology, topology  # noqa: E402

PREFIX = "tput"  # namespaces, pins and run directories of this benchmark
SERVER_PORT, HAPROXY_PORT, RELAY_PORT, SPLICE_PORT = 9000, 8600, 8700, 8800
HANDOVER_AFTER = "1M"
HOOK_PATHS = {"none": ("forward", "haproxy", "relay"), "tc": ("forward", "splice")}
HOOK_PATHS["xdp"] = ("forward", "splice")
PROXY_IFACES = ("pc", "ps")
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
HOG_WARMUP_S = 0.3  # the scheduler moves the row's tasks off the hog's core first
HUGE = "1000G"  # the download never ends by size: the client stops after --seconds


def progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def children_cpu() -> float:
    """User + system seconds of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_times() -> dict[str, float]:
    """All cores' CPU seconds from /proc/stat: busy (user, nice, system, irq,
    softirq; guest time is inside user already) and softirq alone."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:8]
    )
    tck = os.sysconf("SC_CLK_TCK")
    return {"busy": (user + nice + system + irq + softirq) / tck, "softirq": softirq / tck}


def rx_counters(topo: Topology, ifname: str) -> tuple[int, int]:
    """(bytes, packets) received on ifname in the proxy namespace."""
    link = json.loads(topo.proxy.sh("ip", "-j", "-s", "link", "show", "dev", ifname).stdout)[0]
    rx = link["stats64"]["rx"]
    return rx["bytes"], rx["packets"]


def bpf_stats_on() -> bool:
    return Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() == "1"


def prog_runs(topo: Topology) -> dict[str, int] | None:
    """run_cnt and run_time_ns summed over the programs on the proxy's
    interfaces (kernel.bpf_stats_enabled=1 only), None without any."""
    if not bpf_stats_on():
        return None
    net = json.loads(topo.proxy.sh("bpftool", "net", "show", "-j").stdout)
    ids = set()
    for section in net:
        for attached in [*section.get("xdp", []), *section.get("tc", [])]:
            if attached.get("devname") in PROXY_IFACES and "id" in attached:
                ids.add(attached["id"])
    if not ids:
        return None
    total = {"run_cnt": 0, "run_time_ns": 0}
    for prog_id in ids:
        prog = json.loads(subprocess.run(
            ["bpftool", "prog", "show", "id", str(prog_id), "-j"],
            check=True, capture_output=True, text=True,
        ).stdout)  # fmt: skip
        for key in total:
            total[key] += prog.get(key, 0)
    return total


@contextlib.contextmanager
def cpu_hog(core: int) -> Iterator[subprocess.Popen]:
    """A busy loop pinned to one core (sched_setaffinity), nice 0, until exit."""
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(p.pid, {core})
        time.sleep(HOG_WARMUP_S)
        yield p
    finally:
        p.kill()
        p.wait()


def set_offloads(topo: Topology, on: bool) -> None:
    """tx checksum offload (and with it TSO, so GSO super-frames on veth) on
    every interface of the path, or off as the XDP program needs: it rewrites
    frames whose checksum must be complete (tools/topology.py's default)."""
    for ns, ifname in ((topo.client, "c0"), (topo.proxy, "pc"), (topo.proxy, "ps")):
        ns.sh("ethtool", "-K", ifname, "tx", "on" if on else "off")
    topo.server.sh("ethtool", "-K", "s0", "tx", "on" if on else "off")


@dataclass
class Route:
    """One row's way through the proxy: where the client connects, the server,
    and the processes whose CPU counts as the proxy's (and the agent's)."""

    name: str
    hook: str
    host: str
    port: int
    server: subprocess.Popen
    proxy: subprocess.Popen | None = None
    agent: subprocess.Popen | None = None
    stats: Path | None = None  # the handing-over proxy's --stats-file


def handed_over(stats: Path) -> int:
    try:
        return int(json.loads(stats.read_text())["handed_over"])
    except (OSError, ValueError, KeyError):
        return 0


def transfer(topo: Topology, path: Route, seconds: float, hog_pid: int | None) -> dict:
    """One download of `seconds` through path; the numbers of one row run."""
    procs = [p.pid for p in (path.proxy, path.agent, path.server) if p is not None]
    before = handed_over(path.stats) if path.stats else 0
    rx0, runs0 = rx_counters(topo, "ps"), prog_runs(topo)
    cpu0 = [proc_cpu(pid) for pid in procs]
    hog0, host0 = (proc_cpu(hog_pid) if hog_pid else 0.0), cpu_times()
    client0 = children_cpu()
    out = topo.client.sh(
        *traffic("fetch", "--connect", f"{path.host}:{path.port}", "--size", HUGE)
        + ["--no-verify", "--duration", str(seconds)],
        check=False,
    )
    client_s = children_cpu() - client0  # nsenter execs the client: one process
    host1, hog1 = cpu_times(), (proc_cpu(hog_pid) if hog_pid else 0.0)
    cpu1 = [proc_cpu(pid) for pid in procs]
    rx1, runs1 = rx_counters(topo, "ps"), prog_runs(topo)
    result = json.loads(out.stdout)
    if not result.get("stopped"):
        raise RuntimeError(f"the download through {path.name}/{path.hook} failed: {result}")
    gb = result["bytes"] / 1e9
    hog_s = hog1 - hog0
    run = {
        "gbps": round(result["bytes"] * 8 / result["seconds"] / 1e9, 3),
        "bytes": result["bytes"],
        "seconds": round(result["seconds"], 3),
        "host_cpu_s_per_gb": round((host1["busy"] - host0["busy"] - hog_s) / gb, 3),
        "softirq_s_per_gb": round((host1["softirq"] - host0["softirq"]) / gb, 3),
        # client, server, proxy and agent processes: with tick-based accounting (no
        # CONFIG_IRQ_TIME_ACCOUNTING) the softirq work done in their context is in
        # there too; other work on the host is not
        "processes_cpu_s_per_gb": round((client_s + sum(cpu1) - sum(cpu0)) / gb, 3),
        "proxy_cpu_s": round(cpu1[0] - cpu0[0], 3) if path.proxy else 0.0,
        "agent_cpu_s": round(cpu1[1] - cpu0[1], 3) if path.agent else None,
        "hog_cpu_s": round(hog_s, 2) if hog_pid else None,
        # what the server's TCP handed the proxy: 64 KiB GSO frames, or 1.5 KB ones
        "rx_bytes_per_frame": round((rx1[0] - rx0[0]) / max(rx1[1] - rx0[1], 1)),
    }
    if runs0 and runs1:
        n = runs1["run_cnt"] - runs0["run_cnt"]
        run["prog_runs_per_mb"] = round(n / (gb * 1e3), 1)
        run["prog_ns_per_run"] = round((runs1["run_time_ns"] - runs0["run_time_ns"]) / max(n, 1))
    if path.stats:
        run["handed_over"] = wait_for(
            lambda: handed_over(path.stats) > before, 5, "the hand-over in the proxy's stats"
        )
    return run


class Round:
    """One topology set up for one hook, its processes, and its rows."""

    def __init__(self, procs: Processes, topo: Topology, hook: str):
        self.procs, self.topo, self.hook = procs, topo, hook

    def paths(self) -> list[Route]:
        topo, procs, hook = self.topo, self.procs, self.hook
        set_offloads(topo, on=hook != "xdp")
        server = procs.spawn(
            topo.server,
            traffic("serve", "--listen", f"0.0.0.0:{SERVER_PORT}"),
            f"server-{topo.name}.log",
            ready=True,
        )
        out = [Route("forward", hook, SERVER4, SERVER_PORT, server)]
        if hook == "none":
            cfg = procs.logdir / "haproxy.cfg"
            cfg.write_text(
                HAPROXY_CFG.format(
                    listen=f"{PROXY_C4}:{HAPROXY_PORT}", upstream=f"{SERVER4}:{SERVER_PORT}"
                )
            )
            hap = procs.spawn(topo.proxy, ["haproxy", "-db", "-f", str(cfg)], "haproxy.log")
            relay = self.proxy(RELAY_PORT, "--agent", "", log="relay.log")
            wait_for(lambda: topo.proxy.listening(HAPROXY_PORT), 10, "haproxy")
            out += [
                Route("haproxy", hook, PROXY_C4, HAPROXY_PORT, server, proxy=hap),
                Route("relay", hook, PROXY_C4, RELAY_PORT, server, proxy=relay),
            ]
            return out
        mode = ("--mode", "native") if hook == "xdp" else ()
        agent = topo.start_agent(procs, "--hook", hook, *mode)
        stats = procs.logdir / f"splice-{topo.name}.json"
        splice = self.proxy(
            SPLICE_PORT,
            "--agent",
            topo.agent_socket,
            "--handover-after",
            HANDOVER_AFTER,
            log=f"splice-{topo.name}.log",
            stats=stats,
        )
        out.append(Route("splice", hook, PROXY_C4, SPLICE_PORT, server, splice, agent, stats))
        return out

    def proxy(self, port: int, *extra: str, log: str, stats: Path | None = None):
        upstream = f"{SERVER4}:{SERVER_PORT}"
        return self.topo.start_proxy(self.procs, port, upstream, *extra, log=log, stats=stats)


KEYS = (
    "gbps",
    "host_cpu_s_per_gb",
    "processes_cpu_s_per_gb",
    "softirq_s_per_gb",
    "proxy_cpu_s",
    "rx_bytes_per_frame",
)


def summarise(runs: dict[tuple[str, str, bool], list[dict]]) -> list[dict]:
    """One row per (path, hook, contended): the median of every number over the
    rounds, the rounds themselves, and the Gbit/s spread."""
    rows = []
    for (path, hook, contended), done in runs.items():
        row: dict = {"path": path, "hook": hook, "contended": contended}
        for key in KEYS:
            row[key] = round(statistics.median(r[key] for r in done), 3)
        for key in ("agent_cpu_s", "prog_runs_per_mb", "prog_ns_per_run"):
            values = [r[key] for r in done if r.get(key) is not None]
            row[key] = round(statistics.median(values), 3) if values else None
        for key in ("gbps", "processes_cpu_s_per_gb"):
            values = [r[key] for r in done]
            spread = (max(values) - min(values)) / statistics.median(values)
            row[f"{key}_spread"] = round(spread, 3)
        row["runs"] = done
        rows.append(row)
    return rows


def measure_all(args, logdir: Path) -> list[dict]:
    order = [(hook, path) for hook in args.hooks for path in HOOK_PATHS[hook]]
    runs: dict[tuple[str, str, bool], list[dict]] = {
        (path, hook, contended): [] for hook, path in order for contended in (False, True)
    }
    hog_core = os.cpu_count() - 1 if args.hog_core is None else args.hog_core
    for r in range(args.repeats):
        for hook in args.hooks:
            with topology(PREFIX) as topo, Processes(logdir) as procs:
                for path in Round(procs, topo, hook).paths():
                    for contended in (False, True):
                        with contextlib.ExitStack() as stack:
                            hog = stack.enter_context(cpu_hog(hog_core)) if contended else None
                            run = transfer(topo, path, args.seconds, hog.pid if hog else None)
                        runs[path.name, hook, contended].append(run)
                        what = "contended" if contended else "uncontended"
                        progress(
                            f"round {r + 1}/{args.repeats} {path.name}/{hook} {what}: "
                            f"{run['gbps']} Gbit/s, {run['host_cpu_s_per_gb']} host CPU s/GB, "
                            f"proxy {run['proxy_cpu_s']} s, {run['rx_bytes_per_frame']} B/frame"
                        )
    return summarise(runs)


def per_packet(repeat: int, rounds: int) -> dict[str, dict[str, float]]:
    samples = bench_xdp.measure(repeat, rounds, progress=False)
    return {
        f"{case}/{hook}": {"ns": statistics.median(v), "rounds": v}
        for (case, hook), v in samples.items()
    }


def find(rows: list[dict], path: str, hook: str, contended: bool) -> dict | None:
    return next(
        (r for r in rows if (r["path"], r["hook"], r["contended"]) == (path, hook, contended)),
        None,
    )


GOALS = (
    # (what, numerator, denominator, key, goal, at least)
    ("Gbit/s, splice / plain forwarding", ("splice", None), ("forward", "none"), "gbps", 0.9, True),
    ("Gbit/s, splice / haproxy", ("splice", None), ("haproxy", "none"), "gbps", 2.0, True),
    (
        "host CPU per GB, splice / haproxy",
        ("splice", None),
        ("haproxy", "none"),
        "host_cpu_s_per_gb",
        0.5,
        False,
    ),
    (
        "processes' CPU per GB, splice / haproxy (cross-check)",
        ("splice", None),
        ("haproxy", "none"),
        "processes_cpu_s_per_gb",
        0.5,
        False,
    ),
)


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    for hook in ("tc", "xdp"):
        for what, (npath, _), (dpath, dhook), key, goal, at_least in GOALS:
            got: dict[bool, float | None] = {}
            for contended in (False, True):
                num, den = find(rows, npath, hook, contended), find(rows, dpath, dhook, contended)
                got[contended] = round(num[key] / den[key], 2) if num and den else None
            out.append(
                {
                    "hook": hook,
                    "what": what,
                    "goal": f"{'>=' if at_least else '<='} {goal}",
                    "uncontended": got[False],
                    "contended": got[True],
                    "met": got[False] is not None
                    and (got[False] >= goal if at_least else got[False] <= goal),
                }
            )
    return out


def render(doc: dict) -> str:
    rows, meta = doc["rows"], doc["meta"]
    lines = [
        "# Bulk-transfer throughput, by path and hook",
        "",
        "Written by `tools/bench_throughput.py` (part of `make bench`; alone:",
        "`.venv/bin/python tools/bench_throughput.py --bpf-stats`). All rows from one run on one",
        "topology layout (`tools/topology.py`: client, proxy and server namespaces, veth);",
        "compare ratios within a table. The JSON of the run: `build/bench/throughput.json`.",
        "",
        f"Each row: one download of {meta['seconds']:g} s from the server to the client",
        "(`tools/traffic.py fetch --no-verify --duration`, zeros, one flow), repeated in",
        f"{meta['repeats']} rounds (every row of a round before the next; each round a fresh",
        "topology per hook); the median is shown. Gbit/s: bytes read by the client over",
        "the download's time, from the connect on (a splice row includes its relayed",
        f"first {HANDOVER_AFTER}iB and its hand-over). Host CPU/GB: busy seconds of all cores",
        "(/proc/stat: user, nice, system, irq, softirq; client, server, proxy, softirq and",
        "any other work on the host) over the row, less the hog's own, per 10^9 bytes;",
        "softirq/GB: the softirq part of it. Processes' CPU/GB: user + system seconds of the",
        "client, server, proxy and agent processes per 10^9 bytes (without",
        "CONFIG_IRQ_TIME_ACCOUNTING, as here, softirq work done in their context is in it;",
        "other work on the host is not: a cross-check of host CPU/GB on a shared machine).",
        "Proxy CPU: user + system seconds of the proxy process (haproxy, or the Python",
        "proxy) over the row; for forwarding none.",
        "B/frame: bytes per frame received on the proxy's server-side veth (64 KiB GSO",
        "frames, or MTU-sized ones). Spread: (max - min) / median of the rounds' Gbit/s.",
        "",
        "Paths: **forward**, plain kernel forwarding in the proxy namespace (hook none:",
        "no program; xdp: the splice program attached natively to both proxy veths, no",
        "entries; tc: attached at clsact ingress, no entries); **haproxy** 2.6 in TCP",
        "mode; **relay**, the Python reference proxy (`mosto proxy --agent ''`);",
        f"**splice**, the same proxy handing the flow over after {HANDOVER_AFTER}iB to `mosto",
        "agent --hook xdp --mode native` or `--hook tc`. Interfaces: with hook none and",
        "tc, tx checksum offload and TSO on (veth's default: GSO super-frames end to",
        "end); with xdp, off on all four veths, as the XDP program needs (it rewrites",
        "frames whose checksums must be complete; native XDP on a veth takes GSO off",
        "its peer anyway).",
        "",
        "**Contended**: a busy loop (`python -c 'while True: pass'`, nice 0) pinned with",
        f"`sched_setaffinity` to core {meta['hog_core']} of {meta['cores']}, started",
        f"{HOG_WARMUP_S:g} s before the download and killed after it: the row's client, server,",
        "proxy and softirq work share the other core and what the scheduler gives them of",
        "this one.",
        "",
        "| path | hook | contended | Gbit/s | x forward/none | host CPU s/GB "
        "| processes' CPU s/GB | softirq s/GB | proxy CPU s | B/frame | spread |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        base = find(rows, "forward", "none", r["contended"])
        times = f"{r['gbps'] / base['gbps']:.2f}" if base else "-"
        lines.append(
            f"| {r['path']} | {r['hook']} | {'yes' if r['contended'] else 'no'} | {r['gbps']} "
            f"| {times} | {r['host_cpu_s_per_gb']} | {r['processes_cpu_s_per_gb']} "
            f"| {r['softirq_s_per_gb']} "
            f"| {r['proxy_cpu_s']} | {r['rx_bytes_per_frame']:,.0f} "
            f"| {r['gbps_spread'] * 100:.0f}% |"
        )
    lines += [
        "",
        "x forward/none: to plain forwarding with no program, in the same contention.",
        "",
        "## Issue 12's goals, from the same run",
        "",
        "| hook | ratio | goal | uncontended | contended | met (uncontended) |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    for g in doc["ratios"]:
        lines.append(
            f"| {g['hook']} | {g['what']} | {g['goal']} | {g['uncontended']} "
            f"| {g['contended']} | {'yes' if g['met'] else '**no**'} |"
        )

    def spread(key: str) -> str:
        values = [r[f"{key}_spread"] * 100 for r in rows]
        return (
            f"{min(values):.0f}% to {max(values):.0f}% of its median (median "
            f"{statistics.median(values):.0f}%)"
        )

    lines += [
        "",
        f"Variance: over the {meta['repeats']} rounds the Gbit/s of a row spread by "
        f"{spread('gbps')}, its processes' CPU/GB by {spread('processes_cpu_s_per_gb')}.",
        "Other work on the host takes time from the row, not CPU from its processes: on a",
        "shared machine CPU per GB is the steadier measure, Gbit/s the noisier.",
    ]
    if any(r.get("prog_ns_per_run") for r in rows):
        lines += [
            "",
            "## The program on the path (kernel.bpf_stats_enabled=1)",
            "",
            "Program runs per MB delivered and ns per run, both proxy interfaces summed",
            "(`bpftool prog show`: run_cnt, run_time_ns).",
            "",
            "| path | hook | contended | runs per MB | ns per run |",
            "| --- | --- | --- | ---: | ---: |",
        ]
        for r in rows:
            if r.get("prog_ns_per_run"):
                lines.append(
                    f"| {r['path']} | {r['hook']} | {'yes' if r['contended'] else 'no'} "
                    f"| {r['prog_runs_per_mb']} | {r['prog_ns_per_run']} |"
                )
    pp = doc["per_packet"]
    lines += [
        "",
        "## Per-packet cost of the program, both hooks (BPF_PROG_TEST_RUN)",
        "",
        f"`tools/bench_xdp.py`'s fixtures, repeat {meta['pp_repeat']:,}, median of "
        f"{meta['pp_rounds']} interleaved rounds: the program alone, on one frame",
        "(XDP: `struct xdp_md`; tc: `struct __sk_buff`). On a link tc runs once per",
        "skb, a GSO super-frame included (the B/frame column above), XDP once per frame.",
        "",
        "| case | XDP ns/packet | tc ns/packet | tc / XDP |",
        "| --- | ---: | ---: | ---: |",
    ]
    for case in bench_xdp.CASES:
        x, t = pp[f"{case}/xdp"]["ns"], pp[f"{case}/tc"]["ns"]
        lines.append(f"| {case} | {x:g} | {t:g} | {t / x:.2f} |")
    lines += [
        "",
        f"The whole benchmark took {meta['wall_s']} s. The host's load average (1 min) was",
        f"{meta['load_average'][0]} as it started and {meta['load_average'][1]} as it ended",
        "(its own work included): other work on the host skews every number.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Goals and their ratios: issue 12. The numbers: docs/benchmarks-throughput.md.",
    )
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="length of one download (default 3)"
    )
    parser.add_argument(
        "--repeats", type=int, default=4, help="rounds of every row; the median (default 4)"
    )
    parser.add_argument(
        "--hooks",
        type=lambda text: text.split(","),
        default=list(HOOK_PATHS),
        help="only these hooks' rows, e.g. tc or none,xdp (default none,tc,xdp; the "
        "ratios need none and the hook)",
    )
    parser.add_argument("--hog-core", type=int, help="the contended rows' hog core (last core)")
    parser.add_argument(
        "--bpf-stats",
        action="store_true",
        help="set kernel.bpf_stats_enabled=1 for the run (runs and ns per run of the "
        "program on the path; it costs every BPF program on the host a little)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 0.3 s rows, one round, a short per-packet run (numbers mean nothing)",
    )
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks-throughput.md"))
    parser.add_argument("--json", default=str(REPO / "build" / "bench" / "throughput.json"))
    args = parser.parse_args()
    if unknown := set(args.hooks) - set(HOOK_PATHS):
        parser.error(f"--hooks: no such hook {', '.join(sorted(unknown))}")
    if "none" in args.hooks and not shutil.which("haproxy"):
        parser.error("no haproxy on PATH: tools/install-deps.sh installs it (Debian's)")
    pp_repeat, pp_rounds = (1_000_000, 5) if not args.quick else (10_000, 1)
    if args.quick:
        args.seconds, args.repeats = 0.3, 1
    t_start, load_start = time.monotonic(), os.getloadavg()[0]
    if load_start > 0.5:
        progress(f"load average {load_start:.2f}: other work will distort the numbers")
    logdir = Path(tempfile.mkdtemp(prefix="mosto-tput-"))
    # BPF_PROG_TEST_RUN's times include the stats' own cost: before they go on.
    progress("per-packet cost (BPF_PROG_TEST_RUN)")
    pp = per_packet(pp_repeat, pp_rounds)
    stats_before = bpf_stats_on()
    if args.bpf_stats and not stats_before:
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1\n")
    try:
        rows = measure_all(args, logdir)
    finally:
        if args.bpf_stats and not stats_before:
            Path("/proc/sys/kernel/bpf_stats_enabled").write_text("0\n")
    doc = {
        "rows": rows,
        "ratios": ratios(rows),
        "per_packet": pp,
        "meta": {
            "seconds": args.seconds,
            "repeats": args.repeats,
            "quick": args.quick,
            "cores": os.cpu_count(),
            "hog_core": os.cpu_count() - 1 if args.hog_core is None else args.hog_core,
            "pp_repeat": pp_repeat,
            "pp_rounds": pp_rounds,
            "wall_s": round(time.monotonic() - t_start),
            "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "kernel": os.uname().release,
            "logs": str(logdir),
        },
    }
    # throughput.json is the list of rows alone; the ratios, per-packet costs and
    # how the run went go beside it.
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    detail = {k: v for k, v in doc.items() if k != "rows"}
    detail_json = Path(args.json).with_name("throughput-detail.json")
    detail_json.write_text(json.dumps(detail, indent=1) + "\n")
    report = render(doc)
    Path(args.out).write_text(report)
    print(report)
    print(f"(written to {args.out} and {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
