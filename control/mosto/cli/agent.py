"""`mosto agent` (the daemon) and `mosto ctl list|stats|release|watch`."""

from __future__ import annotations

import argparse
import json
import logging

from mosto.cli import CliError
from mosto.targets.xdp.paths import DEFAULT_PIN_DIR
from mosto.wire import protocol


def _agent(args: argparse.Namespace) -> int:
    from mosto.agent.app import AgentConfig, ConfigError, run
    from mosto.agent.core import Quotas
    from mosto.agent.server import Limits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ports = {}
    for item in args.port:
        ifname, sep, port = item.partition("=")
        if not sep or not port.isdigit():
            raise CliError(f"--port expects IFACE=N, got {item!r}")
        ports[ifname] = int(port)
    try:
        mode = int(args.socket_mode, 8)
    except ValueError:
        raise CliError(f"--socket-mode expects an octal mode, got {args.socket_mode!r}") from None
    cfg = AgentConfig(
        socket=args.socket,
        target=args.target,
        interfaces=args.interfaces,
        # --mode is an XDP option: asking for one asks for XDP.
        hook="xdp" if args.hook == "auto" and args.mode is not None else args.hook,
        mode=args.mode or "auto",
        pin_dir=args.pin_dir,
        ports=ports,
        grpc_addr=args.grpc_addr,
        device_id=args.device_id,
        p4info=args.p4info,
        bmv2_json=args.bmv2_json,
        socket_mode=mode,
        owner=args.owner,
        group=args.group,
        idle_timeout=args.idle_timeout,
        grace=args.grace,
        hold=not args.no_hold,
        metrics=args.metrics,
        admin_group=args.admin_group,
        hold_timeout=args.hold_timeout,
        limits=Limits(args.max_connections, args.max_connections_per_uid, args.workers),
        quotas=Quotas(args.max_learning_per_uid, args.max_holds_per_uid, args.max_splices_per_uid),
    )
    try:
        return run(cfg)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def _client(args: argparse.Namespace):
    from mosto.wire.client import AgentClient

    try:
        return AgentClient(args.socket)
    except ConnectionError as exc:
        raise CliError(str(exc)) from None


def _flow(doc: dict) -> str:
    host = f"[{doc['src']}]" if ":" in doc["src"] else doc["src"]
    dst = f"[{doc['dst']}]" if ":" in doc["dst"] else doc["dst"]
    return f"{host}:{doc['sport']} -> {dst}:{doc['dport']}"


def _ctl_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        answer = c.stats() if args.stats else {"splices": c.list()}
    splices = answer["splices"]
    if args.json:  # stats: the whole answer (learning, handovers, counters); list: the splices
        print(json.dumps(answer if args.stats else splices, indent=2))
        return 0
    for s in splices:
        line = f"#{s['id']:<5} {_flow(s['client'])}  ==  {_flow(s['server'])}  {s['state']}"
        if args.stats:
            line += "  " + "  ".join(
                f"{d}: {s[d]['packets']} pkts {s[d]['bytes']} B"
                for d in ("to_server", "to_client")
                if s[d]
            )
        print(line)
    print(f"{len(splices)} splices" if splices else "no splices")
    return 0


def _ctl_release(args: argparse.Namespace) -> int:
    from mosto.wire.refusal import Refused

    with _client(args) as c:
        try:
            stats = c.release(args.splice)
        except Refused as exc:
            raise CliError(exc.message) from None
    print(f"released splice {args.splice}: {json.dumps(stats)}")
    return 0


def _ctl_watch(args: argparse.Namespace) -> int:
    with _client(args) as c:
        try:
            for event in c.watch():
                print(json.dumps(event), flush=True)
        except KeyboardInterrupt:
            pass
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sock = argparse.ArgumentParser(add_help=False)
    sock.add_argument(
        "--socket",
        default=protocol.DEFAULT_SOCKET,
        help=f"the agent's Unix socket (default {protocol.DEFAULT_SOCKET})",
    )

    p = sub.add_parser("agent", parents=[sock], help="run the offload agent (needs root)")
    p.add_argument(
        "interfaces",
        nargs="*",
        metavar="IFACE",
        help="attach the splice program (XDP or tc) to these interfaces first",
    )
    p.add_argument("--target", choices=["xdp", "bmv2"], default="xdp")
    p.add_argument(
        "--hook",
        choices=["auto", "xdp", "tc"],
        default="auto",
        help="where the program runs: XDP, or tc (clsact ingress); auto: tc on veth "
        "interfaces, XDP on the others, XDP everywhere if --mode is given (default auto)",
    )
    p.add_argument(
        "--mode",
        choices=["native", "generic", "auto"],
        default=None,
        help="XDP mode (default auto: native, else generic); implies --hook xdp under auto",
    )
    p.add_argument("--pin-dir", default=DEFAULT_PIN_DIR)
    bm = p.add_argument_group("--target bmv2")
    bm.add_argument("--grpc-addr", default="127.0.0.1:9559", help="P4Runtime server")
    bm.add_argument("--device-id", type=int, default=0)
    bm.add_argument("--p4info", help="push this pipeline first (with --bmv2-json)")
    bm.add_argument("--bmv2-json", help="the compiled program (build/bmv2/mosto.json)")
    bm.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="IFACE=N",
        help="the switch port facing the peers this host reaches through IFACE",
    )
    p.add_argument("--socket-mode", default="660", help="octal mode of the socket (660)")
    p.add_argument("--owner", help="user owning the socket")
    p.add_argument("--group", help="group owning the socket (proxies in it may offload)")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="remove entries idle this long (default 300 s)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=2.0,
        metavar="S",
        help="keep entries this long after FIN both ways or RST (default 2 s)",
    )
    p.add_argument("--no-hold", action="store_true", help="no nftables holds")
    p.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics over HTTP (e.g. 127.0.0.1:9108); off by default, "
        "and whoever reaches the port reads every splice's counters",
    )
    p.add_argument(
        "--admin-group",
        metavar="NAME",
        help="members see every user's flows in list, stats and watch (root always does)",
    )
    p.add_argument(
        "--hold-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="lift a hold after this long whatever the proxy does (default 5 s)",
    )
    lim = p.add_argument_group("limits (root's connections and flows are not counted)")
    for flag, default, what in (
        ("--max-connections", 1024, "agent connections in all"),
        ("--max-connections-per-uid", 256, "agent connections per uid"),
        ("--max-learning-per-uid", 8192, "learning entries per uid"),
        ("--max-holds-per-uid", 256, "held flows per uid"),
        ("--max-splices-per-uid", 8192, "splices per uid"),
        ("--workers", 16, "requests in progress at once (they take turns running)"),
    ):
        lim.add_argument(flag, type=int, default=default, metavar="N", help=f"{what} ({default})")
    p.set_defaults(func=_agent)

    ctl = sub.add_parser("ctl", help="talk to a running agent")
    csub = ctl.add_subparsers(dest="ctl_command", required=True, metavar="ACTION")
    q = csub.add_parser("list", parents=[sock], help="spliced flows")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_ctl_list, stats=False)
    q = csub.add_parser("stats", parents=[sock], help="spliced flows with their counters")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_ctl_list, stats=True)
    q = csub.add_parser("release", parents=[sock], help="remove a splice's entries now")
    q.add_argument("splice", type=int)
    q.set_defaults(func=_ctl_release)
    q = csub.add_parser("watch", parents=[sock], help="print agent events as JSON lines")
    q.set_defaults(func=_ctl_watch)
