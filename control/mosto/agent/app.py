"""The agent's composition root: a target, holds, the agent, its socket server
and (if asked) its metrics endpoint, wired together from one AgentConfig.
`mosto agent` (mosto.cli.agent) only turns arguments into that config."""

from __future__ import annotations

import logging
import math
import os
import resource
import signal
from dataclasses import dataclass, field
from pathlib import Path

import mosto
from mosto import failpoints
from mosto.agent import sockdir
from mosto.agent.core import HOLD_TIMEOUT_S, Agent, Quotas
from mosto.agent.heap import Heap
from mosto.agent.kernel.hold import HoldError, Holds
from mosto.agent.kernel.repairlog import RepairLog
from mosto.agent.kernel.tcpstate import probe_repair
from mosto.agent.server import AgentServer, Limits
from mosto.agent.txerrors import TxErrors
from mosto.targets.base import Target, TargetError
from mosto.wire import protocol

log = logging.getLogger("mosto.agent")


class ConfigError(Exception):
    """The configuration cannot work; the message says why, in one line."""


@dataclass
class AgentConfig:
    socket: str
    target: str = "xdp"  # or "bmv2"
    interfaces: list[str] = field(default_factory=list)  # XDP: attach to these
    hook: str = "auto"  # xdp, tc, or auto: tc on veth interfaces, xdp on the others
    mode: str = "auto"  # XDP mode: native, generic or auto
    pin_dir: str = "/sys/fs/bpf/mosto"
    ports: dict[str, int] = field(default_factory=dict)  # BMv2: host interface -> port
    grpc_addr: str = "127.0.0.1:9559"
    device_id: int = 0
    p4info: str | None = None
    bmv2_json: str | None = None
    socket_mode: int = 0o660
    owner: str | None = None
    group: str | None = None
    idle_timeout: float = 300.0
    grace: float = 2.0
    hold: bool = True
    metrics: str | None = None  # [HOST:]PORT
    admin_group: str | None = None  # sees every flow in list/stats/watch
    hold_timeout: float = HOLD_TIMEOUT_S
    limits: Limits = field(default_factory=Limits)
    quotas: Quotas = field(default_factory=Quotas)


@dataclass
class Opened:
    """The data plane, and what the agent must know about its interfaces."""

    target: Target
    port_map: dict[str, int] | None = None  # a switch's port for each host interface
    no_hairpin: set[str] = field(default_factory=set)  # XDP_TX through these stalls
    watched: list[str] = field(default_factory=list)  # their xdp_tx_errors are watched


def _xdp_mode(ifname: str, mode: str, one_armed: bool) -> str:
    """The XDP mode for ifname. A one-armed proxy's splices all leave by the
    interface they came in on (XDP_TX), and native XDP_TX on veth stalls the
    peer's receive ring on this kernel (ebpf/README.md, Hairpin): on veth such
    an interface gets generic mode, which sends through the peer's stack."""
    from mosto.targets.xdp.target import is_veth

    if not one_armed or mode == "generic" or not is_veth(ifname):
        return mode
    log.log(
        logging.WARNING if mode == "native" else logging.INFO,
        "%s: one-armed on veth, every splice hairpins (XDP_TX); native XDP_TX on veth "
        "stalls: generic mode%s",
        ifname,
        " (native was asked for)" if mode == "native" else "",
    )
    return "generic"


def open_target(cfg: AgentConfig) -> Opened:
    """The data plane, and what the agent must know about its interfaces."""
    if cfg.target == "xdp":
        from mosto.targets.xdp.target import (
            HOOKS,
            XdpTarget,
            default_hook,
            is_veth,
            require_interfaces,
        )

        if cfg.ports:
            raise ConfigError("--port is for --target bmv2")
        require_interfaces(cfg.interfaces)
        if cfg.hook not in (*HOOKS, "auto"):
            raise ConfigError(f"--hook expects auto, xdp or tc, got {cfg.hook!r}")
        hooks = {
            ifname: default_hook(ifname) if cfg.hook == "auto" else cfg.hook
            for ifname in cfg.interfaces
        }
        # One set of maps; the other hook's object, if needed, shares them.
        first = next(iter(hooks.values()), "xdp" if cfg.hook == "auto" else cfg.hook)
        xdp = XdpTarget(pin_dir=cfg.pin_dir, hook=first)
        opened = Opened(xdp)
        for ifname, hook in hooks.items():
            mode = _xdp_mode(ifname, cfg.mode, len(hooks) == 1) if hook == "xdp" else cfg.mode
            how = xdp.attach(ifname, mode, hook=hook)
            if hook == "tc":
                log.info("attached to %s: tc (clsact ingress)", ifname)
                continue
            log.info("attached to %s: XDP (%s)", ifname, how)
            opened.watched.append(ifname)
            if how == "native" and is_veth(ifname):
                opened.no_hairpin.add(ifname)
                log.info(
                    "%s: native XDP on veth: splices that would hairpin here are refused", ifname
                )
        return opened
    from mosto.targets.bmv2.target import Bmv2Target

    if cfg.interfaces:
        raise ConfigError("interfaces to attach to are for --target xdp; use --port IFACE=N")
    if not cfg.ports:
        raise ConfigError(
            "--target bmv2 needs --port IFACE=N for each interface peers are reached through"
        )
    if (cfg.p4info is None) != (cfg.bmv2_json is None):
        raise ConfigError("--p4info and --bmv2-json go together (to push the pipeline)")
    switch = Bmv2Target(
        cfg.grpc_addr,
        cfg.device_id,
        cfg.p4info,
        cfg.bmv2_json,
        idle_timeout_ns=int(cfg.idle_timeout * 1e9),
    )
    log.info("BMv2 at %s, device %d; ports %s", cfg.grpc_addr, cfg.device_id, cfg.ports)
    return Opened(switch, dict(cfg.ports))


