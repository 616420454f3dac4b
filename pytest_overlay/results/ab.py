"""A/B in one run: the paired verdict on two variants measured in interleaved rounds.

The method. Each pair is one round of A and one of B on the same circuit, taken back to back
in an order drawn at random (A B or B A), so that a drift of the machine or the emulator over
minutes falls on both sides alike. The difference of a metric's headline statistic, d = B - A,
is taken per pair; its mean and 95 % interval come from Student's t over the pairs (a paired
t interval). It assumes the pairs' differences independent and near normal (each is the
difference of two means over hundreds of samples), and no carry-over from one round to the
next (the order is random, so one would widen the interval, not shift it).

The verdict is three-way, as an equivalence test's (Chromium's Pinpoint says SAME, DIFFERENT
or UNKNOWN): *same* where the whole interval lies within the metric's equivalence margin,
*different* where it lies wholly beyond it (so it also excludes 0), *unknown* where it
straddles the margin's edge. While one is unknown the run takes more pairs, within a budget.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from dataclasses import asdict, dataclass, field

from . import metrics
from .gates import Gate
from .records import t95

SAME, DIFFERENT, UNKNOWN = "same", "different", "unknown"
METHOD = ("paired rounds, A and B back to back in random order; the difference B - A of the headline statistic "
          "per pair; its 95 % interval by Student's t over the pairs; same: the interval within the margin; "
          "different: the interval wholly beyond it; unknown: else")


def parse_margin(text: str) -> tuple[str, float, bool]:
    """METRIC:MARGIN[%] (--overlay-ab-margin), e.g. latency:0.1% or jitter:0.02 (ms)."""
    name, _, value = text.partition(":")
    comparable = [m.name for m in metrics.METRICS.values() if m.ab_margin]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(%?)", value)
    if name not in comparable or not match:
        raise argparse.ArgumentTypeError(f"{text!r}; expected METRIC:MARGIN[%] with METRIC one of "
                                         f"{', '.join(comparable)}, e.g. latency:0.1%")
    return name, float(match.group(1)), bool(match.group(2))


def margin_of(metric: str, a_value: float, given: list[tuple[str, float, bool]] = ()) -> tuple[float, str]:
    """The equivalence margin in the metric's unit, at A's value, and how it was set."""
    chosen = [(value, percent) for name, value, percent in given if name == metric]
    if chosen:
        value, percent = chosen[-1]
        source = f"--overlay-ab-margin {metric}:{value:g}{'%' if percent else ''}"
    else:
        text = metrics.get(metric).ab_margin
        value, percent = float(text.rstrip("%")), text.endswith("%")
        source = f"default {metric}:{text}"
    return (abs(a_value) * value / 100 if percent else value), source


def verdict(low: float, high: float, margin: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return UNKNOWN
    if -margin < low and high < margin:
        return SAME
    if low > margin or high < -margin:
        return DIFFERENT
    return UNKNOWN


@dataclass
class Pair:
    """One pair of rounds: the order they ran in and each one's value (None: INVALID, why)."""

    order: str  # "AB" or "BA"
    a: float | None
    b: float | None
    why: str = ""  # why the pair is left out, where a round is INVALID


FIELD_DOCS = {
    "metric": "the metric compared", "circuit": "the circuit it was compared on",
    "a": "variant A as given: kind[setting=value,...]", "b": "variant B as given", "stat": "its headline statistic",
    "unit": "the metric's unit", "n_pairs": "pairs of rounds with both rounds valid (the interval's n)",
    "a_mean": "A's statistic, the mean over those pairs", "b_mean": "B's, likewise",
    "difference": "B - A, the mean over the pairs", "ci95": "the half-width of its 95 % interval (paired t)",
    "interval": "[low, high] of B - A", "change_pct": "B - A over A, in %",
    "change_pct_interval": "the interval over A, in %", "margin": "the equivalence margin, in the unit",
    "margin_source": "where the margin came from (the metric's default, or --overlay-ab-margin)",
    "verdict": "same, different or unknown", "why": "the verdict in words, with any pairs left out and why",
    "pairs": "every pair: order (AB or BA), a, b (null: that round INVALID), why", "method": "the method, in words",
}


