"""The agent killed (SIGKILL) at every step of a hand-over, restarted as an
operator's supervisor would restart it (nothing cleaned up by hand): the
transfer completes, through the proxy or through the splice, with every byte
intact, and nothing the dead agent made outlives the flow (no splice entry,
no learning entry, no hold). And the proxy killed at every step: the agent
finishes what it was given and keeps nothing of the rest. The process kills
itself at the step through MOSTO_FAILPOINT (mosto.failpoints)."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from stack import Stack, wait_for

from mosto.failpoints import AGENT_POINTS, PROXY_POINTS

MIB = 1 << 20
# Steps by which the entries are installed: the flow goes on through the splice.
SPLICED = ("offload_installed", "offload_neutralised", "offload_done")
# The offload's request carries the sockets: the agent finishes it without the proxy.
PROXY_SPLICED = ("proxy_offload_sent", "proxy_handed_over")


@pytest.fixture(scope="module")
def stack():
    with Stack.running("mfl") as s:
        yield s


def _entries_of(stack: Stack, port: int) -> list[dict]:
    out = stack.topo.proxy.sh(
        *_mosto("entry", "list", "--json", "--pin-dir", stack.topo.pin_dir)
    ).stdout
    return [e for e in json.loads(out) if port in (e["match"]["sport"], e["match"]["dport"])]


def _mosto(*args: str) -> list[str]:
    from processes import mosto

    return mosto(*args)


def _fetch_or_broken(stack: Stack, proxy) -> dict:
    """The client's result; a connection reset (the proxy died with data unread)
    is a result too."""
    from processes import traffic
    from topology import PROXY_C4

    out = stack.topo.client.sh(
        *traffic("fetch", "--connect", f"{PROXY_C4}:{proxy.port}", "--size", "64M"),
        "--pace",
        "0.002",
        check=False,
    )
    if out.stdout:
        return json.loads(out.stdout)
    assert "ConnectionResetError" in out.stderr, out.stderr
    return {"ok": False, "reset": True}


def _handovers(stack: Stack) -> Counter:
    """The agent's offload answers so far, by outcome."""
    return Counter(json.loads(stack.ctl("stats", "--json"))["handovers"])


def _held(stack: Stack) -> str:
    return stack.topo.proxy.sh(
        "nft", "list", "set", "inet", "mosto_hold", "held4", check=False
    ).stdout


@pytest.mark.parametrize("point", AGENT_POINTS)
def test_agent_killed_at_a_step_the_transfer_completes_and_nothing_is_left(stack, point):
    port = 8800 + AGENT_POINTS.index(point)
    stack.kill_agent()
    stack.start_agent(env={"MOSTO_FAILPOINT": point})
    armed = stack.agent
    with stack.proxy(port, "--handover-after", str(4 * MIB)) as proxy:
        box: dict = {}
        fetch = threading.Thread(
            target=lambda: box.update(stack.fetch(proxy, "64M", "--pace", "0.002"))
        )
        fetch.start()
        wait_for(lambda: armed.poll() is not None, 30, f"the agent to die at {point}")
        stack.start_agent()  # over the dead one's socket file, as a supervisor would
        fetch.join(120)
        assert box.get("ok"), box  # the client checks the sha256 of every byte
        if point not in SPLICED:  # the entries never went in: the proxy relayed it all
            # (its stats file is rewritten five times a second: let it catch up)
            wait_for(lambda: proxy.stats["relayed_bytes"] >= 64 * MIB, 5, "all relayed")
        stats = proxy.stats
    assert stats["flows"] == 1 and stats["refused"].get("agent_lost") == 1, stats
    if point in SPLICED:  # the entries were in: the data plane carried the rest
        assert stats["relayed_bytes"] < 64 * MIB, stats
    wait_for(lambda: not _entries_of(stack, port), 20, "the flow's entries to go")
    assert "elements" not in _held(stack), _held(stack)


@pytest.mark.parametrize("point", PROXY_POINTS)
def test_proxy_killed_at_a_step_the_agent_keeps_nothing_of_it(stack, point):
    port = 8900 + PROXY_POINTS.index(point)
    armed = {"MOSTO_FAILPOINT": point}
    before = _handovers(stack)
    with stack.proxy(port, "--handover-after", str(4 * MIB), env=armed) as proxy:
        got = _fetch_or_broken(stack, proxy)
        wait_for(lambda: proxy.proc.poll() is not None, 10, f"the proxy to die at {point}")
    answered = _handovers(stack) - before
    if point in PROXY_SPLICED:
        # The agent answered the offload it was sent (after refusals the live
        # proxy retried, if any). If it was ok, the data plane carried the flow to
        # its end, intact; a refusal of the last one (a late segment moved a
        # socket, say: a live proxy would have tried again) ends it.
        if point == "proxy_handed_over":  # the proxy died once it was answered ok
            assert answered["ok"] == 1, answered
        else:  # it died with its first offload in flight
            assert sum(answered.values()) == 1, answered
        assert bool(got.get("ok")) == (answered["ok"] == 1), (got, answered)
    else:  # the proxy's ends of both connections went with it
        assert not got.get("ok") and not answered, (got, answered)
    wait_for(lambda: not _entries_of(stack, port), 20, "the flow's entries to go")
    assert "elements" not in _held(stack), _held(stack)
    assert stack.agent.poll() is None, "the agent died with the proxy"
    assert f":{port}" not in stack.ctl("list")
