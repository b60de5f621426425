"""BMv2 for the PTF suite: compile p4src/ and run simple_switch_grpc in a netns.

    with switch(ns, ["dut0", "dut1", "dut2"]) as params:
        ...  # params: grpc_addr, device_id, p4info, bmv2_json (test parameters)

The switch runs inside the namespace because its Thrift server binds every
address; its P4Runtime server listens on 127.0.0.1 there, where PTF runs too.
Needs p4c-bm2-ss and simple_switch_grpc on PATH (tools/bmv2-available.sh).
MOSTO_BMV2_LOG=debug logs every packet to build/bmv2/simple_switch.log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from netns import Namespace

REPO = Path(__file__).resolve().parents[1]
P4SRC = REPO / "p4src"
OUT = REPO / "build" / "bmv2"
P4INFO = OUT / "mosto.p4info.txtpb"
BMV2_JSON = OUT / "mosto.json"
GRPC_PORT = 9559
DEVICE_ID = 0
START_TIMEOUT_S = 30.0


class Bmv2Error(RuntimeError):
    pass


def compile_p4(force: bool = False) -> tuple[Path, Path]:
    """p4src/mosto.p4 -> build/bmv2/ (BMv2 JSON and P4Info), when out of date.
    Any compiler warning is an error: the program must compile clean."""
    # The P4 includes shared/contract.h through cpp: a change there recompiles too.
    sources = sorted(P4SRC.rglob("*.p4")) + sorted((REPO / "shared").glob("*.h"))
    outputs = (P4INFO, BMV2_JSON)
    newest = max(p.stat().st_mtime for p in sources)
    if not force and all(o.exists() and o.stat().st_mtime >= newest for o in outputs):
        return P4INFO, BMV2_JSON
    OUT.mkdir(parents=True, exist_ok=True)
    cmd = [
        "p4c-bm2-ss",
        "--arch",
        "v1model",
        "--std",
        "p4-16",
        "--p4runtime-files",
        str(P4INFO),
        "-o",
        str(BMV2_JSON),
        str(P4SRC / "mosto.p4"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    output = (res.stdout + res.stderr).strip()
    if res.returncode != 0 or output:
        for o in outputs:
            o.unlink(missing_ok=True)
        raise Bmv2Error(f"{' '.join(cmd)}:\n{output or f'exit status {res.returncode}'}")
    return P4INFO, BMV2_JSON


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def switch(
    ns: Namespace, ifnames: list[str], grpc_host: str = "127.0.0.1"
) -> Iterator[dict[str, str]]:
    """simple_switch_grpc on ifnames (port N = ifnames[N]), no program loaded:
    the PTF target pushes the pipeline over P4Runtime. grpc_host: where its
    P4Runtime server listens (an address of ns)."""
    p4info, bmv2_json = compile_p4()
    log = OUT / "simple_switch.log"
    level = os.environ.get("MOSTO_BMV2_LOG", "warn")
    cmd = ["ip", "netns", "exec", ns.name, "simple_switch_grpc", "--no-p4"]
    cmd += ["--device-id", str(DEVICE_ID), "--log-console", "--log-level", level]
    for port, ifname in enumerate(ifnames):
        cmd += ["-i", f"{port}@{ifname}"]
    cmd += ["--", "--grpc-server-addr", f"{grpc_host}:{GRPC_PORT}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ns.listening(GRPC_PORT):
            if proc.poll() is not None:
                raise Bmv2Error(f"simple_switch_grpc exited ({proc.returncode}):\n{_log_tail(log)}")
            if time.monotonic() > deadline:
                raise Bmv2Error(f"simple_switch_grpc not listening after {START_TIMEOUT_S:.0f}s")
            time.sleep(0.1)
        yield {
            "grpc_addr": f"{grpc_host}:{GRPC_PORT}",
            "device_id": str(DEVICE_ID),
            "p4info": str(p4info),
            "bmv2_json": str(bmv2_json),
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
