"""The tc program on skbs whose headers are not in the linear part.

BPF_PROG_TEST_RUN builds linear skbs only, and a local sender's GSO frame keeps
its headers linear, so neither makes the program pull. A tap device opened with
IFF_NAPI_FRAGS does: the kernel builds each frame written to it in page
fragments (one per iovec after the first, which is the linear part: empty
here), and with GRO off on the tap only the Ethernet header is moved into the
linear part before tc ingress. The program on the tap's ingress must pull the
IP and TCP headers (options included), translate, and send the frame back out
of the tap (egress = ingress: bpf_redirect to it), where the test reads it:
its bytes are the corpus's, as in test_fixtures.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import struct
import time
from collections.abc import Iterator

import pytest
from pyroute2.netns import popns, pushns

from mosto.dataplane.entry import parse_entry
from mosto.targets.xdp.target import XdpTarget
from mosto.testing.corpus import CASES, Case, by_name, install_docs
from mosto.testing.pktdiff import explain_mismatch
from netns import namespace

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_NAPI, IFF_NAPI_FRAGS = 0x0002, 0x1000, 0x0010, 0x0020
TAP = "mfrag0"
READ_TIMEOUT_S = 2.0
# Forwarded cases whose frame has no VLAN tag in the data (the kernel would take
# it into metadata on the way in).
FORWARDED = [
    c
    for c in CASES
    if c.verdict == "forward" and bytes(c.packet)[12:14] not in (b"\x81\x00", b"\x88\xa8")
]


@pytest.fixture(scope="module")
def tap() -> Iterator[tuple[int, XdpTarget, str]]:
    """A frags-building tap in a namespace of its own, the tc program on its
    ingress (private maps): (the tap's fd, the target, the namespace)."""
    with namespace("mtc-frag") as ns:
        ns.quiet()  # nothing of the kernel's own comes out of the tap
        pushns(ns.name)
        try:
            try:
                fd = os.open("/dev/net/tun", os.O_RDWR)
            except FileNotFoundError:
                pytest.skip("no /dev/net/tun: cannot make a tap")
            ifr = struct.pack("16sH", TAP.encode(), IFF_TAP | IFF_NO_PI | IFF_NAPI | IFF_NAPI_FRAGS)
            try:
                fcntl.ioctl(fd, TUNSETIFF, ifr)
            except OSError as exc:
                os.close(fd)
                pytest.skip(f"the kernel makes no IFF_NAPI_FRAGS tap: {exc}")
            ns.sh("ethtool", "-K", TAP, "gro", "off")  # GRO would pull the headers itself
            ns.sh("ip", "link", "set", TAP, "up")
            target = XdpTarget(pin_dir=None, hook="tc")
            target.attach(TAP, hook="tc")
        finally:
            popns()
        try:
            yield fd, target, ns.name
        finally:
            target.close()
            os.close(fd)


def read_frame(fd: int) -> bytes | None:
    ready, _, _ = select.select([fd], [], [], READ_TIMEOUT_S)
    return os.read(fd, 65536) if ready else None


@contextlib.contextmanager
def installed(target: XdpTarget, ns: str, case: Case) -> Iterator[None]:
    pushns(ns)
    try:
        entries = [parse_entry(d) for d in install_docs(case, {0: TAP, 1: TAP})]
        for e in entries:
            target.add(e)
    finally:
        popns()
    try:
        yield
    finally:
        for e in entries:
            target.delete(e.match)


@pytest.mark.parametrize("case", FORWARDED, ids=lambda c: c.name)
def test_headers_in_fragments_are_pulled_and_translated(tap, case: Case):
    fd, target, ns = tap
    frame = bytes(case.packet)
    before = target.counters()
    with installed(target, ns, case):
        for prior in case.prior:  # whole: they only build the entries' state
            os.write(fd, bytes(prior))
            assert read_frame(fd) is not None, "a prior frame did not come out"
        # An empty linear part, then the frame in two fragments, cut inside
        # the TCP header: after the Ethernet header nothing is linear.
        cut = min(len(frame) - 1, 14 + 20 + 10)
        os.writev(fd, [b"", frame[:cut], frame[cut:]])
        out = read_frame(fd)
    after = target.counters()
    moved = {k: after[k] - before[k] for k in after if after[k] != before[k]}

    assert moved.get("pass_truncated", 0) == 0, moved
    assert out is not None, f"nothing came out of the tap: counters moved {moved}"
    want = bytes(case.expected)
    assert out == want, explain_mismatch(want, out)
    want_moved = {"hit_tx": len(case.frames)}  # both logical ports are the tap
    if case.event_refused:
        want_moved["event_out_of_window"] = 1
    assert moved == want_moved, moved


def test_a_first_fragment_cut_short_in_the_linear_part_is_pulled_before_it_counts_as_tiny(tap):
    """A first fragment whose TCP header is in page fragments looks like RFC
    1858's tiny fragment until it is pulled: only a fragment that is tiny once
    pulled is dropped as one; this one, of no spliced flow, passes."""
    fd, target, ns = tap
    case = by_name("miss-first-fragment")
    frame = bytes(case.packet)
    before = target.counters()
    with installed(target, ns, case):
        # Linear up to ten bytes into the TCP header, the rest in a fragment.
        os.writev(fd, [frame[: 14 + 20 + 10], frame[14 + 20 + 10 :]])
        deadline = time.monotonic() + READ_TIMEOUT_S
        while target.counters() == before and time.monotonic() < deadline:
            time.sleep(0.01)
    after = target.counters()
    moved = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert moved == {"pass_miss": 1}, moved
