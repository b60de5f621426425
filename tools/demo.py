#!/usr/bin/env python3
"""`make demo`: one download through the reference proxy, handed over to the
data plane mid-stream (the splice program on tc, which the agent picks for
veth), with what happened printed step by step. Builds
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
from leftovers import left_behind, snapshot  # noqa: E402
from processes import REPO, Processes, mosto, proc_cpu, traffic, wait_for  # noqa: E402
from topology import PROXY_C4, SERVER4, topology  # noqa: E402

SIZE = "512M"
HANDOVER_AFTER = "8M"
STEPS = 6


def step(n: int, text: str) -> None:
    print(f"\n[{n}/{STEPS}] {text}", flush=True)


def counters(topo) -> dict[str, int]:
    out = topo.proxy.sh(*mosto("xdp", "counters", "--json", "--pin-dir", topo.pin_dir))
    return json.loads(out.stdout)


def fetch(topo, port: int) -> dict:
    out = topo.client.sh(
        *traffic("fetch", "--connect", f"{PROXY_C4}:{port}", "--size", SIZE), check=False
    )
    if not out.stdout:
        raise SystemExit(f"demo: the transfer failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def describe(ev: dict) -> str | None:
    if ev["event"] == "spliced":
        s = ev["splice"]
        return (
            f"spliced #{s['id']}: client {s['client']['src']}:{s['client']['sport']} "
            f"<-> server {s['server']['src']}:{s['server']['sport']}"
        )
    if ev["event"] in ("fin", "rst"):
        return f"{ev['event'].upper()} from the {ev['from']} (splice #{ev['splice']})"
    if ev["event"] == "removed":
        return (
            f"entries removed ({ev['reason']}): to the client {ev['to_client']['packets']} "
            f"packets / {ev['to_client']['bytes']} bytes, to the server "
            f"{ev['to_server']['packets']} packets"
        )
    return None


def run(topo, procs: Processes) -> bool:
    print(f"      {topo.client.name}, {topo.proxy.name}, {topo.server.name}")
    step(
        2,
        "starting the server, the agent (the splice program on the proxy's interfaces: "
        "tc on veth) and the proxy "
        f"(hands a flow over after {HANDOVER_AFTER})",
    )
    procs.spawn(topo.server, traffic("serve", "--listen", "0.0.0.0:9000"), "server.log", ready=True)
    topo.start_agent(procs)
    watch = procs.spawn(
        topo.proxy, mosto("ctl", "watch", "--socket", topo.agent_socket), stdout=subprocess.PIPE
    )
    events: list[dict] = []
    threading.Thread(
        target=lambda: events.extend(json.loads(x) for x in watch.stdout), daemon=True
    ).start()
    stats_file = procs.logdir / "proxy.json"
    upstream = ("--upstream", f"{SERVER4}:9000")
    proxy = procs.spawn(
        topo.proxy,
        mosto(
            "proxy",
            "--listen",
            "0.0.0.0:8000",
            *upstream,
            "--agent",
            topo.agent_socket,
            "--handover-after",
            HANDOVER_AFTER,
            "--stats-file",
            str(stats_file),
        ),
        "proxy.log",
    )
    relay = procs.spawn(
        topo.proxy,
        mosto("proxy", "--listen", "0.0.0.0:8001", *upstream, "--agent", ""),
        "proxy-relay.log",
    )
    wait_for(stats_file.exists, 10, "the proxy")
    time.sleep(0.3)
    before = counters(topo)
    print(
        "      data-plane counters before: "
        + (", ".join(f"{k} {v}" for k, v in before.items() if v) or "all zero")
    )

    step(3, f"downloading {SIZE} from the server through the proxy")
    cpu0 = proc_cpu(proxy.pid)
    result = fetch(topo, 8000)
    cpu = proc_cpu(proxy.pid) - cpu0
    st = json.loads(stats_file.read_text())
    print(f"      {result['bytes']} bytes in {result['seconds']:.2f} s ({result['gbit_s']} Gbit/s)")
    print(
        f"      sha256 of what arrived: {result['sha256'][:16]}...; of what was sent: "
        f"{result['expected'][:16]}... -> {'MATCH' if result['ok'] else 'MISMATCH'}"
    )
    if st["handed_over"]:
        print(
            f"      the proxy relayed {st['relayed_bytes']} bytes itself, then handed the "
            f"flow over in {st['handover_ms'][0]:.1f} ms (hold, drain, offload)"
        )
    else:
        print(f"      not handed over: {st['refused']}")

    step(4, "the same download relayed by the proxy all the way (for comparison)")
    cpu1 = proc_cpu(relay.pid)
    plain = fetch(topo, 8001)
    cpu_relay = proc_cpu(relay.pid) - cpu1
    print(
        f"      {plain['seconds']:.2f} s ({plain['gbit_s']} Gbit/s), sha256 "
        f"{'MATCH' if plain['ok'] else 'MISMATCH'}"
    )
    print(f"      proxy CPU: {cpu:.2f} s with the hand-over, {cpu_relay:.2f} s without")

    step(5, "what the agent and the data plane saw")
    wait_for(lambda: any(e["event"] == "removed" for e in events), 10, "the splice's removal")
    for ev in events:
        line = describe(ev)
        if line:
            print(f"      {line}")
    after = counters(topo)
    print(
        "      data-plane counters after: "
        + ", ".join(f"{k} +{after[k] - before.get(k, 0)}" for k in after if after[k] != before[k])
    )
    return result["ok"] and plain["ok"] and st["handed_over"] == 1


def main() -> int:
    print("mosto demo: a TCP download through a proxy, handed over to the data plane mid-stream")
    step(1, "network namespaces: client -- proxy -- server (veth pairs, IPv4 and IPv6)")
    logdir = Path(tempfile.mkdtemp(prefix="mosto-demo-"))
    before = snapshot(REPO)
    with topology("mdemo") as topo, Processes(logdir) as procs:
        try:
            ok = run(topo, procs)
        finally:
            step(6, f"tearing down (processes, namespaces, pinned maps); logs in {logdir}")
    left = left_behind(before, snapshot(REPO), mark=topo.name)
    if left:
        print(f"      left behind: {left}")
        ok = False
    print("\ndemo " + ("finished: the flow was handed over and arrived intact" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
