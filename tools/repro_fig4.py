"""The paper's Fig. 4: goodput of a bulk download through one proxy that
splits the RTT in half, handed over to XDP at a fixed time, with and without
the gradual delay before it (`mosto repro fig4`; root).

    client -- link0 (RTT/2) -- proxy (agent + mosto proxy) -- link1 (RTT/2) -- server

Both links are delay lines (tools/topology.py's chain form) with a rate
limit toward the client, so the bottleneck is the links and not this
machine's CPU, and a queue of one link-BDP. Per run: the client's bytes per
100 ms (traffic.py fetch --timeline), the proxy's events (trigger, delay
steps, hand-over), the server's TCP counters (nstat) and its socket's cwnd
and RTT (ss, every 100 ms). The numbers: mosto/repro/fig4.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from processes import Processes, mosto, traffic, wait_for  # noqa: E402
from topology import Chain, LinkSpec, chain  # noqa: E402

from mosto.repro.fig4 import (  # noqa: E402
    Timeline,
    counter_delta,
    event_time,
    hold_start,
    metrics,
    srtt_at,
    stalls,
    summary,
)

SERVER_PORT, PROXY_PORT = 9000, 8000
COUNTERS = ("TcpRetransSegs", "TcpExtTCPTimeouts", "TcpExtTCPLossProbes", "TcpExtTCPSpuriousRTOs")
SS_EVERY_S = 0.1


def nstat(ns) -> dict[str, int]:
    """Absolute counters of a namespace (-a: no history file shared between
    namespaces; -z: zeros too)."""
    out = ns.sh("nstat", "-az", "--json", *COUNTERS).stdout
    doc = json.loads(out)
    values = doc.get("kernel", doc)
    return {k: int(values.get(k, 0)) for k in COUNTERS}


def sample_ss(ns, stop: threading.Event, into: list[dict]) -> None:
    """The server's sending socket every SS_EVERY_S: cwnd, ssthresh, srtt."""
    while not stop.wait(SS_EVERY_S):
        out = ns.sh("ss", "-tinH", "state", "established", f"sport = :{SERVER_PORT}", check=False)
        m_rtt = re.search(r"\brtt:([\d.]+)/", out.stdout)
        m_cwnd = re.search(r"\bcwnd:(\d+)", out.stdout)
        if m_rtt and m_cwnd:
            m_ss = re.search(r"\bssthresh:(\d+)", out.stdout)
            into.append(
                {
                    "t": time.time(),
                    "rtt_ms": float(m_rtt.group(1)),
                    "cwnd": int(m_cwnd.group(1)),
                    "ssthresh": int(m_ss.group(1)) if m_ss else None,
                }
            )


def _specs(rtt_ms: float, rate_bps: int, queue_bdp: float) -> list[LinkSpec]:
    """Two links of RTT/2 each; rate toward the client; the line's queue holds
    what is on the delay plus queue_bdp of one link's BDP."""
    one_way = rtt_ms / 4
    queue = int(rate_bps / 8 * (one_way + queue_bdp * rtt_ms / 2) / 1e3)
    spec = LinkSpec(one_way, rate_back_bps=rate_bps, queue_bytes=max(queue, 1 << 16))
    return [spec, spec]


def start_agent_on(ch: Chain, procs: Processes, node, role: str, mode: str) -> Path:
    """`mosto agent` on one proxy's two chain interfaces (pc toward the
    client, ps toward the server), maps pinned under the node's name; its
    socket once it is up."""
    sock = ch.run_dir / f"{role}-agent.sock"
    cmd = ["agent", "pc", "ps", "--mode", mode, "--pin-dir", f"/sys/fs/bpf/{node.name}"]
    log = f"{role}-agent.log"
    agent = procs.spawn(node, mosto(*cmd, "--socket", str(sock)), log)
    wait_for(lambda: sock.exists() or agent.poll() is not None, 15, "the agent's socket")
    if agent.poll() is not None:
        tail = procs.log_tail(log, 3).replace("\n", " | ")
        raise RuntimeError(f"the agent ({mode}) exited {agent.returncode}: {tail}")
    return sock


# What a run does: at the fixed time hand over straight away, or after the
# gradual delay; nothing (the proxy relays to the end: the baseline); or hand
# over as soon as the proxy's sending socket leaves slow start.
MODES = ("plain", "gradual", "none", "slowstart")


def one_run(
    rtt_ms: float,
    mode_name: str,
    *,
    at_s: float,
    duration_s: float,
    rate_bps: int,
    queue_bdp: float,
    mode: str,
    cc: str | None,
    logroot: Path,
) -> dict:
    tag = f"rtt{rtt_ms:g}-{mode_name}-{len(list(logroot.glob(f'rtt{rtt_ms:g}-{mode_name}-*')))}"
    logdir = logroot / tag
    logdir.mkdir(parents=True, exist_ok=True)
    with chain(_specs(rtt_ms, rate_bps, queue_bdp), prefix="f4") as ch:
        try:
            with Processes(logdir) as procs:
                return _measure(ch, procs, rtt_ms, mode_name, at_s, duration_s, mode, cc, logdir)
        finally:
            subprocess.run(["rm", "-rf", f"/sys/fs/bpf/{ch.proxies[0].name}"], check=False)


