"""Which proxy sockets the agent has in repair mode, written down where a
restarted agent finds it.

An agent killed between switching a proxy's sockets into repair mode and
answering leaves them in the proxy's hands in repair mode: the proxy can
neither use them (recv gives EPERM) nor leave repair (that takes
CAP_NET_ADMIN), and a socket in repair mode lets its holder set sequence
numbers and bind over ports in use. So before the first TCP_REPAIR_ON the
agent writes one record per offload (the sockets' cookies and inodes, the
caller), and removes it once the sockets are out of repair. A restarted agent
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
import json
import logging
import os
import re
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("mosto.agent")
SO_COOKIE = 57  # <asm-generic/socket.h>; not in Python's socket module
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
    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self._prefix = f"{directory}/"

    @classmethod
    def beside(cls, socket_path: str) -> RepairLog:
        return cls(Path(os.path.abspath(socket_path) + ".repairing"))

    def write(self, uid: int, pid: int, *socks: socket.socket) -> str:
        """On every hand-over's path: plain system calls, no rename. A record cut
        short by a crash is harmless: it is written before the first trip
        through repair mode, and records() drops what it cannot read."""
        ids = [(cookie(s), os.fstat(s.fileno()).st_ino) for s in socks]
        path = f"{self._prefix}{'-'.join(f'{c:x}' for c, _ in ids)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps({"uid": uid, "pid": pid, "socks": ids}).encode())
        finally:
            os.close(fd)
        return path

    @staticmethod
    def remove(path: str | Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def records(self) -> Iterator[Record]:
        for path in sorted(self.directory.iterdir()):
            try:
                doc = json.loads(path.read_text())
                socks = tuple((int(c), int(i)) for c, i in doc["socks"])
                yield Record(path, int(doc["uid"]), int(doc["pid"]), socks)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("repair record %s unreadable (%s): removed", path.name, exc)
                path.unlink(missing_ok=True)


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
