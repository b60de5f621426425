"""The agent's Prometheus metrics, read from the agent and the data plane at scrape time."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from mosto.agent.core import Agent


class AgentCollector(Collector):
    def __init__(self, agent: Agent):
        self.agent = agent

    def collect(self):
        stats = self.agent.stats()
        splices = GaugeMetricFamily("mosto_splices", "Spliced flows in the data plane")
        splices.add_metric([], len(stats["splices"]))
        yield splices
        learning = GaugeMetricFamily("mosto_learning_entries", "Registered flows not yet spliced")
        learning.add_metric([], stats["learning"])
        yield learning
        handovers = CounterMetricFamily(
            "mosto_handovers", "Hand-overs by result", labels=["result"]
        )
        for result, n in stats["handovers"].items():
            handovers.add_metric([result], n)
        yield handovers
        lat = self.agent.latencies
        summary = SummaryMetricFamily("mosto_handover_seconds", "Successful hand-over latency")
        summary.add_metric([], len(lat), sum(lat))
        yield summary
        packets = CounterMetricFamily(
            "mosto_dataplane_packets", "Data-plane packets by outcome", labels=["outcome"]
        )
        for outcome, n in stats["counters"].items():
            packets.add_metric([outcome], n)
        yield packets
        per_splice = CounterMetricFamily(
            "mosto_splice_bytes", "Bytes through a splice", labels=["splice", "direction"]
        )
        for s in stats["splices"]:
            for direction in ("to_server", "to_client"):
                if s[direction]:
                    per_splice.add_metric([str(s["id"]), direction], s[direction]["bytes"])
        yield per_splice
        if self.agent.tx_errors is not None:
            tx = CounterMetricFamily(
                "mosto_xdp_tx_errors",
                "XDP_TX frames the driver could not send (ethtool -S), per interface",
                labels=["interface"],
            )
            for ifname, n in self.agent.tx_errors.snapshot().items():
                tx.add_metric([ifname], n)
            yield tx
