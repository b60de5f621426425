"""Which proxy sockets the agent has in repair mode, written down where a
restarted agent finds it.

An agent killed between switching a proxy's sockets into repair mode and
answering leaves them in the proxy's hands in repair mode: the proxy can
neither use them (recv gives EPERM) nor leave repair (that takes
CAP_NET_ADMIN), and a socket in repair mode lets its holder set sequence
numbers and bind over ports in use. So before the first TCP_REPAIR_ON the
agent writes one record per offload (the sockets' cookies and inodes, the
caller), and clears it once the sockets are out of repair. A restarted agent
reads what is left, takes each socket back from the process that holds it
(pidfd_getfd: root only, the process need not cooperate) and finishes the
job: neutralised if the flow's splice is in the data plane, out of repair
otherwise, so the proxy relays on (PROTOCOL.md, "the agent dies").

The records live in a directory beside the agent's socket, which sockdir has
checked is the agent's alone; /run is a tmpfs, so a reboot, which ends every
socket, ends the records too.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import logging
import os
import re
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("mosto.agent")
SO_COOKIE = 57  # <asm-generic/socket.h>; not in Python's socket module
SLOT_BYTES = 256  # a record of two sockets is under 150 bytes of JSON
_libc = ctypes.CDLL(None, use_errno=True)  # pidfd_getfd: no Python wrapper (glibc 2.36 has one)


def cookie(sock: socket.socket) -> int:
    """The kernel's id of the socket: unique while the system is up."""
    return struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


@dataclass(frozen=True)
class Record:
    path: Path
    uid: int
    pid: int  # the caller's; the sockets are looked for there first
    socks: tuple[tuple[int, int], ...]  # (cookie, inode) of each


class RepairLog:
    """One record file per worker thread (a slot), opened once and rewritten in
    place: a record costs a pwrite to write and one to clear, not a file made
    and unlinked on every request (four system calls and two directory
    changes). A thread has one request in repair mode at most."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self._mine = threading.local()  # this thread's slot: (path, fd)
        self._slots: dict[str, int] = {}  # every slot of this process
        self._lock = threading.Lock()
        self._count = itertools.count()

    @classmethod
    def beside(cls, socket_path: str) -> RepairLog:
        return cls(Path(os.path.abspath(socket_path) + ".repairing"))

    def _slot(self) -> tuple[str, int]:
        slot: tuple[str, int] | None = getattr(self._mine, "slot", None)
        with self._lock:
            if slot is not None and self._slots.get(slot[0]) == slot[1]:
                return slot  # still ours: not discarded by a recovery
            path = f"{self.directory}/slot-{os.getpid()}-{next(self._count)}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            self._slots[path] = fd
        self._mine.slot = (path, fd)
        return path, fd

    def write(self, uid: int, pid: int, *socks: socket.socket) -> str:
        """The record of socks, in this thread's slot (its path returned). A
        record cut short by a crash is harmless: it is written before the first
        trip through repair mode, and records() drops what it cannot read."""
        ids = [(cookie(s), os.fstat(s.fileno()).st_ino) for s in socks]
        text = json.dumps({"uid": uid, "pid": pid, "socks": ids}).encode()
        if len(text) > SLOT_BYTES:
            raise ValueError(f"a repair record of {len(text)} bytes")
        path, fd = self._slot()
        os.pwrite(fd, text.ljust(SLOT_BYTES), 0)  # JSON ends in blanks: one size
        return path

    def clear(self, path: str) -> None:
        """The sockets are out of repair mode: the slot holds no record."""
        fd = self._slots.get(path)
        if fd is not None:
            os.pwrite(fd, b" " * SLOT_BYTES, 0)

    def discard(self, path: str | Path) -> None:
        """A record dealt with, file and all (a slot of ours is made anew)."""
        with self._lock:
            fd = self._slots.pop(str(path), None)
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def records(self) -> Iterator[Record]:
        """Records left in the directory; empty slots are skipped."""
        for path in sorted(self.directory.iterdir()):
            try:
                text = path.read_bytes()
                if not text.strip():  # an empty slot: a dead agent's is removed
                    if str(path) not in self._slots:
                        self.discard(path)
                    continue
                doc = json.loads(text)
                socks = tuple((int(c), int(i)) for c, i in doc["socks"])
                yield Record(path, int(doc["uid"]), int(doc["pid"]), socks)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("repair record %s unreadable (%s): removed", path.name, exc)
                self.discard(path)


_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")


def _fds_of(pid: int) -> Iterator[tuple[int, int]]:
    """(fd, socket inode) of every socket the process holds."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for name in names:
        try:
            m = _SOCKET_LINK.fullmatch(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            continue
        if m:
            yield int(name), int(m.group(1))


def _holders(inode: int, hint: int) -> Iterator[tuple[int, int]]:
    """(pid, fd) of processes holding the socket: the caller first, then any
    (it may have passed the socket on or forked)."""
    pids = [hint] + [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != hint]
    for pid in pids:
        for fd, ino in _fds_of(pid):
            if ino == inode:
                yield pid, fd


def take_back(wanted: int, inode: int, hint_pid: int) -> socket.socket | None:
    """A descriptor of our own for the socket with this cookie, wherever it is."""
    for pid, fd in _holders(inode, hint_pid):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            got = _libc.pidfd_getfd(pidfd, fd, 0)
        finally:
            os.close(pidfd)
        if got < 0:
            log.warning("cannot take fd %d of pid %d: %s", fd, pid, os.strerror(ctypes.get_errno()))
            continue
        sock = socket.socket(fileno=got)
        if cookie(sock) == wanted:
            return sock
        sock.close()  # the inode was reused: not ours
    return None
