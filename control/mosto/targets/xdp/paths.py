"""Where the XDP target finds its things, importable without libbpf (the CLI's
defaults come from here).

The BPF objects (splice.bpf.o for XDP, splice_tc.bpf.o for tc: one source,
see ebpf/ctx/) are looked up, first match wins, in:
  1. $MOSTO_BPF_OBJECT (a file; XDP only), or $MOSTO_BPF_DIR/<name> (a directory);
  2. the build/ folder of the checkout this package runs from (editable install);
  3. <sys.prefix>/share/mosto, /usr/local/share/mosto, /usr/share/mosto
     (`make install-objects PREFIX=...` puts them there).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_PIN_DIR = "/sys/fs/bpf/mosto"
SPLICE_OBJECT = "splice.bpf.o"
SPLICE_TC_OBJECT = "splice_tc.bpf.o"
HOOK_OBJECTS = {"xdp": SPLICE_OBJECT, "tc": SPLICE_TC_OBJECT}
_CHECKOUT = Path(__file__).resolve().parents[4]


def object_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("MOSTO_BPF_DIR"):
        dirs.append(Path(os.environ["MOSTO_BPF_DIR"]))
    if (_CHECKOUT / "ebpf").is_dir():
        dirs.append(_CHECKOUT / "build")
    for prefix in (sys.prefix, "/usr/local", "/usr"):
        dirs.append(Path(prefix) / "share" / "mosto")
    return dirs


class ObjectNotFound(FileNotFoundError):
    pass


def find_object(name: str = SPLICE_OBJECT) -> Path:
    """The first of object_dirs() that holds name ($MOSTO_BPF_OBJECT overrides)."""
    env = os.environ.get("MOSTO_BPF_OBJECT")
    if env and name == SPLICE_OBJECT:
        if not Path(env).is_file():
            raise ObjectNotFound(f"MOSTO_BPF_OBJECT={env}: no such file")
        return Path(env)
    dirs = object_dirs()
    for d in dirs:
        if (d / name).is_file():
            return d / name
    where = ", ".join(str(d) for d in dirs)
    raise ObjectNotFound(f"{name} not found in {where}: run `make build` (or set MOSTO_BPF_DIR)")
