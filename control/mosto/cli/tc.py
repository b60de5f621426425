"""`mosto tc attach|detach`: the splice program built for tc, a direct-action
filter at clsact ingress. Same maps as `mosto xdp` (pinned by name in the
same directory), so `mosto entry` and `mosto xdp counters` serve both."""

from __future__ import annotations

import argparse

from mosto.cli import CliError
from mosto.targets.xdp.paths import DEFAULT_PIN_DIR


def _attach(args: argparse.Namespace) -> int:
    from mosto.targets.xdp.target import TargetError, XdpTarget, require_interfaces

    try:
        require_interfaces(args.interfaces)
        with XdpTarget(pin_dir=args.pin_dir, obj_path=args.object, hook="tc") as target:
            for ifname in args.interfaces:
                target.attach(ifname, hook="tc")
                print(f"attached to {ifname} (tc ingress); maps pinned under {args.pin_dir}")
    except TargetError as exc:
        raise CliError(str(exc)) from None
    return 0


def _detach(args: argparse.Namespace) -> int:
    from mosto.targets.xdp.target import TargetError, XdpTarget

    try:
        for ifname in args.interfaces:
            done = XdpTarget.detach(ifname, hook="tc")
            print(
                f"detached from {ifname} (tc ingress)" if done else f"nothing attached to {ifname}"
            )
    except (TargetError, OSError) as exc:
        raise CliError(str(exc)) from None
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    tc = sub.add_parser("tc", help="attach or detach the tc splice program (clsact ingress)")
    tsub = tc.add_subparsers(dest="tc_command", required=True, metavar="ACTION")

    p = tsub.add_parser("attach", help="load (reusing pinned maps) and attach at ingress")
    p.add_argument("interfaces", nargs="+", metavar="IFACE")
    p.add_argument(
        "--pin-dir",
        default=DEFAULT_PIN_DIR,
        help=f"bpffs directory of the shared maps (default {DEFAULT_PIN_DIR})",
    )
    p.add_argument(
        "--object",
        default=None,
        help="BPF object (default: splice_tc.bpf.o from the search path, "
        "see mosto.targets.xdp.paths)",
    )
    p.set_defaults(func=_attach)

    p = tsub.add_parser("detach", help="remove mosto's filter (clsact and the maps stay)")
    p.add_argument("interfaces", nargs="+", metavar="IFACE")
    p.set_defaults(func=_detach)
