"""The socket's directory: whoever can write it can replace the socket, so it
must be the agent's alone, and so must every parent (unless sticky, like /tmp)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafeDirectory(Exception):
    pass


def _trusted_owner(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def check(directory: Path) -> None:
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{directory} is not a directory")
    if not _trusted_owner(st) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(
            f"{directory} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}, "
            f"uid {st.st_uid}): the socket could be replaced"
        )
    for parent in directory.parents:
        st = os.stat(parent)
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if not _trusted_owner(st) or (writable and not st.st_mode & stat.S_ISVTX):
            raise UnsafeDirectory(
                f"{parent} is writable by other users without the sticky bit "
                f"(mode {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid})"
            )


def prepare(path: str) -> Path:
    """The socket's directory, made (0755) if missing, and checked."""
    directory = Path(os.path.abspath(path)).parent
    if not directory.exists():
        directory.mkdir(mode=0o755, parents=True)
    check(directory)
    return directory
