"""Entry <-> P4Runtime encoding for the tables of p4src/mosto.p4.

Pure functions over a P4Info: no connection, no switch. The names below are
the ones p4c gives the objects of p4src/ (control instance path + name).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from p4.config.v1 import p4info_pb2
from p4.v1 import p4data_pb2, p4runtime_pb2

from mosto.dataplane.contract import NO_PEER
from mosto.dataplane.entry import Entry, EntryError, FlowKey, Track

SPLICE_TABLE = "MostoIngress.splice.mosto_splice"
SPLICE_ACTION = "MostoIngress.splice.splice"
LEARN_ACTION = "MostoIngress.splice.learn"
SPLICE_STATS = "MostoIngress.splice.mosto_stats"
TX_PORTS_TABLE = "MostoIngress.splice.mosto_tx_ports"
COUNTER_ARRAY = "MostoIngress.mosto_counters"
EVENT_DIGEST = "splice_event_t"

TCP_FIN, TCP_RST = 0x01, 0x04
FAMILY = {4: 4, 6: 6}  # the key's family field is the IP version
PORT_BITS = 9  # v1model port numbers
DROP_PORT = (1 << PORT_BITS) - 1  # BMv2's drop port: not a port an entry can name


def encode_uint(value: int, bitwidth: int) -> bytes:
    """P4Runtime's canonical binary string: big-endian, no leading zero bytes."""
    if not 0 <= value < (1 << bitwidth):
        raise ValueError(f"{value} does not fit in {bitwidth} bits")
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def decode_uint(data: bytes) -> int:
    return int.from_bytes(data, "big")


def mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def _mac_str(value: int) -> str:
    raw = value.to_bytes(6, "big")
    return ":".join(f"{b:02x}" for b in raw)


def egress_port(egress: int | str, what: str = "egress") -> int:
    """An entry's egress (or ingress) for BMv2: a port number (a decimal string is accepted)."""
    if isinstance(egress, str) and egress.isdigit():
        egress = int(egress)
    if not isinstance(egress, int) or not 0 <= egress < DROP_PORT:
        raise EntryError(f"{what}: BMv2 takes a port number 0..{DROP_PORT - 1}, got {egress!r}")
    return egress


@dataclass(frozen=True)
class _Action:
    id: int
    params: dict[str, tuple[int, int]]  # name -> (id, bitwidth)


@dataclass(frozen=True)
class _Table:
    id: int
    fields: dict[str, tuple[int, int]]  # name -> (id, bitwidth)


class P4Names:
    """Name -> id (and bit width) look-ups over one P4Info."""

    def __init__(self, p4info: p4info_pb2.P4Info):
        self.p4info = p4info
        self.tables = {
            t.preamble.name: _Table(
                t.preamble.id, {f.name: (f.id, f.bitwidth) for f in t.match_fields}
            )
            for t in p4info.tables
        }
        self.actions = {
            a.preamble.name: _Action(a.preamble.id, {p.name: (p.id, p.bitwidth) for p in a.params})
            for a in p4info.actions
        }
        self.counters = {c.preamble.name: c.preamble.id for c in p4info.counters}
        self.direct_counters = {c.preamble.name: c.preamble.id for c in p4info.direct_counters}
        self.digests = {d.preamble.name: d.preamble.id for d in p4info.digests}
        missing = [
            name
            for name, table in (
                (SPLICE_TABLE, self.tables),
                (TX_PORTS_TABLE, self.tables),
                (SPLICE_ACTION, self.actions),
                (LEARN_ACTION, self.actions),
                (COUNTER_ARRAY, self.counters),
                (SPLICE_STATS, self.direct_counters),
                (EVENT_DIGEST, self.digests),
            )
            if name not in table
        ]
        if missing:
            raise ValueError(f"not the mosto P4 program: P4Info lacks {', '.join(missing)}")

    def table_id(self, name: str) -> int:
        return self.tables[name].id


