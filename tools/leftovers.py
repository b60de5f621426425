"""What a run leaves on the machine: network namespaces, pins under
/sys/fs/bpf, nftables tables (of this namespace), and processes started from
this checkout. The test session and `make demo` compare a snapshot from before
with one from after: what they made, they must remove."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def _first_words(*cmd: str) -> set[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return {line.split()[0] for line in res.stdout.splitlines() if line.strip()}


def _processes(checkout: Path) -> set[str]:
    mine = {os.getpid(), os.getppid()}
    found = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in mine:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(checkout) in cmd and "pytest" not in cmd and "make" not in cmd.split()[:1]:
            found.add(f"{d.name}: {cmd[:120]}")
    return found


# What the kernel puts in every new bpffs (bpf_preload): there after mosto
# mounts bpffs on a host that had none, and not mosto's to remove.
KERNEL_PINS = {"maps.debug", "progs.debug"}


def snapshot(checkout: Path) -> dict[str, set[str]]:
    bpffs = Path("/sys/fs/bpf")
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    return {
        "network namespaces": _first_words("ip", "netns", "list"),
        "pins under /sys/fs/bpf": (
            {p.name for p in bpffs.iterdir()} - KERNEL_PINS if bpffs.is_dir() else set()
        ),
        "nftables tables": set(tables.stdout.splitlines()),
        "processes": _processes(checkout),
    }


def left_behind(
    before: dict[str, set[str]], after: dict[str, set[str]], mark: str = ""
) -> dict[str, list]:
    """What is new in after; with mark, only what names it (a run's own prefix,
    on a machine where other runs come and go meanwhile)."""
    new = {k: sorted(x for x in after[k] - before[k] if mark in x) for k in after}
    return {k: v for k, v in new.items() if v}
