"""`mosto chains`: precompute the Pareto chain table, look chains up, evaluate (paper Fig. 3)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mosto.chains.lookup import DEFAULT_ICW, DEFAULT_MSS, rounds_for_size
from mosto.cli import CliError

# numpy-based modules are imported by the commands that use them: building the `mosto` parser
# (for any subcommand) stays cheap.


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("chains", help="proxy chains between locations (paper III-B)")
    sub = parser.add_subparsers(dest="chains_command", required=True, metavar="ACTION")

    pre = sub.add_parser("precompute", help="all Pareto-optimal chains for every pair")
    pre.add_argument("topology", help="Rocketfuel latency map, or JSON {nodes, rtt} matrix")
    pre.add_argument("-o", "--output", required=True, help="table file to write (.npz)")
    pre.set_defaults(func=run_precompute)

    look = sub.add_parser("lookup", help="best chain from SRC to DST for one transfer")
    look.add_argument("table")
    look.add_argument("src")
    look.add_argument("dst")
    how = look.add_mutually_exclusive_group(required=True)
    how.add_argument("--rounds", type=int, help="slow-start rounds of the transfer")
    how.add_argument("--size", type=int, help="transfer size in bytes")
    look.add_argument("--icw", type=int, default=DEFAULT_ICW, help="initial window, segments")
    look.add_argument("--mss", type=int, default=DEFAULT_MSS, help="segment size, bytes")
    look.add_argument("--json", action="store_true", help="print {path, sum, max, cost}")
    look.set_defaults(func=run_lookup)

    ev = sub.add_parser("eval", help="quality vs shortest and minimax paths (paper Fig. 3)")
    ev.add_argument("--maps", type=Path, default=None, help="folder of Rocketfuel maps")
    ev.add_argument("--docs", type=Path, default=Path("docs"), help="where plots and table go")
    ev.set_defaults(func=run_eval)


def run_precompute(args: argparse.Namespace) -> int:
    from mosto.chains.pareto import precompute
    from mosto.chains.table import ChainTable
    from mosto.chains.topology import TopologyError, load

    start = time.perf_counter()
    try:
        topology = load(args.topology)
    except TopologyError as exc:
        raise CliError(str(exc)) from None
    table = ChainTable(topology.names, precompute(topology))
    try:
        table.save(args.output)
    except OSError as exc:
        raise CliError(f"{args.output}: {exc.strerror or exc}") from None
    n = topology.size
    print(
        f"{n} locations, {n * (n - 1) // 2} pairs, {table.points} Pareto chains "
        f"in {time.perf_counter() - start:.3f} s -> {args.output}"
    )
    return 0


def run_lookup(args: argparse.Namespace) -> int:
    from mosto.chains.table import ChainTable, TableError

    if args.rounds is not None and args.rounds < 1:
        raise CliError("--rounds must be at least 1")
    try:
        rounds = args.rounds or rounds_for_size(args.size, args.icw, args.mss)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        chain = ChainTable.load(args.table).lookup(args.src, args.dst, rounds)
    except TableError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(chain.to_json(rounds)))
    else:
        print(
            f"{' -> '.join(chain.path)}  ({rounds} round{'s' * (rounds > 1)}: "
            f"cost {chain.cost_ms(rounds):g} ms, "
            f"sum {chain.sum_us / 1000:g} ms, max {chain.max_us / 1000:g} ms)"
        )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from mosto.chains import evaluate

    maps = args.maps or evaluate.default_maps()
    if not maps.is_dir():
        raise CliError(f"{maps}: no such folder (pass --maps)")
    print(evaluate.run(maps, args.docs))
    return 0
