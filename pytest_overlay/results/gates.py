"""Regression gates and limits relative to the underlay.

``--overlay-compare-fail`` takes pytest-benchmark's expression style, per metric:
``tcp_throughput:10%`` (the headline statistic may worsen by at most 10 %), ``latency:p99:2``
(the p99 may worsen by at most 2 ms). Worse is what the metric registry says: higher for
times and loss, lower for throughput. A percentage of a saved 0 is taken of the metric's
``zero_base`` instead (loss: 1 %), so a gate on a loss-free baseline still fires.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass

from . import metrics
from .metrics import MAX_OVER_HOST_PCT, METRICS, MIN_FRACTION_OF_HOST, REGRESSION_PCT, STATS
from .records import Record

OK, REGRESSED, INCONCLUSIVE = "ok", "regressed", "inconclusive"
# The rule, as the README and the report state it.
RULE = ("a gate fails a test only when the statistic got worse by more than the gate's limit and by more than its "
        "noise, the combined 95 % intervals of the saved and the new value plus the link emulator's release error "
        "on the path; worse beyond the limit but within that noise is inconclusive")


@dataclass(frozen=True)
class Gate:
    """One regression limit: a metric's statistic may worsen by `limit` (percent or absolute)."""

    metric: str
    stat: str
    limit: float
    percent: bool

    def __str__(self) -> str:
        return f"{self.metric}:{self.stat}:{self.limit:g}{'%' if self.percent else ''}"


def parse_gate(text: str) -> Gate:
    """METRIC[:STAT]:LIMIT[%], e.g. tcp_throughput:10% or latency:p99:2."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in METRICS:
        raise argparse.ArgumentTypeError(
            f"{text!r}; expected METRIC[:STAT]:LIMIT[%] with METRIC one of {', '.join(METRICS)}, e.g. tcp_throughput:10%")
    stat = parts[1] if len(parts) == 3 else METRICS[parts[0]].headline
    if stat not in STATS:
        raise argparse.ArgumentTypeError(f"{text!r}: statistic {stat!r}; allowed: {', '.join(STATS)}")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(%?)", parts[-1])
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: limit {parts[-1]!r} is not a non-negative number or percentage")
    return Gate(parts[0], stat, float(match.group(1)), bool(match.group(2)))


@dataclass(frozen=True)
class Comparison:
    """One statistic of one result, saved and now."""

    metric: str
    overlay: str
    circuit: str
    stat: str
    saved: float
    now: float
    noise: float  # combined 95 % half-width of the statistic, plus the instrument's error; a change inside it is noise
    unit: str

    @classmethod
    def of(cls, saved: Record, now: Record, stat: str) -> "Comparison":
        noise = math.hypot(saved.stats.interval(stat), now.stats.interval(stat))
        noise += max(instrument_ms(saved), instrument_ms(now)) if now.unit == "ms" else 0.0
        return cls(now.metric, now.overlay, now.circuit, stat, saved.value(stat), now.value(stat), noise, now.unit)

    @property
    def change_pct(self) -> float:
        return (self.now - self.saved) / self.saved * 100 if self.saved else math.inf

    @property
    def within_noise(self) -> bool:
        return abs(self.now - self.saved) <= self.noise

    def worse_by(self) -> float:
        """How much worse the new value is (negative: better), in the metric's unit."""
        return metrics.get(self.metric).worse_by(self.saved, self.now)

    def breaks(self, gate: Gate) -> bool:
        """Worse by more than the gate's limit (the point estimates alone)."""
        worse = self.worse_by()
        if gate.percent:
            base = abs(self.saved) or metrics.get(self.metric).zero_base
            return worse / base * 100 > gate.limit
        return worse > gate.limit

    def verdict(self, gate: Gate) -> str:
        """REGRESSED where the statistic got worse by more than the gate's limit and by more
        than the comparison's noise (both runs' 95 % intervals combined); INCONCLUSIVE where it
        is worse beyond the limit but within that noise; else OK."""
        if not self.breaks(gate):
            return OK
        return INCONCLUSIVE if self.worse_by() <= self.noise else REGRESSED

    def describe(self) -> str:
        change = f"{self.change_pct:+.1f} %" if math.isfinite(self.change_pct) else f"{self.now - self.saved:+.3f} {self.unit}"
        return (f"{self.metric} {self.stat} on {self.circuit} through {self.overlay}: saved {self.saved:.3f} {self.unit}, "
                f"now {self.now:.3f} {self.unit} ({change}{', within noise' if self.within_noise else ''})")

    def to_json(self, run: str, gate: Gate | None) -> dict:
        return {"run": run, "stat": self.stat, "saved": self.saved, "now": self.now, "change_pct": self.change_pct,
                "noise": self.noise, "within_noise": self.within_noise, "gate": str(gate) if gate else None,
                "verdict": self.verdict(gate) if gate else None}


