"""Starting the agent the way the e2e stack, the demo and the benchmark do: when
it cannot start, the failure shows the agent's own words, not just a timeout."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from processes import Processes
from topology import topology


def test_an_agent_that_cannot_start_shows_its_log(tmp_path):
    with topology() as topo, Processes(Path(tempfile.mkdtemp(dir=tmp_path))) as procs:
        with pytest.raises(AssertionError) as failed:
            topo.start_agent(procs, "--pin-dir", str(tmp_path))  # not bpffs: refused
    message = str(failed.value)
    assert "the agent exited with status 2" in message
    assert f"mosto: {tmp_path} is not on a bpffs mount" in message