def _measure(ch, procs, rtt_ms, mode_name, at_s, duration_s, mode, cc, logdir) -> dict:
    # Per socket (the senders: the server and the proxy): a namespace may use
    # only the host's allowed list (here reno and bbr), a root socket any.
    used_cc = cc or ch.server.sh("sysctl", "-n", "net.ipv4.tcp_congestion_control").stdout.strip()
    serve = traffic("serve", "--listen", f"0.0.0.0:{SERVER_PORT}", *(["--cc", cc] if cc else []))
    procs.spawn(ch.server, serve, "server.log", ready=True)
    agent_sock = start_agent_on(ch, procs, ch.proxies[0], "proxy", mode)
    stats = logdir / "proxy.json"
    proxy_cmd = ["proxy", "--listen", f"0.0.0.0:{PROXY_PORT}"]
    proxy_cmd += ["--upstream", f"{ch.server4}:{SERVER_PORT}", "--stats-file", str(stats)]
    proxy_cmd += ["--cc", cc] if cc else []
    if mode_name == "none":
        proxy_cmd += ["--agent", ""]
    elif mode_name == "slowstart":
        proxy_cmd += ["--agent", str(agent_sock), "--handover-on", "slowstart"]
    else:
        proxy_cmd += ["--agent", str(agent_sock), "--handover-on", "time"]
        proxy_cmd += ["--handover-at", f"{at_s:g}", *["--gradual"] * (mode_name == "gradual")]
    procs.spawn(ch.proxies[0], mosto(*proxy_cmd), "proxy.log")
    wait_for(stats.exists, 10, "the proxy")
    proxy_addr = ch.addr4(0, "b")
    timeline = logdir / "timeline.json"
    fetch = traffic("fetch", "--connect", f"{proxy_addr}:{PROXY_PORT}", "--size", "100G")
    fetch += ["--no-verify", "--timeline", str(timeline), "--duration", f"{duration_s:g}"]
    n0 = nstat(ch.server)
    stop, ss_samples = threading.Event(), []  # type: ignore[var-annotated]
    sampler = threading.Thread(target=sample_ss, args=(ch.server, stop, ss_samples), daemon=True)
    client = procs.spawn(ch.client, fetch, "client.log", stdout=subprocess.PIPE)
    sampler.start()
    time.sleep(max(0.0, at_s - 0.5))
    n1 = nstat(ch.server)  # just before the trigger
    try:
        out, _ = client.communicate(timeout=duration_s + 30)
    finally:
        stop.set()
        sampler.join()
    n2 = nstat(ch.server)
    time.sleep(0.3)  # the proxy's stats file is rewritten 5 times a second
    st = json.loads(stats.read_text())
    tl_doc = json.loads(timeline.read_text())
    # The client stops reading at duration_s: the last bin is only partly read.
    whole = int(duration_s / tl_doc["bin_s"] + 1e-9)
    tl = Timeline(tl_doc["t0"], tl_doc["bin_s"], tl_doc["bytes"][:whole])
    trigger = event_time(st["events"], "trigger", tl.t0)
    handover = event_time(st["events"], "handed_over", tl.t0)
    at = trigger if trigger is not None else at_s
    hold = hold_start(st["events"], tl.t0)
    srv = [{**s, "t": round(s["t"] - tl.t0, 2)} for s in ss_samples]
    result = {
        "rtt_ms": rtt_ms,
        "gradual": mode_name == "gradual",
        "handover": mode_name != "none",
        "mode": mode_name,
        "cc": used_cc,
        "xdp_mode": mode,
        "rate_mbps": None,  # filled in by run()
        "handed_over": st["handed_over"],
        "refused": st["refused"],
        "trigger_s": None if trigger is None else round(trigger, 3),
        "handover_s": None if handover is None else round(handover, 3),
        "bytes": sum(tl.bytes),
        "client": json.loads(out) if out.strip() else None,
        "hold_s": None if hold is None else round(hold, 3),
        **metrics(tl, at, handover, hold),
        # under half the rate before, for a bin or more: the hold, and BBR's
        # PROBE_RTT (cwnd 4) once its stale min_rtt expires
        "stalls_s": stalls(tl, at, 0.5 * rate_of(tl, at)),
        "server_srtt_ms": {
            "before": srtt_at(srv, at),
            "at_handover": None if handover is None else srtt_at(srv, handover),
            "after": None if handover is None else srtt_at(srv, handover + 1.5),
        },
        "server_probe_rtt_s": [s["t"] for s in srv if s["cwnd"] <= 4],
        "retrans_before": counter_delta(n0, n1),
        "retrans_across": counter_delta(n1, n2),
        "events": [{**e, "t": round(e["t"] - tl.t0, 3)} for e in st["events"]],
        "goodput_by_3s_mbps": [
            round(tl.mean_mbps(t, t + 3), 1) for t in range(0, int(tl.end_s) - 2, 3)
        ],
        "goodput_mbps": [round(x, 1) for x in tl.mbps()],
        "server_tcp": srv,
    }
    return result


