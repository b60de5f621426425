"""The entry schema: good documents round-trip, bad ones say what is wrong."""

from __future__ import annotations

import json

import pytest

from mosto.dataplane.entry import EntryError, load_entries, parse_entry

GOOD = {
    "match": {"src": "10.0.0.1", "dst": "10.0.1.2", "sport": 40000, "dport": 80},
    "seq_delta": -1,
    "ack_delta": 4294967295,
    "timestamps": {"tsval_delta": 5, "tsecr_delta": -5},
    "wscale_shift": -3,
    "rewrite": {"src": "10.0.0.10", "dst": "10.0.1.2", "sport": 50000, "dport": 80},
    "smac": "02:00:00:00:00:AA",
    "dmac": "02:00:00:00:00:bb",
    "egress": "eth1",
}


def test_good_entry_round_trips():
    e = parse_entry(GOOD)
    assert e.seq_delta == e.ack_delta == 2**32 - 1
    assert e.tsecr_delta == 2**32 - 5
    assert e.smac == "02:00:00:00:00:aa"
    assert parse_entry(json.loads(json.dumps(e.to_json()))) == e


def test_list_and_single_documents():
    assert len(load_entries(json.dumps(GOOD))) == 1
    assert len(load_entries(json.dumps([GOOD, GOOD]))) == 2


def _with(**changes):
    doc = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_with(match=None), "missing 'match'"),
        (_with(seq_delta=2**32), "outside"),
        (_with(seq_delta="5"), "expected an integer"),
        (_with(wscale_shift=15), "outside -14..14"),
        (_with(smac="02:00:00"), "MAC address"),
        (_with(egress=-1), "outside 0..4294967295"),
        (_with(egress=""), "interface name or a port number"),
        (_with(egress=True), "interface name or a port number"),
        (
            _with(match={"src": "10.0.0.1", "dst": "fd00::1", "sport": 1, "dport": 2}),
            "different address families",
        ),
        (
            _with(match={"src": "10.0.0.999", "dst": "10.0.0.1", "sport": 1, "dport": 2}),
            "does not appear to be an IPv4 or IPv6 address",
        ),
        (
            _with(match={"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 0, "dport": 2}),
            "sport: 0 is outside 1..65535",
        ),
        (
            _with(rewrite={"src": "fd00::1", "dst": "fd00::2", "sport": 1, "dport": 2}),
            "IPv4/IPv6 translation is not supported",
        ),
        (_with(timestamps={"tsval_delta": 1}), "tsval_delta, tsecr_delta"),
        (_with(color="red"), "unknown field(s) color"),
    ],
)
def test_bad_entries_are_refused_with_a_reason(doc, message):
    with pytest.raises(EntryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_entry(doc)


def test_load_entries_refuses_non_json_and_empty_lists():
    with pytest.raises(EntryError, match="not JSON"):
        load_entries("{")
    with pytest.raises(EntryError, match="no entries"):
        load_entries("[]")


def test_the_two_directions_of_a_tracked_splice_link_and_nothing_else_does():
    track = {"snd_nxt": 1, "ack": 2}
    mac = "02:00:00:00:00:01"
    base = {"seq_delta": 0, "ack_delta": 0, "smac": mac, "dmac": mac, "egress": "eth0"}

    def e(src, sport, dst, dport, tracked=True, **extra):
        match = {"src": src, "dst": dst, "sport": sport, "dport": dport}
        return parse_entry(
            {**base, "match": match, **({"track": track} if tracked else {}), **extra}
        )

    nat = {"rewrite": {"src": "10.0.0.10", "dst": "10.0.1.2", "sport": 50000, "dport": 80}}
    to_server = e("10.0.0.1", 40000, "10.0.0.10", 8080, **nat)
    back = {"rewrite": {"src": "10.0.0.10", "dst": "10.0.0.1", "sport": 8080, "dport": 40000}}
    to_client = e("10.0.1.2", 80, "10.0.0.10", 50000, **back)
    assert to_server.links_with(to_client) and to_client.links_with(to_server)
    assert not to_server.links_with(e("10.0.1.2", 80, "10.0.0.10", 50000, tracked=False, **back))
    assert not to_server.links_with(e("10.0.1.2", 80, "10.0.0.10", 50000))  # leaves elsewhere
    selfish = e("10.0.0.3", 7, "10.0.0.3", 7)
    assert selfish.peer_match == selfish.match and not selfish.links_with(selfish)