def _exact(table: _Table, name: str, value: int) -> p4runtime_pb2.FieldMatch:
    field_id, bitwidth = table.fields[name]
    fm = p4runtime_pb2.FieldMatch(field_id=field_id)
    fm.exact.value = encode_uint(value, bitwidth)
    return fm


def _addr_int(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """IPv4 addresses sit in the low 32 bits of the 128-bit address fields."""
    return int(addr)


def _addr_of(family: int, value: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if family == FAMILY[4]:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return ipaddress.IPv6Address(value)


def match_fields(names: P4Names, match: FlowKey) -> list[p4runtime_pb2.FieldMatch]:
    table = names.tables[SPLICE_TABLE]
    return [
        _exact(table, "family", FAMILY[match.family]),
        _exact(table, "src_addr", _addr_int(match.src)),
        _exact(table, "dst_addr", _addr_int(match.dst)),
        _exact(table, "src_port", match.sport),
        _exact(table, "dst_port", match.dport),
    ]


def match_key(names: P4Names, match: FlowKey) -> p4runtime_pb2.TableEntry:
    """A table entry naming only the match: for delete, read and direct counters."""
    te = p4runtime_pb2.TableEntry(table_id=names.table_id(SPLICE_TABLE))
    te.match.extend(match_fields(names, match))
    return te


@dataclass(frozen=True)
class Link:
    """An entry's part in the FIN/RST window check (p4src/include/track.p4):
    the generation that tags its register slot (0: not tracked) and the
    other direction's entry, with the generation it had when linked."""

    gen: int = 0
    peer_id: int = NO_PEER
    peer_gen: int = 0


NO_LINK = Link()  # an entry without track state, or not linked yet


def action_values(entry: Entry, entry_id: int = 0, link: Link = NO_LINK) -> dict[str, int]:
    """The parameters of the splice action for entry (link.gen only counts for
    an entry with track state)."""
    rw = entry.rewrite
    track = entry.track
    return {
        "seq_delta": entry.seq_delta,
        "ack_delta": entry.ack_delta,
        "timestamps": int(entry.timestamps),
        "tsval_delta": entry.tsval_delta or 0,
        "tsecr_delta": entry.tsecr_delta or 0,
        "window_shl": max(entry.wscale_shift, 0),
        "window_shr": max(-entry.wscale_shift, 0),
        "nat": int(rw is not None),
        "new_src_addr": _addr_int(rw.src) if rw else 0,
        "new_dst_addr": _addr_int(rw.dst) if rw else 0,
        "new_src_port": rw.sport if rw else 0,
        "new_dst_port": rw.dport if rw else 0,
        "smac": mac_int(entry.smac),
        "dmac": mac_int(entry.dmac),
        "egress_port": egress_port(entry.egress),
        "any_ingress": int(entry.ingress is None),
        "ingress_port": 0 if entry.ingress is None else egress_port(entry.ingress, "ingress"),
        "id": entry_id,
        "track_gen": link.gen if track else 0,
        "track_snd_nxt": track.snd_nxt if track else 0,
        "track_ack": track.ack if track else 0,
        "peer_id": link.peer_id if track else NO_PEER,
        "peer_gen": link.peer_gen if track else 0,
    }


def table_entry(
    names: P4Names, entry: Entry, entry_id: int, idle_timeout_ns: int = 0, link: Link = NO_LINK
) -> p4runtime_pb2.TableEntry:
    """The splice table entry for entry; entry_id rides along as the entry's
    metadata (and is the splice action's id: the window check's slot)."""
    te = match_key(names, entry.match)
    if entry.learn:
        te.action.action.action_id = names.actions[LEARN_ACTION].id
    else:
        action = names.actions[SPLICE_ACTION]
        te.action.action.action_id = action.id
        for name, value in action_values(entry, entry_id, link).items():
            param_id, bitwidth = action.params[name]
            te.action.action.params.add(param_id=param_id, value=encode_uint(value, bitwidth))
    te.metadata = encode_uint(entry_id, 32)
    if idle_timeout_ns:
        te.idle_timeout_ns = idle_timeout_ns
    return te


def decode_match(names: P4Names, te: p4runtime_pb2.TableEntry) -> FlowKey:
    by_id = {fid: name for name, (fid, _) in names.tables[SPLICE_TABLE].fields.items()}
    key = {by_id[fm.field_id]: decode_uint(fm.exact.value) for fm in te.match}
    family = key["family"]
    return FlowKey(
        _addr_of(family, key["src_addr"]),
        _addr_of(family, key["dst_addr"]),
        key["src_port"],
        key["dst_port"],
    )


def _params(names: P4Names, te: p4runtime_pb2.TableEntry) -> dict[str, int]:
    action = names.actions[SPLICE_ACTION]
    by_id = {pid: name for name, (pid, _) in action.params.items()}
    return {by_id[param.param_id]: decode_uint(param.value) for param in te.action.action.params}


def decode_link(names: P4Names, te: p4runtime_pb2.TableEntry) -> Link:
    """The window check's link of a splice table entry read back (a learning
    entry's: none)."""
    if te.action.action.action_id == names.actions[LEARN_ACTION].id:
        return NO_LINK
    p = _params(names, te)
    return Link(p["track_gen"], p["peer_id"], p["peer_gen"])


def decode_entry(names: P4Names, te: p4runtime_pb2.TableEntry) -> tuple[int, Entry]:
    """(entry id, Entry) of a splice table entry read back from the switch."""
    match = decode_match(names, te)
    entry_id = decode_uint(te.metadata) if te.metadata else -1
    if te.action.action.action_id == names.actions[LEARN_ACTION].id:
        return entry_id, Entry.learning(match)
    p = _params(names, te)
    rewrite = None
    if p["nat"]:
        rewrite = FlowKey(
            _addr_of(FAMILY[match.family], p["new_src_addr"]),
            _addr_of(FAMILY[match.family], p["new_dst_addr"]),
            p["new_src_port"],
            p["new_dst_port"],
        )
    entry = Entry(
        match=match,
        seq_delta=p["seq_delta"],
        ack_delta=p["ack_delta"],
        smac=_mac_str(p["smac"]),
        dmac=_mac_str(p["dmac"]),
        egress=p["egress_port"],
        tsval_delta=p["tsval_delta"] if p["timestamps"] else None,
        tsecr_delta=p["tsecr_delta"] if p["timestamps"] else None,
        wscale_shift=p["window_shl"] - p["window_shr"],
        rewrite=rewrite,
        ingress=None if p["any_ingress"] else p["ingress_port"],
        track=Track(p["track_snd_nxt"], p["track_ack"]) if p["track_gen"] else None,
    )
    return entry_id, entry


@dataclass(frozen=True)
class Digest:
    """One splice_event_t: a FIN/RST, and/or a learning entry's frame."""

    key: FlowKey
    tcp_flags: int
    learning: bool
    tsval: int | None  # learning: the TSval of a well-formed header, if it has one
    seq: int = 0  # the frame's seq and ack
    ack: int = 0

    @property
    def fin_rst(self) -> bool:
        return bool(self.tcp_flags & (TCP_FIN | TCP_RST))


def decode_digest(data: p4data_pb2.P4Data) -> Digest:
    """The members of splice_event_t, in the order p4src/include/headers.p4 declares them."""
    family, src, dst, sport, dport, flags, learning, has_tsval, tsval, seq, ack = (
        decode_uint(m.bitstring) for m in data.struct.members
    )
    key = FlowKey(_addr_of(family, src), _addr_of(family, dst), sport, dport)
    return Digest(key, flags, bool(learning), tsval if has_tsval else None, seq, ack)
