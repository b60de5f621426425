"""The splice entry: one direction of a handed-over flow, as both targets take it.

The JSON form is documented in entry.md, next to this file.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

U32 = 1 << 32
WSCALE_SHIFT_MAX = 14  # RFC 7323: a window scale is 0..14
NO_MAC = "00:00:00:00:00:00"
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class EntryError(ValueError):
    """An entry document that cannot be installed; the message says why."""


@dataclass(frozen=True)
class FlowKey:
    """A flow direction as the packet arrives: source and destination."""

    src: Address
    dst: Address
    sport: int
    dport: int

    def __hash__(self) -> int:
        """Computed once: a hand-over looks its flows up in a dozen tables, and
        an ipaddress object hashes through hex() each time."""
        try:
            return self.__dict__["_hash"]  # type: ignore[no-any-return]
        except KeyError:
            h = hash((self.src, self.dst, self.sport, self.dport))
            object.__setattr__(self, "_hash", h)
            return h

    def __getstate__(self) -> dict[str, Any]:
        # str hashes differ between processes: a pickled key hashes again.
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    @property
    def family(self) -> int:
        return self.src.version

    def reversed(self) -> FlowKey:
        return FlowKey(self.dst, self.src, self.dport, self.sport)

    def to_json(self) -> dict[str, Any]:
        return {
            "src": str(self.src),
            "dst": str(self.dst),
            "sport": self.sport,
            "dport": self.dport,
        }

    def __str__(self) -> str:
        return f"{_hostport(self.src, self.sport)} -> {_hostport(self.dst, self.dport)}"


@dataclass(frozen=True)
class Track:
    """A direction's sender at install, for the FIN/RST window check
    (ebpf/track.h): its next sequence number as it arrives, and its latest
    acknowledgement as it leaves (translated)."""

    snd_nxt: int
    ack: int

    def to_json(self) -> dict[str, int]:
        return {"snd_nxt": self.snd_nxt, "ack": self.ack}


@dataclass(frozen=True)
class Entry:
    """What to do with packets of one flow direction; deltas are mod 2^32."""

    match: FlowKey
    seq_delta: int
    ack_delta: int
    smac: str
    dmac: str
    egress: int | str  # an interface name, or a port number (BMv2) / ifindex (XDP)
    tsval_delta: int | None = None  # both None, or both set
    tsecr_delta: int | None = None
    wscale_shift: int = 0
    rewrite: FlowKey | None = None  # non-transparent proxy: the packet leaves as this flow
    ingress: int | str | None = None  # the interface / port its packets must arrive by; None: any
    learn: bool = False  # the proxy still owns the flow: record the TSval, pass untouched
    track: Track | None = None  # None: every FIN/RST is reported, unchecked

    @classmethod
    def learning(cls, match: FlowKey) -> Entry:
        """An entry that only learns the sender's TSval (before a hand-over)."""
        return cls(match, 0, 0, NO_MAC, NO_MAC, 0, learn=True)

    @property
    def timestamps(self) -> bool:
        return self.tsval_delta is not None

    @property
    def out_flow(self) -> FlowKey:
        """The flow a translated packet leaves as."""
        return self.rewrite or self.match

    @property
    def peer_match(self) -> FlowKey:
        """The match of the other direction's entry: what the receiver sends back."""
        return self.out_flow.reversed()

    def links_with(self, other: Entry) -> bool:
        """Whether other is this entry's other direction for the FIN/RST window
        check (ebpf/track.h): both tracked, each matching what the other's
        packets leave as, reversed, and not one entry twice."""
        return (
            self.track is not None
            and other.track is not None
            and other.match == self.peer_match
            and other.peer_match == self.match
            and other.match != self.match
        )

    def to_json(self) -> dict[str, Any]:
        if self.learn:
            return {"match": self.match.to_json(), "learn": True}
        doc: dict[str, Any] = {
            "match": self.match.to_json(),
            "seq_delta": self.seq_delta,
            "ack_delta": self.ack_delta,
        }
        if self.timestamps:
            doc["timestamps"] = {"tsval_delta": self.tsval_delta, "tsecr_delta": self.tsecr_delta}
        if self.wscale_shift:
            doc["wscale_shift"] = self.wscale_shift
        if self.rewrite:
            doc["rewrite"] = self.rewrite.to_json()
        doc.update(smac=self.smac, dmac=self.dmac, egress=self.egress)
        if self.ingress is not None:
            doc["ingress"] = self.ingress
        if self.track is not None:
            doc["track"] = self.track.to_json()
        return doc


