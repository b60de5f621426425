"""The data plane under test, as the PTF suite sees it: the same calls for
XDP and tc (through mosto.targets.xdp) and BMv2 (through mosto.targets.bmv2).
Logical ports: 0 and 1 are the switch ports; 2 is where a passed frame shows
up (the host stack of the ingress interface for XDP; for tc, a veth that a
filter after ours mirrors passed frames to, since packet sockets on the
ingress interface see every frame before tc does; the forwarding table's
host port for BMv2)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Protocol

from mosto.dataplane.entry import Entry, FlowKey

REPO = Path(__file__).resolve().parents[1]
PASS_PORT = 2


class PtfTarget(Protocol):
    def egress(self, port: int) -> int | str: ...
    def add(self, entry: Entry) -> None: ...
    def delete(self, match: FlowKey) -> None: ...
    def stats(self, match: FlowKey) -> tuple[int, int]: ...
    def learned_tsval(self, match: FlowKey) -> int | None: ...
    def counters(self) -> dict[str, int]: ...
    def events(self, timeout: float) -> list[tuple[FlowKey, int]]: ...
    def close(self) -> None: ...


class XdpPtfTarget:
    """The splice program attached to the DUT veths: native XDP, or tc."""

    def __init__(self, dut_ports: list[str], peers: list[str], hook: str = "xdp"):
        from mosto.targets.xdp import libbpf
        from mosto.targets.xdp.target import XdpTarget

        self._dut = dut_ports
        self._peers = peers
        self._hook = hook
        self.xdp = XdpTarget(pin_dir=None, hook=hook)
        for ifname in dut_ports:
            self.xdp.attach(ifname, "native", hook=hook)
        self._pass = None
        if hook == "xdp":
            # veth: XDP_TX and redirects reach the peer only if it runs XDP too.
            self._pass = libbpf.BpfObject(str(REPO / "build" / "parse_only.bpf.o"), None)
            for ifname in peers:
                libbpf.xdp_attach(
                    socket.if_nametoindex(ifname),
                    self._pass.prog_fd("mosto_parse_only"),
                    libbpf.XDP_FLAGS_DRV_MODE,
                )
        self._events: list[tuple[FlowKey, int]] = []
        self._ring_cm = self.xdp.events(lambda ev: self._events.append((ev.key, ev.tcp_flags)))
        self._ring = self._ring_cm.__enter__()

    def egress(self, port: int) -> int | str:
        return self._dut[port]

    def add(self, entry: Entry) -> None:
        self.xdp.add(entry)

    def delete(self, match: FlowKey) -> None:
        self.xdp.delete(match)

    def stats(self, match: FlowKey) -> tuple[int, int]:
        st = self.xdp.stats(match)
        return st.packets, st.bytes

    def learned_tsval(self, match: FlowKey) -> int | None:
        return self.xdp.stats(match).tsval

    def counters(self) -> dict[str, int]:
        return self.xdp.counters()

    def events(self, timeout: float) -> list[tuple[FlowKey, int]]:
        deadline = time.monotonic() + timeout
        while not self._events and time.monotonic() < deadline:
            self._ring.poll(10)
        out, self._events[:] = list(self._events), []
        return out

    def close(self) -> None:
        from mosto.targets.xdp.target import XdpTarget

        self._ring_cm.__exit__(None, None, None)
        for ifname in self._dut:
            XdpTarget.detach(ifname, self._hook)
        for ifname in self._peers:
            XdpTarget.detach(ifname)
        if self._pass:
            self._pass.close()
        self.xdp.close()


def open_target(params: dict) -> PtfTarget:
    kind = params.get("target")
    if kind in ("xdp", "tc"):
        return XdpPtfTarget(
            params["dut_ports"].split(","), params["peer_ports"].split(","), hook=kind
        )
    if kind == "bmv2":
        from bmv2_target import Bmv2PtfTarget

        return Bmv2PtfTarget(params)
    raise ValueError(f"unknown target {kind!r}: expected xdp, tc or bmv2")
