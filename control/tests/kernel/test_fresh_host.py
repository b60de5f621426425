"""A freshly booted host has no bpffs at /sys/fs/bpf. These tests make one:
a private mount namespace (unshare -m) with every mount on /sys/fs/bpf
removed, so they fail on any machine if mosto starts assuming bpffs again.
`make fresh-host-test` runs part of the e2e suite the same way."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from mosto.targets.xdp.paths import find_object

REPO = Path(__file__).resolve().parents[3]

# Runs inside the private mount namespace: bare /sys/fs/bpf, then the CLI.
SCRIPT = r"""
import json, subprocess, sys
from mosto.targets.xdp.bpffs import fs_type
while subprocess.run(["umount", "/sys/fs/bpf"], capture_output=True).returncode == 0:
    pass
before = fs_type("/sys/fs/bpf")
veth, pin, obj = sys.argv[1:4]
def mosto(*args):
    p = subprocess.run([sys.executable, "-m", "mosto", *args], capture_output=True, text=True)
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}
out = {"before": before}
out["attach"] = mosto("xdp", "attach", veth, "--pin-dir", pin, "--mode", "generic",
                      "--object", obj)
out["after"] = fs_type("/sys/fs/bpf")
out["list"] = mosto("entry", "list", "--pin-dir", pin)
out["again"] = mosto("xdp", "counters", "--pin-dir", pin)
out["detach"] = mosto("xdp", "detach", veth)
print(json.dumps(out))
"""


def in_fresh_mount_ns(*args: str) -> dict:
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def veth():
    name = f"mfh{uuid.uuid4().hex[:5]}"
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=name + "p")
        yield name
        ipr.link("del", index=ipr.link_lookup(ifname=name)[0])


def test_cli_mounts_bpffs_where_missing_and_says_so(veth):
    pin = f"/sys/fs/bpf/mosto-fresh-{uuid.uuid4().hex[:6]}"
    out = in_fresh_mount_ns(veth, pin, str(find_object()))
    assert out["before"] != "bpf"
    assert out["attach"]["rc"] == 0, out["attach"]["err"]
    mounted = [line for line in out["attach"]["err"].splitlines() if "bpffs" in line]
    assert mounted == ["mosto: mounted bpffs at /sys/fs/bpf (it was not mounted)"]
    assert out["after"] == "bpf"
    assert out["list"] == {"rc": 0, "out": "no entries\n", "err": ""}
    assert out["again"]["rc"] == 0 and "hit_tx" in out["again"]["out"]
    assert out["again"]["err"] == ""  # mounted once: the second command finds it
    assert out["detach"]["rc"] == 0 and "detached" in out["detach"]["out"]


def test_pins_outside_bpffs_are_refused_in_one_line(veth, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mosto", "xdp", "attach", veth, "--pin-dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr == f"mosto: {tmp_path} is not on a bpffs mount (mount -t bpf bpf DIR first)\n"
    )


def test_object_option_takes_a_path(veth, tmp_path):
    missing = tmp_path / "nothing.bpf.o"
    proc = subprocess.run(
        [sys.executable, "-m", "mosto", "xdp", "attach", veth, "--object", str(missing)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"mosto: {missing}: no such BPF object\n"


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_a_missing_interface_is_refused_before_anything_is_pinned(hook):
    pin = Path(f"/sys/fs/bpf/mosto-typo-{uuid.uuid4().hex[:6]}")
    proc = subprocess.run(
        [sys.executable, "-m", "mosto", hook, "attach", "nosuchif0", "--pin-dir", str(pin)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr == "mosto: no interface named 'nosuchif0'\n"
    assert not pin.exists()
