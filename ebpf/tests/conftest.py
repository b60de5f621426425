"""Fixtures for running the XDP program through the kernel."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from mosto.targets.xdp.target import XdpTarget


@contextlib.contextmanager
def veth_pair() -> Iterator[tuple[int, int]]:
    """A veth pair in the current namespace, removed afterwards: (ifindex, peer ifindex)."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"mfx{tag}a", f"mfx{tag}b"
    with IPRoute() as ipr:
        ipr.link("add", ifname=a, kind="veth", peer=b)
        try:
            ia = ipr.link_lookup(ifname=a)[0]
            ib = ipr.link_lookup(ifname=b)[0]
            for idx in (ia, ib):
                ipr.link("set", index=idx, state="up")
            yield ia, ib
        finally:
            ipr.link("del", index=ia)


@pytest.fixture(scope="session")
def ports() -> Iterator[dict[int, int]]:
    """Logical ports 0 and 1 as ifindexes usable as ingress and redirect target."""
    with veth_pair() as (ia, ib):
        yield {0: ia, 1: ib}


@pytest.fixture(scope="session")
def xdp() -> Iterator[XdpTarget]:
    """The splice program with private (unpinned) maps."""
    target = XdpTarget(pin_dir=None)
    yield target
    target.close()


def _drain_events(xdp: XdpTarget) -> None:
    with xdp.events(lambda ev: None) as ring:
        ring.poll(0)


@pytest.fixture
def clean_xdp(xdp: XdpTarget) -> Iterator[XdpTarget]:
    """The shared target with no entries, no pending events and zeroed counters,
    and so again afterwards."""
    _drain_events(xdp)
    xdp.reset_counters()
    yield xdp
    for _, e in xdp.entries():
        xdp.delete(e.match)
    _drain_events(xdp)
    xdp.reset_counters()
