"""Background processes in network namespaces, for the demo, the benchmarks
and the end-to-end tests: started with their output in a log directory, and
all stopped on exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"


def mosto(*args: str) -> list[str]:
    return [str(BIN / "mosto"), *args]


def traffic(*args: str) -> list[str]:
    return [str(BIN / "python"), str(REPO / "tools" / "traffic.py"), *args]


def script_json(source: str, *args: str) -> tuple[Any, str]:
    """A Python script run in a process of its own, with this checkout's mosto:
    the JSON of its last line of output, and what it wrote to stderr."""
    p = subprocess.run(
        [sys.executable, "-c", source, *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "control")},
    )
    return json.loads(p.stdout.splitlines()[-1]), p.stderr


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """predicate's first truthy value, or AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Processes:
    def __init__(self, logdir: Path):
        self.logdir = logdir
        self._procs: list[subprocess.Popen] = []

    def spawn(
        self,
        ns,
        cmd: list[str],
        log: str | None = None,
        ready: bool = False,
        stdout: Any = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        """cmd inside namespace ns; stderr to logdir/log. ready: wait for the
        process to print "ready" on its first line (traffic.py serve does).
        env: variables to add to this process's environment."""
        stderr = open(self.logdir / log, "a") if log else subprocess.DEVNULL
        p = ns.popen(
            cmd,
            stdout=subprocess.PIPE if ready else stdout,
            stderr=stderr,
            text=True,
            env={**os.environ, **env} if env else None,
        )
        self._procs.append(p)
        if ready and p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{cmd[1:3]} did not start (see {self.logdir})")
        return p

    def log_tail(self, log: str, lines: int = 20) -> str:
        """The last lines of logdir/log, for a failure message."""
        try:
            text = (self.logdir / log).read_text(errors="replace")
        except OSError as exc:
            return f"({log}: {exc.strerror})"
        return "\n".join(text.splitlines()[-lines:]) or f"({log} is empty)"

    def stop_all(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.terminate()
        for p in self._procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs.clear()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
