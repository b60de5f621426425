"""`mosto entry add|del|list|stats`: splice entries in the pinned maps."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from mosto.cli import CliError
from mosto.dataplane.entry import EntryError, load_entries
from mosto.targets.base import TargetError
from mosto.targets.xdp.paths import DEFAULT_PIN_DIR

if TYPE_CHECKING:
    from mosto.targets.xdp.target import XdpTarget


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def _target(args: argparse.Namespace) -> XdpTarget:
    from mosto.targets.xdp.target import XdpTarget

    try:
        return XdpTarget(pin_dir=args.pin_dir, load=False)
    except TargetError as exc:
        raise CliError(str(exc)) from None


def _add(args: argparse.Namespace) -> int:
    try:
        entries = load_entries(_read(args.file))
        with _target(args) as target:
            for e in entries:
                print(f"added #{target.add(e)}: {e.match}")
    except (EntryError, TargetError) as exc:
        raise CliError(str(exc)) from None
    return 0


def _delete(args: argparse.Namespace) -> int:
    with _target(args) as target:
        if args.all:
            matches = [e.match for _, e in target.entries()]
        elif args.file:
            try:
                matches = [e.match for e in load_entries(_read(args.file))]
            except EntryError as exc:
                raise CliError(str(exc)) from None
        else:
            raise CliError("entry del needs FILE (entries to delete) or --all")
        missing = [m for m in matches if not target.delete(m)]
    for m in missing:
        print(f"no entry for {m}", file=sys.stderr)
    print(f"deleted {len(matches) - len(missing)} entr{'y' if len(matches) == 1 else 'ies'}")
    return 1 if missing else 0


def _signed(delta: int) -> int:
    return delta - (1 << 32) if delta >= 1 << 31 else delta


def _list(args: argparse.Namespace) -> int:
    with _target(args) as target:
        rows = [(i, e, target.stats_by_id(i) if args.stats else None) for i, e in target.entries()]
    if args.json:
        docs = []
        for i, e, st in rows:
            doc = {"id": i, **e.to_json()}
            if st:
                doc["stats"] = {
                    "packets": st.packets,
                    "bytes": st.bytes,
                    "last_seen_ns": st.last_seen_ns,
                }
            docs.append(doc)
        print(json.dumps(docs, indent=2))
        return 0
    for i, e, st in rows:
        deltas = f"seq{_signed(e.seq_delta):+d} ack{_signed(e.ack_delta):+d}"
        line = f"#{i:<5} {e.match}  {deltas} -> {e.egress}"
        if st:
            line += f"  {st.packets} pkts {st.bytes} bytes"
        print(line)
    if not rows:
        print("no entries")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    entry = sub.add_parser("entry", help="add, delete and list splice entries (XDP maps)")
    esub = entry.add_subparsers(dest="entry_command", required=True, metavar="ACTION")
    pin = argparse.ArgumentParser(add_help=False)
    pin.add_argument(
        "--pin-dir",
        default=DEFAULT_PIN_DIR,
        help=f"bpffs directory of the maps (default {DEFAULT_PIN_DIR})",
    )

    p = esub.add_parser("add", parents=[pin], help="install entries from JSON (see entry.md)")
    p.add_argument("file", metavar="FILE", help="JSON entry or list of entries; - for stdin")
    p.set_defaults(func=_add)

    p = esub.add_parser("del", parents=[pin], help="delete the entries a JSON file matches")
    p.add_argument("file", nargs="?", metavar="FILE")
    p.add_argument("--all", action="store_true", help="delete every entry")
    p.set_defaults(func=_delete)

    p = esub.add_parser("list", parents=[pin], help="list entries")
    p.add_argument("--json", action="store_true", help="entries as JSON (re-loadable by add)")
    p.set_defaults(func=_list, stats=False)

    p = esub.add_parser("stats", parents=[pin], help="list entries with packet/byte counters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list, stats=True)
