"""The fixture corpus through BPF_PROG_TEST_RUN, on the XDP and the tc object.

Katran-style: each record is an input frame, the entries, the expected
verdict and the exact expected bytes; the corpus is mosto.testing.corpus (the
reference model is checked against it in control/tests/unit/test_model_corpus.py).
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import TCP

from mosto.dataplane.counters import COUNTERS
from mosto.dataplane.entry import parse_entry
from mosto.testing.corpus import CASES, Case, install_docs
from mosto.testing.pktdiff import explain_mismatch


def expected_verdict(case: Case, verdicts: dict[str, int]) -> int:
    if case.verdict == "forward":
        return verdicts["tx"] if case.hairpin else verdicts["redirect"]
    return verdicts[case.verdict]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fixture(clean_xdp, ports, hook, verdicts, case: Case):
    frame = bytes(case.packet)
    entries = [parse_entry(d) for d in install_docs(case, ports)]
    ids = [clean_xdp.add(e) for e in entries]
    events = []
    with clean_xdp.events(events.append) as ring:
        for prior in case.prior:
            verdict, _, _ = clean_xdp.test_run(
                bytes(prior), ingress_ifindex=ports[case.ingress_port], hook=hook
            )
            assert verdict == expected_verdict(case, verdicts), f"{case.description}: prior"
        verdict, out, _ = clean_xdp.test_run(
            frame, ingress_ifindex=ports[case.ingress_port], hook=hook
        )
        ring.poll(0)

    assert verdict == expected_verdict(case, verdicts), f"{case.description}: verdict {verdict}"
    want = bytes(case.expected) if case.verdict == "forward" else frame
    if case.verdict != "drop":
        assert out == want, explain_mismatch(want, out)

    counters = clean_xdp.counters()
    runs = len(case.frames)
    assert counters == {
        name: runs * (name == case.target_counter)
        + (name == "event_out_of_window" and case.event_refused)
        for name in COUNTERS
    }
    stats = clean_xdp.stats_by_id(ids[0])
    mine = case.entry_frames
    sizes = sum(len(bytes(f)) for f in mine)
    assert (stats.packets, stats.bytes) == ((len(mine), sizes) if case.hit else (0, 0))
    assert stats.tsval == case.learned_tsval
    # BPF_PROG_TEST_RUN runs on this CPU: one record
    learned = case.learned()
    assert [(r.tsval, r.seq, r.ack) for r in stats.learned] == ([learned] if learned else [])
    assert len(events) == int(case.event)
    if case.event:
        assert events[0].key == entries[0].match
        assert events[0].entry_id == ids[0]
        assert events[0].tcp_flags == case.packet[TCP].flags.value
