"""`mosto xdp attach|detach|counters`: the XDP program on interfaces."""

from __future__ import annotations

import argparse
import json

from mosto.cli import CliError
from mosto.targets.xdp.paths import DEFAULT_PIN_DIR


def _attach(args: argparse.Namespace) -> int:
    from mosto.targets.xdp.target import TargetError, XdpTarget, require_interfaces

    try:
        require_interfaces(args.interfaces)
        with XdpTarget(pin_dir=args.pin_dir, obj_path=args.object) as target:
            for ifname in args.interfaces:
                mode = target.attach(ifname, args.mode)
                print(f"attached to {ifname} ({mode}); maps pinned under {args.pin_dir}")
    except TargetError as exc:
        raise CliError(str(exc)) from None
    return 0


def _detach(args: argparse.Namespace) -> int:
    from mosto.targets.xdp.target import TargetError, XdpTarget

    try:
        for ifname in args.interfaces:
            modes = XdpTarget.detach(ifname)
            print(
                f"detached from {ifname} ({', '.join(modes)})"
                if modes
                else f"nothing attached to {ifname}"
            )
    except (TargetError, OSError) as exc:
        raise CliError(str(exc)) from None
    return 0


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
            print(f"{name:16} {value}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    xdp = sub.add_parser("xdp", help="attach or detach the XDP splice program")
    xsub = xdp.add_subparsers(dest="xdp_command", required=True, metavar="ACTION")
    pin = argparse.ArgumentParser(add_help=False)
    pin.add_argument(
        "--pin-dir",
        default=DEFAULT_PIN_DIR,
        help=f"bpffs directory of the shared maps (default {DEFAULT_PIN_DIR})",
    )

    p = xsub.add_parser("attach", parents=[pin], help="load (reusing pinned maps) and attach")
    p.add_argument("interfaces", nargs="+", metavar="IFACE")
    p.add_argument(
        "--mode",
        choices=["native", "generic", "auto"],
        default="auto",
        help="XDP mode; auto tries native, then generic (default auto)",
    )
    p.add_argument(
        "--object",
        default=None,
        help="BPF object (default: splice.bpf.o from the search path, see mosto.targets.xdp.paths)",
    )
    p.set_defaults(func=_attach)

    p = xsub.add_parser("detach", help="detach the XDP program (maps stay pinned)")
    p.add_argument("interfaces", nargs="+", metavar="IFACE")
    p.set_defaults(func=_detach)

    p = xsub.add_parser("counters", parents=[pin], help="global per-reason packet counters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_counters)
