"""Holding a flow's senders while the proxy drains: the proxy host's netfilter
drops the data-bearing segments of held flows (pure ACKs, window updates and
FINs without data still pass), so the proxy's queues empty and stay empty.
The senders retransmit what was dropped after the hand-over, into the splice.

Holds are elements of two nftables sets; a fixed set of rules (one per TCP
data offset, since nftables cannot subtract the header length from the IP
length) drops what carries payload. The rules live in the table `mosto_hold`.

Why nftables and not the data plane: it is the proxy host's own kernel, so a
hold works the same whichever data plane (XDP or a switch) does the splicing.
"""

from __future__ import annotations

import json
import threading

import nftables  # Debian's python3-nftables: libnftables' own binding

from mosto.dataplane.entry import FlowKey

TABLE = "mosto_hold"
TCP_DOFF_MIN, TCP_DOFF_MAX = 5, 15
IPV4_HLEN = 20


class HoldError(Exception):
    pass


def _rules() -> list[str]:
    rules = []
    for doff in range(TCP_DOFF_MIN, TCP_DOFF_MAX + 1):
        hdr = 4 * doff
        rules.append(
            f"add rule inet {TABLE} prerouting ip hdrlength 5 @th,96,4 {doff} "
            f"ip length > {IPV4_HLEN + hdr} "
            f"ip saddr . ip daddr . tcp sport . tcp dport @held4 counter drop"
        )
        rules.append(
            f"add rule inet {TABLE} prerouting @th,96,4 {doff} ip6 length > {hdr} "
            f"ip6 saddr . ip6 daddr . tcp sport . tcp dport @held6 counter drop"
        )
    return rules


class Holds:
    """The hold table of this network namespace."""

    def __init__(self) -> None:
        self._nft = nftables.Nftables()
        self._lock = threading.Lock()
        self._held: set[FlowKey] = set()  # what the sets hold: only this agent adds to them
        # A fresh table: holds of an agent that died are void (their proxies retry).
        self._nft.cmd(f"delete table inet {TABLE}")
        self._run(
            "\n".join(
                [
                    f"add table inet {TABLE}",
                    # raw priority: before conntrack and before the socket sees anything
                    f"add chain inet {TABLE} prerouting "
                    "{ type filter hook prerouting priority -300; }",
                    f"add set inet {TABLE} held4 {{ type ipv4_addr . ipv4_addr . inet_service . "
                    "inet_service; }",
                    f"add set inet {TABLE} held6 {{ type ipv6_addr . ipv6_addr . inet_service . "
                    "inet_service; }",
                    *_rules(),
                ]
            )
        )

    def _run(self, cmd: str) -> str:
        rc, out, err = self._nft.cmd(cmd)
        if rc != 0:
            raise HoldError(f"nft: {err.strip()}")
        return out

    def _element(self, flow: FlowKey) -> str:
        s = "held4" if flow.family == 4 else "held6"
        return f"inet {TABLE} {s} {{ {flow.src} . {flow.dst} . {flow.sport} . {flow.dport} }}"

    def hold(self, *flows: FlowKey) -> None:
        """Holds the flows, in one nftables transaction."""
        with self._lock:
            new = [f for f in flows if f not in self._held]
            if new:
                self._run("\n".join(f"add element {self._element(f)}" for f in new))
                self._held.update(new)

    def release(self, *flows: FlowKey) -> None:
        """Lifts what is held of these flows; no nftables work at all for the rest
        (deleting an absent element costs libnftables ~8 ms, an error path)."""
        with self._lock:
            held = [f for f in flows if f in self._held]
            if held:
                self._run("\n".join(f"delete element {self._element(f)}" for f in held))
                self._held.difference_update(held)

    def held(self, flow: FlowKey) -> bool:
        with self._lock:
            return flow in self._held

    def dropped(self) -> int:
        """Segments dropped by holds since the table was made."""
        self._nft.set_json_output(True)
        try:
            out = json.loads(self._run(f"list chain inet {TABLE} prerouting"))
        finally:
            self._nft.set_json_output(False)
        total = 0
        for item in out["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    total += expr["counter"]["packets"]
        return total

    def close(self) -> None:
        with self._lock:
            self._nft.cmd(f"delete table inet {TABLE}")
