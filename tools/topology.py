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
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from processes import Processes, mosto, wait_for  # noqa: E402

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

    @property
    def pin_dir(self) -> str:
        """Where this topology's agent pins its maps (the host's bpffs)."""
        return f"/sys/fs/bpf/{self.name}"

    @property
    def agent_socket(self) -> str:
        return f"/run/{self.name}/agent.sock"

    def start_agent(self, procs: Processes, *extra: str) -> subprocess.Popen:
        """`mosto agent` in the proxy, XDP on its two interfaces, once its socket is up."""
        agent = procs.spawn(
            self.proxy,
            mosto(
                "agent",
                "pc",
                "ps",
                "--pin-dir",
                self.pin_dir,
                "--socket",
                self.agent_socket,
                *extra,
            ),
            "agent.log",
        )
        try:
            wait_for(
                lambda: os.path.exists(self.agent_socket) or agent.poll() is not None,
                10,
                "the agent's socket",
            )
            if agent.poll() is not None:
                raise AssertionError(f"the agent exited with status {agent.returncode}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log ends:\n{procs.log_tail('agent.log')}") from None
        return agent


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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--name", default="mosto")
    args = parser.parse_args()
    if args.action == "up":
        topo = up(args.name)
        print(
            f"namespaces {topo.client.name}, {topo.proxy.name}, {topo.server.name}; "
            f"proxy interfaces pc, ps"
        )
    else:
        down(args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
