"""The proxy's gradual delay (steps, ramp timing, the delay queue), its
hand-over policy, and TCP_INFO on a loopback socket: no root needed."""

from __future__ import annotations

import socket
import time

import pytest

from mosto.proxy import tcpinfo
from mosto.proxy.gradual import DelayQueue, GradualDelay, Ramp
from mosto.proxy.relay import Policy


def test_steps_reach_the_target_in_steps():
    assert GradualDelay(10).steps(35) == [10, 20, 30, 35]
    assert GradualDelay(10).steps(30) == [10, 20, 30]
    assert GradualDelay(10).steps(4) == [4]
    assert GradualDelay(10).steps(0) == []


@pytest.mark.parametrize("kwargs", [{"step_ms": 0}, {"target_ms": -1}, {"step_rtts": 0}])
def test_bad_ramps_are_refused(kwargs):
    with pytest.raises(ValueError):
        GradualDelay(**kwargs)


def test_a_step_lasts_step_rtts_of_the_loop_with_its_delay():
    ramp = Ramp(GradualDelay(10, step_rtts=4), 20, now=0.0)
    assert ramp.advance(0.0, loop_s=0.025) == pytest.approx(0.010)
    until = 4 * (0.025 + 0.010)
    assert ramp.advance(until - 0.001, 0.025) is None
    assert ramp.advance(until, 0.025) == pytest.approx(0.020)
    assert not ramp.done
    assert ramp.advance(until + 4 * 0.045, 0.025) is None
    assert ramp.done


def test_the_delay_queue_keeps_order_and_releases_on_time():
    q = DelayQueue()
    q.push(1.0, b"a")
    q.push(0.5, b"b")  # a shorter delay later must not overtake
    assert q.pop_due(0.9) == b""
    assert q.pop_due(1.0) == b"ab" and q.bytes == 0 and not q
    q.push(time.monotonic() + 100, b"xyz")
    q.release_all()  # a hold: due now
    assert q.pop_due(time.monotonic()) == b"xyz"


def test_policy_checks_its_trigger():
    with pytest.raises(ValueError):
        Policy("bytes")
    with pytest.raises(ValueError):
        Policy("time")
    with pytest.raises(ValueError):
        Policy("sometimes", 1)
    assert Policy("slowstart").after_bytes is None


def test_tcp_info_of_a_loopback_connection():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        c = socket.create_connection(srv.getsockname())
        s, _ = srv.accept()
        with c, s:
            s.sendall(b"x" * 100_000)
            got = 0
            while got < 100_000:
                got += len(c.recv(65536))
            info = tcpinfo.read(s)
            assert info.cwnd >= 1 and info.rtt_us > 0
            assert info.ssthresh <= tcpinfo.INFINITE_SSTHRESH
            assert info.left_slow_start == (info.ssthresh < tcpinfo.INFINITE_SSTHRESH)
            fresh = tcpinfo.read(c)  # sent nothing: still in its first slow start
            assert fresh.ssthresh == tcpinfo.INFINITE_SSTHRESH and not fresh.left_slow_start
