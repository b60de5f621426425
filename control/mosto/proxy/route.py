"""Which proxies a flow goes through: the lookup proxy's part (paper III-A, III-B).

The ingress proxy knows its own location in the chain table (`mosto chains
precompute`), where every other location's proxy listens, and the location
of each destination (a site: the table node whose RTTs were measured to that
server). For a flow it looks up the cheapest chain from itself to the
destination's site for the expected transfer size; the proxies on that chain
after itself are the hops the flow takes, and the chain header
(ppv2.py) carries them along.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mosto.chains.lookup import rounds_for_size
from mosto.chains.table import ChainTable
from mosto.proxy.ppv2 import Hop

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Route:
    path: tuple[str, ...]  # table locations, this proxy first, the destination's site last
    hops: tuple[Hop, ...]  # the proxies after this one, in order (empty: go straight there)
    rounds: int


class ChainRoutes:
    """location: this proxy's node in table; peers: each other proxy's
    listening addresses (one per family); sites: destination networks and
    their table node; expect_bytes: the transfer size lookups assume."""

    def __init__(
        self,
        table: ChainTable,
        location: str,
        peers: Mapping[str, Sequence[Hop]],
        sites: Sequence[tuple[Network, str]],
        expect_bytes: int,
    ):
        known = set(table.names)
        for name in (location, *peers, *(site for _, site in sites)):
            if name not in known:
                raise ValueError(f"location {name!r} is not in the chain table")
        if location in peers:
            raise ValueError(f"location {location!r} is this proxy's own: not a peer")
        # A chain passes only proxies: every other node must be one, or a site
        # (which a chain can only end at).
        loose = known - {location, *peers, *(site for _, site in sites)}
        if loose:
            raise ValueError(f"no --peer or --site for table locations {', '.join(sorted(loose))}")
        self.table = table
        self.location = location
        self.peers = {name: tuple(hops) for name, hops in peers.items()}
        # most specific network first
        self.sites = sorted(sites, key=lambda s: s[0].prefixlen, reverse=True)
        self.rounds = rounds_for_size(expect_bytes)

    def site_of(self, destination: Hop) -> str | None:
        for net, name in self.sites:
            if net.version == destination.addr.version and destination.addr in net:
                return name
        return None

    def route(self, destination: Hop) -> Route | None:
        """The chain toward destination; None if no site covers it (the flow
        then goes straight to it)."""
        site = self.site_of(destination)
        if site is None:
            return None
        chain = self.table.lookup(self.location, site, self.rounds)
        hops = []
        for name in chain.path[1:]:
            if name in self.peers:
                hops.append(self._address(name, destination.addr.version))
            elif name != site:
                raise ValueError(f"chain {' -> '.join(chain.path)} passes {name!r}, no proxy")
        return Route(chain.path, tuple(hops), self.rounds)

    def _address(self, name: str, version: int) -> Hop:
        """The peer's address of the destination's family, else its first."""
        hops = self.peers[name]
        return next((h for h in hops if h.addr.version == version), hops[0])
