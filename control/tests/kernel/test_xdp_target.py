"""The XDP target against the kernel: ABI layout, pinned maps, the CLI."""

from __future__ import annotations

import ctypes
import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from mosto.dataplane.entry import parse_entry
from mosto.targets.xdp import abi, libbpf
from mosto.targets.xdp.target import TargetError, XdpTarget


def test_ctypes_mirrors_match_the_object():
    with XdpTarget(pin_dir=None) as t:
        sizes = t.map_sizes()
    assert sizes["mosto_splice"] == (ctypes.sizeof(abi.SpliceKey), ctypes.sizeof(abi.SpliceEntry))
    assert sizes["mosto_stats"][1] == ctypes.sizeof(abi.SpliceStats)
    assert sizes["mosto_counters"] == (4, 8)


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
