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
from collections.abc import Iterator
from pathlib import Path

from processes import BIN, REPO, Processes, mosto, traffic, wait_for
from topology import PROXY_C4, PROXY_C6, SERVER4, SERVER6, Topology, topology

__all__ = ["IDLE_TIMEOUT_S", "Stack", "wait_for"]

SERVER_PORT = 9000
IDLE_TIMEOUT_S = 4.0  # long transfers never idle this long; the idle test does
METRICS_PORT = 9108


class Stack:
    def __init__(self, topo: Topology, grace: float = 0.5, agent_args: tuple[str, ...] = ()):
        self.topo = topo
        self.grace = grace
        self.agent_args = agent_args
        self.tmp = Path(tempfile.mkdtemp(prefix="mosto-e2e-"))
        self.tmp.chmod(0o1777)  # an unprivileged proxy writes its stats here
        self.events: list[dict] = []
        self.procs = Processes(self.tmp)
        self.procs.spawn(
            topo.server,
            traffic("serve", "--listen", f"[::]:{SERVER_PORT}"),
            "server.log",
            ready=True,
        )
        self.agent: subprocess.Popen | None = None
        self.start_agent()
        self.quiet = self._start_quietcheck()

    def _start_quietcheck(self) -> subprocess.Popen:
        return self.procs.spawn(
            self.topo.proxy,
            [
                str(BIN / "python"),
                str(REPO / "tools" / "quietcheck.py"),
                "pc",
                "ps",
                "--out",
                str(self.tmp / "fin-rst.json"),
            ],
            "quietcheck.log",
            ready=True,
        )

    # -- the agent ----------------------------------------------------------

    def start_agent(self, env: dict[str, str] | None = None) -> None:
        self.agent = self.topo.start_agent(
            self.procs,
            "--mode",
            "native",
            "--socket-mode",
            "666",
            "--grace",
            str(self.grace),
            "--idle-timeout",
            str(IDLE_TIMEOUT_S),
            "--metrics",
            f"127.0.0.1:{METRICS_PORT}",
            *self.agent_args,
            env=env,
        )
        watch = self.procs.spawn(
            self.topo.proxy,
            mosto("ctl", "watch", "--socket", self.topo.agent_socket),
            stdout=subprocess.PIPE,
        )
        threading.Thread(target=self._record, args=(watch,), daemon=True).start()

    def _record(self, watch: subprocess.Popen) -> None:
        for line in watch.stdout:
            self.events.append(json.loads(line))

    def kill_agent(self) -> None:
        self.agent.send_signal(signal.SIGKILL)
        self.agent.wait()
        os.unlink(self.topo.agent_socket)

    def ctl(self, *args: str) -> str:
        return self.topo.proxy.sh(*mosto("ctl", *args, "--socket", self.topo.agent_socket)).stdout

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
        return self.topo.proxy.sh(
            "python3",
            "-c",
            f"import urllib.request; print(urllib.request.urlopen({url!r}).read().decode())",
        ).stdout

    # -- proxies and transfers -----------------------------------------------

    @contextlib.contextmanager
    def proxy(
        self,
        port: int,
        *args: str,
        v6: bool = False,
        uid: int | None = None,
        transparent: bool = False,
        env: dict[str, str] | None = None,
    ) -> Iterator[ProxyProc]:
        """A reference proxy on port; transparent: it takes the clients' connections
        to the server (TPROXY) and connects as the client."""
        stats = self.tmp / f"proxy-{port}.json"
        if stats.exists():
            raise ValueError(f"port {port} was used by another proxy of this stack")
        listen = f"[::]:{port}" if v6 else f"0.0.0.0:{port}"
        upstream = f"[{SERVER6}]:{SERVER_PORT}" if v6 else f"{SERVER4}:{SERVER_PORT}"
        cmd = mosto(
            "proxy",
            "--listen",
            listen,
            *(["--transparent"] if transparent else ["--upstream", upstream]),
            "--agent",
            self.topo.agent_socket,
            "--stats-file",
            str(stats),
            *args,
        )
        if uid is not None:
            cmd = [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--inh-caps=-all",
                *cmd,
            ]
        p = self.procs.spawn(self.topo.proxy, cmd, f"proxy-{port}.log", env=env)
        wait_for(stats.exists, 10, "the proxy's stats file")
        try:
            yield ProxyProc(p, stats, port, v6)
        finally:
            p.terminate()
            p.wait()

    def fetch(self, proxy: ProxyProc | None, size: str, *args: str) -> dict:
        """A transfer through proxy; None: to the server itself (a transparent proxy
        may intercept it)."""
        if proxy is None:
            to = f"{SERVER4}:{SERVER_PORT}"
        else:
            to = f"[{PROXY_C6}]:{proxy.port}" if proxy.v6 else f"{PROXY_C4}:{proxy.port}"
        out = self.topo.client.sh(
            *traffic("fetch", "--connect", to, "--size", size, *args), check=False
        )
        assert out.stdout, out.stderr
        return json.loads(out.stdout)

    def idle(self, port: int, count: int, seconds: float) -> subprocess.Popen:
        """count quiet connections to the proxy on port, kept open for seconds."""
        return self.procs.spawn(
            self.topo.client,
            traffic(
                "idle",
                "--connect",
                f"{PROXY_C4}:{port}",
                "--count",
                str(count),
                "--seconds",
                str(seconds),
            ),
        )

    def events_of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    def fin_rst_from_proxy(self) -> list[dict]:
        """What the proxy host's stack sent so far (the recorder restarts after)."""
        self.quiet.send_signal(signal.SIGTERM)
        self.quiet.wait()
        seen = json.loads((self.tmp / "fin-rst.json").read_text())
        self.quiet = self._start_quietcheck()
        return seen

    def close(self) -> None:
        self.procs.stop_all()

    @classmethod
    @contextlib.contextmanager
    def running(cls, prefix: str, **kwargs) -> Iterator[Stack]:
        """A stack on a topology of its own, all of it removed afterwards."""
        with topology(prefix) as topo:
            stack = cls(topo, **kwargs)
            try:
                yield stack
            finally:
                stack.close()


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
