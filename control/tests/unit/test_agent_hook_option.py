"""`mosto agent --hook`: what reaches AgentConfig."""

from __future__ import annotations

import pytest

from mosto import cli
from mosto.agent import app


@pytest.mark.parametrize(
    ("args", "hook", "mode"),
    [
        ([], "auto", "auto"),  # tc on veth, XDP elsewhere: decided per interface
        (["--hook", "tc"], "tc", "auto"),
        (["--hook", "xdp"], "xdp", "auto"),
        (["--mode", "native"], "xdp", "native"),  # an XDP mode asks for XDP
        (["--hook", "tc", "--mode", "generic"], "tc", "generic"),
    ],
)
def test_hook_and_mode(monkeypatch, args, hook, mode):
    seen = []
    monkeypatch.setattr(app, "run", lambda cfg: seen.append(cfg) or 0)
    assert cli.main(["agent", "eth9", "--socket", "/nonexistent", *args]) == 0
    assert (seen[0].hook, seen[0].mode, seen[0].interfaces) == (hook, mode, ["eth9"])
