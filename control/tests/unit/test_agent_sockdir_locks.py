"""The socket directory's checks (real directories and modes) and the per-flow
locks (real threads)."""

from __future__ import annotations

import ipaddress
import threading
import time
from pathlib import Path

import pytest

from mosto.agent import sockdir
from mosto.agent.flowlock import FlowLocks
from mosto.agent.turn import Turn
from mosto.dataplane.entry import FlowKey

ip = ipaddress.ip_address
F1 = FlowKey(ip("10.1.0.1"), ip("10.1.0.2"), 1, 2)
F2 = FlowKey(ip("10.2.0.1"), ip("10.2.0.2"), 3, 4)
F3 = FlowKey(ip("10.3.0.1"), ip("10.3.0.2"), 5, 6)


def test_a_private_directory_is_made_and_accepted(tmp_path: Path):
    tmp_path.chmod(0o755)
    d = sockdir.prepare(str(tmp_path / "run" / "agent.sock"))
    assert d == tmp_path / "run" and (d.stat().st_mode & 0o777) == 0o755


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int):
    tmp_path.chmod(0o755)
    d = tmp_path / "run"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(sockdir.UnsafeDirectory, match="writable by other users"):
        sockdir.prepare(str(d / "agent.sock"))


def test_a_parent_others_can_write_is_refused_unless_sticky(tmp_path: Path):
    parent = tmp_path / "p"
    (parent / "run").mkdir(parents=True)
    tmp_path.chmod(0o755)
    parent.chmod(0o777)
    with pytest.raises(sockdir.UnsafeDirectory, match="without the sticky bit"):
        sockdir.prepare(str(parent / "run" / "agent.sock"))
    parent.chmod(0o1777)  # like /tmp: others cannot rename our directory away
    sockdir.prepare(str(parent / "run" / "agent.sock"))


def test_requests_on_one_flow_wait_for_each_other_and_others_do_not():
    """Each request in its turn, as the agent's workers run them: the one that
    sleeps holding a flow's lock gives the turn up, the one that waits for that
    lock gives it up too (else the two would wait for each other forever)."""
    turn = Turn()
    locks = FlowLocks(turn)
    order: list[str] = []
    inside = threading.Event()

    def slow() -> None:
        with turn.taken(), locks.locked(F1, F2):
            inside.set()
            turn.sleep(0.2)
            order.append("slow")

    def same() -> None:
        with turn.taken(), locks.locked(F2, F1):  # the same flow named the other way round
            order.append("same")

    def other() -> None:
        with turn.taken(), locks.locked(F3):
            order.append("other")

    t = threading.Thread(target=slow)
    t.start()
    inside.wait()
    ts = [threading.Thread(target=same), threading.Thread(target=other)]
    for x in ts:
        x.start()
    for x in (t, *ts):
        x.join(5)
        assert not x.is_alive(), "deadlock"
    assert order == ["other", "slow", "same"]
    assert len(locks) == 0  # nothing kept for flows nobody asks about


def test_a_turn_is_held_by_one_thread_at_a_time():
    turn = Turn()
    inside, peak = [0], [0]

    def work() -> None:
        for _ in range(50):
            with turn.taken():
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
                time.sleep(0.0005)  # a system call that keeps the turn
                with turn.taken():  # taken again in the same thread: no wait
                    pass
                inside[0] -= 1

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert peak[0] == 1