def _hostport(addr: Address, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def _require(doc: dict[str, Any], key: str, where: str) -> Any:
    if key not in doc:
        raise EntryError(f"{where}: missing '{key}'")
    return doc[key]


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EntryError(f"{where}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise EntryError(f"{where}: {value} is outside {lo}..{hi}")
    return value


def _delta(value: Any, where: str) -> int:
    """Deltas may be written signed (-5) or unsigned; stored as 0..2^32-1."""
    return _int(value, where, -(U32 - 1), U32 - 1) % U32


def _flow(doc: Any, where: str) -> FlowKey:
    if not isinstance(doc, dict):
        raise EntryError(f"{where}: expected an object")
    unknown = set(doc) - {"src", "dst", "sport", "dport"}
    if unknown:
        raise EntryError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    try:
        src = ipaddress.ip_address(_require(doc, "src", where))
        dst = ipaddress.ip_address(_require(doc, "dst", where))
    except ValueError as exc:
        raise EntryError(f"{where}: {exc}") from None
    if src.version != dst.version:
        raise EntryError(f"{where}: src and dst are of different address families")
    sport = _int(_require(doc, "sport", where), f"{where}.sport", 1, 65535)
    dport = _int(_require(doc, "dport", where), f"{where}.dport", 1, 65535)
    return FlowKey(src, dst, sport, dport)


def _mac(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _MAC.match(value):
        raise EntryError(f"{where}: expected a MAC address like 02:00:00:00:00:01, got {value!r}")
    return value.lower()


def _port(value: Any, where: str) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise EntryError(f"{where}: expected an interface name or a port number")
    if isinstance(value, int):
        _int(value, where, 0, U32 - 1)  # BMv2 has a port 0; no ifindex is 0
    return value


_FIELDS = {
    "match",
    "seq_delta",
    "ack_delta",
    "timestamps",
    "wscale_shift",
    "rewrite",
    "smac",
    "dmac",
    "egress",
    "ingress",
    "learn",
    "track",
    "id",
    "stats",
}
_LEARN_FIELDS = {"match", "learn", "id", "stats"}


def parse_entry(doc: Any, where: str = "entry") -> Entry:
    """Validates one entry document. `id` and `stats` (from `entry list`) are ignored."""
    if not isinstance(doc, dict):
        raise EntryError(f"{where}: expected an object")
    unknown = set(doc) - _FIELDS
    if unknown:
        raise EntryError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    match = _flow(_require(doc, "match", where), f"{where}.match")
    if doc.get("learn", False) is not False:
        if doc["learn"] is not True:
            raise EntryError(f"{where}.learn: expected true or false")
        extra = set(doc) - _LEARN_FIELDS
        if extra:
            raise EntryError(
                f"{where}: a learning entry takes only 'match', not {', '.join(sorted(extra))}"
            )
        return Entry.learning(match)
    tsval = tsecr = None
    if doc.get("timestamps") is not None:
        ts = doc["timestamps"]
        if not isinstance(ts, dict) or set(ts) != {"tsval_delta", "tsecr_delta"}:
            raise EntryError(f"{where}.timestamps: expected {{tsval_delta, tsecr_delta}}")
        tsval = _delta(ts["tsval_delta"], f"{where}.timestamps.tsval_delta")
        tsecr = _delta(ts["tsecr_delta"], f"{where}.timestamps.tsecr_delta")
    rewrite = None
    if doc.get("rewrite") is not None:
        rewrite = _flow(doc["rewrite"], f"{where}.rewrite")
        if rewrite.family != match.family:
            raise EntryError(
                f"{where}.rewrite: address family differs from match "
                "(IPv4/IPv6 translation is not supported)"
            )
    egress = _port(_require(doc, "egress", where), f"{where}.egress")
    ingress = doc.get("ingress")
    if ingress is not None:
        ingress = _port(ingress, f"{where}.ingress")
    track = None
    if doc.get("track") is not None:
        t = doc["track"]
        if not isinstance(t, dict) or set(t) != {"snd_nxt", "ack"}:
            raise EntryError(f"{where}.track: expected {{snd_nxt, ack}}")
        track = Track(
            _int(t["snd_nxt"], f"{where}.track.snd_nxt", 0, U32 - 1),
            _int(t["ack"], f"{where}.track.ack", 0, U32 - 1),
        )
    return Entry(
        match=match,
        seq_delta=_delta(_require(doc, "seq_delta", where), f"{where}.seq_delta"),
        ack_delta=_delta(_require(doc, "ack_delta", where), f"{where}.ack_delta"),
        smac=_mac(_require(doc, "smac", where), f"{where}.smac"),
        dmac=_mac(_require(doc, "dmac", where), f"{where}.dmac"),
        egress=egress,
        tsval_delta=tsval,
        tsecr_delta=tsecr,
        wscale_shift=_int(
            doc.get("wscale_shift", 0), f"{where}.wscale_shift", -WSCALE_SHIFT_MAX, WSCALE_SHIFT_MAX
        ),
        rewrite=rewrite,
        ingress=ingress,
        track=track,
    )


def load_entries(text: str) -> list[Entry]:
    """An entry document, or a list of them (e.g. both directions of a splice)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EntryError(f"not JSON: {exc}") from None
    docs = doc if isinstance(doc, list) else [doc]
    if not docs:
        raise EntryError("no entries given")
    return [parse_entry(d, f"entry[{i}]") for i, d in enumerate(docs)]
