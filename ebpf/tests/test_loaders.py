"""The object loads with the tools operators already use, not only with mosto."""

from __future__ import annotations

import glob
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from mosto.targets.xdp.paths import SPLICE_TC_OBJECT, find_object
from mosto.targets.xdp.target import MAPS

# Where each loader pins maps declared LIBBPF_PIN_BY_NAME when told nothing else.
IP_PIN_DIR = "/sys/fs/bpf/xdp/globals"
TC_PIN_DIR = "/sys/fs/bpf/tc/globals"
BPFTOOL_PIN_DIR = "/sys/fs/bpf"


def _remove_pins(directory: str) -> None:
    for name in MAPS:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            os.unlink(path)


# iproute2 makes these under bpffs the first time it loads an object (its map
# pinning folders: tc/globals, with ip and xdp linked to tc).
IPROUTE2_PIN_DIRS = ("ip", "tc", "xdp")


@pytest.fixture
def veth():
    made = [d for d in IPROUTE2_PIN_DIRS if not os.path.lexists(f"/sys/fs/bpf/{d}")]
    name = f"mld{uuid.uuid4().hex[:5]}"
    subprocess.run(
        ["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True
    )
    yield name
    subprocess.run(["ip", "link", "del", name], check=False)
    for d in made:  # what iproute2 made here goes again (a host that had them keeps them)
        subprocess.run(["rm", "-rf", f"/sys/fs/bpf/{d}"], check=False)


def test_iproute2_attaches_the_object(veth):
    obj = str(find_object())
    try:
        r = subprocess.run(
            ["ip", "link", "set", "dev", veth, "xdp", "obj", obj, "sec", "xdp"],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        shown = subprocess.run(
            ["ip", "-d", "link", "show", veth], capture_output=True, text=True
        ).stdout
        assert "mosto_splice_pr" in shown
    finally:
        subprocess.run(["ip", "link", "set", "dev", veth, "xdp", "off"], check=False)
        _remove_pins(IP_PIN_DIR)


def test_tc_attaches_the_tc_object(veth):
    obj = str(find_object(SPLICE_TC_OBJECT))
    try:
        subprocess.run(["tc", "qdisc", "add", "dev", veth, "clsact"], check=True)
        r = subprocess.run(
            ["tc", "filter", "add", "dev", veth, "ingress", "bpf", "da", "obj", obj, "sec", "tc"],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        shown = subprocess.run(
            ["tc", "filter", "show", "dev", veth, "ingress"], capture_output=True, text=True
        ).stdout
        assert "mosto_splice_pr" in shown and "direct-action" in shown
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", veth, "clsact"], check=False)
        _remove_pins(TC_PIN_DIR)


def test_bpftool_loads_the_object():
    pin = f"/sys/fs/bpf/mosto-bpftool-{uuid.uuid4().hex[:6]}"
    try:
        r = subprocess.run(
            ["bpftool", "prog", "load", str(find_object()), pin], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
        assert Path(pin).exists()
        assert sorted(
            os.path.basename(p) for p in glob.glob(f"{BPFTOOL_PIN_DIR}/mosto_*")
        ) == sorted(MAPS)
    finally:
        if os.path.exists(pin):
            os.unlink(pin)
        _remove_pins(BPFTOOL_PIN_DIR)
