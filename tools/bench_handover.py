#!/usr/bin/env python3
"""Hand-over benchmark, all measured in one run on one topology (tools/topology.py):

  issue 11's hand-over numbers, with the agent as in production (native XDP):
  offload latency of quiet flows one at a time (tools/quiet_pairs.py), a burst
  of quiet flows over several agent connections (hand-overs/s, the agent's CPU
  per hand-over), the break-even flow size against the relaying proxy's CPU
  per byte, bulk hand-overs' longest stall and the server's retransmission
  timeouts, offload latency and the idle agent's CPU with made-up splices in
  the table (rebuilt by a restarted agent), and a py-spy profile of the agent
  when --py-spy (or py-spy on PATH) is there; the relaying proxy's CPU per
  byte (one bulk download) for the break-even. Bulk throughput by path and
  hook is tools/bench_throughput.py's (docs/benchmarks-throughput.md).

Writes docs/benchmarks.md and build/bench/handover.json, and prints the report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from processes import BIN, REPO, Processes, mosto, proc_cpu, traffic, wait_for  # noqa: E402
from topology import PROXY_C4, SERVER4, topology  # noqa: E402


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
        upstream = f"{SERVER4}:9000"
        return self.topo.start_proxy(self.procs, port, upstream, *extra, log=log, stats=stats)

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

    # -- hand-overs, as a proxy sees them ------------------------------------

    def quiet_pairs(self, *args: str, agent_pid: int, sync=None) -> dict:
        """tools/quiet_pairs.py run in the proxy's namespace; its JSON result.
        sync: called with the process between its register and offload phases
        (it waits for a line on stdin), and again with None once it offloaded."""
        cmd = [
            str(BIN / "python"),
            str(QUIET_PAIRS),
            "run",
            "--client-ns",
            self.topo.client.name,
            "--server-ns",
            self.topo.server.name,
            "--agent",
            self.topo.agent_socket,
            "--agent-pid",
            str(agent_pid),
            *args,
            *(["--sync"] if sync else []),
        ]
        p = self.topo.proxy.popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            last = ""
            for line in p.stdout:
                doc = json.loads(line)
                if doc.get("phase") == "registered" and sync:
                    sync(p)
                    p.stdin.write("go\n")
                    p.stdin.flush()
                elif doc.get("phase") == "offloaded" and sync:
                    sync(None)
                else:
                    last = line
            if p.wait() != 0:
                raise RuntimeError(f"quiet_pairs.py {' '.join(args)} failed ({p.returncode})")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        return json.loads(last)

    def bulk_handovers(self, runs: int, size: str, after: str, agent_pid: int) -> dict:
        """runs downloads of size through `mosto proxy --handover-after after`:
        the client's longest read gap and the server's retransmission timeouts."""
        stats = self.procs.logdir / "proxy-bulk.json"
        proxy = self.proxy(
            8810,
            "--agent",
            self.topo.agent_socket,
            "--handover-after",
            after,
            log="proxy-bulk.log",
            stats=stats,
        )
        done = []
        for i in range(runs):
            rto0 = tcp_timeouts(self.topo.server)
            cpu0 = proc_cpu(proxy.pid), proc_cpu(agent_pid)
            out = self.topo.client.sh(
                *traffic("fetch", "--connect", f"{PROXY_C4}:8810", "--size", size, "--no-verify")
            )
            cpu1 = proc_cpu(proxy.pid), proc_cpu(agent_pid)
            result = json.loads(out.stdout)
            assert result["ok"], result
            run = {
                "gbit_s": result["gbit_s"],
                "longest_stall_ms": result["longest_stall_ms"],
                "sender_timeouts": tcp_timeouts(self.topo.server) - rto0,
                "proxy_cpu_s": round(cpu1[0] - cpu0[0], 3),
                "agent_cpu_s": round(cpu1[1] - cpu0[1], 3),
            }
            done.append(run)
            progress(f"bulk {i + 1}/{runs}: {run}")
        st = wait_for(
            lambda: (d := json.loads(stats.read_text()))["flows"] == runs and d, 10, "proxy stats"
        )
        stalls = [r["longest_stall_ms"] for r in done]
        rtos = [r["sender_timeouts"] for r in done]
        return {
            "runs": done,
            "handed_over": st["handed_over"],
            "refused": st["refused"],
            "handover_ms": [round(v, 2) for v in st["handover_ms"]],
            "offload_ms": [round(v, 2) for v in st["offload_ms"]],
            "longest_stall_ms": {"worst": max(stalls), "median": statistics.median(stalls)},
            "sender_timeouts": {"worst": max(rtos), "median": statistics.median(rtos)},
        }


QUIET_PAIRS = REPO / "tools" / "quiet_pairs.py"
MAX_SOURCES = 200  # client addresses for the one-at-a-time run from many clients


def progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def tcp_timeouts(ns) -> int:
    """TcpExtTCPTimeouts of a namespace (retransmission timeouts of its senders)."""
    return int(json.loads(ns.sh("nstat", "-az", "-j").stdout)["kernel"]["TcpExtTCPTimeouts"])


def summary(run: dict) -> dict:
    """The numbers of one quiet_pairs.py run, per hand-over."""
    n = max(run["offloaded"], 1)
    ms = run["offload_ms"] or [float("nan")]
    return {
        "flows": run["flows"],
        "connections": run["connections"],
        "batch": run.get("batch", 1),
        "sources": run.get("sources", 1),
        "offloaded": run["offloaded"],
        "refused": run["refused"],
        "offload_p50_ms": round(statistics.median(ms), 3),
        "offload_p99_ms": round(pct(ms, 0.99), 3),
        "offload_max_ms": round(max(ms), 3),
        "offloads_per_s": round(run["offloaded"] / run["offload_s"], 1),
        "registers_per_s": round(run["flows"] / run["register_s"], 1),
        "agent_cpu_us_per_offload": round(run["agent_cpu_offload_s"] / n * 1e6, 1),
        "agent_cpu_us_per_register": round(run["agent_cpu_register_s"] / run["flows"] * 1e6, 1),
        "proxy_cpu_us_per_offload": round(run["proxy_cpu_offload_s"] / n * 1e6, 1),
        "proxy_cpu_us_per_register": round(run["proxy_cpu_register_s"] / run["flows"] * 1e6, 1),
    }


class Profiler:
    """py-spy on the agent between a quiet_pairs.py run's register and offload
    phases (its samples of the offloads alone)."""

    def __init__(self, py_spy: str, pid: int, out: Path, rate: int = 1000):
        self.py_spy, self.pid, self.out, self.rate = py_spy, pid, out, rate
        self.p: subprocess.Popen | None = None

    def __call__(self, pairs: subprocess.Popen | None) -> None:
        if pairs is not None:
            self.p = subprocess.Popen(
                [self.py_spy, "record", "-p", str(self.pid), "--nonblocking", "-r", str(self.rate)]
                + ["-f", "raw", "-o", str(self.out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # attached
        elif self.p is not None:
            self.p.send_signal(signal.SIGINT)  # it writes what it has and exits
            self.p.wait(30)


def top_frames(raw: Path, n: int = 12) -> dict:
    """py-spy's collapsed stacks: the functions most often on the stack
    (inclusive) and at its top (self), as shares of all samples."""
    inclusive, own, total = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]
        if not frames or not count.isdigit():
            continue
        total += int(count)
        own[frames[-1]] += int(count)
        for f in set(frames):
            inclusive[f] += int(count)
    boring = ("threading.py", "concurrent/futures", "<module>", "cli/", "agent/app.py")

    def share(counter: Counter) -> list[list]:
        top = [(f, c) for f, c in counter.most_common() if not any(b in f for b in boring)]
        return [[f, round(100 * c / total, 1)] for f, c in top[:n]]

    return {"samples": total, "inclusive": share(inclusive), "self": share(own)}


def server_floor(socket_path: str, agent_pid: int, n: int) -> dict:
    """What the agent's socket server costs a request that does nothing: n
    `release` requests of a splice that does not exist, one at a time on one
    connection, each refused (not_found) without a look at the table beyond
    one dict lookup. The part of every request that is not the hand-over's."""
    from mosto.wire.client import AgentClient
    from mosto.wire.refusal import Refused

    client = AgentClient(socket_path)
    ms = []
    cpu0 = proc_cpu(agent_pid)
    for _ in range(n):
        t = time.perf_counter()
        try:
            client.release(1)
        except Refused as exc:
            assert exc.code == "not_found", exc
        ms.append((time.perf_counter() - t) * 1e3)
    cpu = proc_cpu(agent_pid) - cpu0
    return {
        "requests": n,
        "p50_ms": round(pct(ms, 0.5), 3),
        "p99_ms": round(pct(ms, 0.99), 3),
        "agent_cpu_us_per_request": round(cpu / n * 1e6, 1),
    }


