"""Fault injection, for the tests that kill the agent or the proxy between the
steps of a hand-over (control/tests/e2e/test_faults.py): with
MOSTO_FAILPOINT=NAME in its environment the process SIGKILLs itself when it
reaches step NAME, exactly as an operator's kill -9 or an OOM kill would stop
it there. Unset, reach() is a string comparison."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

AGENT_POINTS = (
    "register",  # learning entries installed, the peers not yet prompted
    "hold",  # the hold in nftables, the proxy not yet answered
    "offload_before_repair",  # checks done, the sockets not yet in repair mode
    "offload_in_repair",  # the sockets in repair mode, no entry yet (repairlog.py)
    "offload_installed",  # entries active, the sockets in repair mode, unverified
    "offload_neutralised",  # verified, the proxy's sockets closed, splice not recorded
    "offload_done",  # spliced and recorded, the proxy not yet answered
)
PROXY_POINTS = (
    "proxy_registered",  # learning entries in, nothing held
    "proxy_held",  # the senders held, the drain not begun
    "proxy_offload_sent",  # the offload (with the sockets) sent, not yet answered
    "proxy_handed_over",  # the offload answered ok
)
POINTS = AGENT_POINTS + PROXY_POINTS
ARMED = os.environ.get("MOSTO_FAILPOINT", "")


class UnknownFailpoint(ValueError):
    pass


def check() -> None:
    if ARMED and ARMED not in POINTS:
        raise UnknownFailpoint(f"MOSTO_FAILPOINT={ARMED}: not one of {', '.join(POINTS)}")


def announce(who: str, log: Callable[..., None]) -> None:
    """At start: MOSTO_FAILPOINT checked (UnknownFailpoint) and, if set, said."""
    check()
    if ARMED:
        log("fault injection: this %s kills itself at %s", who, ARMED)


def reach(name: str) -> None:
    if name == ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
