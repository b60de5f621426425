#!/usr/bin/env python3
"""Per-packet cost of the splice program on both hooks, from BPF_PROG_TEST_RUN.

Four configurations per hook (XDP: struct xdp_md; tc: struct __sk_buff, the
same source built with -DMOSTO_HOOK_TC), measured side by side (interleaved
rounds, median):
  parse-only   the baseline program: parsing and a counter, nothing else
  miss         the splice program, TCP frame with no entry
  hit          the splice program, seq/ack translation, back out (XDP_TX / bpf_redirect)
  hit+sack+ts  hit with 3 SACK blocks and a timestamp option rewritten
Printed as ns/packet, as the ratio to the same hook's baseline, and tc/XDP.
BPF_PROG_TEST_RUN times the program alone: on a real link tc runs after the
skb is built (and once per GSO super-frame), XDP before.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ptf_tests"))

from mosto.dataplane.entry import parse_entry  # noqa: E402
from mosto.targets.xdp import libbpf  # noqa: E402
from mosto.targets.xdp.target import HOOKS, XdpTarget  # noqa: E402
from mosto.testing.corpus import NOP, TS, entry, tcp4  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SACK_TS = [NOP, NOP, ("Timestamp", (111, 222)), NOP, NOP, ("SAck", (1, 2, 3, 4, 5, 6))]


CASES = ("parse-only", "miss", "hit", "hit+sack+ts")


def measure(repeat: int, rounds: int, progress: bool = True) -> dict[tuple[str, str], list[int]]:
    """ns/packet of every (case, hook), one sample per round: the cases interleaved
    within each round, so drift spreads over all of them alike."""
    xdp = XdpTarget(pin_dir=None)
    baselines = {
        "xdp": libbpf.BpfObject(str(REPO / "build" / "parse_only.bpf.o"), None),
        "tc": libbpf.BpfObject(str(REPO / "build" / "parse_only_tc.bpf.o"), None),
    }
    try:
        # Ingress and egress are both lo (ifindex 1): hits go back out (XDP_TX, or
        # bpf_redirect to the ingress device).
        xdp.add(parse_entry(entry(egress="lo")))
        xdp.add(parse_entry(entry(sport=40001, egress="lo", timestamps=TS)))
        frames = {
            "parse-only": bytes(tcp4()),
            "miss": bytes(tcp4(sport=40002)),
            "hit": bytes(tcp4()),
            "hit+sack+ts": bytes(tcp4(sport=40001, options=SACK_TS)),
        }
        cases = {
            (name, hook): (
                baselines[hook].prog_fd("mosto_parse_only")
                if name == "parse-only"
                else xdp.hook_prog_fd(hook),
                frames[name],
            )
            for hook in HOOKS
            for name in CASES
        }
        samples: dict[tuple[str, str], list[int]] = {key: [] for key in cases}
        for r in range(rounds):
            for (name, hook), (fd, frame) in cases.items():
                _, _, ns = libbpf.test_run(
                    fd, frame, ingress_ifindex=1, repeat=repeat, skb=hook == "tc"
                )
                samples[name, hook].append(ns)
            if progress:
                print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    finally:
        xdp.close()
        for obj in baselines.values():
            obj.close()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1_000_000, help="runs per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    args = parser.parse_args()

    samples = measure(args.repeat, args.rounds)
    median = {key: statistics.median(values) for key, values in samples.items()}
    print(
        f"\nPer-packet cost, BPF_PROG_TEST_RUN, repeat={args.repeat}, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(
        f"{'case':<14}{'hook':<6}{'ns/packet':>10}{'x parse-only':>14}{'tc/xdp':>8}   rounds (ns)"
    )
    for name in CASES:
        for hook in HOOKS:
            med = median[name, hook]
            ratio = f"{med / median[name, 'xdp']:.2f}" if hook == "tc" else ""
            print(
                f"{name:<14}{hook:<6}{med:>10}{med / median['parse-only', hook]:>14.2f}"
                f"{ratio:>8}   {samples[name, hook]}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