def start_agent(topo, procs: Processes, log: str, timeout: float) -> tuple:
    """Topology.start_agent's agent (the same command), waited for longer: a
    restarted agent rebuilds its splices before it serves. The process, the
    seconds it took to serve, and the splices it says it rebuilt."""
    t0 = time.monotonic()
    agent = procs.spawn(
        topo.proxy,
        mosto(
            "agent",
            "pc",
            "ps",
            "--pin-dir",
            topo.pin_dir,
            "--socket",
            topo.agent_socket,
            *AGENT_ARGS,
        ),
        log,
    )

    def serving() -> bool:
        if agent.poll() is not None:
            raise AssertionError(f"the agent exited: {procs.log_tail(log)}")
        return "serving on" in (procs.logdir / log).read_text()

    wait_for(serving, timeout, "the restarted agent", interval=0.1)
    started = time.monotonic() - t0
    m = re.search(r"rebuilt (\d+) splices", (procs.logdir / log).read_text())
    return agent, started, int(m.group(1)) if m else 0


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    p.wait(60)


AGENT_ARGS = ("--mode", "native")  # native XDP on the proxy's veths
SCAN_S = 30.0  # the agent's idle scan interval at its default --idle-timeout (300 s / 10)


def scale_cap(flows: int) -> tuple[int, str]:
    """The most made-up splices an agent can hold here beside flows real ones: two
    entries each in the table, two reservation sockets each under the agent's
    descriptor limit (as root it raises its hard limit as far as fs.nr_open)."""
    from mosto.targets.xdp.abi import MAX_ENTRIES

    table = (MAX_ENTRIES - 4 * flows - 64) // 2
    ceiling, why = fd_ceiling()
    fds = (ceiling - 2 * flows - 1024) // 2  # 1024: the agent's own, connections included
    return (fds, f"descriptors ({why})") if fds < table else (table, f"table ({MAX_ENTRIES})")


