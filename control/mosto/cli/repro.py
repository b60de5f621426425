"""`mosto repro fig4` and `fig5`: the paper's figures, measured here (root; the runs are
in the repository's tools/, next to the topology they build)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from mosto.cli import CliError

TOOLS = Path(__file__).resolve().parents[3] / "tools"
MODES = ("plain", "gradual", "none", "slowstart")  # tools/repro_fig4.py MODES
FULL = {"at_s": 5.0, "duration_s": 15.0}
# --quick: one run, short enough for a smoke test (about 12 s with the set-up).
QUICK = {"at_s": 3.0, "duration_s": 6.0}


def _tool(name: str) -> ModuleType:
    path = TOOLS / f"{name}.py"
    if not path.exists():
        raise CliError(f"{path} missing: mosto repro runs from a source checkout")
    sys.path.insert(0, str(TOOLS))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rate(text: str) -> int:
    units = {"k": 10**3, "m": 10**6, "g": 10**9}
    mult = units.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if mult > 1 else text) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate like 200M, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a rate must be > 0, got {text!r}")
    return int(value)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _rescore(args: argparse.Namespace) -> int:
    import json

    from mosto.repro.fig4 import rescore, summary

    path = Path(args.rescore)
    try:
        runs = [rescore(r) for r in json.loads(path.read_text())["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CliError(f"--rescore {path}: not a fig4.json ({exc})") from None
    path.write_text(json.dumps({"summary": summary(runs), "runs": runs}, indent=1))
    tool = _tool("repro_fig4")
    tool.plot(runs, path.with_suffix(".png"))
    print(tool.table(runs))
    return 0


def _fig4(args: argparse.Namespace) -> int:
    if args.rescore:
        return _rescore(args)
    if os.geteuid() != 0:
        raise CliError("repro fig4 needs root (network namespaces, XDP)")
    times = dict(QUICK if args.quick else FULL)
    if args.at is not None:
        times["at_s"] = args.at
    if args.duration is not None:
        times["duration_s"] = args.duration
    if args.repeat < 1:
        raise CliError(f"--repeat must be >= 1, got {args.repeat}")
    if times["duration_s"] <= times["at_s"] + 1:
        raise CliError("--duration must end at least 1 s after --at")
    if args.cc:
        available = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text()
        if args.cc not in available.split():
            raise CliError(f"--cc {args.cc}: not available here ({available.strip()})")
    rtts = args.rtt or ([50.0] if args.quick else [50.0, 100.0])
    modes = ["gradual"] if args.quick else args.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise CliError(f"--modes: unknown {','.join(bad)} (known: {','.join(MODES)})")
    if args.baseline and "none" not in modes:
        modes.append("none")
    tool = _tool("repro_fig4")
    out = Path(args.out)
    try:
        runs = tool.run(
            rtts,
            modes,
            out,
            rate_bps=args.rate,
            queue_bdp=args.queue_bdp,
            xdp_mode=args.mode,
            cc=args.cc,
            repeat=1 if args.quick else args.repeat,
            **times,
        )
    except (RuntimeError, AssertionError, FileNotFoundError) as exc:
        raise CliError(f"fig4: {str(exc).splitlines()[0]}") from None
    tool.plot(runs, out / "fig4.png")
    print(tool.table(runs))
    print(f"fig4: {out / 'fig4.json'}, {out / 'fig4.png'}")
    return 0 if all(r["handed_over"] for r in runs if r["handover"]) else 1


def _fig5(args: argparse.Namespace) -> int:
    import json

    from mosto.repro.fig5 import SIZES_KB

    if os.geteuid() != 0:
        raise CliError("repro fig5 needs root (network namespaces)")
    quick = args.quick
    rtt = args.rtt or (QUICK5_RTT_MS if quick else FULL5_RTT_MS)
    runs = args.runs or (QUICK5_RUNS if quick else FULL5_RUNS)
    sizes = list(QUICK5_SIZES_KB if quick else SIZES_KB)
    if runs < 1:
        raise CliError(f"--runs must be >= 1, got {runs}")
    if args.cc:
        available = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text()
        if args.cc not in available.split():
            raise CliError(f"--cc {args.cc}: not available here ({available.strip()})")
    tool = _tool("repro_fig5")
    out = Path(args.out)
    print(
        f"fig5: RTT {rtt:g} ms, sizes {sizes} KB, {runs} runs each, "
        f"{args.cc or 'the kernel default congestion control'}"
        f"{', TCP Fast Open between proxies' if args.fastopen else ''}",
        flush=True,
    )
    try:
        doc, detail = tool.run(rtt, sizes, runs, out, cc=args.cc or None, fastopen=args.fastopen)
    except (RuntimeError, AssertionError, FileNotFoundError) as exc:
        raise CliError(f"fig5: {str(exc).splitlines()[0]}") from None
    (out / "fig5.json").write_text(json.dumps(doc, indent=1))
    (out / "fig5-runs.json").write_text(json.dumps(detail, indent=1))
    tool.plot(doc, out / "fig5.png")
    print(tool.table(doc))
    print(f"fig5: {out / 'fig5.json'}, {out / 'fig5.png'} (every transfer: fig5-runs.json)")
    return 0


# fig5: the paper's path (Ireland to California, about 180 ms), 20 runs;
# --quick: a shorter path, two sizes, two runs (about 15 s with the set-up).
FULL5_RTT_MS, FULL5_RUNS = 180.0, 20
QUICK5_RTT_MS, QUICK5_RUNS, QUICK5_SIZES_KB = 60.0, 2, (10, 100)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("repro", help="reproduce the paper's figures here (root)")
    figs = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    f = figs.add_parser(
        "fig4",
        help="goodput across a hand-over, with and without the gradual delay",
        description="A bulk download through one proxy that splits the RTT in half "
        "(two delay-line links), handed over to XDP at a fixed time; writes "
        "DIR/fig4.json and DIR/fig4.png.",
    )
    f.add_argument(
        "--rtt", type=_positive, action="append", metavar="MS", help="end-to-end RTT (50 and 100)"
    )
    f.add_argument("--out", default="build/repro", metavar="DIR", help="(build/repro)")
    f.add_argument("--quick", action="store_true", help="one short run (a smoke test)")
    f.add_argument("--at", type=_positive, metavar="S", help="hand-over time (5; quick 3)")
    f.add_argument("--duration", type=_positive, metavar="S", help="run length (15; quick 6)")
    f.add_argument(
        "--rate",
        type=_rate,
        default=200_000_000,
        help="each link's rate toward the client (200M): the bottleneck is the "
        "links, not this machine's CPU",
    )
    f.add_argument(
        "--queue-bdp",
        type=_positive,
        default=1.0,
        metavar="N",
        help="each link's queue past its delay, in its BDPs (1)",
    )
    f.add_argument(
        "--mode",
        choices=["native", "generic"],
        default="native",
        help="XDP mode on the proxy's veths (native works on the delay-line links)",
    )
    f.add_argument(
        "--modes",
        default="plain,gradual",
        help="what runs do, comma-separated: plain (hand-over at --at), gradual (the "
        "gradual delay, then the hand-over), none (no hand-over), slowstart (hand-over "
        "when the proxy's sending socket leaves slow start); default plain,gradual",
    )
    f.add_argument(
        "--baseline", action="store_true", help="also a run per RTT that never hands over"
    )
    f.add_argument(
        "--repeat", type=int, default=1, metavar="N", help="every run N times (not --quick)"
    )
    f.add_argument(
        "--rescore",
        metavar="JSON",
        help="no runs: recompute a fig4.json's numbers and figure from its timelines",
    )
    f.add_argument("--cc", help="congestion control of the senders (default: the kernel's)")
    f.set_defaults(func=_fig4)
    g = figs.add_parser(
        "fig5",
        help="transfer times of 10-500 KB: direct, MOSTO with 1 and 3 proxies, warm front-end",
        description="Transfers of 10, 50, 100, 200 and 500 KB over a long emulated path "
        "(five links, four proxy locations): direct, through one proxy in the middle, "
        "through the three-proxy chain the ingress proxy looks up, and from a front-end "
        "next to the client over a warm pre-established connection; writes "
        "DIR/fig5.json (mean, p50, p95 per series and size), DIR/fig5.png and "
        "DIR/fig5-runs.json (every transfer, the RTT matrix, the chains picked).",
    )
    g.add_argument(
        "--rtt",
        type=_positive,
        metavar="MS",
        help="end-to-end RTT (180: Ireland to California; quick 60)",
    )
    g.add_argument("--out", default="build/repro", metavar="DIR", help="(build/repro)")
    g.add_argument(
        "--quick", action="store_true", help="10 and 100 KB, 2 runs, 60 ms (a smoke test)"
    )
    g.add_argument("--runs", type=int, metavar="N", help="transfers per series and size (20)")
    g.add_argument(
        "--cc",
        default="cubic",
        help="congestion control of every sender (cubic, the paper's Linux default; "
        "'' for this kernel's)",
    )
    g.add_argument(
        "--fastopen",
        action="store_true",
        help="TCP Fast Open between the chain's proxies (mosto proxy --fastopen)",
    )
    g.set_defaults(func=_fig5)
