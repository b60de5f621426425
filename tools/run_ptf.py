#!/usr/bin/env python3
"""Runs the PTF suite (ptf_tests/splice.py) against one target, in a network
namespace of its own that is removed afterwards.

    tools/run_ptf.py --target xdp     # the XDP program, native mode on veth
    tools/run_ptf.py --target tc      # the same program built for tc, clsact ingress
    tools/run_ptf.py --target bmv2    # simple_switch_grpc (see tools/bmv2.py)

Topology (all in the namespace): ptfN <-> dutN veth pairs, N = 0, 1, 2. PTF
sends and sniffs on ptfN; the data plane runs on dutN. For tc, port 2 is a
veth pair passd <-> passp: a u32 filter after the splice program on dut0's
ingress mirrors what it passes to passd, PTF sniffs passp.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import Namespace, namespace, veth  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"


def prepare(ns: Namespace, pairs: int) -> None:
    ns.quiet()
    for i in range(pairs):
        veth(ns, f"ptf{i}", ns, f"dut{i}")
        # Frames PTF sends are rewritten by XDP; partial checksums would be dropped.
        ns.sh("ethtool", "-K", f"ptf{i}", "tx", "off", "gro", "on")
        ns.sh("ethtool", "-K", f"dut{i}", "tx", "off")


def ptf_command(
    ns: Namespace, interfaces: dict[int, str], params: dict[str, str], extra: list[str]
) -> list[str]:
    cmd = [
        "ip",
        "netns",
        "exec",
        ns.name,
        str(VENV_BIN / "ptf"),
        "--test-dir",
        str(REPO / "ptf_tests"),
        "--log-file",
        "/tmp/mosto-ptf.log",
    ]
    for port, ifname in interfaces.items():
        cmd += ["--interface", f"{port}@{ifname}"]
    cmd += ["--test-params", ";".join(f"{k}={v!r}" for k, v in params.items())]
    return cmd + (extra or ["splice"])


def run_xdp(extra: list[str]) -> int:
    with namespace("mosto-ptf") as ns:
        prepare(ns, 2)
        # Port 2 is the host stack: a frame XDP passes is seen there on dut0.
        cmd = ptf_command(
            ns,
            {0: "ptf0", 1: "ptf1", 2: "dut0"},
            {"target": "xdp", "dut_ports": "dut0,dut1", "peer_ports": "ptf0,ptf1"},
            extra,
        )
        return subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode


def run_tc(extra: list[str]) -> int:
    with namespace("mosto-ptf") as ns:
        prepare(ns, 2)
        veth(ns, "passd", ns, "passp")
        # Runs only for frames the splice program (priority 1) passes on.
        ns.sh("tc", "qdisc", "add", "dev", "dut0", "clsact")
        ns.sh(
            "tc", "filter", "add", "dev", "dut0", "ingress", "pref", "2", "u32",
            "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "passd",
        )  # fmt: skip
        cmd = ptf_command(
            ns,
            {0: "ptf0", 1: "ptf1", 2: "passp"},
            {"target": "tc", "dut_ports": "dut0,dut1", "peer_ports": "ptf0,ptf1"},
            extra,
        )
        return subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode


def run_bmv2(extra: list[str]) -> int:
    from bmv2 import switch  # only with p4c and simple_switch_grpc installed

    with namespace("mosto-ptf") as ns:
        prepare(ns, 3)
        with switch(ns, ["dut0", "dut1", "dut2"]) as params:
            cmd = ptf_command(
                ns, {0: "ptf0", 1: "ptf1", 2: "ptf2"}, {"target": "bmv2", **params}, extra
            )
            return subprocess.run(cmd).returncode


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", choices=["xdp", "tc", "bmv2"], required=True)
    parser.add_argument("ptf_args", nargs="*", help="passed to ptf (e.g. a test name)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run_ptf: needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    run = {"xdp": run_xdp, "tc": run_tc, "bmv2": run_bmv2}[args.target]
    return run(args.ptf_args)


if __name__ == "__main__":
    sys.exit(main())
