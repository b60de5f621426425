"""The reference model against the fixture corpus, and the checksum oracle the
kernel tests rely on: pure Python, no root."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from mosto.dataplane.entry import parse_entry
from mosto.dataplane.learning import advance
from mosto.dataplane.model import Verdict, splice
from mosto.testing.corpus import CASES, Case, install_docs
from mosto.testing.pktdiff import checksums_verify, explain_mismatch


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_model_fixture(case: Case):
    frame = bytes(case.packet)
    ports = {0: 1, 1: 2}
    entries = [parse_entry(d) for d in install_docs(case, ports)]
    table = {e.match: e for e in entries}
    ingress = ports[case.ingress_port]
    record, state = None, {}
    for prior in case.prior:
        seen = splice(bytes(prior), table, ingress=ingress, state=state)
        assert not seen.event_flags and not seen.event_refused
        assert (seen.verdict, seen.counter) == (Verdict(case.verdict), case.counter)
        if seen.learned is not None:
            record = advance(record, seen.learned)
    outcome = splice(frame, table, ingress=ingress, state=state)
    assert outcome.verdict == Verdict(case.verdict)
    assert outcome.counter == case.counter
    assert (outcome.entry is not None) == case.hit
    assert bool(outcome.event_flags) == case.event
    assert outcome.event_refused == case.event_refused
    if not case.prior:
        assert outcome.learned_tsval == case.learned_tsval
    if outcome.learned is not None:
        record = advance(record, outcome.learned)
    want = case.learned()
    assert ((record.tsval, record.seq, record.ack) if record else None) == want
    if case.verdict == "forward":
        want = bytes(case.expected)
        assert outcome.frame == want, explain_mismatch(want, outcome.frame)
        assert outcome.entry.egress == {0: 1, 1: 2}[case.egress_port]


def test_checksum_verifier_detects_corruption():
    """The oracle above must be able to fail."""
    good = bytes(Ether() / IP(src="1.2.3.4", dst="5.6.7.8") / TCP() / Raw(b"abc"))
    assert checksums_verify(good)
    bad = bytearray(good)
    bad[-1] ^= 1
    assert not checksums_verify(bytes(bad))
    (ip_sum,) = struct.unpack_from("!H", good, 24)
    assert ip_sum != 0