@dataclass
class ABComparison:
    """One metric on one circuit, A against B, from the pairs of rounds."""

    metric: str
    circuit: str
    a: str  # the variants as given: kind[setting=value,...]
    b: str
    stat: str
    unit: str
    n_pairs: int  # pairs with both rounds valid
    a_mean: float
    b_mean: float
    difference: float  # mean of B - A over the pairs
    ci95: float  # half-width of its 95 % interval
    interval: list[float]  # [low, high] of B - A
    change_pct: float  # difference over A's mean
    change_pct_interval: list[float]
    margin: float  # the equivalence margin, in the unit
    margin_source: str
    verdict: str  # same, different or unknown
    why: str  # the verdict in words
    pairs: list[Pair] = field(default_factory=list)
    method: str = METHOD

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def worse_by(self) -> float:
        """How much worse B is than A (the metric's unit; negative: better)."""
        return metrics.get(self.metric).worse_by(self.a_mean, self.b_mean)

    def fails(self, gate: Gate) -> bool:
        """B worse than A beyond the gate's limit, and the verdict different."""
        if self.verdict != DIFFERENT or gate.metric != self.metric:
            return False
        worse = self.worse_by
        return worse / abs(self.a_mean) * 100 > gate.limit if gate.percent else worse > gate.limit

    def describe(self) -> str:
        return (f"{self.metric} {self.stat} on {self.circuit}: A {self.a} {self.a_mean:.3f} {self.unit}, "
                f"B {self.b} {self.b_mean:.3f} {self.unit}, B - A {self.difference:+.3f} ±{self.ci95:.3f} "
                f"{self.unit} ({self.change_pct:+.2f} %, 95 %, {self.n_pairs} pairs): {self.verdict} ({self.why})")


def compare(metric: str, circuit: str, a: str, b: str, pairs: list[Pair],
            margins: list[tuple[str, float, bool]] = ()) -> ABComparison:
    """The paired verdict of `pairs` (those with an INVALID round are left out, and said)."""
    m = metrics.get(metric)
    kept = [p for p in pairs if p.a is not None and p.b is not None]
    n = len(kept)
    a_mean = statistics.fmean(p.a for p in kept) if kept else math.nan
    b_mean = statistics.fmean(p.b for p in kept) if kept else math.nan
    diffs = [p.b - p.a for p in kept]
    difference = statistics.fmean(diffs) if diffs else math.nan
    half = t95(n - 1) * statistics.stdev(diffs) / math.sqrt(n) if n >= 2 else math.inf
    low, high = difference - half, difference + half
    margin, source = margin_of(metric, a_mean, margins) if kept else (math.nan, "")
    said = verdict(low, high, margin)
    left_out = len(pairs) - n
    if n < 2:
        why = f"{n} pair(s) with both rounds valid: an interval needs 2"
    elif said == SAME:
        why = f"the interval lies within ±{margin:.3g} {m.unit}, the margin"
    elif said == DIFFERENT:
        why = f"the interval lies wholly beyond ±{margin:.3g} {m.unit}, the margin"
    else:
        why = f"the interval crosses ±{margin:.3g} {m.unit}, the margin: more pairs would tell"
    if left_out:
        why += f"; {left_out} pair(s) left out for an INVALID round ({next(p.why for p in pairs if p.why)})"
    pct = (lambda x: x / a_mean * 100) if a_mean else (lambda x: math.nan)
    return ABComparison(metric, circuit, a, b, m.headline, m.unit, n, a_mean, b_mean, difference, half,
                        [low, high], pct(difference), [pct(low), pct(high)], margin, source, said, why, list(pairs))


def parse_fail(text: str) -> Gate:
    """--overlay-ab-fail METRIC:LIMIT[%]: the headline statistic only (A/B compares that)."""
    from .gates import parse_gate

    gate = parse_gate(text)
    m = metrics.get(gate.metric)
    if not m.ab_margin:
        raise argparse.ArgumentTypeError(f"{text!r}: A/B does not compare {gate.metric}; it compares "
                                         + ", ".join(x.name for x in metrics.METRICS.values() if x.ab_margin))
    if gate.stat != m.headline:
        raise argparse.ArgumentTypeError(f"{text!r}: A/B compares {gate.metric}'s {m.headline}; give "
                                         f"{gate.metric}:{gate.limit:g}{'%' if gate.percent else ''}")
    return gate
