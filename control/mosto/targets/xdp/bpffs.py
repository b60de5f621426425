"""bpffs where pins go. A freshly booted host may have none at /sys/fs/bpf
(systemd mounts it, a plain boot need not); bpftool and xdp-loader mount it
themselves when it is missing, and so does mosto, saying so in one line."""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger("mosto.bpffs")

BPFFS_ROOT = "/sys/fs/bpf"


class BpffsError(OSError):
    pass


def fs_type(path: str) -> str | None:
    """The file-system type of the mount that holds path (from mountinfo)."""
    path = os.path.realpath(path)
    best, best_type = "", None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mount_point = left.split()[4].replace("\\040", " ")
            inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, best_type = mount_point, right.split()[0]
    return best_type


def _existing_ancestor(path: str) -> str:
    p = Path(path)
    while not p.exists():
        p = p.parent
    return str(p)


def ensure_bpffs(pin_dir: str) -> None:
    """Makes sure pin_dir can hold pins: mounts bpffs at /sys/fs/bpf when the pin
    directory lies under it and it is not mounted; refuses other places."""
    if fs_type(_existing_ancestor(pin_dir)) == "bpf":
        return
    root = os.path.realpath(BPFFS_ROOT)
    target = os.path.realpath(pin_dir)
    if target != root and not target.startswith(root + "/"):
        raise BpffsError(f"{pin_dir} is not on a bpffs mount (mount -t bpf bpf DIR first)")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", root.encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise BpffsError(err, f"cannot mount bpffs at {root}: {os.strerror(err)}")
    log.warning("mosto: mounted bpffs at %s (it was not mounted)", root)