def _serve_metrics(agent: Agent, where: str) -> None:
    from prometheus_client import REGISTRY, start_http_server

    from mosto.agent.metrics import AgentCollector

    host, _, port = where.rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"--metrics expects [HOST:]PORT, got {where!r}")
    REGISTRY.register(AgentCollector(agent))
    start_http_server(int(port), addr=host or "127.0.0.1")


FD_SLACK = 1024  # the agent's own: maps, netlink, nftables, logs


def fds_needed(max_entries: int, limits: Limits) -> int:
    """Two reservation sockets per splice (a splice is two entries: one per
    entry), one per agent connection, and what requests in flight carry."""
    return max_entries + limits.connections + limits.workers * protocol.MAX_FDS + FD_SLACK


def _raise_fd_limit(need: int, max_entries: int) -> None:
    """The soft limit to the hard one; as root, the hard one too, as far as
    need (up to fs.nr_open, the kernel's ceiling), so a full table of splices
    keeps its reservations."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            ceiling = hard
        want = min(need, ceiling)
        if want > hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            except (ValueError, OSError) as exc:  # not root, or no CAP_SYS_RESOURCE
                log.warning(
                    "descriptor limit %d, %d wanted: %s; splices past about %d keep no "
                    "reservation and are refused",
                    hard,
                    want,
                    exc,
                    (hard - (need - max_entries)) // 2,
                )
            else:
                log.info(
                    "descriptor limit raised from %d to %d: two reservation sockets "
                    "each for %d splices",
                    hard,
                    want,
                    (want - (need - max_entries)) // 2,
                )
                return
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _grow_fd_table(fds: int) -> None:
    """The kernel grows a process's descriptor table by doubling it, and in a
    process with threads every growth waits for an RCU grace period
    (expand_fdtable: synchronize_rcu): 5-15 ms measured here, spent inside
    whichever hand-over opened the descriptor past the old size. Grown once,
    at start, to what the splices may hold (min(fds, the limit)): the table
    never shrinks, and costs 8 bytes a slot."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = min(fds, soft) - 1
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if top > fd:
            os.dup2(fd, top, inheritable=False)
            os.close(top)
    finally:
        os.close(fd)


def run(cfg: AgentConfig) -> int:
    """Serves until SIGTERM or SIGINT. Entries and XDP stay when it stops:
    spliced flows outlive the agent, and a new one picks them up. Holds do
    not: the hold table goes with the agent (and a new agent starts a fresh one)."""
    log.info("mosto from %s", mosto.__file__)
    try:
        failpoints.announce("agent", log.warning)
    except failpoints.UnknownFailpoint as exc:
        raise ConfigError(str(exc)) from None
    missing = probe_repair()
    if missing:
        raise ConfigError(missing)
    try:
        sockdir.prepare(cfg.socket)  # before anything is attached
        sockdir.lock(cfg.socket)  # kept until the agent exits
        opened = open_target(cfg)
        # The kernel ends a hold a little after the agent would: only if none is there.
        holds = Holds(backstop_s=math.ceil(cfg.hold_timeout) + 2) if cfg.hold else None
    except (TargetError, HoldError, sockdir.UnsafeDirectory) as exc:
        raise ConfigError(str(exc)) from None
    max_entries = opened.target.max_entries
    _raise_fd_limit(fds_needed(max_entries, cfg.limits), max_entries)
    _grow_fd_table(fds_needed(max_entries, cfg.limits))
    agent = Agent(
        opened.target,
        holds,
        idle_timeout=cfg.idle_timeout,
        grace=cfg.grace,
        port_map=opened.port_map,
    )
    agent.no_hairpin = opened.no_hairpin
    agent.tx_errors = TxErrors(opened.watched)
    agent.quotas = cfg.quotas
    agent.hold_timeout = cfg.hold_timeout
    agent.repairlog = RepairLog.beside(cfg.socket)
    finished = agent.recover_repairs()
    if finished:
        log.info("%d proxy sockets a dead agent left in repair mode taken back", finished)
    kept = agent.reserve_rebuilt()
    if kept:
        log.info("%d four-tuples of rebuilt splices reserved", kept)
    try:
        server = AgentServer(
            agent,
            cfg.socket,
            cfg.socket_mode,
            cfg.owner,
            cfg.group,
            limits=cfg.limits,
            admin_group=cfg.admin_group,
            heap=Heap(),
        )
    except (sockdir.UnsafeDirectory, KeyError) as exc:
        raise ConfigError(str(exc).strip("'\"")) from None
    if cfg.metrics:
        _serve_metrics(agent, cfg.metrics)
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    signal.signal(signal.SIGINT, lambda *_: server.shutdown())
    log.info("serving on %s", cfg.socket)
    try:
        server.serve_forever()
    finally:
        if holds is not None:
            holds.close()
    log.info("stopped; entries stay in the data plane, holds are lifted")
    return 0
