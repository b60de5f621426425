"""Where the host sends a packet to an address: interface, our MAC, next hop's MAC.

A lookup is three rtnetlink requests (route, link, neighbour: rtnetlink.py),
about 65 us of CPU. Answers are used for CACHE_TTL_S at most, and the agent's reaper
calls refresh() twice a second, which looks again at the answers of the
addresses hand-overs asked for in the last KEEP_FRESH_S (the REFRESH_MAX most
recent) once they are half that old: a hand-over seldom waits for netlink.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from mosto.agent.kernel import rtnetlink
from mosto.agent.kernel.netlink import NetlinkError
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


# Routes and neighbours rarely change, and a splice keeps the next hop it was
# made with anyway: a change reaches new splices within CACHE_TTL_S.
CACHE_TTL_S = 5.0
KEEP_FRESH_S = 10.0  # refresh() keeps the answers of addresses asked for this recently
REFRESH_MAX = 64  # answers refresh() looks up again per call (65 us each)
_cache: dict[tuple[int, Address], tuple[float, NextHop]] = {}  # (netns, dst) -> (when, hop)
_used: dict[tuple[int, Address], float] = {}  # when a hand-over last asked
_cache_lock = threading.Lock()
_thread = threading.local()  # the thread's netns


def netns() -> int:
    """The calling thread's network namespace (setns is per thread), read once
    per thread (a stat of /proc costs 8 us, twice a hand-over): a thread enters
    a namespace, if at all, before its first lookup, and stays there."""
    try:
        return int(_thread.netns)
    except AttributeError:
        _thread.netns = os.stat("/proc/thread-self/ns/net").st_ino
        return int(_thread.netns)


def next_hop(dst: Address) -> NextHop:
    """The route and neighbour entry the proxy's own traffic to dst uses
    (looked up again once the cached answer is CACHE_TTL_S old)."""
    now = time.monotonic()
    key = (netns(), dst)
    with _cache_lock:
        hit = _cache.get(key)
        _used[key] = now
    if hit and now - hit[0] < CACHE_TTL_S:
        return hit[1]
    hop = _lookup(dst)
    with _cache_lock:
        _cache[key] = (now, hop)
    return hop


def refresh() -> None:
    """Looks again at the answers half CACHE_TTL_S old or more (in the caller's
    namespace) of the REFRESH_MAX addresses asked for most recently within
    KEEP_FRESH_S; forgets the answers not asked for in that long."""
    now = time.monotonic()
    ns = netns()
    with _cache_lock:
        for key in [k for k, used in _used.items() if now - used > KEEP_FRESH_S]:
            del _used[key]
            _cache.pop(key, None)
        due = sorted(
            (k for k, (at, _) in _cache.items() if k[0] == ns and now - at >= CACHE_TTL_S / 2),
            key=lambda k: -_used.get(k, 0.0),
        )[:REFRESH_MAX]
    for key in due:
        try:
            hop = _lookup(key[1])
        except NoRoute:
            with _cache_lock:
                _cache.pop(key, None)  # the next hand-over finds out for itself
            continue
        except OSError:  # no lookup (out of descriptors): the answer stands until its TTL
            continue
        with _cache_lock:
            if key in _used:
                _cache[key] = (now, hop)


def _lookup(dst: Address) -> NextHop:
    """In the calling thread's namespace (the one its key names)."""
    try:
        route = rtnetlink.route(dst)
        via = route.gateway or dst
        ifname, smac = rtnetlink.link(route.oif)
        neigh = rtnetlink.neighbour(route.oif, via)
    except NetlinkError as exc:  # the kernel's answer: no route (or the interface went)
        raise NoRoute(f"no route to {dst}: {os.strerror(exc.errno)}") from None
    if neigh is None or not neigh[1] or not neigh[0] & _NUD_USABLE:
        raise NoRoute(f"no neighbour entry for {via} on {ifname}")
    return NextHop(ifname, route.oif, smac, neigh[1])
