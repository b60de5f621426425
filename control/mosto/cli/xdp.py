"""`mosto xdp attach|detach|counters`: the XDP program on interfaces."""

from __future__ import annotations

import argparse
import json

from mosto.cli import CliError, hooks


def _counters(args: argparse.Namespace) -> int:
    from mosto.targets.xdp.target import TargetError, XdpTarget

    try:
        with XdpTarget(pin_dir=args.pin_dir, load=False) as target:
            counters = target.counters()
    except TargetError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(counters))
    else:
        for name, value in counters.items():
            print(f"{name:20} {value}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    xdp = sub.add_parser("xdp", help="attach or detach the XDP splice program")
    xsub = xdp.add_subparsers(dest="xdp_command", required=True, metavar="ACTION")
    pin = hooks.pin_dir_parent()

    p = xsub.add_parser("attach", parents=[pin], help="load (reusing pinned maps) and attach")
    p.add_argument("interfaces", nargs="+", metavar="IFACE")
    p.add_argument(
        "--mode",
        choices=["native", "generic", "auto"],
        default="auto",
        help="XDP mode; auto tries native, then generic (default auto)",
    )
    hooks.add_object_option(p, "splice.bpf.o")
    p.set_defaults(func=hooks.attach, hook="xdp")

    p = xsub.add_parser("detach", help="detach the XDP program (maps stay pinned)")
    p.add_argument("interfaces", nargs="+", metavar="IFACE")
    p.set_defaults(func=hooks.detach, hook="xdp")

    p = xsub.add_parser("counters", parents=[pin], help="global per-reason packet counters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_counters)
