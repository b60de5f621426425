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

from mosto.dataplane.entry import FlowKey
from mosto.targets.base import EntryStats, Target

REPO = Path(__file__).resolve().parents[1]
PASS_PORT = 2


class PtfTarget:
    """A data plane (mosto.targets.base.Target, as `dp`) and where its logical
    ports are; the suite drives `dp` directly. Subclasses set it up and take
    it down."""

    def __init__(self, dp: Target, egress: list[int | str]):
        self.dp = dp
        self._egress = egress
        self._events: list[tuple[FlowKey, int]] = []
        self._reader_cm = dp.events(lambda ev: self._events.append((ev.key, ev.tcp_flags)))
        self._reader = self._reader_cm.__enter__()

    def egress(self, port: int) -> int | str:
        return self._egress[port]

    def learned(self, match: FlowKey) -> list[tuple[int, int, int]]:
        """A learning entry's records, (tsval, seq, ack): one per CPU that saw a
        frame with a TSval on XDP (frames on a veth land on any CPU), one at most
        on BMv2."""
        return _records(self.dp.stats(match))

    def events(self, timeout: float) -> list[tuple[FlowKey, int]]:
        deadline = time.monotonic() + timeout
        while not self._events and time.monotonic() < deadline:
            self._reader.poll(10)
        out, self._events[:] = list(self._events), []
        return out

    def close(self) -> None:
        self._reader_cm.__exit__(None, None, None)
        self.dp.close()


class XdpPtfTarget(PtfTarget):
    """The splice program attached to the DUT veths: native XDP, or tc."""

    def __init__(self, dut_ports: list[str], peers: list[str], hook: str = "xdp"):
        from mosto.targets.xdp import libbpf
        from mosto.targets.xdp.target import XdpTarget

        self._dut = dut_ports
        self._peers = peers
        self._hook = hook
        xdp = XdpTarget(pin_dir=None, hook=hook)
        for ifname in dut_ports:
            xdp.attach(ifname, "native", hook=hook)
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
        super().__init__(xdp, list(dut_ports))

    def close(self) -> None:
        from mosto.targets.xdp.target import XdpTarget

        for ifname in self._dut:
            XdpTarget.detach(ifname, self._hook)
        for ifname in self._peers:
            XdpTarget.detach(ifname)
        if self._pass:
            self._pass.close()
        super().close()


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


def _records(st: EntryStats) -> list[tuple[int, int, int]]:
    return [(r.tsval, r.seq, r.ack) for r in st.learned]
