"""Network namespaces and veth pairs for tests, benchmarks and the demo.

Everything created here is removed on exit, also when the body raises.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyroute2 import IPRoute, NetNS, netns


def in_ns(ns: str | None, cmd: list[str]) -> list[str]:
    """cmd run inside netns ns. nsenter, not `ip netns exec`: the latter gives
    the command a mount namespace of its own, hiding the host's bpffs pins."""
    return ["nsenter", f"--net=/run/netns/{ns}", *cmd] if ns else list(cmd)


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Runs a command (inside netns ns if given); output captured."""
    return subprocess.run(in_ns(ns, list(cmd)), check=check, capture_output=True, text=True)


@dataclass
class Namespace:
    name: str
    links: list[str] = field(default_factory=list)

    def ipr(self) -> NetNS:
        return NetNS(self.name)

    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(*cmd, ns=self.name, check=check)

    def popen(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(in_ns(self.name, cmd), **kwargs)

    def listening(self, port: int) -> bool:
        """Something listens on TCP port here."""
        return bool(self.sh("ss", "-Hltn", f"sport = :{port}", check=False).stdout.strip())

    def quiet(self) -> None:
        """No IPv6 autoconfiguration chatter (router/neighbour solicitations, MLD)."""
        self.sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        self.sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")


def create(name: str) -> Namespace:
    netns.create(name)
    ns = Namespace(name)
    with ns.ipr() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    return ns


def remove(name: str) -> None:
    if name in netns.listnetns():
        netns.remove(name)


@contextlib.contextmanager
def namespace(prefix: str = "mosto") -> Iterator[Namespace]:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    ns = create(name)
    try:
        yield ns
    finally:
        remove(name)


def veth(
    a: Namespace | None,
    a_name: str,
    b: Namespace | None,
    b_name: str,
    a_mac: str | None = None,
    b_mac: str | None = None,
) -> None:
    """A veth pair a_name (in a) <-> b_name (in b); None is the current namespace. Up.
    Made under unique names and renamed where it lands: topologies built at the
    same time all name their ends c0, pc, ..., and would collide on the way."""
    tmp = f"v{uuid.uuid4().hex[:8]}"
    ends = ((a, a_name, a_mac, f"{tmp}a"), (b, b_name, b_mac, f"{tmp}b"))
    with IPRoute() as ipr:
        ipr.link("add", ifname=f"{tmp}a", kind="veth", peer=f"{tmp}b")
        for ns, _, _, made in ends:
            if ns is not None:
                ipr.link("set", index=ipr.link_lookup(ifname=made)[0], net_ns_fd=ns.name)
    for ns, name, mac, made in ends:
        ctx = ns.ipr() if ns is not None else IPRoute()
        with ctx as ipr:
            idx = ipr.link_lookup(ifname=made)[0]
            ipr.link("set", index=idx, ifname=name)
            if mac:
                ipr.link("set", index=idx, address=mac)
            ipr.link("set", index=idx, state="up")
        if ns is not None:
            ns.links.append(name)
