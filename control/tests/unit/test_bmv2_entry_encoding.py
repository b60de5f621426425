"""Entry <-> P4Runtime encoding of the BMv2 target, without a switch or p4c.

The P4Info is written out here by hand, as p4c makes it for p4src/; when a
compiled one is at hand (build/bmv2/, `make bmv2-test`), it is checked against
that too."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

p4info_pb2 = pytest.importorskip("p4.config.v1.p4info_pb2")
from google.protobuf import text_format  # noqa: E402
from p4.v1 import p4data_pb2  # noqa: E402

from mosto.dataplane.entry import EntryError, FlowKey, parse_entry  # noqa: E402
from mosto.targets.bmv2 import encoding as enc  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
COMPILED_P4INFO = REPO / "build" / "bmv2" / "mosto.p4info.txtpb"

KEY = [("family", 8), ("src_addr", 128), ("dst_addr", 128), ("src_port", 16), ("dst_port", 16)]
PARAMS = [
    ("seq_delta", 32),
    ("ack_delta", 32),
    ("timestamps", 1),
    ("tsval_delta", 32),
    ("tsecr_delta", 32),
    ("window_shl", 4),
    ("window_shr", 4),
    ("nat", 1),
    ("new_src_addr", 128),
    ("new_dst_addr", 128),
    ("new_src_port", 16),
    ("new_dst_port", 16),
    ("smac", 48),
    ("dmac", 48),
    ("egress_port", 9),
    ("any_ingress", 1),
    ("ingress_port", 9),
    ("id", 32),
    ("track_gen", 32),
    ("track_snd_nxt", 32),
    ("track_ack", 32),
    ("peer_id", 32),
    ("peer_gen", 32),
]


def _p4info():
    info = p4info_pb2.P4Info()
    t = info.tables.add()
    t.preamble.id, t.preamble.name = 101, enc.SPLICE_TABLE
    for i, (name, width) in enumerate(KEY, 1):
        t.match_fields.add(id=i, name=name, bitwidth=width)
    t = info.tables.add()
    t.preamble.id, t.preamble.name = 102, enc.TX_PORTS_TABLE
    t.match_fields.add(id=1, name="port", bitwidth=9)
    a = info.actions.add()
    a.preamble.id, a.preamble.name = 201, enc.SPLICE_ACTION
    for i, (name, width) in enumerate(PARAMS, 1):
        a.params.add(id=i, name=name, bitwidth=width)
    a = info.actions.add()
    a.preamble.id, a.preamble.name = 202, enc.LEARN_ACTION
    c = info.counters.add()
    c.preamble.id, c.preamble.name = 301, enc.COUNTER_ARRAY
    c = info.direct_counters.add()
    c.preamble.id, c.preamble.name = 302, enc.SPLICE_STATS
    d = info.digests.add()
    d.preamble.id, d.preamble.name = 401, enc.EVENT_DIGEST
    return info


NAMES = enc.P4Names(_p4info())

DOC = {
    "match": {"src": "10.0.0.1", "dst": "10.0.0.10", "sport": 40000, "dport": 8080},
    "seq_delta": 5000,
    "ack_delta": -100,
    "timestamps": {"tsval_delta": 1000000, "tsecr_delta": -7},
    "wscale_shift": -2,
    "rewrite": {"src": "10.0.0.10", "dst": "10.0.1.2", "sport": 50000, "dport": 80},
    "smac": "02:00:00:00:00:11",
    "dmac": "02:00:00:00:00:02",
    "egress": 1,
}


def test_canonical_bytestrings():
    assert enc.encode_uint(0, 8) == b"\x00"
    assert enc.encode_uint(0x1FF, 9) == b"\x01\xff"
    assert enc.encode_uint(0x0A000001, 128) == b"\x0a\x00\x00\x01"
    with pytest.raises(ValueError):
        enc.encode_uint(512, 9)


def test_ipv4_key_sits_in_the_low_bits():
    te = enc.match_key(NAMES, parse_entry(DOC).match)
    values = {fm.field_id: fm.exact.value for fm in te.match}
    assert te.table_id == 101
    assert values == {
        1: b"\x04",
        2: bytes([10, 0, 0, 1]),
        3: bytes([10, 0, 0, 10]),
        4: (40000).to_bytes(2, "big"),
        5: (8080).to_bytes(2, "big"),
    }


def test_action_parameters():
    p = enc.action_values(parse_entry(DOC))
    assert p["ack_delta"] == 2**32 - 100
    assert (p["timestamps"], p["tsecr_delta"]) == (1, 2**32 - 7)
    assert (p["window_shl"], p["window_shr"]) == (0, 2)
    assert (p["nat"], p["new_src_port"], p["new_dst_addr"]) == (1, 50000, 0x0A000102)
    assert p["smac"] == 0x020000000011
    assert p["egress_port"] == 1


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"timestamps": None, "rewrite": None, "wscale_shift": 0},
        {"wscale_shift": 14},
        {"ingress": 0},
        {"ingress": 7},
        {
            "match": {"src": "fd00::1", "dst": "fd00:1::2", "sport": 1, "dport": 65535},
            "rewrite": {"src": "fd00::10", "dst": "::a00:1", "sport": 2, "dport": 3},
        },
    ],
)
def test_entry_round_trips(changes):
    doc = {k: v for k, v in {**DOC, **changes}.items() if v is not None}
    entry = parse_entry(doc)
    entry_id, back = enc.decode_entry(NAMES, enc.table_entry(NAMES, entry, 77, 10**9))
    assert (entry_id, back) == (77, entry)


def test_track_state_and_link_round_trip():
    entry = parse_entry({**DOC, "track": {"snd_nxt": 2**32 - 1, "ack": 7}})
    link = enc.Link(gen=0xFFFFFFFF, peer_id=12, peer_gen=5)
    te = enc.table_entry(NAMES, entry, 77, 0, link)
    assert enc.decode_entry(NAMES, te) == (77, entry)
    assert enc.decode_link(NAMES, te) == link
    p = enc.action_values(entry, 77, link)
    assert (p["id"], p["track_snd_nxt"], p["track_ack"]) == (77, 2**32 - 1, 7)


def test_untracked_entry_has_no_generation_and_no_peer():
    """track_gen 0 makes the P4 program report every FIN/RST, whatever the link says."""
    entry = parse_entry(DOC)
    p = enc.action_values(entry, 3, enc.Link(gen=9, peer_id=4, peer_gen=8))
    assert (p["id"], p["track_gen"], p["peer_id"], p["peer_gen"]) == (3, 0, enc.NO_PEER, 0)
    te = enc.table_entry(NAMES, entry, 3)
    assert enc.decode_entry(NAMES, te) == (3, entry)
    assert enc.decode_entry(NAMES, te)[1].track is None
    assert enc.decode_link(NAMES, te) == enc.NO_LINK


def test_learning_entry_round_trips():
    entry = parse_entry({"match": DOC["match"], "learn": True})
    te = enc.table_entry(NAMES, entry, 3)
    assert te.action.action.action_id == 202 and not te.action.action.params
    assert enc.decode_entry(NAMES, te) == (3, entry)


def _digest(*members):
    data = p4data_pb2.P4Data()
    for value, width in members:
        data.struct.members.add().bitstring = enc.encode_uint(value, width)
    return data


def test_digest_decoding():
    fin = enc.decode_digest(
        _digest(
            (4, 8),
            (0x0A000001, 128),
            (0x0A000102, 128),
            (40000, 16),
            (80, 16),
            (0x11, 8),
            (0, 1),
            (0, 1),
            (0, 32),
            (0, 32),
            (0, 32),
        )
    )
    assert fin.key == FlowKey(
        ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.1.2"), 40000, 80
    )
    assert (fin.fin_rst, fin.learning, fin.tsval) == (True, False, None)
    learned = enc.decode_digest(
        _digest(
            (6, 8),
            (1, 128),
            (2, 128),
            (1, 16),
            (2, 16),
            (0x10, 8),
            (1, 1),
            (1, 1),
            (0xDEADBEEF, 32),
            (0xFFFFFFF0, 32),
            (7, 32),
        )
    )
    assert str(learned.key.src) == "::1"
    assert (learned.fin_rst, learned.learning, learned.tsval) == (False, True, 0xDEADBEEF)
    assert (learned.seq, learned.ack) == (0xFFFFFFF0, 7)


def test_idle_timeout_only_when_asked():
    entry = parse_entry(DOC)
    assert enc.table_entry(NAMES, entry, 0).idle_timeout_ns == 0
    assert enc.table_entry(NAMES, entry, 0, 5 * 10**9).idle_timeout_ns == 5 * 10**9


@pytest.mark.parametrize("egress", ["eth1", 511, -1])
def test_egress_must_be_a_port_number(egress):
    with pytest.raises(EntryError, match="port number"):
        enc.egress_port(egress)


def test_egress_decimal_string():
    assert enc.egress_port("2") == 2


def test_wrong_program_is_refused():
    with pytest.raises(ValueError, match="not the mosto P4 program"):
        enc.P4Names(p4info_pb2.P4Info())


def test_p4_takes_counters_and_sizes_from_the_contract():
    """The P4 program has no counter indices or table sizes of its own: they
    come from shared/contract.h, which the Python package parses too."""
    sources = "".join(p.read_text() for p in (REPO / "p4src").rglob("*.p4"))
    assert '#include "../../shared/contract.h"' in sources
    assert "MOSTO_COUNTERS(MOSTO_COUNTER_CONST)" in sources
    assert re.findall(r"CNT_\w+\s*=\s*\d", sources) == []
    assert re.findall(r"size\s*=\s*\d", sources) == []


@pytest.mark.skipif(not COMPILED_P4INFO.exists(), reason="no compiled P4Info (make bmv2-test)")
def test_hand_written_p4info_matches_the_compiled_one():
    compiled = text_format.Parse(COMPILED_P4INFO.read_text(), p4info_pb2.P4Info())
    real = enc.P4Names(compiled)
    assert {n: w for n, (_, w) in real.tables[enc.SPLICE_TABLE].fields.items()} == dict(KEY)
    assert {n: w for n, (_, w) in real.actions[enc.SPLICE_ACTION].params.items()} == dict(PARAMS)
    assert real.tables[enc.TX_PORTS_TABLE].fields["port"][1] == 9
