#!/usr/bin/env python3
"""`make demo`: one download through the reference proxy, handed over to the
XDP data plane mid-stream, with what happened printed step by step. Builds
its namespaces, and removes everything it made when it is done."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_handover import proc_cpu  # noqa: E402
from topology import PROXY_C4, SERVER4, topology  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
SIZE = "512M"
HANDOVER_AFTER = "8M"
STEPS = 6


def step(n: int, text: str) -> None:
    print(f"\n[{n}/{STEPS}] {text}", flush=True)


def counters(topo) -> dict[str, int]:
    out = topo.proxy.sh(str(BIN / "mosto"), "xdp", "counters", "--json", "--pin-dir", topo.pin_dir)
    return json.loads(out.stdout)


def wait_for(path: Path, what: str) -> None:
    for _ in range(200):
        if path.exists():
            return
        time.sleep(0.05)
    raise SystemExit(f"demo: {what} did not start (see {path.parent})")


def fetch(topo, port: int) -> dict:
    out = topo.client.sh(
        str(BIN / "python"),
        str(REPO / "tools/traffic.py"),
        "fetch",
        "--connect",
        f"{PROXY_C4}:{port}",
        "--size",
        SIZE,
        check=False,
    )
    if not out.stdout:
        raise SystemExit(f"demo: the transfer failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="mosto-demo-"))
    procs: list[subprocess.Popen] = []

    def spawn(ns, cmd: list[str], log: str) -> subprocess.Popen:
        p = ns.popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / log, "w"))
        procs.append(p)
        return p

    print("mosto demo: a TCP download through a proxy, handed over to XDP mid-stream")
    step(1, "network namespaces: client -- proxy -- server (veth pairs, IPv4 and IPv6)")
    with topology("mdemo") as topo:
        try:
            print(f"      {topo.client.name}, {topo.proxy.name}, {topo.server.name}")
            step(
                2,
                "starting the server, the agent (XDP on the proxy's interfaces) and the "
                f"proxy (hands a flow over after {HANDOVER_AFTER})",
            )
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
            spawn(
                topo.proxy,
                [
                    str(BIN / "mosto"),
                    "agent",
                    "pc",
                    "ps",
                    "--pin-dir",
                    topo.pin_dir,
                    "--socket",
                    topo.agent_socket,
                ],
                "agent.log",
            )
            wait_for(Path(topo.agent_socket), "the agent")
            watch = topo.proxy.popen(
                [str(BIN / "mosto"), "ctl", "watch", "--socket", topo.agent_socket],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(watch)
            events: list[dict] = []
            threading.Thread(
                target=lambda: events.extend(json.loads(x) for x in watch.stdout), daemon=True
            ).start()
            stats_file = tmp / "proxy.json"
            proxy = spawn(
                topo.proxy,
                [
                    str(BIN / "mosto"),
                    "proxy",
                    "--listen",
                    "0.0.0.0:8000",
                    "--upstream",
                    f"{SERVER4}:9000",
                    "--agent",
                    topo.agent_socket,
                    "--handover-after",
                    HANDOVER_AFTER,
                    "--stats-file",
                    str(stats_file),
                ],
                "proxy.log",
            )
            relay_only = spawn(
                topo.proxy,
                [
                    str(BIN / "mosto"),
                    "proxy",
                    "--listen",
                    "0.0.0.0:8001",
                    "--upstream",
                    f"{SERVER4}:9000",
                    "--agent",
                    "",
                ],
                "proxy-relay.log",
            )
            wait_for(stats_file, "the proxy")
            time.sleep(0.3)
            before = counters(topo)
            print(
                "      data-plane counters before: "
                + ", ".join(f"{k} {v}" for k, v in before.items() if v)
                or "all zero"
            )

            step(3, f"downloading {SIZE} from the server through the proxy")
            cpu0 = proc_cpu(proxy.pid)
            result = fetch(topo, 8000)
            cpu = proc_cpu(proxy.pid) - cpu0
            st = json.loads(stats_file.read_text())
            print(
                f"      {result['bytes']} bytes in {result['seconds']:.2f} s "
                f"({result['gbit_s']} Gbit/s)"
            )
            print(
                f"      sha256 of what arrived: {result['sha256'][:16]}...; of what was sent: "
                f"{result['expected'][:16]}... -> {'MATCH' if result['ok'] else 'MISMATCH'}"
            )
            print(
                f"      the proxy relayed {st['relayed_bytes']} bytes itself, then handed over "
                f"({st['handed_over']} hand-over, {st['handover_ms'][0]:.1f} ms)"
                if st["handed_over"]
                else f"      not handed over: {st['refused']}"
            )

            step(4, "the same download relayed by the proxy all the way (for comparison)")
            cpu1 = proc_cpu(relay_only.pid)
            plain = fetch(topo, 8001)
            cpu_relay = proc_cpu(relay_only.pid) - cpu1
            print(
                f"      {plain['seconds']:.2f} s ({plain['gbit_s']} Gbit/s), sha256 "
                f"{'MATCH' if plain['ok'] else 'MISMATCH'}"
            )
            print(f"      proxy CPU: {cpu:.2f} s with the hand-over, {cpu_relay:.2f} s without")

            step(5, "what the agent and the data plane saw")
            time.sleep(2.5)  # the splice's grace period after FIN both ways
            for ev in events:
                if ev["event"] == "spliced":
                    s = ev["splice"]
                    print(
                        f"      spliced #{s['id']}: client {s['client']['src']}:"
                        f"{s['client']['sport']} <-> server {s['server']['dst']}:"
                        f"{s['server']['dport']}"
                    )
                elif ev["event"] in ("fin", "rst"):
                    print(
                        f"      {ev['event'].upper()} from the {ev['from']} (splice "
                        f"#{ev['splice']})"
                    )
                elif ev["event"] == "removed":
                    print(
                        f"      entries removed ({ev['reason']}): to the client "
                        f"{ev['to_client']['packets']} packets / {ev['to_client']['bytes']} "
                        f"bytes, to the server {ev['to_server']['packets']} packets"
                    )
            after = counters(topo)
            print(
                "      data-plane counters after: "
                + ", ".join(
                    f"{k} +{after[k] - before.get(k, 0)}" for k in after if after[k] != before[k]
                )
            )
            ok = result["ok"] and plain["ok"] and st["handed_over"] == 1
        finally:
            step(6, "tearing down (processes, namespaces, pinned maps)")
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(5)
                    except subprocess.TimeoutExpired:
                        p.kill()
    print("\ndemo " + ("finished: the flow was handed over and arrived intact" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
