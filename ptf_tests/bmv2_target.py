"""The PTF target for BMv2: simple_switch_grpc started by tools/bmv2.py, driven
through mosto.targets.bmv2 (P4Runtime). Logical ports are the switch's port numbers;
port 2 is the host port of the forwarding table (its default action)."""

from __future__ import annotations

import time

from mosto.dataplane.entry import Entry, FlowKey
from mosto.targets.bmv2.target import Bmv2Target

REPORT_TIMEOUT_S = 1.0


class Bmv2PtfTarget:
    def __init__(self, params: dict):
        self.sw = Bmv2Target(
            params["grpc_addr"],
            int(params["device_id"]),
            p4info=params["p4info"],
            device_config=params["bmv2_json"],
        )
        self._events: list[tuple[FlowKey, int]] = []
        self._learning: set[FlowKey] = set()
        self._poller_cm = self.sw.events(lambda ev: self._events.append((ev.key, ev.tcp_flags)))
        self._poller = self._poller_cm.__enter__()

    def egress(self, port: int) -> int | str:
        return port

    def add(self, entry: Entry) -> None:
        self.sw.add(entry)
        if entry.learn:
            self._learning.add(entry.match)
        else:
            self._learning.discard(entry.match)

    def delete(self, match: FlowKey) -> None:
        self.sw.delete(match)

    def stats(self, match: FlowKey) -> tuple[int, int]:
        st = self.sw.stats(match)
        return st.packets, st.bytes

    def learned_tsval(self, match: FlowKey) -> int | None:
        """Learned TSvals come as digests: wait until every frame the entry
        counted has been reported (a digest may still be on its way)."""
        deadline = time.monotonic() + REPORT_TIMEOUT_S
        while True:
            st = self.sw.stats(match)
            if match not in self._learning:
                return st.tsval
            if self.sw.learn_reports(match) >= st.packets or time.monotonic() > deadline:
                return self.sw.stats(match).tsval
            time.sleep(0.005)

    def counters(self) -> dict[str, int]:
        return self.sw.counters()

    def events(self, timeout: float) -> list[tuple[FlowKey, int]]:
        self._poller.poll(int(timeout * 1000))
        out, self._events[:] = list(self._events), []
        return out

    def close(self) -> None:
        self._poller_cm.__exit__(None, None, None)
        self.sw.close()
