"""Fixtures for running the splice program through the kernel, on both hooks:
one target, whose XDP and tc objects share the maps."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from mosto.targets.xdp.target import HOOKS, XdpTarget

# What BPF_PROG_TEST_RUN returns for each outcome: XDP's actions, tc's
# TC_ACT_* (UNSPEC = -1 as a u32; tc forwards both ways by bpf_redirect).
VERDICTS = {
    "xdp": {"pass": 2, "drop": 1, "tx": 3, "redirect": 4},
    "tc": {"pass": 0xFFFFFFFF, "drop": 2, "tx": 7, "redirect": 7},
}


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


# BPF_PROG_TEST_RUN builds no skb for an IPv4 or IPv6 frame shorter than its
# untagged IP header (the kernel answers EINVAL); on a real link tc sees them.
_SKB_MIN_LEN = {b"\x08\x00": 14 + 20, b"\x86\xdd": 14 + 40}


def skb_test_run_refuses(frame: bytes) -> bool:
    return len(frame) < _SKB_MIN_LEN.get(frame[12:14], 0)


@pytest.fixture
def runnable(hook: str):
    """frame -> whether BPF_PROG_TEST_RUN runs the hook's program on it."""
    return lambda frame: hook != "tc" or not skb_test_run_refuses(frame)


@pytest.fixture(scope="session")
def ports() -> Iterator[dict[int, int]]:
    """Logical ports 0 and 1 as ifindexes usable as ingress and redirect target."""
    with veth_pair() as (ia, ib):
        yield {0: ia, 1: ib}


@pytest.fixture(scope="session")
def xdp() -> Iterator[XdpTarget]:
    """The splice program, both hooks, with private (unpinned) maps."""
    target = XdpTarget(pin_dir=None)
    for hook in HOOKS:
        target.hook_prog_fd(hook)  # loads the tc object onto the same maps
    yield target
    target.close()


@pytest.fixture(params=HOOKS)
def hook(request) -> str:
    return request.param


@pytest.fixture
def verdicts(hook: str) -> dict[str, int]:
    return VERDICTS[hook]


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
