"""A/B in one run (--overlay-ab): two variants measured in interleaved pairs of rounds on
one testbed, until every verdict is known or the pairs' budget is spent (results/ab.py says
the method).

Two variants of the same overlay cannot share a testbed here (their devices, ports, ranges
and daemons' state are the kind's, not the variant's), nor two kinds whose daemons claim the
same: so they are brought up alternately, one at a time, each pair's order drawn at random.
Only the underlay needs nothing brought up, and stays beside the other.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..inputs.model import Circuit
from ..kinds import BASELINE, Variant
from ..overlays import Overlay
from ..results import ab, metrics
from .path import OverlayPath

if TYPE_CHECKING:
    from ..session import OverlaySession

# The probe runs one round of each metric takes; latency and jitter share one.
PROBES = ("latency", "tcp", "udp")


@dataclass
class Rounds:
    """What the pairs gave so far, per (metric, circuit id)."""

    pairs: dict[tuple[str, str], list[ab.Pair]] = field(default_factory=dict)
    orders: list[str] = field(default_factory=list)


class ABRun:
    """The campaign: pairs of rounds until the verdicts are known or MAX pairs are taken; the
    variants' overlays up only while it runs."""

    def __init__(self, state: "OverlaySession", variants: tuple[Variant, Variant],
                 wanted: dict[Circuit, list[str]], bring_up: Callable[[Variant], Overlay],
                 before_round: Callable[[Variant, Overlay], None] = lambda variant, overlay: None) -> None:
        """`wanted`: the metrics to compare on each circuit; `bring_up`: the variant's overlay,
        up (it skips or fails the tests where it cannot come up); `before_round`: called
        before each round of a variant (the pytest_overlay_ab_round hook)."""
        self.state, self.variants, self.wanted = state, variants, wanted
        self.bring_up, self.before_round = bring_up, before_round
        self.side_by_side = any(v.kind == BASELINE for v in variants)
        self.up: dict[str, Overlay] = {}
        self.bringups = 0
        self.datapaths: dict[str, dict] = {}  # variant label -> how its first record travelled
        self.comparisons: dict[tuple[str, str], ab.ABComparison] | None = None
        self.failure: BaseException | None = None  # why the campaign ended early: every test says it

    def comparison(self, metric: str, circuit: Circuit) -> ab.ABComparison:
        """The verdict of `metric` on `circuit`; the whole campaign runs at the first call."""
        if self.failure is not None:
            raise self.failure
        if self.comparisons is None:
            try:
                self.comparisons = self._run()
            except BaseException as e:
                self.failure = e
                raise
        return self.comparisons[(metric, circuit.id)]

    def _variant(self, role: str) -> Variant:
        return self.variants[0] if role == "A" else self.variants[1]

    def _on(self, role: str) -> Overlay:
        """The role's overlay up; the other brought down first unless they share the testbed."""
        if role in self.up:
            return self.up[role]
        if not self.side_by_side:
            for other in list(self.up):
                self.up.pop(other).down()
        self.up[role] = self.bring_up(self._variant(role))
        self.bringups += 1
        return self.up[role]

    def _round(self, role: str) -> dict[tuple[str, str], tuple[float | None, str]]:
        """One round of the variant: every wanted metric on every circuit, once."""
        overlay = self._on(role)
        variant = self._variant(role)
        self.before_round(variant, overlay)
        out = {}
        for circuit, wanted in self.wanted.items():
            path = OverlayPath(overlay, circuit, self.state, f"A/B {variant.label}")
            path.adds = False
            try:
                for metric in wanted:
                    record = path.measure(metric)
                    self.datapaths.setdefault(variant.label, record.datapath)
                    value = record.value(metrics.get(metric).headline)
                    why = "" if record.valid else f"{variant.role} {record.invalid_reasons[0]}"
                    out[(metric, circuit.id)] = (value if record.valid else None, why)
            finally:
                for probe in PROBES:  # the next round measures afresh
                    self.state.cache.pop(path.key(probe), None)
        return out

    def _run(self) -> dict[tuple[str, str], ab.ABComparison]:
        settings = self.state.settings
        seed = settings.ab_seed if settings.ab_seed is not None else random.SystemRandom().randrange(2 ** 32)
        order_of = random.Random(seed)
        least, most = settings.ab_pairs
        a, b = (str(v) for v in self.variants)
        rounds = Rounds()
        started = time.monotonic()
        compared: dict[tuple[str, str], ab.ABComparison] = {}
        try:
            while len(rounds.orders) < most:
                order = order_of.choice(("AB", "BA"))
                values = {role: self._round(role) for role in order}
                rounds.orders.append(order)
                for key in values["A"]:
                    (va, wa), (vb, wb) = values["A"][key], values["B"][key]
                    rounds.pairs.setdefault(key, []).append(ab.Pair(order, va, vb, wa or wb))
                compared = {key: ab.compare(key[0], key[1], a, b, pairs, settings.ab_margins)
                            for key, pairs in rounds.pairs.items()}
                unknown = [c for c in compared.values() if c.verdict == ab.UNKNOWN]
                self.state.progress(f"A/B pair {len(rounds.orders)} ({' '.join(order)}): " + "; ".join(
                    f"{c.metric} {c.circuit} {c.difference:+.3f} ±{c.ci95:.3f} {c.unit} {c.verdict}"
                    for c in compared.values()))
                if len(rounds.orders) >= least and not unknown:
                    break
        finally:
            for role in list(self.up):
                self.up.pop(role).down()
        self.state.run["ab"] = {
            "a": a, "b": b, "seed": seed, "pairs": len(rounds.orders), "orders": rounds.orders,
            "pairs_asked": list(settings.ab_pairs), "side_by_side": self.side_by_side,
            "how": ("side by side: the underlay needs nothing brought up" if self.side_by_side else
                    "alternately: the variants' daemons, devices and ranges are their kinds', so one at a time"),
            "bringups": self.bringups, "seconds": round(time.monotonic() - started, 1), "method": ab.METHOD,
            "datapaths": self.datapaths}
        self.state.comparisons = list(compared.values())
        return compared


def ab_test_metrics(test: str) -> list[str]:
    """The metrics an A/B suite test compares: those its per-overlay twin measures
    (test_ab_latency: test_latency's)."""
    return [m for m in metrics.measured_by(test.replace("test_ab_", "test_", 1)) if metrics.get(m).ab_margin]


class ABPath:
    """One A/B suite test: the verdicts of its metrics on one circuit, and its gates."""

    def __init__(self, run: ABRun, circuit: Circuit, state: "OverlaySession", test: str, name: str) -> None:
        self.run, self.circuit, self.state, self.test = run, circuit, state, test
        self.metrics = ab_test_metrics(name)

    def conclude(self) -> list[ab.ABComparison]:
        """Fail where B is worse than A beyond a gate (--overlay-ab-fail) and the verdict is
        different; a gated verdict still unknown, or one no pair could make, leaves the test
        undecided."""
        compared = [self.run.comparison(metric, self.circuit) for metric in self.metrics]
        self.state.ab_by_test[self.test] = compared
        failures, unknown = [], []
        for c in compared:
            gates = [g for g in self.state.settings.ab_fail if g.metric == c.metric]
            failures += [f"B worse than A beyond {g}: {c.describe()}" for g in gates if c.fails(g)]
            if c.verdict == ab.UNKNOWN and (gates or c.n_pairs < 2):
                unknown.append(f"A/B {c.describe()}")
        if failures:
            self.state.regressed.add(self.test)
            raise AssertionError("\n".join(failures))
        if unknown:
            self.state.inconclusive.setdefault(self.test, []).extend(unknown)
        return compared
