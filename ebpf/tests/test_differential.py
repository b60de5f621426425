"""Differential test: the XDP and the tc program against the reference model, on random
frames and entries (random deltas with wrap-around, option mixes, odd payload
lengths, IPv4/IPv6, up to three VLAN tags, fragments, IPv6 extension headers,
entries tied to an ingress port, malformed options, truncated headers).

Every example must give the same verdict, the same counter and the same bytes,
and every checksum in a translated frame must verify.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace

from hypothesis import HealthCheck, given, settings

from mosto.dataplane.contract import TCP_FIN, TCP_RST
from mosto.dataplane.model import Verdict, splice
from mosto.testing.frames import scenario
from mosto.testing.pktdiff import checksums_verify, explain_mismatch

EXAMPLES = int(os.environ.get("MOSTO_DIFF_EXAMPLES", "10000"))


def test_differential(clean_xdp, ports, hook, verdicts, runnable):
    examples = 0
    refused = 0
    outcomes: Counter[str] = Counter()
    checked: Counter[str] = Counter()  # FIN/RST of tracked entries: reported, kept back
    events: list = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scenario())
    def check(sc):
        nonlocal examples, refused
        frame, entry, intact = sc
        examples += 1
        if not runnable(frame):
            refused += 1
            return
        # The model routes by logical port; XDP by ifindex.
        xdp_entry = (
            entry
            if entry.learn
            else replace(
                entry,
                egress=ports[entry.egress],
                ingress=None if entry.ingress is None else ports[entry.ingress],
            )
        )
        entry_id = clean_xdp.add(xdp_entry)
        clean_xdp.reset_counters()
        events.clear()
        try:
            verdict, out, _ = clean_xdp.test_run(frame, ingress_ifindex=ports[0], hook=hook)
            learned = clean_xdp.stats_by_id(entry_id).learned
            ring.poll(0)
        finally:
            clean_xdp.delete(entry.match)
        want = splice(frame, {entry.match: entry})
        outcomes[want.counter] += 1
        if entry.track is not None and want.event_flags:
            checked["reported"] += 1
        if want.event_refused:
            checked["kept back"] += 1
        counters = {k: v for k, v in clean_xdp.counters().items() if v}

        if want.verdict is Verdict.FORWARD:
            xdp_want = verdicts["tx"] if entry.egress == 0 else verdicts["redirect"]
            counter_want = "hit_tx" if entry.egress == 0 else "hit_redirect"
        else:
            xdp_want = verdicts["pass"] if want.verdict is Verdict.PASS else verdicts["drop"]
            counter_want = want.counter
        assert verdict == xdp_want, f"verdict {verdict}, model {want.verdict}\n{frame.hex()}"
        kept_back = {"event_out_of_window": 1} if want.event_refused else {}
        assert counters == {counter_want: 1, **kept_back}
        if want.verdict is not Verdict.DROP:
            assert out == want.frame, explain_mismatch(want.frame, out)
        assert learned == ((want.learned,) if want.learned else ())
        assert [ev.tcp_flags & (TCP_FIN | TCP_RST) for ev in events] == (
            [want.event_flags] if want.event_flags else []
        )
        if want.verdict is Verdict.FORWARD and intact:
            assert checksums_verify(out), f"bad checksum in output {out.hex()}"

    with clean_xdp.events(events.append) as ring:
        check()
    print(
        f"\ndifferential: {examples} random frames and entries, {hook} == model: "
        + ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
        + f"; tracked FIN/RST {dict(checked)}"
        + (
            f"; {refused} frames cut inside the IP header not run (no skb for them)"
            if refused
            else ""
        )
    )
    assert refused < examples // 10, "too few frames reached the tc program"
    assert examples >= min(EXAMPLES, 10000)
    # The generator must reach every kind of outcome, or the test proves little.
    for counter in (
        "hit",
        "pass_miss",
        "pass_learn",
        "drop_bad_tcp",
        "pass_truncated",
        "pass_not_tcp",
        "pass_fragment",
        "drop_wrong_ingress",
        "drop_fragment",
        "drop_ipv6_ext",
        "drop_deep_headers",
    ):
        assert outcomes[counter] > 0, f"no example reached {counter}"
    for what in ("reported", "kept back"):
        assert checked[what] > 0, f"no tracked FIN/RST was {what}"
