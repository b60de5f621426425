"""Fig. 4's numbers from one run's records: the client's bytes per bin, the
proxy's events, the server's TCP counters. Pure functions (no root)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BEFORE_S = 5.0  # the goodput a dip is measured against: this long before the trigger
WINDOW_S = 1.0  # a dip is the worst window of this length from the trigger on
RECOVERED = 0.9  # recovered: a whole window at least this share of before
SLOW_START_S = 1.0
BIN_S = (
    0.1  # fig4.json's goodput_mbps bins  # never counted in "before" (the flow is still ramping up)
)


@dataclass(frozen=True)
class Timeline:
    """bytes[i] arrived in [i*bin_s, (i+1)*bin_s) after t0 (wall clock, s)."""

    t0: float
    bin_s: float
    bytes: Sequence[int]

    def mbps(self) -> list[float]:
        return [b * 8 / self.bin_s / 1e6 for b in self.bytes]

    def mean_mbps(self, start_s: float, end_s: float) -> float:
        lo, hi = self._index(start_s), self._index(end_s)
        if hi <= lo:
            return 0.0
        return sum(self.bytes[lo:hi]) * 8 / ((hi - lo) * self.bin_s) / 1e6

    def _index(self, t: float) -> int:
        return max(0, min(len(self.bytes), round(t / self.bin_s)))

    @property
    def end_s(self) -> float:
        return len(self.bytes) * self.bin_s


def event_time(events: Sequence[dict], name: str, t0: float) -> float | None:
    """The first event called name, in seconds after t0."""
    for ev in events:
        if ev.get("event") == name:
            return float(ev["t"]) - t0
    return None


def hold_start(events: Sequence[dict], t0: float) -> float | None:
    """When the hand-over's hold began: the handed_over event less the time
    it says the hold, drain and offload took."""
    for ev in events:
        if ev.get("event") == "handed_over":
            return float(ev["t"]) - t0 - float(ev.get("ms", 0.0)) / 1e3
    return None


def metrics(
    tl: Timeline, trigger_s: float, handover_s: float | None, hold_s: float | None = None
) -> dict:
    """goodput_before_mbps over the BEFORE_S before the trigger (not the first
    SLOW_START_S); goodput_dip_pct: how far the worst WINDOW_S window from the
    trigger on falls below it (the ramp's own cost counts); recovery_s: from
    the hold's start (hold_s; else the hand-over) to the first WINDOW_S window
    back to RECOVERED of before
    (None: not by the end of the run)."""
    start = max(SLOW_START_S, trigger_s - BEFORE_S)
    before = tl.mean_mbps(start, trigger_s)
    windows = _windows(tl, trigger_s)
    worst = min((m for _, m in windows), default=0.0)
    dip = 100.0 * (1 - worst / before) if before > 0 else None
    recovery: float | None = None
    if handover_s is not None and before > 0:
        # The first whole second after the hand-over back to RECOVERED of
        # before: how long the hand-over's own gap lasts. Later dips (BBR's
        # PROBE_RTT) happen without a hand-over too (the baseline shows them).
        start_s = handover_s if hold_s is None else hold_s
        back = [end - WINDOW_S for end, m in _windows(tl, start_s) if m >= RECOVERED * before]
        recovery = back[0] - start_s if back else None
    # The windows that overlap the hand-over itself (its hold and, with the
    # gradual delay, the ramp before it): what the hand-over costs at once,
    # apart from anything the sender does seconds later.
    at_handover = [
        m
        for end, m in windows
        if handover_s is not None and end - WINDOW_S <= handover_s + tl.bin_s / 2
    ]
    worst_at = min(at_handover, default=None)
    dip_at = 100.0 * (1 - worst_at / before) if before > 0 and worst_at is not None else None
    return {
        "before_window_s": [round(start, 2), round(trigger_s, 2)],
        "goodput_dip_at_handover_pct": None if dip_at is None else round(dip_at, 1),
        "goodput_before_mbps": round(before, 1),
        "goodput_worst_1s_mbps": round(worst, 1),
        "goodput_dip_pct": None if dip is None else round(dip, 1),
        "recovery_s": None if recovery is None else round(recovery, 2),
    }


def _windows(tl: Timeline, from_s: float) -> list[tuple[float, float]]:
    """(end, mean Mbit/s) of every WINDOW_S window starting at from_s or later,
    one per bin."""
    out = []
    t = from_s
    while t + WINDOW_S <= tl.end_s + 1e-9:
        out.append((t + WINDOW_S, tl.mean_mbps(t, t + WINDOW_S)))
        t += tl.bin_s
    return out


def stalls(tl: Timeline, from_s: float, below_mbps: float) -> list[list[float]]:
    """[start, end] (s) of every run of bins under below_mbps from from_s on."""
    out: list[list[float]] = []
    for i in range(max(0, round(from_s / tl.bin_s)), len(tl.bytes)):
        if tl.bytes[i] * 8 / tl.bin_s / 1e6 >= below_mbps:
            continue
        t = round(i * tl.bin_s, 2)
        if out and abs(out[-1][1] - t) < tl.bin_s / 2:
            out[-1][1] = round(t + tl.bin_s, 2)
        else:
            out.append([t, round(t + tl.bin_s, 2)])
    return out


def rescore(run: dict) -> dict:
    """A stored run's numbers again, from its timeline and events as kept in
    fig4.json (so a changed definition needs no new measurement)."""
    tl = Timeline(0.0, BIN_S, [round(m * 1e6 * BIN_S / 8) for m in run["goodput_mbps"]])
    trigger = event_time(run["events"], "trigger", 0.0)
    handover = event_time(run["events"], "handed_over", 0.0)
    at = trigger if trigger is not None else run["before_window_s"][1]
    hold = hold_start(run["events"], 0.0)
    return {**run, "hold_s": hold, **metrics(tl, at, handover, hold)}


def srtt_at(samples: Sequence[dict], t: float) -> float | None:
    """The sender's smoothed RTT (ms) in the last sample at or before t."""
    best = None
    for s in samples:
        if s["t"] <= t:
            best = s["rtt_ms"]
    return best


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))}


def summary(runs: Sequence[dict]) -> list[dict]:
    """Per RTT and mode (hand-over, gradual delay and hand-over, none): the
    medians over the repetitions, and every value for the spread."""
    groups: dict[tuple[float, str], list[dict]] = {}
    for r in runs:
        mode = r.get("mode") or (
            ("gradual" if r["gradual"] else "plain") if r.get("handover", True) else "none"
        )
        groups.setdefault((r["rtt_ms"], mode), []).append(r)
    keys = (
        "goodput_before_mbps",
        "goodput_dip_pct",
        "goodput_dip_at_handover_pct",
        "recovery_s",
    )
    out = []
    for (rtt, mode), rs in sorted(groups.items()):
        row: dict = {"rtt_ms": rtt, "mode": mode, "runs": len(rs)}
        for k in keys:
            values = [r[k] for r in rs if r.get(k) is not None]
            row[k] = _median(values)
            row[k + "_all"] = [r.get(k) for r in rs]
        for k in ("TcpRetransSegs", "TcpExtTCPTimeouts"):
            row[k] = [r["retrans_across"][k] for r in rs]
        row["handover_s"] = [r.get("handover_s") for r in rs]
        out.append(row)
    return out


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
