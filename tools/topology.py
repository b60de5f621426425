#!/usr/bin/env python3
"""Client, proxy and server network namespaces joined by veth pairs.

    client [c0] ---- [pc] proxy [ps] ---- [s0] server
      10.1.0.1/24  10.1.0.2/24   10.2.0.2/24  10.2.0.1/24
      fd01::1/64   fd01::2/64    fd02::2/64   fd02::1/64

The client and server route everything through the proxy, which forwards
(plain kernel forwarding, for comparison) and runs the proxies and the agent.
The proxy's interfaces are where XDP goes.

    tools/topology.py up [--name mosto]     # namespaces NAME-client, -proxy, -server
    tools/topology.py down [--name mosto]
In Python: `with topology() as topo: ...` (unique names, removed on exit).

The chain form, a WAN: client - InP - [TrP ...] - EgP - server, every hop a
link with its own one-way delays (and loss, rate), one more link than proxies:

    client [c0]-[la] link0 [lb]-[pc] inp [ps]-[la] link1 [lb]-[pc] egp [ps]- ... -[s0] server
    link i: 10.<i+1>.0.1/24 fd<i+1>::1/64 on its client side, .2 and ::2 on its server side

A link with a delay, loss or rate is a namespace of its own (NAME-l<i>) where
build/delayline bridges la and lb; a plain link is one veth pair. Every node
routes every link's subnet, so the client reaches the server through every
proxy by kernel forwarding until a proxy program is put there. Neighbours are
static (the MACs are fixed), TCP buffers go to 128 MiB on every node, and the
interfaces are set up for XDP in the proxies unless --no-xdp (chain_up says how).

    tools/topology.py chain up --delays 25,10,25 [--loss 0,0.01,0] [--rate 0,1G,0] [--name wan]
    tools/topology.py chain down [--name wan]
A delay (ms, one way) "25/40" is 25 toward the server and 40 back; loss and rate
take the same form, and one value applies to every link.
In Python: `with chain([LinkSpec(25), LinkSpec(10), LinkSpec(25)]) as ch: ...`

The one-armed form: a proxy with a single interface, on the LAN of both its
client and its server (a bridge in a switch namespace); the proxy is not
transparent, so a spliced frame leaves by the interface it came in on
(XDP_TX, a hairpin):

    client [c0]---[bc]
                      br0 (NAME-switch) [bp]---[p0] proxy
    server [s0]---[bs]
      10.3.0.1 (client), .2 (proxy), .3 (server) /24; fd03::1, ::2, ::3 /64

    tools/topology.py one-armed up [--name arm]
    tools/topology.py one-armed down [--name arm]
In Python: `with one_armed() as topo: ...` (a Topology whose proxy interface is p0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from processes import REPO, Processes, mosto, wait_for  # noqa: E402
from pyroute2 import netns as pyroute2_netns  # noqa: E402

from netns import Namespace, create, in_ns, remove, veth  # noqa: E402

CLIENT4, PROXY_C4, PROXY_S4, SERVER4 = "10.1.0.1", "10.1.0.2", "10.2.0.2", "10.2.0.1"
CLIENT6, PROXY_C6, PROXY_S6, SERVER6 = "fd01::1", "fd01::2", "fd02::2", "fd02::1"
MACS = {
    "c0": "02:00:00:00:01:01",
    "pc": "02:00:00:00:01:02",
    "ps": "02:00:00:00:02:02",
    "s0": "02:00:00:00:02:01",
}


@dataclass
class Topology:
    name: str
    client: Namespace
    proxy: Namespace
    server: Namespace
    interfaces: tuple[str, ...] = ("pc", "ps")  # the proxy's, where the agent attaches
    switch: Namespace | None = None  # the one-armed form's bridge

    @property
    def pin_dir(self) -> str:
        """Where this topology's agent pins its maps (the host's bpffs)."""
        return f"/sys/fs/bpf/{self.name}"

    @property
    def agent_socket(self) -> str:
        return f"/run/{self.name}/agent.sock"

    def start_agent(
        self, procs: Processes, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """`mosto agent` in the proxy, XDP on its interfaces, once its socket is up."""
        agent = procs.spawn(
            self.proxy,
            mosto(
                "agent",
                *self.interfaces,
                "--pin-dir",
                self.pin_dir,
                "--socket",
                self.agent_socket,
                *extra,
            ),
            "agent.log",
            env=env,
        )
        try:
            wait_for(
                lambda: _accepting(self.agent_socket) or agent.poll() is not None,
                10,
                "the agent's socket",
            )
            if agent.poll() is not None:
                raise AssertionError(f"the agent exited with status {agent.returncode}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log ends:\n{procs.log_tail('agent.log')}") from None
        return agent

    def start_proxy(
        self,
        procs: Processes,
        port: int,
        upstream: str,
        *extra: str,
        log: str,
        stats: Path | None = None,
    ) -> subprocess.Popen:
        """`mosto proxy` in the proxy, on 0.0.0.0:port, once it listens."""
        cmd = mosto(
            "proxy",
            "--listen",
            f"0.0.0.0:{port}",
            "--upstream",
            upstream,
            *extra,
            *(["--stats-file", str(stats)] if stats else []),
        )
        p = procs.spawn(self.proxy, cmd, log)
        wait_for(lambda: self.proxy.listening(port), 10, f"the proxy on port {port}")
        return p


def _accepting(path: str) -> bool:
    """An agent listens on path (a socket file an agent that died left is not it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _addr(ns: Namespace, ifname: str, *cidrs: str) -> None:
    for cidr in cidrs:
        ns.sh("ip", "addr", "add", cidr, "dev", ifname, *(["nodad"] if ":" in cidr else []))


def up(name: str) -> Topology:
    topo = Topology(
        name, create(f"{name}-client"), create(f"{name}-proxy"), create(f"{name}-server")
    )
    try:
        veth(topo.client, "c0", topo.proxy, "pc", MACS["c0"], MACS["pc"])
        veth(topo.server, "s0", topo.proxy, "ps", MACS["s0"], MACS["ps"])
        _addr(topo.client, "c0", f"{CLIENT4}/24", f"{CLIENT6}/64")
        _addr(topo.proxy, "pc", f"{PROXY_C4}/24", f"{PROXY_C6}/64")
        _addr(topo.proxy, "ps", f"{PROXY_S4}/24", f"{PROXY_S6}/64")
        _addr(topo.server, "s0", f"{SERVER4}/24", f"{SERVER6}/64")
        for ns, gw4, gw6 in ((topo.client, PROXY_C4, PROXY_C6), (topo.server, PROXY_S4, PROXY_S6)):
            ns.sh("ip", "route", "add", "default", "via", gw4)
            ns.sh("ip", "-6", "route", "add", "default", "via", gw6)
        topo.proxy.sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
        topo.proxy.sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for ns, ifname in (
            (topo.client, "c0"),
            (topo.proxy, "pc"),
            (topo.proxy, "ps"),
            (topo.server, "s0"),
        ):
            # XDP rewrites frames: no checksum offload the rewrite would break;
            # GRO on the redirect targets' peers lets veth take XDP_REDIRECT frames.
            ns.sh("ethtool", "-K", ifname, "tx", "off", "gro", "on")
        subprocess.run(["mkdir", "-p", f"/run/{name}"], check=True)
    except BaseException:
        down(name)
        raise
    return topo


TPROXY_MARK, TPROXY_TABLE = 1, 100


@contextlib.contextmanager
def tproxy(topo: Topology, dport: int, to_port: int) -> Iterator[None]:
    """In the proxy: TCP from the client side to dport goes to the local socket on
    to_port (a transparent proxy), and what comes back to a transparent socket is
    delivered locally. Removed on exit."""
    rules = "\n".join(
        [
            "table ip mosto_tproxy {",
            " chain prerouting {",
            "  type filter hook prerouting priority mangle; policy accept;",
            f"  meta l4proto tcp socket transparent 1 meta mark set {TPROXY_MARK} accept",
            f'  iifname "pc" tcp dport {dport} meta mark set {TPROXY_MARK} tproxy to :{to_port}',
            " }",
            "}",
        ]
    )
    ns = topo.proxy
    subprocess.run(in_ns(ns.name, ["nft", "-f", "-"]), input=rules, text=True, check=True)
    ns.sh("ip", "rule", "add", "fwmark", str(TPROXY_MARK), "lookup", str(TPROXY_TABLE))
    ns.sh("ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", str(TPROXY_TABLE))
    try:
        yield
    finally:
        ns.sh("ip", "route", "flush", "table", str(TPROXY_TABLE), check=False)
        ns.sh("ip", "rule", "del", "fwmark", str(TPROXY_MARK), check=False)
        ns.sh("nft", "delete", "table", "ip", "mosto_tproxy", check=False)


def down(name: str) -> None:
    for role in ("client", "proxy", "server"):
        remove(f"{name}-{role}")
    subprocess.run(["rm", "-rf", f"/sys/fs/bpf/{name}", f"/run/{name}"], check=False)


@contextlib.contextmanager
def topology(prefix: str = "mosto") -> Iterator[Topology]:
    name = f"{prefix}{uuid.uuid4().hex[:4]}"
    topo = up(name)
    try:
        yield topo
    finally:
        down(name)


# ---- the one-armed form: one proxy interface toward client and server ----

ARM4 = {"client": "10.3.0.1", "proxy": "10.3.0.2", "server": "10.3.0.3"}
ARM6 = {"client": "fd03::1", "proxy": "fd03::2", "server": "fd03::3"}
ARM_MACS = {
    "client": "02:00:00:00:03:01",
    "proxy": "02:00:00:00:03:02",
    "server": "02:00:00:00:03:03",
}
# End host interface, its bridge port in the switch namespace.
ARM_PORTS = {"client": ("c0", "bc"), "proxy": ("p0", "bp"), "server": ("s0", "bs")}


def one_armed_up(name: str) -> Topology:
    """Builds the one-armed form; on any failure removes what it made and raises.
    Neighbours are static. The bridge ports keep GRO on: a veth whose peer
    sends XDP_TX or XDP_REDIRECT frames receives them only with GRO (or an
    XDP program) on (ebpf/README.md, Hairpin). The proxy's p0 and the
    bridge's port toward it have tx checksum offload off, so the proxy gets
    frames with finished checksums (as in the other forms); client and
    server keep TSO."""
    roles = ("client", "proxy", "server")
    topo = Topology(
        name,
        *(create(f"{name}-{role}") for role in roles),
        interfaces=("p0",),
        switch=create(f"{name}-switch"),
    )
    assert topo.switch is not None
    sw = topo.switch
    try:
        sw.quiet()
        sw.sh("ip", "link", "add", "br0", "type", "bridge")
        sw.sh("ip", "link", "set", "br0", "up")
        for role in roles:
            ns, (ifname, port) = getattr(topo, role), ARM_PORTS[role]
            veth(ns, ifname, sw, port, ARM_MACS[role])
            sw.sh("ip", "link", "set", port, "master", "br0")
            # Toward the proxy, finished checksums: XDP's rewrite cannot
            # follow a CHECKSUM_PARTIAL frame through XDP_TX.
            sw.sh("ethtool", "-K", port, *(["tx", "off"] if role == "proxy" else []), "gro", "on")
            _addr(ns, ifname, f"{ARM4[role]}/24", f"{ARM6[role]}/64")
            ns.sh("ethtool", "-K", ifname, *(["tx", "off"] if role == "proxy" else []), "gro", "on")
            for other in roles:
                if other != role:
                    for addr in (ARM4[other], ARM6[other]):
                        _neigh(ns, ifname, addr, ARM_MACS[other])
        subprocess.run(["mkdir", "-p", f"/run/{name}"], check=True)
    except BaseException:
        one_armed_down(name)
        raise
    return topo


def one_armed_down(name: str) -> None:
    remove(f"{name}-switch")
    down(name)


@contextlib.contextmanager
def one_armed(prefix: str = "arm") -> Iterator[Topology]:
    name = f"{prefix}{uuid.uuid4().hex[:4]}"
    topo = one_armed_up(name)
    try:
        yield topo
    finally:
        one_armed_down(name)


# ---- the chain form: a WAN of proxies ----

DELAYLINE = REPO / "build" / "delayline"
# TCP socket buffers on every node. The window comes to about a third of the
# receive buffer (measured: 44 MB of 128 MiB), 1.7 Gbit/s over 200 ms.
TCP_BUFFER_MAX = 128 << 20
DELAYLINE_READY_S = 10.0
DELAYLINE_STOP_S = 5.0


@dataclass(frozen=True)
class LinkSpec:
    """One hop. delay_ms (one way), loss (probability per packet) and
    rate_bps go toward the server; the _back fields toward the client (None:
    the same). queue_bytes: the delay line's queue per direction (None: its
    default, 1 Gbit/s for 200 ms). extra: more delayline options."""

    delay_ms: float = 0.0
    delay_back_ms: float | None = None
    loss: float = 0.0
    loss_back: float | None = None
    rate_bps: int = 0
    rate_back_bps: int | None = None
    queue_bytes: int | None = None
    extra: tuple[str, ...] = ()

    @property
    def there(self) -> tuple[float, float, int]:
        return self.delay_ms, self.loss, self.rate_bps

    @property
    def back(self) -> tuple[float, float, int]:
        def pick(value, default):
            return default if value is None else value

        return (
            pick(self.delay_back_ms, self.delay_ms),
            pick(self.loss_back, self.loss),
            pick(self.rate_back_bps, self.rate_bps),
        )

    @property
    def rtt_ms(self) -> float:
        return self.there[0] + self.back[0]

    @property
    def needs_delayline(self) -> bool:
        return any(self.there) or any(self.back)

    def delayline_args(self) -> list[str]:
        """Direction ab of the delay line is toward the server."""
        args = []
        for suffix, (delay, loss, rate) in (("ab", self.there), ("ba", self.back)):
            args += [f"--delay-{suffix}", f"{delay:g}", f"--loss-{suffix}", f"{loss:g}"]
            if rate:
                args += [f"--rate-{suffix}", str(int(rate))]
        if self.queue_bytes is not None:
            args += ["--queue", str(int(self.queue_bytes))]
        return [*args, *self.extra]


@dataclass
class Link:
    index: int
    spec: LinkSpec
    ns: Namespace | None = None  # the delay line's namespace, None for a plain veth
    process: subprocess.Popen | None = None
    pid: int | None = None
    # after stop: the delay line's exit status and its counters per direction
    returncode: int | None = None
    counters: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class Chain:
    """nodes: the client, the proxies in order, the server. links[i] joins
    nodes[i] (its side a, addresses .1/::1) and nodes[i+1] (side b, .2/::2)."""

    name: str
    nodes: list[Namespace]
    links: list[Link]

    @property
    def client(self) -> Namespace:
        return self.nodes[0]

    @property
    def server(self) -> Namespace:
        return self.nodes[-1]

    @property
    def proxies(self) -> list[Namespace]:
        return self.nodes[1:-1]

    @staticmethod
    def addr4(link: int, side: str) -> str:
        return f"10.{link + 1}.0.{1 if side == 'a' else 2}"

    @staticmethod
    def addr6(link: int, side: str) -> str:
        return f"fd{link + 1:02x}::{1 if side == 'a' else 2}"

    @property
    def client4(self) -> str:
        return self.addr4(0, "a")

    @property
    def client6(self) -> str:
        return self.addr6(0, "a")

    @property
    def server4(self) -> str:
        return self.addr4(len(self.links) - 1, "b")

    @property
    def server6(self) -> str:
        return self.addr6(len(self.links) - 1, "b")

    @property
    def rtt_ms(self) -> float:
        """The round trip the links add up to, client to server and back."""
        return sum(link.spec.rtt_ms for link in self.links)

    @property
    def run_dir(self) -> Path:
        return Path(f"/run/{self.name}")

    def stop_delaylines(self) -> None:
        """Stops every delay line and keeps its counters in link.counters."""
        for link in self.links:
            if link.process is not None:
                link.returncode = _stop_delayline(link.process)
                link.process = None
                link.counters = parse_counters(self.run_dir / f"l{link.index}.log")


def _proxy_roles(n: int) -> list[str]:
    if n == 1:
        return ["proxy"]
    return ["inp", *(f"trp{i}" for i in range(1, n - 1)), "egp"] if n else []


def _chain_roles(n_links: int) -> list[str]:
    return ["client", *_proxy_roles(n_links - 1), "server"]


def _link_ifnames(index: int, n_links: int) -> tuple[str, str]:
    """The node interfaces at the two ends of link index: the client's c0, the
    server's s0, a proxy's pc (client side) and ps (server side)."""
    return ("c0" if index == 0 else "ps", "s0" if index == n_links - 1 else "pc")


def _mac(link: int, side: str, on_link_ns: bool = False) -> str:
    return f"02:00:00:{link + 1:02x}:{1 if on_link_ns else 0:02x}:{1 if side == 'a' else 2:02x}"


def parse_counters(log: Path) -> dict[str, dict[str, int]]:
    """The delay line's exit report: {"ab": {"forwarded": .., "lost": ..}, "ba": ...}."""
    counters = {}
    text = log.read_text() if log.exists() else ""
    for m in re.finditer(r"^delayline (ab|ba) (.*)$", text, re.M):
        counters[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return counters


def _start_delayline(ns: Namespace, spec: LinkSpec, log: Path) -> subprocess.Popen:
    """The delay line between la and lb in ns, once it says it is ready. A
    session of its own: it outlives `topology.py chain up`."""
    if not os.access(DELAYLINE, os.X_OK):
        raise FileNotFoundError(f"{DELAYLINE} missing: run `make build/delayline`")
    with open(log, "w") as err:
        p = ns.popen(
            [str(DELAYLINE), "--a", "la", "--b", "lb", *spec.delayline_args()],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    log.with_suffix(".pid").write_text(f"{p.pid}\n")
    started, _, _ = select.select([p.stdout], [], [], DELAYLINE_READY_S)
    if not started or p.stdout.readline().strip() != "ready":
        _stop_delayline(p)
        raise RuntimeError(f"delayline in {ns.name} did not start: {log.read_text().strip()}")
    p.stdout.close()
    return p


def _stop_delayline(p: subprocess.Popen) -> int:
    p.terminate()
    try:
        return p.wait(DELAYLINE_STOP_S)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


def _is_delayline(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == bytes(DELAYLINE)
    except OSError:
        return False


def _stop_pid(pid: int) -> None:
    """A delay line another process started (`chain up`), by its pid file."""
    if not _is_delayline(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DELAYLINE_STOP_S
    while _is_delayline(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _is_delayline(pid):
        os.kill(pid, signal.SIGKILL)


def _neigh(ns: Namespace, ifname: str, addr: str, mac: str) -> None:
    ns.sh("ip", "neigh", "replace", addr, "lladdr", mac, "dev", ifname, "nud", "permanent")


def _route(ns: Namespace, via: str, *prefixes: str) -> None:
    for prefix in prefixes:
        ns.sh("ip", *(["-6"] if ":" in via else []), "route", "add", prefix, "via", via)


def _chain_routes(ch: Chain) -> None:
    """Every node reaches every link's subnet through its neighbours; the
    client and the server have default routes too."""
    n_links = len(ch.links)
    for k, node in enumerate(ch.nodes):
        west = [j for j in range(n_links) if j < k - 1]  # beyond the link at our west
        east = [j for j in range(n_links) if j > k]  # beyond the link at our east
        for links, hop, side in ((west, k - 1, "a"), (east, k, "b")):
            if not links:
                continue
            _route(node, ch.addr4(hop, side), *(f"10.{j + 1}.0.0/24" for j in links))
            _route(node, ch.addr6(hop, side), *(f"fd{j + 1:02x}::/64" for j in links))
    if n_links > 1:
        for node, hop, side in ((ch.client, 0, "b"), (ch.server, n_links - 1, "a")):
            _route(node, ch.addr4(hop, side), "default")
            _route(node, ch.addr6(hop, side), "default")


def chain_up(name: str, specs: Sequence[LinkSpec], xdp: bool = True) -> Chain:
    """Builds the chain; on any failure removes what it made and raises.

    xdp: whatever faces a proxy sends it plain frames with finished
    checksums, what XDP needs: the proxies' interfaces as the 3-namespace
    topology sets them (tx checksum offload off, so no TSO; GRO on), and a
    link namespace's interface toward a proxy tx off too (the kernel cuts the
    delay line's super-frames into segments on the way out). The client and
    the server keep TSO. GRO is on everywhere else: the segments a proxy
    sends come to the delay line merged again, 64 KiB at a time (without it
    the line carries 1.5 KB frames: 0.9 Gbit/s instead of 3.3 measured), and
    veth takes XDP_REDIRECT frames only with GRO on. xdp=False: TSO on
    everywhere, super-frames end to end, faster, no XDP in the proxies."""
    if not specs:
        raise ValueError("a chain needs at least one link")
    run_dir = Path(f"/run/{name}")
    roles = _chain_roles(len(specs))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        names = [f"{name}-{role}" for role in roles]
        names += [f"{name}-l{i}" for i, spec in enumerate(specs) if spec.needs_delayline]
        (run_dir / "chain.json").write_text(json.dumps({"namespaces": names}))
        ch = Chain(name, [create(f"{name}-{role}") for role in roles], [])
        for i, spec in enumerate(specs):
            link = Link(i, spec)
            ch.links.append(link)
            west, east = ch.nodes[i], ch.nodes[i + 1]
            west_if, east_if = _link_ifnames(i, len(specs))
            if spec.needs_delayline:
                link.ns = create(f"{name}-l{i}")
                link.ns.quiet()  # the bridge has no addresses and says nothing
                veth(west, west_if, link.ns, "la", _mac(i, "a"), _mac(i, "a", True))
                veth(link.ns, "lb", east, east_if, _mac(i, "b", True), _mac(i, "b"))
                for ifname, node in (("la", west), ("lb", east)):
                    plain = xdp and node in ch.proxies
                    link.ns.sh("ethtool", "-K", ifname, "gro", "on", *(["tx", "off"] * plain))
            else:
                veth(west, west_if, east, east_if, _mac(i, "a"), _mac(i, "b"))
            ends = ((west, west_if, "a", "b"), (east, east_if, "b", "a"))
            for node, ifname, side, peer in ends:
                _addr(node, ifname, f"{ch.addr4(i, side)}/24", f"{ch.addr6(i, side)}/64")
                # The peer's MAC is known: no ARP or ND through a lossy or slow
                # link, and no first packet a second late while ND retries.
                for addr in (ch.addr4(i, peer), ch.addr6(i, peer)):
                    _neigh(node, ifname, addr, _mac(i, peer))
                if xdp:
                    tx = ["tx", "off"] if node in ch.proxies else []
                    node.sh("ethtool", "-K", ifname, *tx, "gro", "on")
        _chain_routes(ch)
        for node in ch.nodes:
            buffers = f"4096 131072 {TCP_BUFFER_MAX}"
            node.sh("sysctl", "-qw", f"net.ipv4.tcp_rmem={buffers}", f"net.ipv4.tcp_wmem={buffers}")
        for node in ch.proxies:
            node.sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
            node.sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for link in ch.links:
            if link.ns is not None:
                log = run_dir / f"l{link.index}.log"
                link.process = _start_delayline(link.ns, link.spec, log)
                link.pid = link.process.pid
    except BaseException:
        chain_down(name)
        raise
    return ch


def chain_down(name: str, ch: Chain | None = None) -> None:
    """Stops the chain's delay lines and removes its namespaces: those of ch,
    those chain.json lists, and any other NAME-<role> left behind."""
    run_dir = Path(f"/run/{name}")
    if ch is not None:
        ch.stop_delaylines()
    for pidfile in run_dir.glob("l*.pid") if run_dir.exists() else []:
        with contextlib.suppress(ValueError, OSError):
            _stop_pid(int(pidfile.read_text()))
    names = set()
    with contextlib.suppress(OSError, ValueError):
        names.update(json.loads((run_dir / "chain.json").read_text())["namespaces"])
    role = r"(client|server|proxy|inp|egp|trp\d+|l\d+)"
    names.update(n for n in pyroute2_netns.listnetns() if re.fullmatch(rf"{name}-{role}", n))
    for ns in sorted(names):
        remove(ns)
    subprocess.run(["rm", "-rf", str(run_dir)], check=False)


@contextlib.contextmanager
def chain(specs: Sequence[LinkSpec], prefix: str = "wan", xdp: bool = True) -> Iterator[Chain]:
    """A chain under a unique name; every delay line stopped (its counters
    kept in link.counters) and every namespace removed on exit."""
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    ch = chain_up(name, specs, xdp)
    try:
        yield ch
    finally:
        chain_down(name, ch)


def _per_link(text: str | None, n: int, convert) -> list[tuple]:
    """One (there, back) per link from "a,b/c,d"; a single value is for every link."""
    if text is None:
        return [(None, None)] * n
    items = text.split(",")
    if len(items) == 1:
        items *= n
    if len(items) != n:
        raise ValueError(f"{text!r}: need {n} values or one")
    out = []
    for item in items:
        there, _, back = item.partition("/")
        out.append((convert(there), convert(back) if back else None))
    return out


def _rate(text: str) -> int:
    units = {"k": 10**3, "m": 10**6, "g": 10**9}
    mult = units.get(text[-1:].lower(), 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def specs_from_args(delays: str, loss: str | None, rate: str | None, queue: int | None):
    n = len(delays.split(","))
    return [
        LinkSpec(d, db, lo or 0.0, lb, r or 0, rb, queue)
        for (d, db), (lo, lb), (r, rb) in zip(
            _per_link(delays, n, float),
            _per_link(loss, n, float),
            _per_link(rate, n, _rate),
            strict=True,
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("up", "down"):
        sub.add_parser(action).add_argument("--name", default="mosto")
    c = sub.add_parser("chain", help="the WAN form: client, proxies, server, delayed links")
    c.add_argument("chain_action", choices=["up", "down"])
    c.add_argument("--name", default="wan")
    c.add_argument("--delays", help="one-way ms per link, e.g. 25,10,25 or 25/40,10,25")
    c.add_argument("--loss", help="loss probability per link (same form)")
    c.add_argument("--rate", help="bits/s per link, 0 for none (same form; k, M, G)")
    c.add_argument("--queue", type=int, help="delay line queue per direction (bytes)")
    c.add_argument(
        "--no-xdp", action="store_true", help="TSO on end to end (faster, no XDP in proxies)"
    )
    a = sub.add_parser("one-armed", help="one proxy interface toward client and server")
    a.add_argument("arm_action", choices=["up", "down"])
    a.add_argument("--name", default="arm")
    args = parser.parse_args()
    if args.action == "one-armed":
        if args.arm_action == "up":
            topo = one_armed_up(args.name)
            print(f"namespaces {args.name}-client, -proxy, -server, -switch; proxy interface p0")
        else:
            one_armed_down(args.name)
    elif args.action == "up":
        topo = up(args.name)
        print(
            f"namespaces {topo.client.name}, {topo.proxy.name}, {topo.server.name}; "
            f"proxy interfaces pc, ps"
        )
    elif args.action == "down":
        down(args.name)
    elif args.chain_action == "up":
        if not args.delays:
            parser.error("chain up needs --delays")
        try:
            specs = specs_from_args(args.delays, args.loss, args.rate, args.queue)
        except ValueError as exc:
            parser.error(str(exc))
        ch = chain_up(args.name, specs, xdp=not args.no_xdp)
        print(f"nodes {', '.join(n.name for n in ch.nodes)}")
        print(f"client {ch.client4} {ch.client6}, server {ch.server4} {ch.server6}")
        links = ", ".join(link.ns.name if link.ns else "veth" for link in ch.links)
        print(f"links {links}; round trip {ch.rtt_ms:g} ms")
    else:
        chain_down(args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
