"""The XDP target against the kernel: ABI layout (map sizes, and every struct
field against the object's BTF), pinned maps, the CLI."""

from __future__ import annotations

import ctypes
import json
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from mosto.dataplane.entry import parse_entry
from mosto.targets.xdp import abi, libbpf
from mosto.targets.xdp.paths import find_object
from mosto.targets.xdp.target import TargetError, XdpTarget


def test_map_sizes_match_the_mirrors():
    with XdpTarget(pin_dir=None) as t:
        sizes = t.map_sizes()
    assert sizes["mosto_splice"] == (ctypes.sizeof(abi.SpliceKey), ctypes.sizeof(abi.SpliceEntry))
    assert sizes["mosto_stats"][1] == ctypes.sizeof(abi.SpliceStats)
    assert sizes["mosto_counters"] == (4, 8)


# -- the ABI through the object's BTF ------------------------------------------

MIRRORS = {
    "splice_key": abi.SpliceKey,
    "splice_entry": abi.SpliceEntry,
    "splice_stats": abi.SpliceStats,
    "splice_event": abi.SpliceEvent,
    "splice_track": abi.SpliceTrack,
}
# (map, "key" or "value") -> the C type user space reads and writes there
MAP_TYPES = {
    ("mosto_splice", "key"): "splice_key",
    ("mosto_splice", "value"): "splice_entry",
    ("mosto_stats", "key"): "__u32",
    ("mosto_stats", "value"): "splice_stats",
    ("mosto_track", "key"): "__u32",
    ("mosto_track", "value"): "splice_track",
    ("mosto_counters", "key"): "__u32",
    ("mosto_counters", "value"): "__u64",
    ("mosto_tx_ports", "key"): "__u32",
    ("mosto_tx_ports", "value"): "__u32",
    ("mosto_peer_ports", "key"): "__u32",
    ("mosto_peer_ports", "value"): "__u32",
}
SCALARS = {
    ctypes.c_uint8: (1, False),
    ctypes.c_int8: (1, True),
    ctypes.c_uint16: (2, False),
    ctypes.c_uint32: (4, False),
    ctypes.c_uint64: (8, False),
}


