"""Attach and detach, for both hooks: `mosto xdp` and `mosto tc` differ only
in the hook, the object and how they name what they attached."""

from __future__ import annotations

import argparse

from mosto.cli import CliError
from mosto.targets.xdp.paths import DEFAULT_PIN_DIR

# What a hook's attachment is called in messages.
_WHERE = {"xdp": "{}", "tc": "tc ingress"}


def attach(args: argparse.Namespace) -> int:
    from mosto.targets.xdp.target import TargetError, XdpTarget, require_interfaces

    try:
        require_interfaces(args.interfaces)
        with XdpTarget(pin_dir=args.pin_dir, obj_path=args.object, hook=args.hook) as target:
            for ifname in args.interfaces:
                what = target.attach(ifname, getattr(args, "mode", "native"), hook=args.hook)
                where = _WHERE[args.hook].format(what)
                print(f"attached to {ifname} ({where}); maps pinned under {args.pin_dir}")
    except TargetError as exc:
        raise CliError(str(exc)) from None
    return 0


def detach(args: argparse.Namespace) -> int:
    from mosto.targets.xdp.target import TargetError, XdpTarget

    try:
        for ifname in args.interfaces:
            done = XdpTarget.detach(ifname, hook=args.hook)
            where = ", ".join(_WHERE[args.hook].format(what) for what in done)
            print(f"detached from {ifname} ({where})" if done else f"nothing attached to {ifname}")
    except (TargetError, OSError) as exc:
        raise CliError(str(exc)) from None
    return 0


def pin_dir_parent() -> argparse.ArgumentParser:
    """--pin-dir, for every subcommand that opens the shared maps."""
    pin = argparse.ArgumentParser(add_help=False)
    pin.add_argument(
        "--pin-dir",
        default=DEFAULT_PIN_DIR,
        help=f"bpffs directory of the shared maps (default {DEFAULT_PIN_DIR})",
    )
    return pin


def add_object_option(p: argparse.ArgumentParser, default_object: str) -> None:
    p.add_argument(
        "--object",
        default=None,
        help=f"BPF object (default: {default_object} from the search path, "
        "see mosto.targets.xdp.paths)",
    )
