"""Where the host sends a packet to an address: interface, our MAC, next hop's MAC."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from pyroute2 import IPRoute

from mosto.agent.kernel.tcpstate import Address

# NUD states with a usable link-layer address (linux/neighbour.h)
_NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x80  # REACHABLE STALE DELAY PROBE PERMANENT


class NoRoute(Exception):
    pass


@dataclass(frozen=True)
class NextHop:
    ifname: str
    ifindex: int
    smac: str
    dmac: str


CACHE_TTL_S = 1.0  # routes and neighbours rarely change; a lookup costs ~1 ms
_cache: dict[Address, tuple[float, NextHop]] = {}
_cache_lock = threading.Lock()


def next_hop(dst: Address) -> NextHop:
    """The route and neighbour entry the proxy's own traffic to dst uses
    (looked up again once the cached answer is a second old)."""
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(dst)
    if hit and now - hit[0] < CACHE_TTL_S:
        return hit[1]
    hop = _lookup(dst)
    with _cache_lock:
        _cache[dst] = (now, hop)
    return hop


def _lookup(dst: Address) -> NextHop:
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=str(dst))
        except Exception as exc:  # pyroute2 raises NetlinkError with the errno text
            raise NoRoute(f"no route to {dst}: {exc}") from None
        route = routes[0]
        oif = route.get_attr("RTA_OIF")
        via = route.get_attr("RTA_GATEWAY") or str(dst)
        link = ipr.get_links(oif)[0]
        ifname, smac = link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_ADDRESS")
        for neigh in ipr.get_neighbours(ifindex=oif, dst=via):
            lladdr = neigh.get_attr("NDA_LLADDR")
            if lladdr and neigh["state"] & _NUD_USABLE:
                return NextHop(ifname, oif, smac, lladdr)
    raise NoRoute(f"no neighbour entry for {via} on {ifname}")
