"""`mosto proxy`: the reference proxy (mosto.proxy.relay)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time

from mosto import failpoints
from mosto.cli import CliError
from mosto.wire import protocol


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    mult = units.get(text[-1:].lower(), 1)
    try:
        return int(text[:-1] if mult > 1 else text) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 4M, got {text!r}") from None


def _policy(args: argparse.Namespace):
    """The hand-over policy the options describe, None for never; CliError if
    they contradict each other."""
    from mosto.proxy.gradual import GradualDelay
    from mosto.proxy.relay import Policy

    on = args.handover_on or ("bytes" if args.handover_after is not None else None)
    if on is None:
        if args.gradual or args.handover_at is not None:
            raise CliError("--gradual and --handover-at need --handover-on")
        return None
    if on == "time" and args.handover_at is None:
        raise CliError("--handover-on time needs --handover-at SECONDS")
    if on != "time" and args.handover_at is not None:
        raise CliError("--handover-at goes with --handover-on time")
    try:
        gradual = None
        if args.gradual:
            gradual = GradualDelay(args.delay_step, args.delay_target, args.step_rtts)
        return Policy(on, args.handover_after, args.handover_at, gradual)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _peer(text: str) -> tuple[str, str]:
    name, sep, where = text.partition("=")
    if not sep or not name or not where:
        raise argparse.ArgumentTypeError(f"expected NAME=HOST:PORT, got {text!r}")
    return name, where


def _site(text: str) -> tuple[str, str]:
    net, sep, name = text.partition("=")
    if not sep or not net or not name:
        raise argparse.ArgumentTypeError(f"expected NETWORK=NAME, got {text!r}")
    return net, name


def _network(text: str):
    import ipaddress

    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise CliError(f"{text!r}: {exc}") from None


def _routes(args: argparse.Namespace):
    """The ingress proxy's chain lookup the options describe, or None."""
    from mosto.chains.table import ChainTable, TableError
    from mosto.proxy.ppv2 import Hop
    from mosto.proxy.route import ChainRoutes

    chain_opts = (args.location, args.peer, args.site, args.expect_bytes)
    if args.chain_table is None:
        if any(chain_opts):
            raise CliError("--location, --peer, --site and --expect-bytes go with --chain-table")
        return None
    if args.chained:
        raise CliError("--chain-table is for the ingress proxy, not a --chained one")
    if not args.location:
        raise CliError("--chain-table needs --location (this proxy's node in the table)")
    try:
        table = ChainTable.load(args.chain_table)
    except TableError as exc:
        raise CliError(str(exc)) from None
    peers: dict[str, list] = {}
    for name, where in args.peer or []:
        try:
            peers.setdefault(name, []).append(Hop.parse(where))
        except ValueError as exc:
            raise CliError(f"--peer {name}={where}: {exc}") from None
    sites = [(_network(net), name) for net, name in args.site or []]
    try:
        return ChainRoutes(table, args.location, peers, sites, args.expect_bytes or 1 << 20)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _chained(args: argparse.Namespace):
    from mosto.proxy.relay import Chained

    if not args.chained:
        if args.chain_from:
            raise CliError("--chain-from goes with --chained")
        return None
    if not args.chain_from:
        raise CliError("--chained needs --chain-from NETWORK (who may send chain headers)")
    return Chained(tuple(_network(n) for n in args.chain_from))