def fd_ceiling() -> tuple[int, str]:
    """The descriptor limit the agent can reach: fs.nr_open if root here may
    raise a hard limit (CAP_SYS_RESOURCE), else the hard limit it inherits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    if hard == resource.RLIM_INFINITY:
        return nr_open, f"fs.nr_open {nr_open}"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard + 1))
    except (ValueError, OSError):
        return hard, f"hard limit {hard}: no CAP_SYS_RESOURCE to raise it"
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return nr_open, f"fs.nr_open {nr_open}"


def scale(bench: Bench, procs: Processes, agent, levels: list[int], flows: int, idle_s: float):
    """Offload latency of flows real quiet flows, and the idle agent's CPU, with
    each level's number of splices in the table (made up, installed with the
    agent stopped, rebuilt by the next one)."""
    topo, rows, installed = bench.topo, [], 0
    cap, why = scale_cap(flows)
    for want in levels:
        n = min(want, cap)
        if rows and n == rows[-1]["splices"]:
            rows[-1]["requested"].append(want)
            continue
        stop(agent)
        if n > installed:
            out = topo.proxy.sh(
                str(BIN / "python"),
                str(QUIET_PAIRS),
                "install",
                "--pin-dir",
                topo.pin_dir,
                "--first",
                str(installed),
                "--count",
                str(n - installed),
            )
            progress(f"installed {n - installed} made-up splices: {out.stdout.strip()}")
            installed = n
        agent, started, rebuilt = start_agent(topo, procs, f"agent-{n}.log", 900)
        progress(f"agent restarted with {rebuilt} splices, serving after {started:.1f} s")
        assert rebuilt >= n, f"the agent rebuilt {rebuilt} splices, not {n}"
        got = summary(bench.quiet_pairs("--flows", str(flows), agent_pid=agent.pid))
        time.sleep(1.0)  # the last releases settle
        cpu0 = proc_cpu(agent.pid)
        time.sleep(idle_s)
        reap = (proc_cpu(agent.pid) - cpu0) / idle_s * 1e3
        row = {
            "splices": rebuilt,
            "requested": [want],
            "capped_by": why if n < want else None,
            "agent_start_s": round(started, 2),
            "offload_p50_ms": got["offload_p50_ms"],
            "offload_p99_ms": got["offload_p99_ms"],
            "agent_cpu_us_per_handover": got["agent_cpu_us_per_offload"],
            "agent_cpu_us_per_register": got["agent_cpu_us_per_register"],
            "reap_cpu_ms_per_s": round(reap, 2),
            "refused": got["refused"],
        }
        progress(f"{row}")
        rows.append(row)
    return rows, agent


def _py_spy() -> str | None:
    """The venv's (make installs it, the bench extra), or one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", default="1G", help="the relayed download for the break-even (default 1G)"
    )
    parser.add_argument("--flows", type=int, default=200, help="quiet flows, one at a time")
    parser.add_argument("--burst", type=int, default=5000, help="quiet flows in the burst")
    parser.add_argument("--connections", type=int, default=8, help="agent connections, burst")
    parser.add_argument("--batch", type=int, default=32, help="pairs per offload_many, burst")
    parser.add_argument("--bulk-size", default="256M", help="hand-over stall downloads")
    parser.add_argument("--bulk-runs", type=int, default=5)
    parser.add_argument("--scale", default="0,1000,10000,50000", help="splices in the table")
    parser.add_argument(
        "--idle", type=float, default=SCAN_S, help="idle agent CPU window (s): one idle scan"
    )
    parser.add_argument(
        "--py-spy", default=_py_spy(), help="profile the agent in a burst ('' for none)"
    )
    parser.add_argument("--profile-flows", type=int, default=2000)
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--json", default=str(REPO / "build" / "bench" / "handover.json"))
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="mosto-bench-"))
    t_start, load_start = time.monotonic(), os.getloadavg()[0]
    if load_start > 0.5:
        print(
            f"load average {load_start:.2f}: other work will distort the numbers", file=sys.stderr
        )
    with topology("mbench") as topo, Processes(logdir) as procs:
        procs.spawn(
            topo.server, traffic("serve", "--listen", "0.0.0.0:9000"), "server.log", ready=True
        )
        bench = Bench(topo, procs, args.size)
        agent = topo.start_agent(procs, *AGENT_ARGS)
        print(f"relayed download of {args.size}, for the break-even:", file=sys.stderr)
        relay = bench.proxy(8700, "--agent", "", log="proxy-relay.log")
        bench.measure("Python proxy (relaying)", PROXY_C4, 8700, relay.pid)
        relay_ns_per_byte = bench.rows[0]["proxy_cpu_s"] / _size(args.size) * 1e9

        print(f"bulk hand-overs ({args.bulk_size}, after 8 MiB):", file=sys.stderr)
        bulk = bench.bulk_handovers(args.bulk_runs, args.bulk_size, "8M", agent.pid)

        print(f"{args.flows} quiet flows handed over one at a time:", file=sys.stderr)
        quiet = summary(bench.quiet_pairs("--flows", str(args.flows), agent_pid=agent.pid))
        progress(f"{quiet}")
        sources = min(args.flows, MAX_SOURCES)
        print(
            f"{args.flows} quiet flows one at a time from {sources} client addresses:",
            file=sys.stderr,
        )
        spread = summary(
            bench.quiet_pairs(
                "--flows", str(args.flows), "--sources", str(sources),
                "--port", "8954", "--server-port", "9104", agent_pid=agent.pid,
            )
        )  # fmt: skip
        progress(f"{spread}")
        print("the socket server alone: 2,000 requests that do nothing:", file=sys.stderr)
        floor = server_floor(topo.agent_socket, agent.pid, 2000)
        progress(f"{floor}")
        print(
            f"burst: {args.burst} quiet flows over {args.connections} agent connections:",
            file=sys.stderr,
        )
        burst = summary(
            bench.quiet_pairs(
                "--flows", str(args.burst), "--connections", str(args.connections),
                "--port", "8951", "--server-port", "9101", agent_pid=agent.pid,
            )
        )  # fmt: skip
        progress(f"{burst}")
        print(
            f"burst, batched: {args.burst} quiet flows over {args.connections} agent "
            f"connections, offload_many of {args.batch}:",
            file=sys.stderr,
        )
        batched = summary(
            bench.quiet_pairs(
                "--flows", str(args.burst), "--connections", str(args.connections),
                "--batch", str(args.batch), "--port", "8953", "--server-port", "9103",
                agent_pid=agent.pid,
            )
        )  # fmt: skip
        progress(f"{batched}")
        profile = None
        if args.py_spy:
            print(f"profile: py-spy on the agent, {args.profile_flows} flows:", file=sys.stderr)
            raw = logdir / "agent-profile.txt"
            bench.quiet_pairs(
                "--flows", str(args.profile_flows), "--connections", str(args.connections),
                "--port", "8952", "--server-port", "9102", agent_pid=agent.pid,
                sync=Profiler(args.py_spy, agent.pid, raw),
            )  # fmt: skip
            profile = {"flows": args.profile_flows, **top_frames(raw)}
            progress(f"{profile['samples']} samples")
        print("scale: made-up splices in the table, a restarted agent:", file=sys.stderr)
        levels = [int(v) for v in args.scale.split(",")]
        scale_rows, agent = scale(bench, procs, agent, levels, args.flows, args.idle)

    handover_cpu_us = (
        burst["agent_cpu_us_per_offload"]
        + burst["agent_cpu_us_per_register"]
        + burst["proxy_cpu_us_per_offload"]
        + burst["proxy_cpu_us_per_register"]
    )
    quiet_cpu_us = (
        quiet["agent_cpu_us_per_offload"]
        + quiet["agent_cpu_us_per_register"]
        + quiet["proxy_cpu_us_per_offload"]
        + quiet["proxy_cpu_us_per_register"]
    )
    result = {
        "offload_p50_ms": quiet["offload_p50_ms"],
        "offload_p99_ms": quiet["offload_p99_ms"],
        "burst_flows": burst["offloaded"],
        "burst_handovers_per_s": burst["offloads_per_s"],
        "burst_batched_handovers_per_s": batched["offloads_per_s"],
        "agent_cpu_us_per_handover": burst["agent_cpu_us_per_offload"],
        "break_even_bytes": round(handover_cpu_us * 1e3 / relay_ns_per_byte),
        "bulk_longest_stall_ms": bulk["longest_stall_ms"],
        "bulk_sender_timeouts": bulk["sender_timeouts"],
        "scale": scale_rows,
        "detail": {
            "quiet": quiet,
            "quiet_many_clients": spread,
            "burst": burst,
            "burst_batched": batched,
            "server_floor": floor,
            "relay_cpu_ns_per_byte": round(relay_ns_per_byte, 3),
            "handover_cpu_us": round(handover_cpu_us, 1),
            "break_even_bytes_one_at_a_time": round(quiet_cpu_us * 1e3 / relay_ns_per_byte),
            "bulk": bulk,
            "relay": bench.rows[0],
            "profile": profile,
            "seconds": round(time.monotonic() - t_start),
            "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        },
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    report = render(args, result)
    Path(args.out).write_text(report)
    print(report)
    print(f"(written to {args.out} and {args.json})")
    return 0


# Measured on the agent over quiet-flow offloads one at a time (2 cores, other
# work on the host): perf record and perf trace -s of the agent process, py-spy,
# and Agent.offload called in-process on loopback pairs against MemoryTarget.
WHERE_THE_TIME_GOES = [
    "### Where the time goes (the goals missed above)",
    "",
    "An offload of a quiet flow is about 140 system calls (`perf trace -s` on the",
    "agent): 34 getsockopt, 26 setsockopt, 13 bpf, 12 ioctl, 12 getsockname, 12",
    "getpeername, 8 fstat, 4 connect, 2 socket, bind and pwrite each, one sock_diag",
    "round trip per side; no subprocess (holds go through libnftables in-process,",
    "and only for held flows). Most are reads of the two sockets, three times each:",
    "before repair mode (the checks), in it (the entries) and once more after the",
    "entries are in (the verification: a proxy holding a socket in repair mode can",
    "move it). `perf record` of the agent over the offloads: 60% of its CPU is the",
    "interpreter running mosto's Python, 33% the kernel (those calls and the work",
    "they set off: the reservations' connects, the pokes, the map updates), 5%",
    "libc.",
    "",
    "The hand-over's own Python, without the socket server or the data plane's",
    "maps (Agent.offload called in-process on loopback pairs, MemoryTarget): about",
    "300 us of CPU per offload, spread thin over reading the sockets (~25%), the",
    "trust checks and sock_diag (~15%), reservations and neutralisation (~12%),",
    "building and indexing the entries, and the answer's JSON. The socket server",
    "adds its floor (measured above) to every request, and the data plane's map",
    "reads and writes (13 bpf calls through ctypes) and the log line of each",
    "splice the rest.",
    "",
    "Of that CPU, about a third is system time (user and system apart, from /proc,",
    "1,000 flows one at a time and in a burst: 960-1,070 us user and 350-440 us",
    "system per offload, 360-460 and 260-310 per register). On this one-host",
    "topology the system time includes the peers' TCP stacks: veth delivers in the",
    "sender's context, so the peers' answers to the agent's pokes and reservations",
    "run inside its system calls. On a proxy host whose peers are elsewhere, that",
    "part is not the agent's.",
    "",
    "What this work removed, measured side by side against the previous agent in",
    "one session: the server's hand-off of every request from an event loop to a",
    "pool of workers and back (two thread switches and a fight for the GIL: 8.8",
    "futex calls and 187 us of agent CPU per request that does nothing, now 0.2",
    "and 45-70 us: the workers wait on the epoll set themselves, each socket",
    "one-shot), a file created and unlinked per request for the repair records (now",
    "one slot file per thread, a pwrite each way), a trip through repair mode and",
    "two stats reads per hand-over for the TSval anchors (now taken from the",
    "install's own read), a netlink socket and a raw socket made per request (now",
    "one per thread), and walks over every splice in an unprivileged caller's",
    "ownership and quota checks (now indexed by owner). Together: 1.5-1.7x the",
    "hand-overs per second and 0.6x the agent CPU per hand-over of the previous",
    "agent, in back-to-back runs of this benchmark.",
    "",
    "Since then, from the tail: the descriptor table is grown once at start (each",
    "growth past a power of two waited for an RCU grace period inside the hand-over",
    "that opened the descriptor: 5-15 ms), what is alive is frozen out of the",
    "cyclic collector's reach (a full collection of the agent's heap took 16-47",
    "ms, at a hand-over's expense), and routes, links and neighbours are asked of",
    "rtnetlink directly (rtnetlink.py): through pyroute2 a next-hop lookup cost",
    "1.4-2.7 ms of CPU in the agent's threads, a hand-over paid it for every",
    "client address it had not seen in 5 s, and the reaper for every address it",
    "kept fresh; now 65 us (and 16 us to tell whether an address is local).",
    "",
    "Reaching 5,000 hand-overs a second on 2 cores that also run the proxy, the",
    "clients and the softirqs needs under 200 us of agent CPU per flow, register",
    "included, and 100 us for the goal: the interpreter's share alone is several",
    "times that. It takes a hand-over path in C (the reads, checks and entry",
    "building of both sockets in one call) or a different split of the work, not",
    "more tuning of this one.",
    "",
]


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    mult = units.get(text[-1:].lower(), 1)
    return int(text[:-1] if mult > 1 else text) * mult


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render(args, r: dict) -> str:
    d, quiet, burst, bulk = r["detail"], r["detail"]["quiet"], r["detail"]["burst"], None
    batched = d["burst_batched"]
    bulk = d["bulk"]
    sc = r["scale"]
    empty, top = sc[0], sc[-1]
    ratio = top["offload_p50_ms"] / empty["offload_p50_ms"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `tools/bench_handover.py` (part of `make bench`, which also prints the",
        "chain computation's timings). Every row of a table comes from the same run on the",
        "same machine: compare ratios within a table.",
        "",
        "Bulk-transfer throughput by path (forwarding, haproxy, the Python proxy, the",
        "splice) and hook (none, XDP, tc), uncontended and contended, with the splice",
        "program's per-packet cost on both hooks, written by `tools/bench_throughput.py`:",
        "[benchmarks-throughput.md](benchmarks-throughput.md).",
    ]
    stall, rto = r["bulk_longest_stall_ms"], r["bulk_sender_timeouts"]
    lines += [
        "",
        "## Hand-over: where it stands against issue 11's goals",
        "",
        "All from the same run, with the agent started as in production (`mosto agent pc ps",
        "--mode native`: native XDP on the proxy's veths) and quiet flows made by",
        "`tools/quiet_pairs.py`: a client in the client's namespace connects to a listener",
        "in the proxy's, which connects on to the server; each pair is registered",
        "(`AgentClient.register`), then offloaded (`AgentClient.offload`, timed alone, from",
        "the proxy's send to the agent's answer). Agent CPU: the agent process's utime +",
        "stime from /proc over the phase, divided by the hand-overs. The JSON of the run:",
        "`build/bench/handover.json`.",
        "",
        "| measure | goal | measured | met |",
        "| --- | --- | ---: | --- |",
        f"| offload p99, {quiet['offloaded']} quiet flows one at a time | <= 1 ms "
        f"| {r['offload_p99_ms']} ms (p50 {r['offload_p50_ms']}) "
        f"| {_met(r['offload_p99_ms'] <= 1)} |",
        f"| hand-overs/s, {r['burst_flows']:,} quiet flows over {burst['connections']} "
        f"agent connections | >= 5,000 | {r['burst_handovers_per_s']} "
        f"| {_met(r['burst_handovers_per_s'] >= 5000)} |",
        f"| the same, offload_many of {batched['batch']} pairs a request | >= 5,000 "
        f"| {r['burst_batched_handovers_per_s']} "
        f"| {_met(r['burst_batched_handovers_per_s'] >= 5000)} |",
        f"| agent CPU per hand-over (the burst's offloads) | <= 100 us "
        f"| {r['agent_cpu_us_per_handover']:,.0f} us "
        f"| {_met(r['agent_cpu_us_per_handover'] <= 100)} |",
        f"| break-even remaining flow size | <= 128 KiB | {r['break_even_bytes'] / 1024:,.0f} KiB "
        f"| {_met(r['break_even_bytes'] <= 128 * 1024)} |",
        f"| offload p50 at {top['splices']:,} splices / empty (goal at 50,000) | <= 1.25x "
        f"| {ratio:.2f}x ({top['offload_p50_ms']} / {empty['offload_p50_ms']} ms) "
        f"| {_met(ratio <= 1.25)}{'' if top['splices'] >= 50000 else ', not at 50,000'} |",
        f"| idle agent (reaper) at {top['splices']:,} splices | < 5% of a core "
        f"| {top['reap_cpu_ms_per_s'] / 10:.1f}% | {_met(top['reap_cpu_ms_per_s'] < 50)} |",
        f"| bulk sender timeouts, {len(bulk['runs'])} x {args.bulk_size} (worst, median) | 0 "
        f"| {rto['worst']}, {rto['median']} | {_met(rto['worst'] == 0)} |",
        f"| bulk longest stall (worst, median) | <= 20 ms | {stall['worst']}, {stall['median']} "
        f"ms | {_met(stall['worst'] <= 20)} |",
        "",
        "### Quiet flows",
        "",
        "One at a time: one agent connection, each offload waits for the last one's",
        "answer (no queueing). Burst: every pair registered first, then all offloaded as",
        "fast as the agent answers, over several agent connections in parallel (the",
        "benchmark runs as root: no per-uid connection quota); batched, the same with",
        "`offload_many` requests of several pairs (each flow's latency is its request's).",
        "Proxy CPU: the calling thread's CPU time in the call. Client addresses: the",
        "clients connect from that many addresses in turn (a proxy's clients are many",
        "hosts, and each new one is a next hop the agent looks up in the hand-over).",
        "",
        "| flows | client addresses | agent connections | pairs a request | offloaded | refused "
        "| offload p50 ms | p99 ms | max ms | offloads/s | agent us per offload | per register "
        "| proxy us per offload | per register |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for q in (quiet, d["quiet_many_clients"], burst, batched):
        lines.append(
            f"| {q['flows']} | {q.get('sources', 1)} | {q['connections']} | {q.get('batch', 1)} "
            f"| {q['offloaded']} "
            f"| {q['refused'] or '-'} "
            f"| {q['offload_p50_ms']} | {q['offload_p99_ms']} | {q['offload_max_ms']} "
            f"| {q['offloads_per_s']} | {q['agent_cpu_us_per_offload']} "
            f"| {q['agent_cpu_us_per_register']} | {q['proxy_cpu_us_per_offload']} "
            f"| {q['proxy_cpu_us_per_register']} |"
        )
    fl = d["server_floor"]
    lines += [
        "",
        f"The socket server alone, on the same agent: {fl['requests']:,} requests that do",
        "nothing (`release` of a splice that does not exist, refused `not_found`), one",
        f"at a time: p50 {fl['p50_ms']} ms, p99 {fl['p99_ms']} ms, "
        f"{fl['agent_cpu_us_per_request']} us of agent CPU each.",
        "Every register and offload pays that on top of its own work.",
        "",
        "### Break-even",
        "",
        f"The reference proxy relaying spends {d['relay_cpu_ns_per_byte']} ns of CPU per byte",
        f"(its CPU over a relayed {args.size} download). A hand-over costs, in the burst,",
        f"{d['handover_cpu_us']:,.0f} us: the agent's register and offload CPU and the proxy's own",
        "in the two calls. A flow with less than that many bytes left is cheaper to relay:",
        f"**{r['break_even_bytes']:,} bytes** ({r['break_even_bytes'] / 1024:,.0f} KiB). From",
        "the one-at-a-time flows (fewer splices in the table, no queueing) it is",
        f"{d['break_even_bytes_one_at_a_time']:,} bytes.",
        "",
        f"### Bulk hand-overs ({len(bulk['runs'])} downloads of {args.bulk_size} through "
        "`mosto proxy --handover-after 8M`: hold, drain, offload)",
        "",
        "Longest stall: the client's longest gap between two reads. Sender timeouts:",
        "TcpExtTCPTimeouts in the server's namespace (`nstat`) across the download.",
        f"Handed over {bulk['handed_over']} of {len(bulk['runs'])}"
        f"{', refused ' + str(bulk['refused']) if bulk['refused'] else ''}; hand-over (hold +",
        f"drain + offload) ms: {', '.join(map(str, bulk['handover_ms']))}; offload alone ms:",
        f"{', '.join(map(str, bulk['offload_ms']))}.",
        "",
        "| run | Gbit/s | longest stall ms | sender timeouts | proxy CPU s | agent CPU s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {i + 1} | {b['gbit_s']} | {b['longest_stall_ms']} | {b['sender_timeouts']} "
            f"| {b['proxy_cpu_s']} | {b['agent_cpu_s']} |"
            for i, b in enumerate(bulk["runs"])
        ),
        "",
        "### Splices in the table",
        "",
        "Made-up splices (two entries each, real addresses, MACs and egress interfaces,",
        "ports no real flow uses) installed in the pinned maps with the agent stopped; the",
        "restarted agent rebuilds them (the count is its own log line) and reserves their",
        f"four-tuples. Then {args.flows} real quiet flows are offloaded one at a time on top,",
        f"and the idle agent's CPU is read over {args.idle:g} s (at the default",
        "`--idle-timeout` its reaper scans the table for idle entries every 30 s: the window",
        "holds one scan). Agent start: from its launch to serving, the rebuild included.",
        "",
        "| splices | asked for | agent start s | offload p50 ms | p99 ms "
        "| agent us per offload | per register | idle agent ms/s | refused |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *(
            f"| {s['splices']:,} | {', '.join(f'{v:,}' for v in s['requested'])} "
            f"| {s['agent_start_s']} | {s['offload_p50_ms']} | {s['offload_p99_ms']} "
            f"| {s['agent_cpu_us_per_handover']} | {s['agent_cpu_us_per_register']} "
            f"| {s['reap_cpu_ms_per_s']} | {s['refused'] or '-'} |"
            for s in sc
        ),
        "",
    ]
    capped = [s for s in sc if s["capped_by"]]
    if capped:
        lines += [
            f"Asked for {', '.join(f'{v:,}' for s in capped for v in s['requested'])}: capped",
            f"by {capped[0]['capped_by']}. The agent keeps two reservation sockets per",
            "splice; as root it raises its hard descriptor limit for a full table (131,072",
            "entries: 65,536 splices), up to fs.nr_open, which takes CAP_SYS_RESOURCE. Where",
            "its root lacks that capability (this sandbox; a container's root may too) it",
            "keeps the hard limit it inherits, says so in its log, and 50,000 splices",
            "(100,000 descriptors) do not fit.",
            "",
        ]
    missed = (
        r["offload_p99_ms"] > 1
        or r["burst_handovers_per_s"] < 5000
        or r["agent_cpu_us_per_handover"] > 100
        or r["break_even_bytes"] > 128 * 1024
    )
    if missed:
        lines += WHERE_THE_TIME_GOES
    prof = d["profile"]
    if prof:
        lines += [
            f"### Where the agent's time goes (py-spy, a burst of {prof['flows']} flows)",
            "",
            f"py-spy record on the agent over the offloads ({prof['samples']} samples of",
            "its running threads, 1,000 a second): share of samples with the function on",
            "the stack, and at its top. A thread waiting for the GIL counts as running:",
            "the self time of a function that makes a system call includes the wait to",
            "get the GIL back after it.",
            "",
            "| on the stack | % | at the top | % |",
            "| --- | ---: | --- | ---: |",
        ]

        def cells(column: list, i: int) -> str:
            return f"`{column[i][0]}` | {column[i][1]}" if i < len(column) else " | "

        for i in range(max(len(prof["inclusive"]), len(prof["self"]))):
            lines.append(f"| {cells(prof['inclusive'], i)} | {cells(prof['self'], i)} |")
        lines.append("")
    lines += [
        f"The whole benchmark took {d['seconds']} s. The host's load average (1 min) was",
        f"{d['load_average'][0]} as it started and {d['load_average'][1]} as it ended (its own",
        "work included): other work on the host skews every number.",
    ]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
