"""The socket's directory: whoever can write it can replace the socket, so it
must be the agent's alone, and so must every parent (unless sticky, like /tmp)."""

from __future__ import annotations

import fcntl
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


def lock(path: str) -> int:
    """One agent per socket: an exclusive lock on SOCKET.lock, held (by the open
    descriptor returned) for the agent's life and dropped by the kernel when it
    dies. Taken before anything is attached, rebuilt or cleared, so a second
    agent started by mistake leaves the live one's programs and holds alone."""
    fd = os.open(os.path.abspath(path) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UnsafeDirectory(f"another agent serves on {path}") from None
    return fd
