"""The parts that run on hosts without libbpf (proxies, `mosto ctl`, chains) do
not load it: building the whole `mosto` parser, the client and the reference
proxy leave libbpf unloaded."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import mosto.cli, mosto.wire.client, mosto.proxy.relay
mosto.cli.build_parser()
from mosto.targets.xdp import libbpf
print(libbpf._Library._cdll is None, "mosto.targets.xdp.target" in sys.modules)
"""


def test_cli_client_and_proxy_do_not_load_libbpf():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]
