"""A dead agent's repair-mode sockets, taken back by the next agent from the
unprivileged process that holds them (repairlog.py), on real sockets."""

from __future__ import annotations

import os
import socket
import time

from mosto.agent.core import Agent
from mosto.agent.kernel import sockinfo
from mosto.agent.kernel.repairlog import RepairLog, cookie
from mosto.agent.kernel.tcpstate import enter_repair
from mosto.targets.memory import MemoryTarget

NOBODY = 65534


def _proxy_holding(sock: socket.socket) -> int:
    """A child running as nobody that keeps the socket and reports, on exit,
    whether it was back in normal mode (0) or still in repair (1)."""
    pid = os.fork()
    if pid == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not sockinfo.in_repair(sock):
                os._exit(0)
            time.sleep(0.01)
        os._exit(1)
    return pid


def test_the_next_agent_takes_a_socket_out_of_repair_in_another_process(tmp_path):
    srv = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(srv.getsockname())
    proxy_side, _ = srv.accept()
    log = RepairLog(tmp_path / "repairing")
    dead = log.write(NOBODY, 0, proxy_side, peer)  # as the dead agent did, then
    enter_repair(proxy_side)  # ... died with this socket in repair mode
    child = _proxy_holding(proxy_side)
    proxy_side.close()  # only the child holds it now
    try:
        agent = Agent(MemoryTarget())
        agent.repairlog = log
        assert agent.recover_repairs() == 1
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child's socket is still in repair"
    finally:
        for s in (srv, peer):
            s.close()
    assert not os.path.exists(dead) and not list(log.directory.iterdir())


def test_a_record_for_sockets_already_gone_is_dropped(tmp_path):
    a = socket.create_server(("127.0.0.1", 0))
    b = socket.create_connection(a.getsockname())
    log = RepairLog(tmp_path / "repairing")
    path = log.write(0, os.getpid(), a, b)
    assert cookie(a) != cookie(b)
    a.close()
    b.close()
    agent = Agent(MemoryTarget())
    agent.repairlog = log
    assert agent.recover_repairs() == 0
    assert not os.path.exists(path)


def test_recover_is_a_no_op_without_a_log():
    assert Agent(MemoryTarget()).recover_repairs() == 0


def test_a_thread_rewrites_one_slot_and_a_cleared_slot_holds_no_record(tmp_path):
    a = socket.create_server(("127.0.0.1", 0))
    b = socket.create_connection(a.getsockname())
    log = RepairLog(tmp_path / "repairing")
    first = log.write(0, os.getpid(), a, b)
    log.clear(first)
    assert log.write(1000, os.getpid(), b, a) == first  # the same file, rewritten
    (rec,) = log.records()
    assert rec.uid == 1000 and rec.socks[0][0] == cookie(b)
    log.clear(first)
    assert list(log.records()) == [] and os.path.exists(first)  # ours: kept, empty
    dead = RepairLog(tmp_path / "repairing")  # a next agent finds the dead one's slot
    assert list(dead.records()) == [] and not os.path.exists(first)
    for s in (a, b):
        s.close()
