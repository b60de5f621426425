#!/usr/bin/env python3
"""Per-packet cost of the XDP splice program, from BPF_PROG_TEST_RUN.

Four configurations, measured side by side (interleaved rounds, median):
  parse-only   the baseline program: parsing and a counter, nothing else
  miss         the splice program, TCP frame with no entry
  hit          the splice program, seq/ack translation, XDP_TX
  hit+sack+ts  hit with 3 SACK blocks and a timestamp option rewritten
Printed as ns/packet and as the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ptf_tests"))

from mosto.dataplane.entry import parse_entry  # noqa: E402
from mosto.targets.xdp import libbpf  # noqa: E402
from mosto.targets.xdp.target import XdpTarget  # noqa: E402
from mosto.testing.corpus import NOP, TS, entry, tcp4  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SACK_TS = [NOP, NOP, ("Timestamp", (111, 222)), NOP, NOP, ("SAck", (1, 2, 3, 4, 5, 6))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1_000_000, help="runs per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    args = parser.parse_args()

    xdp = XdpTarget(pin_dir=None)
    baseline = libbpf.BpfObject(str(REPO / "build" / "parse_only.bpf.o"), None)
    # Ingress and egress are both lo (ifindex 1): hits leave by XDP_TX.
    xdp.add(parse_entry(entry(egress="lo")))
    xdp.add(parse_entry(entry(sport=40001, egress="lo", timestamps=TS)))
    cases = {
        "parse-only": (baseline.prog_fd("mosto_parse_only"), bytes(tcp4())),
        "miss": (xdp.prog_fd, bytes(tcp4(sport=40002))),
        "hit": (xdp.prog_fd, bytes(tcp4())),
        "hit+sack+ts": (xdp.prog_fd, bytes(tcp4(sport=40001, options=SACK_TS))),
    }
    samples: dict[str, list[int]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, (fd, frame) in cases.items():
            _, _, ns = libbpf.test_run(fd, frame, ingress_ifindex=1, repeat=args.repeat)
            samples[name].append(ns)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    base = statistics.median(samples["parse-only"])
    print(
        f"\nXDP per-packet cost, BPF_PROG_TEST_RUN, repeat={args.repeat}, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'case':<14}{'ns/packet':>10}{'x baseline':>12}   rounds (ns)")
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"{name:<14}{med:>10}{med / base:>12.2f}   {values}")
    xdp.close()
    baseline.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
