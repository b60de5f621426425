"""The object loads with the tools operators already use, not only with mosto."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from mosto.targets.xdp.paths import SPLICE_TC_OBJECT, find_object
from mosto.targets.xdp.target import MAPS

# Where each loader pins maps declared LIBBPF_PIN_BY_NAME when told nothing else.
IP_PIN_DIR = "/sys/fs/bpf/xdp/globals"
TC_PIN_DIR = "/sys/fs/bpf/tc/globals"
BPFTOOL_PIN_DIR = "/sys/fs/bpf"

# Each loader runs in a mount namespace of its own with a fresh bpffs on
# /sys/fs/bpf: what it pins there by name cannot meet maps another program
# (or another checkout's build, with other sizes) pinned on this host, and it
# goes with the namespace. The attachment stays: it belongs to the interface.
PRIVATE_BPFFS = 'mount -t bpf bpf /sys/fs/bpf && "$@" && echo "pinned: $(ls {pins} | tr "\\n" " ")"'


def _in_private_bpffs(pins: str, *cmd: str) -> subprocess.CompletedProcess:
    script = PRIVATE_BPFFS.format(pins=pins)
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *cmd],
        capture_output=True,
        text=True,
    )


def _pinned(r: subprocess.CompletedProcess) -> list[str]:
    line = next(x for x in r.stdout.splitlines() if x.startswith("pinned:"))
    return sorted(n for n in line.split()[1:] if n.startswith("mosto_"))


@pytest.fixture
def veth():
    name = f"mld{uuid.uuid4().hex[:5]}"
    subprocess.run(
        ["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True
    )
    yield name
    subprocess.run(["ip", "link", "del", name], check=False)


def test_iproute2_attaches_the_object(veth):
    obj = str(find_object())
    try:
        r = _in_private_bpffs(IP_PIN_DIR, "ip", "link", "set", "dev", veth, "xdp", "obj", obj,
                              "sec", "xdp")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert _pinned(r) == sorted(MAPS)
        shown = subprocess.run(
            ["ip", "-d", "link", "show", veth], capture_output=True, text=True
        ).stdout
        assert "mosto_splice_pr" in shown
    finally:
        subprocess.run(["ip", "link", "set", "dev", veth, "xdp", "off"], check=False)


def test_tc_attaches_the_tc_object(veth):
    obj = str(find_object(SPLICE_TC_OBJECT))
    try:
        subprocess.run(["tc", "qdisc", "add", "dev", veth, "clsact"], check=True)
        r = _in_private_bpffs(TC_PIN_DIR, "tc", "filter", "add", "dev", veth, "ingress", "bpf",
                              "da", "obj", obj, "sec", "tc")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert _pinned(r) == sorted(MAPS)
        shown = subprocess.run(
            ["tc", "filter", "show", "dev", veth, "ingress"], capture_output=True, text=True
        ).stdout
        assert "mosto_splice_pr" in shown and "direct-action" in shown
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", veth, "clsact"], check=False)


def test_bpftool_loads_the_object():
    pin = f"{BPFTOOL_PIN_DIR}/mosto-bpftool"
    r = _in_private_bpffs(BPFTOOL_PIN_DIR, "bpftool", "prog", "load", str(find_object()), pin)
    assert r.returncode == 0, r.stderr
    assert _pinned(r) == sorted(MAPS)
    assert "mosto-bpftool" in r.stdout
