"""`mosto tc attach|detach`: the splice program built for tc, a direct-action
filter at clsact ingress. Same maps as `mosto xdp` (pinned by name in the
same directory), so `mosto entry` and `mosto xdp counters` serve both."""

from __future__ import annotations

import argparse

from mosto.cli import hooks


def register(sub: argparse._SubParsersAction) -> None:
    tc = sub.add_parser("tc", help="attach or detach the tc splice program (clsact ingress)")
    tsub = tc.add_subparsers(dest="tc_command", required=True, metavar="ACTION")

    p = tsub.add_parser(
        "attach", parents=[hooks.pin_dir_parent()], help="load (reusing pinned maps), attach"
    )
    p.add_argument("interfaces", nargs="+", metavar="IFACE")
    hooks.add_object_option(p, "splice_tc.bpf.o")
    p.set_defaults(func=hooks.attach, hook="tc")

    p = tsub.add_parser("detach", help="remove mosto's filter (clsact and the maps stay)")
    p.add_argument("interfaces", nargs="+", metavar="IFACE")
    p.set_defaults(func=hooks.detach, hook="tc")
