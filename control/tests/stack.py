"""A whole deployment in namespaces, for end-to-end tests: the topology, a
traffic server, the agent (XDP on the proxy's interfaces), proxies, and a
watcher that records the agent's events and the proxy host's FINs and RSTs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from topology import PROXY_C4, PROXY_C6, SERVER4, SERVER6, Topology

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
SERVER_PORT = 9000
IDLE_TIMEOUT_S = 4.0  # long transfers never idle this long; the idle test does
METRICS_PORT = 9108


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Stack:
    def __init__(self, topo: Topology, grace: float = 0.5):
        self.topo = topo
        self.grace = grace
        self.tmp = Path(tempfile.mkdtemp(prefix="mosto-e2e-"))
        self.tmp.chmod(0o1777)  # an unprivileged proxy writes its stats here
        self.events: list[dict] = []
        self._procs: list[subprocess.Popen] = []
        self.server = self._spawn(
            topo.server,
            [
                str(BIN / "python"),
                str(REPO / "tools/traffic.py"),
                "serve",
                "--listen",
                f"[::]:{SERVER_PORT}",
            ],
            wait_line=True,
        )
        self.agent: subprocess.Popen | None = None
        self.start_agent()
        self.quiet = self._spawn(
            topo.proxy,
            [
                str(BIN / "python"),
                str(REPO / "tools/quietcheck.py"),
                "pc",
                "ps",
                "--out",
                str(self.tmp / "fin-rst.json"),
            ],
            wait_line=True,
        )

    def _spawn(self, ns, cmd, wait_line=False, **kw) -> subprocess.Popen:
        p = ns.popen(
            cmd,
            stdout=subprocess.PIPE if wait_line else subprocess.DEVNULL,
            stderr=kw.pop("stderr", subprocess.DEVNULL),
            text=True,
            **kw,
        )
        self._procs.append(p)
        if wait_line:
            assert p.stdout.readline().strip() == "ready", cmd
        return p

    # -- the agent ----------------------------------------------------------

    def start_agent(self) -> None:
        log = open(self.tmp / "agent.log", "a")
        self.agent = self._spawn(
            self.topo.proxy,
            [
                str(BIN / "mosto"),
                "agent",
                "pc",
                "ps",
                "--mode",
                "native",
                "--pin-dir",
                self.topo.pin_dir,
                "--socket",
                self.topo.agent_socket,
                "--socket-mode",
                "666",
                "--grace",
                str(self.grace),
                "--idle-timeout",
                str(IDLE_TIMEOUT_S),
                "--metrics",
                f"127.0.0.1:{METRICS_PORT}",
            ],
            stderr=log,
        )
        wait_for(lambda: os.path.exists(self.topo.agent_socket), 10, "the agent's socket")
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        wait_for(lambda: self._watching, 5, "the event watch")

    _watching = False

    def _watch(self) -> None:
        p = self.topo.proxy.popen(
            [str(BIN / "mosto"), "ctl", "watch", "--socket", self.topo.agent_socket],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._watching = True
        for line in p.stdout:
            self.events.append(json.loads(line))
        self._watching = False

    def kill_agent(self) -> None:
        self.agent.send_signal(signal.SIGKILL)
        self.agent.wait()
        os.unlink(self.topo.agent_socket)

    def metrics(self) -> str:
        return self.topo.proxy.sh(
            "python3",
            "-c",
            "import urllib.request; print(urllib.request"
            f".urlopen('http://127.0.0.1:{METRICS_PORT}/metrics').read()"
            ".decode())",
        ).stdout

    def ctl(self, *args: str) -> str:
        return self.topo.proxy.sh(
            str(BIN / "mosto"), "ctl", *args, "--socket", self.topo.agent_socket
        ).stdout

    # -- proxies and transfers -----------------------------------------------

    @contextlib.contextmanager
    def proxy(
        self, port: int, *args: str, v6: bool = False, uid: int | None = None
    ) -> Iterator[ProxyProc]:
        stats = self.tmp / f"proxy-{port}.json"
        upstream = f"[{SERVER6}]:{SERVER_PORT}" if v6 else f"{SERVER4}:{SERVER_PORT}"
        cmd = [
            str(BIN / "mosto"),
            "proxy",
            "--listen",
            f"[::]:{port}" if v6 else f"0.0.0.0:{port}",
            "--upstream",
            upstream,
            "--agent",
            self.topo.agent_socket,
            "--stats-file",
            str(stats),
            *args,
        ]
        if uid is not None:
            cmd = [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--inh-caps=-all",
                *cmd,
            ]
        p = self._spawn(self.topo.proxy, cmd, stderr=open(self.tmp / f"proxy-{port}.log", "a"))
        wait_for(stats.exists, 10, "the proxy's stats file")
        try:
            yield ProxyProc(p, stats, port, v6)
        finally:
            p.terminate()
            p.wait()

    def fetch(self, proxy: ProxyProc, size: str, *args: str) -> dict:
        host = f"[{PROXY_C6}]" if proxy.v6 else PROXY_C4
        out = self.topo.client.sh(
            str(BIN / "python"),
            str(REPO / "tools/traffic.py"),
            "fetch",
            "--connect",
            f"{host}:{proxy.port}",
            "--size",
            size,
            *args,
            check=False,
        )
        assert out.stdout, out.stderr
        return json.loads(out.stdout)

    def events_of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    def fin_rst_from_proxy(self) -> list[dict]:
        """What the proxy host's stack sent so far (quietcheck restarts after)."""
        self.quiet.send_signal(signal.SIGTERM)
        self.quiet.wait()
        seen = json.loads((self.tmp / "fin-rst.json").read_text())
        self.quiet = self._spawn(
            self.topo.proxy,
            [
                str(BIN / "python"),
                str(REPO / "tools/quietcheck.py"),
                "pc",
                "ps",
                "--out",
                str(self.tmp / "fin-rst.json"),
            ],
            wait_line=True,
        )
        return seen

    def close(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
                p.wait()


class ProxyProc:
    def __init__(self, proc: subprocess.Popen, stats: Path, port: int, v6: bool):
        self.proc, self._stats, self.port, self.v6 = proc, stats, port, v6

    @property
    def stats(self) -> dict:
        return json.loads(self._stats.read_text())

    def cap_eff(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
        raise AssertionError("no CapEff")
