"""The PTF target for BMv2: simple_switch_grpc started by tools/bmv2.py, driven
through mosto.targets.bmv2 (P4Runtime). Logical ports are the switch's port numbers;
port 2 is the host port of the forwarding table (its default action)."""

from __future__ import annotations

import time

from mosto.dataplane.entry import FlowKey
from mosto.targets.bmv2.target import Bmv2Target
from targets import PtfTarget, _records

REPORT_TIMEOUT_S = 1.0


class Bmv2PtfTarget(PtfTarget):
    def __init__(self, params: dict):
        self.sw = Bmv2Target(
            params["grpc_addr"],
            int(params["device_id"]),
            p4info=params["p4info"],
            device_config=params["bmv2_json"],
        )
        super().__init__(self.sw, [0, 1])  # logical ports are the switch's port numbers

    def learned(self, match: FlowKey) -> list[tuple[int, int, int]]:
        """Learned TSvals come as digests: wait until every frame a learning
        entry counted has been reported (a digest may still be on its way)."""
        learning = any(e.learn for _, e in self.sw.entries() if e.match == match)
        deadline = time.monotonic() + REPORT_TIMEOUT_S
        while True:
            st = self.sw.stats(match)
            if not learning:
                return _records(st)
            if self.sw.learn_reports(match) >= st.packets or time.monotonic() > deadline:
                return _records(self.sw.stats(match))
            time.sleep(0.005)
