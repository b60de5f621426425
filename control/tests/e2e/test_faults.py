"""The agent killed (SIGKILL) at every step of a hand-over, restarted as an
operator's supervisor would restart it (nothing cleaned up by hand): the
transfer completes, through the proxy or through the splice, with every byte
intact, and nothing the dead agent made outlives the flow (no splice entry,
no learning entry, no hold). The agent kills itself at the step through
MOSTO_FAILPOINT (mosto.agent.failpoints)."""

from __future__ import annotations

import json
import threading

import pytest
from stack import Stack, wait_for

from mosto.agent.failpoints import POINTS

MIB = 1 << 20
# Steps by which the entries are installed: the flow goes on through the splice.
SPLICED = ("offload_installed", "offload_neutralised", "offload_done")


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


def _held(stack: Stack) -> str:
    return stack.topo.proxy.sh(
        "nft", "list", "set", "inet", "mosto_hold", "held4", check=False
    ).stdout


@pytest.mark.parametrize("point", POINTS)
def test_agent_killed_at_a_step_the_transfer_completes_and_nothing_is_left(stack, point):
    port = 8800 + POINTS.index(point)
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