class Btf:
    """The types of an object's .BTF, from `bpftool btf dump -j`."""

    def __init__(self, obj: Path):
        if shutil.which("bpftool") is None:
            pytest.skip("bpftool not installed: cannot read the object's BTF")
        out = subprocess.run(
            ["bpftool", "btf", "dump", "file", str(obj), "-j"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        self.types = {t["id"]: t for t in json.loads(out)["types"]}

    def named(self, kind: str, name: str) -> dict:
        found = [t for t in self.types.values() if t["kind"] == kind and t["name"] == name]
        assert len(found) == 1, f"{kind} {name}: {len(found)} in the object's BTF"
        return found[0]

    def resolve(self, type_id: int) -> dict:
        """Through typedefs and qualifiers to the type itself."""
        t = self.types[type_id]
        while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            t = self.types[t["type_id"]]
        return t

    def size(self, t: dict) -> int:
        if t["kind"] == "ARRAY":
            return t["nr_elems"] * self.size(self.resolve(t["type_id"]))
        return t["size"]

    def typedef_name(self, type_id: int) -> str:
        t = self.types[type_id]
        return t["name"] if t["kind"] in ("TYPEDEF", "STRUCT") else self.resolve(type_id)["name"]


def same_layout(btf: Btf, t: dict, ctype: type, where: str) -> list[str]:
    """Every difference between a BTF type and a ctypes type, as text."""
    diffs: list[str] = []
    if issubclass(ctype, ctypes.Structure):
        if t["kind"] != "STRUCT":
            return [f"{where}: {t['kind']} in C, a struct in Python"]
        members = t["members"]
        fields = ctype._fields_
        if [m["name"] for m in members] != [f[0] for f in fields]:
            diffs.append(
                f"{where}: fields {[m['name'] for m in members]} in C, "
                f"{[f[0] for f in fields]} in Python"
            )
        for m, (name, ftype) in zip(members, fields, strict=False):
            field = getattr(ctype, name)
            mt = btf.resolve(m["type_id"])
            if m["bits_offset"] != 8 * field.offset or btf.size(mt) != field.size:
                diffs.append(
                    f"{where}.{m['name']}: offset {m['bits_offset'] // 8} size {btf.size(mt)}"
                    f" in C, {name} at offset {field.offset} size {field.size} in Python"
                )
            diffs += same_layout(btf, mt, ftype, f"{where}.{m['name']}")
        if t["size"] != ctypes.sizeof(ctype):
            diffs.append(f"{where}: {t['size']} bytes in C, {ctypes.sizeof(ctype)} in Python")
    elif issubclass(ctype, ctypes.Array):
        if t["kind"] != "ARRAY" or t["nr_elems"] != ctype._length_:
            diffs.append(f"{where}: {t.get('nr_elems')} elements in C, {ctype._length_} in Python")
        else:
            diffs += same_layout(btf, btf.resolve(t["type_id"]), ctype._type_, f"{where}[]")
    else:
        size, signed = SCALARS[ctype]
        if t["kind"] != "INT" or t["size"] != size or (t["encoding"] == "SIGNED") != signed:
            diffs.append(f"{where}: {t['kind']} {t.get('size')} {t.get('encoding')} in C, {ctype}")
    return diffs


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf(find_object())


@pytest.mark.parametrize("name", sorted(MIRRORS))
def test_struct_layout_matches_the_btf(btf, name):
    """Every field's name, offset, size and type: a reordering of two fields
    of the same size moves their names, which fails here."""
    assert same_layout(btf, btf.named("STRUCT", name), MIRRORS[name], name) == []


def test_maps_hold_the_mirrored_types(btf):
    maps = {v["name"]: btf.resolve(v["type_id"]) for v in btf.types.values() if v["kind"] == "VAR"}
    for (map_name, part), c_type in MAP_TYPES.items():
        member = next(m for m in maps[map_name]["members"] if m["name"] == part)
        pointee = btf.types[member["type_id"]]  # __type(key, T) is a T *
        assert pointee["kind"] == "PTR", (map_name, part)
        assert btf.typedef_name(pointee["type_id"]) == c_type, (map_name, part)


@pytest.fixture
def veth():
    name = f"mcli{uuid.uuid4().hex[:5]}"
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=name + "p")
        for n in (name, name + "p"):
            ipr.link("set", index=ipr.link_lookup(ifname=n)[0], state="up")
        yield name
        ipr.link("del", index=ipr.link_lookup(ifname=name)[0])


@pytest.fixture
def pin_dir():
    path = Path(f"/sys/fs/bpf/mosto-test-{uuid.uuid4().hex[:6]}")
    yield str(path)
    subprocess.run(["rm", "-rf", str(path)], check=False)


def mosto(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mosto", *args], input=stdin, capture_output=True, text=True
    )


def test_cli_attach_add_list_delete_detach(veth, pin_dir):
    doc = {
        "match": {"src": "fd00::1", "dst": "fd00:1::2", "sport": 1234, "dport": 80},
        "seq_delta": -10,
        "ack_delta": 20,
        "smac": "02:00:00:00:00:11",
        "dmac": "02:00:00:00:00:02",
        "egress": veth,
    }
    r = mosto("xdp", "attach", veth, "--mode", "native", "--pin-dir", pin_dir)
    assert r.returncode == 0, r.stderr
    assert f"attached to {veth} (native)" in r.stdout
    ifindex = socket.if_nametoindex(veth)
    assert libbpf.xdp_query_id(ifindex, libbpf.XDP_FLAGS_DRV_MODE) != 0
    # A second load reuses every pinned map (the devmap included).
    r = mosto("xdp", "attach", veth + "p", "--mode", "native", "--pin-dir", pin_dir)
    assert r.returncode == 0, r.stderr
    assert (Path(pin_dir) / "mosto_splice").exists()

    r = mosto("entry", "add", "-", "--pin-dir", pin_dir, stdin=json.dumps(doc))
    assert r.returncode == 0, r.stderr
    listed = json.loads(mosto("entry", "list", "--json", "--pin-dir", pin_dir).stdout)
    assert len(listed) == 1
    assert parse_entry(listed[0]) == parse_entry(doc)

    # A second process sees the same maps through the pins.
    with XdpTarget(pin_dir=pin_dir, load=False) as t:
        assert [e.match for _, e in t.entries()] == [parse_entry(doc).match]

    r = mosto("entry", "del", "-", "--pin-dir", pin_dir, stdin=json.dumps(doc))
    assert r.returncode == 0 and "deleted 1 entry" in r.stdout
    r = mosto("entry", "del", "-", "--pin-dir", pin_dir, stdin=json.dumps(doc))
    assert r.returncode == 1 and "no entry for" in r.stderr
    r = mosto("xdp", "detach", veth, veth + "p")
    assert r.returncode == 0 and r.stdout.count("detached") == 2
    ifindex = socket.if_nametoindex(veth)
    assert libbpf.xdp_query_id(ifindex, libbpf.XDP_FLAGS_DRV_MODE) == 0


def test_cli_errors_are_one_line(pin_dir):
    r = mosto("entry", "list", "--pin-dir", pin_dir)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "run `mosto xdp attach" in r.stderr
    r = mosto("xdp", "attach", "no-such-if0", "--pin-dir", pin_dir)
    assert r.returncode == 2 and "no interface named 'no-such-if0'" in r.stderr
    r = mosto("entry", "add", "-", "--pin-dir", pin_dir, stdin="[]")
    assert r.returncode == 2 and "no entries given" in r.stderr


def _to(egress: int | str) -> dict:
    return {
        "match": {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1, "dport": 2},
        "seq_delta": 0,
        "ack_delta": 0,
        "smac": "02:00:00:00:00:11",
        "dmac": "02:00:00:00:00:02",
        "egress": egress,
    }


def test_unknown_egress_interface_is_refused():
    with XdpTarget(pin_dir=None) as t, pytest.raises(TargetError, match="no interface"):
        t.add(parse_entry(_to("no-such-if0")))


def test_entry_ids_are_reused_and_stats_restart():
    base = {
        "seq_delta": 0,
        "ack_delta": 0,
        "smac": "02:00:00:00:00:11",
        "dmac": "02:00:00:00:00:02",
        "egress": "lo",
    }
    a = parse_entry(
        {**base, "match": {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1, "dport": 2}}
    )
    b = parse_entry(
        {**base, "match": {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 3, "dport": 4}}
    )
    with XdpTarget(pin_dir=None) as t:
        assert (t.add(a), t.add(b)) == (0, 1)
        assert t.add(a) == 0  # replacing keeps the id
        t.delete(a.match)
        assert t.add(b) == 1 and t.add(a) == 0
        assert t.stats_by_id(0).packets == 0


def test_a_tracked_entry_replaced_is_linked_to_its_peer_and_never_to_itself():
    base = {
        "ack_delta": 0,
        "smac": "02:00:00:00:00:11",
        "dmac": "02:00:00:00:00:02",
        "egress": "lo",
        "track": {"snd_nxt": 1, "ack": 2},
    }
    one = {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1, "dport": 2}
    back = {"src": "10.0.0.2", "dst": "10.0.0.1", "sport": 2, "dport": 1}
    selfish = {"src": "10.0.0.3", "dst": "10.0.0.3", "sport": 7, "dport": 7}
    with XdpTarget(pin_dir=None) as t:
        a = t.add(parse_entry({**base, "match": one, "seq_delta": 1}))
        b = t.add(parse_entry({**base, "match": back, "seq_delta": 2}))
        by_id = {v.id: v for _, v in t._raw_entries()}
        fwd, rev = by_id[a], by_id[b]
        assert (fwd.peer_id, rev.peer_id) == (b, a)
        assert (fwd.peer_gen, rev.peer_gen) == (rev.track_gen, fwd.track_gen)
        # An entry whose packets leave as its own match reversed is its own
        # "peer": replaced, it must come out as written, not as it was.
        t.add(parse_entry({**base, "match": selfish, "seq_delta": 5}))
        t.add(parse_entry({**base, "match": selfish, "seq_delta": 6}))
        mine = [e for _, e in t.entries() if e.match.src == e.match.dst]
        assert [e.seq_delta for e in mine] == [6]
        v = next(v for k, v in t._raw_entries() if abi.decode_key(k).src == abi.decode_key(k).dst)
        assert v.peer_id == abi.NO_PEER


def test_egress_zero_is_a_bmv2_port_but_no_interface():
    with XdpTarget(pin_dir=None) as t, pytest.raises(TargetError, match="not an interface"):
        t.add(parse_entry(_to(0)))


def test_cli_attaches_in_generic_mode_too(veth, pin_dir):
    r = mosto("xdp", "attach", veth, "--mode", "generic", "--pin-dir", pin_dir)
    assert r.returncode == 0 and f"attached to {veth} (generic)" in r.stdout, r.stderr
    ifindex = socket.if_nametoindex(veth)
    assert libbpf.xdp_query_id(ifindex, libbpf.XDP_FLAGS_SKB_MODE) != 0
    r = mosto("xdp", "detach", veth)
    assert "detached from" in r.stdout and "(generic)" in r.stdout
    assert libbpf.xdp_query_id(ifindex, libbpf.XDP_FLAGS_SKB_MODE) == 0


# -- the tc hook -------------------------------------------------------------


def test_cli_tc_attach_shares_the_maps_with_xdp(veth, pin_dir):
    r = mosto("tc", "attach", veth, "--pin-dir", pin_dir)
    assert r.returncode == 0, r.stderr
    assert f"attached to {veth} (tc ingress)" in r.stdout
    assert XdpTarget.attached_tc(veth) != 0
    shown = subprocess.run(
        ["tc", "filter", "show", "dev", veth, "ingress"], capture_output=True, text=True
    ).stdout
    assert "handle 0x6d6f7374 mosto_splice_pr" in shown and "direct-action" in shown
    # Attaching again replaces mosto's filter instead of adding a second one.
    r = mosto("tc", "attach", veth, "--pin-dir", pin_dir)
    assert r.returncode == 0, r.stderr
    shown = subprocess.run(
        ["tc", "filter", "show", "dev", veth, "ingress"], capture_output=True, text=True
    ).stdout
    assert shown.count("handle 0x6d6f7374") == 1
    # XDP on the peer, from the same pins: one set of entries for both hooks.
    r = mosto("xdp", "attach", veth + "p", "--mode", "native", "--pin-dir", pin_dir)
    assert r.returncode == 0, r.stderr
    with XdpTarget(pin_dir=pin_dir, load=False) as t:
        t.add(parse_entry(_to(veth)))
    listed = json.loads(mosto("entry", "list", "--json", "--pin-dir", pin_dir).stdout)
    assert [parse_entry(d).match for d in listed] == [parse_entry(_to(veth)).match]

    r = mosto("tc", "detach", veth)
    assert r.returncode == 0 and f"detached from {veth} (tc ingress)" in r.stdout
    assert XdpTarget.attached_tc(veth) == 0
    r = mosto("tc", "detach", veth)
    assert r.returncode == 0 and "nothing attached" in r.stdout
    mosto("xdp", "detach", veth + "p")


def test_default_hook_is_tc_on_veth_only(veth):
    from mosto.targets.xdp.target import default_hook

    assert default_hook(veth) == "tc"
    assert default_hook("lo") == "xdp"


def test_agent_picks_the_hook_per_interface_and_says_so(veth, pin_dir, caplog):
    import logging

    from mosto.agent.app import AgentConfig, open_target

    caplog.set_level(logging.INFO, logger="mosto.agent")
    cfg = AgentConfig(socket="/nonexistent", interfaces=[veth], pin_dir=pin_dir)
    target = open_target(cfg).target
    try:
        assert XdpTarget.attached_tc(veth) != 0
        assert libbpf.xdp_query_id(socket.if_nametoindex(veth), libbpf.XDP_FLAGS_DRV_MODE) == 0
        assert f"attached to {veth}: tc (clsact ingress)" in caplog.text
    finally:
        XdpTarget.detach(veth, "tc")
        target.close()
    # One interface is a one-armed proxy: every splice hairpins, and XDP_TX
    # stalls in native mode on veth (ebpf/README.md, Hairpin).
    cfg = AgentConfig(socket="/nonexistent", interfaces=[veth], pin_dir=pin_dir, hook="xdp")
    opened = open_target(cfg)
    try:
        assert f"attached to {veth}: XDP (generic)" in caplog.text
        assert "one-armed on veth" in caplog.text
        assert XdpTarget.attached_tc(veth) == 0
        assert opened.no_hairpin == set() and opened.watched == [veth]
    finally:
        XdpTarget.detach(veth)
        opened.target.close()


@pytest.fixture
def veth_pair_two():
    """Two veth pairs: an agent's two interfaces."""
    names = [f"mhp{uuid.uuid4().hex[:5]}" for _ in range(2)]
    with IPRoute() as ipr:
        for name in names:
            ipr.link("add", ifname=name, kind="veth", peer=name + "p")
            for n in (name, name + "p"):
                ipr.link("set", index=ipr.link_lookup(ifname=n)[0], state="up")
        yield names
        for name in names:
            ipr.link("del", index=ipr.link_lookup(ifname=name)[0])


def test_two_armed_native_xdp_on_veth_marks_its_interfaces_no_hairpin(veth_pair_two, pin_dir):
    from mosto.agent.app import AgentConfig, open_target
    from mosto.targets.xdp.ethtool import xdp_tx_errors

    cfg = AgentConfig(
        socket="/nonexistent", interfaces=veth_pair_two, pin_dir=pin_dir, hook="xdp", mode="native"
    )
    opened = open_target(cfg)
    try:
        for name in veth_pair_two:
            ifindex = socket.if_nametoindex(name)
            assert libbpf.xdp_query_id(ifindex, libbpf.XDP_FLAGS_DRV_MODE) != 0
            assert xdp_tx_errors(name) == 0  # veth reports it per queue
        assert opened.no_hairpin == set(veth_pair_two)
        assert opened.watched == veth_pair_two
    finally:
        for name in veth_pair_two:
            XdpTarget.detach(name)
        opened.target.close()


def test_batched_reads_see_what_single_lookups_see():
    """Past BATCH_READ_MIN entries stats_many reads the table and the stats in
    batches (BPF_MAP_LOOKUP_BATCH); the answer is the per-entry lookups' own."""
    from mosto.targets.xdp.target import BATCH_READ_MIN

    n = BATCH_READ_MIN + 500
    entries = [
        parse_entry(
            {
                "match": {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1000 + i, "dport": 80},
                "seq_delta": i,
                "ack_delta": 0,
                "smac": "02:00:00:00:00:11",
                "dmac": "02:00:00:00:00:02",
                "egress": "lo",
            }
        )
        for i in range(n)
    ]
    absent = parse_entry({**_to("lo"), "match": {**_to("lo")["match"], "sport": 9}}).match
    with XdpTarget(pin_dir=None) as t:
        ids = [t.add(e) for e in entries]
        ncpus = libbpf.num_possible_cpus()
        for k, entry_id in enumerate(ids[::7]):  # stats the program would have written
            per_cpu = (abi.SpliceStats * ncpus)()
            per_cpu[k % ncpus].packets, per_cpu[k % ncpus].bytes = k + 1, 100 * (k + 1)
            per_cpu[k % ncpus].last_seen_ns = 10**9 + k
            libbpf.map_update(t._fds["mosto_stats"], ctypes.c_uint32(entry_id), per_cpu)
        matches = [e.match for e in entries] + [absent]
        batched = t.stats_many(matches)
        single = {m: t.stats_by_id(i) for m, i in zip(matches, ids, strict=False)}
        assert absent not in batched
        assert batched == single
        assert sum(s.packets for s in batched.values()) == sum(range(1, len(ids[::7]) + 1))
        assert sorted(i for i, _ in t.entries()) == sorted(ids)