def rate_of(tl: Timeline, at: float) -> float:
    return metrics(tl, at, None)["goodput_before_mbps"]


def run(
    rtts: list[float],
    modes: list[str],
    out: Path,
    *,
    at_s: float,
    duration_s: float,
    rate_bps: int,
    queue_bdp: float,
    xdp_mode: str,
    cc: str | None,
    repeat: int = 1,
) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    todo = [(rtt, m, i) for i in range(repeat) for rtt in rtts for m in modes]
    for n, (rtt_ms, mode_name, i) in enumerate(todo, 1):
        t = time.monotonic()
        what = {
            "plain": f"hand-over at {at_s:g} s",
            "gradual": f"gradual delay, hand-over at {at_s:g} s",
            "none": f"no hand-over (baseline for {at_s:g} s)",
            "slowstart": "hand-over at the end of slow start",
        }
        print(
            f"fig4 [{n}/{len(todo)}]: RTT {rtt_ms:g} ms, {what[mode_name]}, {duration_s:g} s ...",
            flush=True,
        )
        r = one_run(
            rtt_ms,
            mode_name,
            at_s=at_s,
            duration_s=duration_s,
            rate_bps=rate_bps,
            queue_bdp=queue_bdp,
            mode=xdp_mode,
            cc=cc,
            logroot=out / "logs",
        )
        r["rate_mbps"] = rate_bps / 1e6
        r["repetition"] = i
        runs.append(r)
        print(
            f"fig4:   {'handed over' if r['handed_over'] else 'not handed over'} at "
            f"{r['handover_s']} s; before {r['goodput_before_mbps']} Mbit/s, dip "
            f"{r['goodput_dip_pct']}% ({r['goodput_dip_at_handover_pct']}% at the hand-over), "
            f"recovery {r['recovery_s']} s, retrans "
            f"{r['retrans_across']['TcpRetransSegs']}, timeouts "
            f"{r['retrans_across']['TcpExtTCPTimeouts']} ({time.monotonic() - t:.0f} s)",
            flush=True,
        )
        doc = {"summary": summary(runs), "runs": runs}
        (out / "fig4.json").write_text(json.dumps(doc, indent=1))
    return runs


def table(runs: list[dict]) -> str:
    """The medians per RTT and mode, one line each."""
    lines = ["RTT ms  mode     runs  before Mbit/s  dip %  dip at hand-over %  recovery s"]
    for row in summary(runs):

        def fmt(v, spec=".1f"):
            return "-" if v is None else format(v, spec)

        lines.append(
            f"{row['rtt_ms']:>6g}  {row['mode']:<8} {row['runs']:>4}  "
            f"{fmt(row['goodput_before_mbps']):>13}  {fmt(row['goodput_dip_pct']):>5}  "
            f"{fmt(row['goodput_dip_at_handover_pct']):>18}  {fmt(row['recovery_s'], '.2f'):>10}"
        )
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rtts = sorted({r["rtt_ms"] for r in runs})
    fig, axes = plt.subplots(len(rtts), 1, figsize=(8, 3 * len(rtts)), squeeze=False)
    for ax, rtt_ms in zip(axes[:, 0], rtts, strict=True):
        for r in (r for r in runs if r["rtt_ms"] == rtt_ms and r.get("repetition", 0) == 0):
            label = {"gradual": "gradual delay, hand-over", "plain": "hand-over"}
            label = (
                label["gradual" if r["gradual"] else "plain"] if r["handover"] else "no hand-over"
            )
            xs = [i * 0.1 for i in range(len(r["goodput_mbps"]))]
            (line,) = ax.plot(xs, r["goodput_mbps"], label=label, lw=1)
            if r["handover_s"] is not None:
                ax.axvline(r["handover_s"], color=line.get_color(), ls="--", lw=0.8)
            if r["gradual"] and r["trigger_s"] is not None and r["handover_s"] is not None:
                ax.axvspan(r["trigger_s"], r["handover_s"], color=line.get_color(), alpha=0.15)
        ax.set_title(f"RTT {rtt_ms:g} ms, split in half by one proxy; dashed: hand-over to XDP")
        ax.set_ylabel("goodput (Mbit/s, 100 ms)")
        ax.legend(loc="upper center", ncol=3, fontsize="small")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
