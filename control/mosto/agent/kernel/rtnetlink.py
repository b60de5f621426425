"""Route, link and neighbour lookups (rtnetlink, one request each), in the
calling thread's network namespace: what netinfo caches and trust asks."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

from mosto.agent.kernel import netlink
from mosto.agent.kernel.tcpstate import Address

NETLINK_ROUTE = 0
RTM_GETLINK, RTM_GETROUTE, RTM_GETNEIGH = 18, 26, 30
RTMSG = struct.Struct("=BBBBBBBBI")  # struct rtmsg
IFINFOMSG = struct.Struct("=BxHiII")  # struct ifinfomsg
NDMSG = struct.Struct("=BxxxiHBB")  # struct ndmsg
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
IFLA_ADDRESS, IFLA_IFNAME = 1, 3
NDA_DST, NDA_LLADDR = 1, 2
RTN_LOCAL = 2


@dataclass(frozen=True)
class Route:
    kind: int  # rtm_type: RTN_LOCAL for the host's own addresses
    oif: int
    gateway: Address | None


def _family(addr: Address) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def _plain(addr: Address) -> Address:
    """An IPv4-mapped IPv6 address is IPv4 on the wire."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def route(dst: Address) -> Route:
    """Where the kernel sends a packet to dst (`ip route get`)."""
    dst = _plain(dst)
    body = RTMSG.pack(_family(dst), dst.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
    _, payload = netlink.request(
        NETLINK_ROUTE, RTM_GETROUTE, body + netlink.attribute(RTA_DST, dst.packed), f"route {dst}"
    )
    rtype = RTMSG.unpack_from(payload)[7]
    attrs = netlink.attributes(payload, RTMSG.size)
    oif = struct.unpack("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
    gw = attrs.get(RTA_GATEWAY)
    return Route(rtype, oif, _plain(ipaddress.ip_address(gw)) if gw else None)


def link(ifindex: int) -> tuple[str, str]:
    """An interface's name and MAC address (`ip link show`)."""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0)
    _, payload = netlink.request(NETLINK_ROUTE, RTM_GETLINK, body, f"link {ifindex}")
    attrs = netlink.attributes(payload, IFINFOMSG.size)
    name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
    return name, _mac(attrs.get(IFLA_ADDRESS, b""))


def neighbour(ifindex: int, addr: Address) -> tuple[int, str] | None:
    """The NUD state and link-layer address of addr's entry on ifindex, or None
    if there is none (`ip neigh get`)."""
    addr = _plain(addr)
    body = NDMSG.pack(_family(addr), ifindex, 0, 0, 0) + netlink.attribute(NDA_DST, addr.packed)
    try:
        _, payload = netlink.request(NETLINK_ROUTE, RTM_GETNEIGH, body, f"neighbour {addr}")
    except netlink.NetlinkError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    state = NDMSG.unpack_from(payload)[2]
    lladdr = netlink.attributes(payload, NDMSG.size).get(NDA_LLADDR, b"")
    return state, _mac(lladdr)


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)