def _proxy(args: argparse.Namespace) -> int:
    from mosto.proxy.relay import Proxy

    policy = _policy(args)
    routes, chained = _routes(args), _chained(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        failpoints.announce("proxy", logging.warning)
    except failpoints.UnknownFailpoint as exc:
        raise CliError(str(exc)) from None
    try:
        proxy = Proxy(
            args.listen,
            args.upstream,
            args.agent or None,
            policy,
            args.attempts,
            drain=not args.no_drain,
            cc=args.cc,
            routes=routes,
            chained=chained,
            fastopen=args.fastopen,
        )
    except OSError as exc:
        where = f"{args.listen[0]}:{args.listen[1]}"
        raise CliError(f"cannot listen on {where}: {exc.strerror}") from None
    if args.stats_file:

        def dump() -> None:
            while True:
                doc = proxy.stats.to_json()
                with open(args.stats_file + ".tmp", "w") as f:
                    json.dump(doc, f)
                os.replace(args.stats_file + ".tmp", args.stats_file)
                time.sleep(0.2)

        threading.Thread(target=dump, daemon=True).start()
    logging.info(
        "proxying %s:%d -> %s",
        *args.listen,
        "{}:{}".format(*args.upstream)
        if args.upstream
        else "(where the chain header says)"
        if args.chained
        else "(transparent)",
    )
    proxy.serve_forever()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("proxy", help="run the reference proxy (hands flows over to the agent)")
    p.add_argument("--listen", type=_hostport, required=True, metavar="HOST:PORT")
    up = p.add_mutually_exclusive_group(required=True)
    up.add_argument("--upstream", type=_hostport, metavar="HOST:PORT")
    up.add_argument(
        "--transparent",
        action="store_true",
        help="TPROXY: connect to where the client connected, as the client "
        "(needs CAP_NET_ADMIN and a tproxy rule)",
    )
    up.add_argument(
        "--chained",
        action="store_true",
        help="a proxy inside a chain: every connection starts with a chain header "
        "(PROXY protocol v2, mosto/proxy/PPV2.md) naming the destination and the "
        "proxies still to pass",
    )
    c = p.add_argument_group("chains of proxies (paper III-B; docs/chains.md)")
    c.add_argument(
        "--chain-table",
        metavar="FILE",
        help="the ingress proxy: look up each flow's chain toward its destination "
        "in this table (mosto chains precompute) and connect to the first proxy on it",
    )
    c.add_argument("--location", metavar="NAME", help="this proxy's node in the table")
    c.add_argument(
        "--peer",
        type=_peer,
        action="append",
        metavar="NAME=HOST:PORT",
        help="where the proxy of table node NAME listens (repeat; one per address family)",
    )
    c.add_argument(
        "--site",
        type=_site,
        action="append",
        metavar="NETWORK=NAME",
        help="destinations in NETWORK are at table node NAME (repeat); a flow to no "
        "site goes straight to its destination",
    )
    c.add_argument(
        "--expect-bytes",
        type=_size,
        metavar="BYTES",
        help="the transfer size the lookup assumes, which sets its slow-start rounds (1M)",
    )
    c.add_argument(
        "--fastopen",
        action="store_true",
        help="TCP Fast Open between the chain's proxies: the header rides in the SYN "
        "to the next proxy (once a cookie is cached), and this listener takes such "
        "SYNs (needs net.ipv4.tcp_fastopen=3 in the namespace)",
    )
    c.add_argument(
        "--chain-from",
        action="append",
        metavar="NETWORK",
        help="with --chained: the previous proxies' networks; a connection from "
        "elsewhere is closed (a header names any destination)",
    )
    p.add_argument(
        "--agent",
        default=protocol.DEFAULT_SOCKET,
        metavar="SOCKET",
        help="the agent's socket; '' to never hand over",
    )
    p.add_argument(
        "--handover-after",
        type=_size,
        default=None,
        metavar="BYTES",
        help="hand a flow over once this much went through (e.g. 1M); with "
        "--handover-on slowstart or time, not before",
    )
    p.add_argument(
        "--handover-on",
        choices=["bytes", "slowstart", "time"],
        help="what starts a hand-over: --handover-after bytes (the default when "
        "given), the end of slow start on the proxy's sending socket (TCP_INFO), "
        "or --handover-at seconds into the flow",
    )
    p.add_argument("--handover-at", type=float, metavar="SECONDS", help="with --handover-on time")
    g = p.add_argument_group("gradual delay before a hand-over (paper V-B)")
    g.add_argument("--gradual", action="store_true", help="raise the relay's delay in steps first")
    g.add_argument("--delay-step", type=float, default=10.0, metavar="MS", help="(10)")
    g.add_argument(
        "--delay-target",
        type=float,
        metavar="MS",
        help="the delay to reach; default: the smoothed RTT of the proxy's sending "
        "connection, which is what the sender's loop gains when the proxy goes",
    )
    g.add_argument(
        "--step-rtts",
        type=float,
        default=4.0,
        metavar="N",
        help="each step lasts N of the sender's loops, its RTT plus the delay (4)",
    )
    p.add_argument("--attempts", type=int, default=5, help="hand-over attempts per flow (5)")
    p.add_argument(
        "--no-drain",
        action="store_true",
        help="offload without holding the senders and draining (bulk flows will "
        "mostly be refused: buffers not empty)",
    )
    p.add_argument(
        "--cc",
        metavar="NAME",
        help="congestion control of both connections (TCP_CONGESTION; one the "
        "namespace does not allow needs CAP_NET_ADMIN)",
    )
    p.add_argument("--stats-file", help="keep a JSON summary here (rewritten 5 times a second)")
    p.set_defaults(func=_proxy)
