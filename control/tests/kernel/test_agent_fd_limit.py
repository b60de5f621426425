"""The agent (root) raises its descriptor limit's hard ceiling for a full table
of splices (two reservation sockets each), up to fs.nr_open, and says so; or,
without CAP_SYS_RESOURCE (a container's root may lack it), says what it has."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest
from processes import script_json

SCRIPT = r"""
import json, logging, resource, sys
from mosto.agent import app
from mosto.agent.server import Limits
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 20000))
need = app.fds_needed(int(sys.argv[1]), Limits())
app._raise_fd_limit(need, int(sys.argv[1]))
print(json.dumps({"need": need, "limit": resource.getrlimit(resource.RLIMIT_NOFILE)}))
"""


CAP_SYS_RESOURCE = 24


def _has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


needs_cap = pytest.mark.skipif(
    os.geteuid() != 0 or not _has_cap_sys_resource(),
    reason="raising a hard limit takes root with CAP_SYS_RESOURCE",
)


def _run(max_entries: int) -> tuple[dict, str]:
    return script_json(SCRIPT, str(max_entries))


@needs_cap
def test_root_agent_raises_the_hard_limit_for_a_full_table_and_logs_it():
    from mosto.targets.xdp.abi import MAX_ENTRIES

    got, log = _run(MAX_ENTRIES)
    assert got["limit"] == [got["need"], got["need"]]
    assert got["need"] > MAX_ENTRIES
    assert f"descriptor limit raised from 20000 to {got['need']}" in log
    assert f"each for {MAX_ENTRIES // 2} splices" in log


@needs_cap
def test_the_limit_stops_at_fs_nr_open():
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    got, _ = _run(nr_open * 2)
    assert got["limit"] == [nr_open, nr_open]


@pytest.mark.skipif(_has_cap_sys_resource(), reason="this process may raise its hard limit")
def test_without_cap_sys_resource_the_agent_keeps_its_limit_and_says_so():
    from mosto.targets.xdp.abi import MAX_ENTRIES

    got, log = _run(MAX_ENTRIES)
    assert got["limit"] == [20000, 20000]
    assert f"descriptor limit 20000, {got['need']} wanted" in log


GROW = r"""
import json, os, resource, sys, threading
from mosto.agent import app

def fd_size():
    for line in open("/proc/self/status"):
        if line.startswith("FDSize:"):
            return int(line.split()[1])

resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
t = threading.Thread(target=threading.Event().wait, daemon=True)
t.start()  # as the agent: threads share the table, and each growth waits for RCU
before, open_before = fd_size(), sorted(os.listdir("/proc/self/fd"))
app._grow_fd_table(3000)
grown, open_grown = fd_size(), sorted(os.listdir("/proc/self/fd"))
app._grow_fd_table(1 << 30)
print(json.dumps({"before": before, "grown": grown, "capped": fd_size(),
                  "leaked": [f for f in open_grown if f not in open_before]}))
"""


@pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4096, reason="the hard limit is under 4096"
)
def test_the_descriptor_table_is_grown_once_at_start_to_what_splices_may_hold():
    got, _ = script_json(GROW)
    assert got["before"] < 3000 <= got["grown"]  # no hand-over opens a descriptor past it
    assert got["capped"] == 4096  # up to the limit, not past it
    assert got["leaked"] == []  # /proc/self/fd lists its own listing's descriptor: compared
