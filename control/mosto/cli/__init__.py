"""The `mosto` command line: one entry point, one subcommand per concern."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes `register(subparsers)`, adding its subcommand and setting
# `func` on the parser; imported lazily so `mosto chains` never loads libbpf.
SUBCOMMANDS = (
    "mosto.cli.xdp",
    "mosto.cli.tc",
    "mosto.cli.entry",
    "mosto.cli.agent",
    "mosto.cli.proxy",
    "mosto.cli.chains",
    "mosto.cli.bmv2",
    "mosto.cli.repro",
)


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosto", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"mosto: {exc}", file=sys.stderr)
        return 2