def instrument_ms(record: Record) -> float:
    """The link emulator's own error on a time the record measured: how late it released
    packets on the link directions of the record's path (each direction's 99th percentile, a
    histogram bucket's upper edge, summed over the path). Run to run it moves a mean RTT by up
    to that much whatever the overlay does: a same-commit run on this machine moved a 10 ms
    circuit's mean by 0.12 ms as the delay line's p99 went from 50 to 100 us per direction.
    (A record's `instrument` adds the probe's typical wait for a CPU: a bias from above that
    both runs of a comparison carry, so a gate's noise leaves it out.)"""
    path = record.exclusions.get("path") or []
    return sum((record.emulator.get(direction) or {}).get("p99_late_us") or 0.0 for direction in path) / 1000


def relative_failures(record: Record, base: Record, limits: dict[str, float]) -> list[str]:
    """Limits relative to the underlay's record of the same circuit that `record` breaks."""
    metric = metrics.get(record.metric)
    stat = metric.headline
    before, now = base.value(stat), record.value(stat)
    record.vs_host = {"stat": stat, "host": before, "now": now}
    failures = []
    if MAX_OVER_HOST_PCT in limits and before and (now - before) / before * 100 > limits[MAX_OVER_HOST_PCT]:
        failures.append(f"{record.metric} {stat} {now:.3f} {record.unit} is more than "
                        f"{limits[MAX_OVER_HOST_PCT]:g} % above the underlay's {before:.3f}")
    if MIN_FRACTION_OF_HOST in limits and now < limits[MIN_FRACTION_OF_HOST] * before:
        failures.append(f"{record.metric} {stat} {now:.3f} {record.unit} is below "
                        f"{limits[MIN_FRACTION_OF_HOST]:g} × the underlay's {before:.3f}")
    return failures


def needs_host(limits: dict[str, float]) -> bool:
    return MAX_OVER_HOST_PCT in limits or MIN_FRACTION_OF_HOST in limits


@dataclass
class Judged:
    """What the gates said of one record: the failures (regressed) and the changes beyond a
    limit that its noise cannot tell from no change (inconclusive)."""

    regressed: list[str]
    inconclusive: list[str]


def regression_failures(record: Record, saved: Record | None, run_name: str, gates: list[Gate],
                        limits: dict[str, float]) -> Judged:
    """Compare with the saved run's record: every gated statistic, plus the headline one.

    Each comparison is kept on the record, with whether it is within noise and its verdict.
    """
    judged = Judged([], [])
    metric = metrics.get(record.metric)
    gates = [g for g in gates if g.metric == record.metric]
    if not gates and REGRESSION_PCT in limits:
        gates = [Gate(record.metric, metric.headline, limits[REGRESSION_PCT], True)]
    unusable = ("has no record of it" if saved is None else
                f"holds it INVALID ({saved.invalid_reasons[0] if saved.invalid_reasons else 'no reason given'})"
                if not saved.valid else "")
    if unusable:
        # A gate never passes for want of a baseline: it says it could not compare.
        judged.inconclusive += [f"not compared against {gate}: the saved run {run_name} {unusable} "
                                f"({record.metric} on {record.circuit} through {record.overlay})" for gate in gates]
        return judged
    for gate in gates or [None]:
        comparison = Comparison.of(saved, record, gate.stat if gate else metric.headline)
        record.compared.append(comparison.to_json(run_name, gate))
        if gate is None:
            continue
        verdict = comparison.verdict(gate)
        if verdict == REGRESSED:
            judged.regressed.append(f"regression beyond {gate}: {comparison.describe()} [saved run {run_name}]")
        elif verdict == INCONCLUSIVE:
            judged.inconclusive.append(f"inconclusive against {gate}: {comparison.describe()}, a change its noise "
                                       f"(±{comparison.noise:.3f} {comparison.unit}) cannot tell from none "
                                       f"[saved run {run_name}]")
    return judged
