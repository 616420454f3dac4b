"""A test's figures as the JUnit XML properties a CI shows beside the test (pytest's
`record_property`): per record, what it measured, its headline value with unit, interval and
samples, the limit it was held to, the compared run's value, the change and the verdict."""

from __future__ import annotations

import math

from . import metrics
from .records import Record


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def properties(records: list[Record]) -> list[tuple[str, str]]:
    """(name, value) pairs; a test with several records (UDP's rate and loss, a fault's
    outage and recovery) names each by its metric."""
    out: list[tuple[str, str]] = []
    for record in records:
        metric = metrics.get(record.metric)
        prefix = f"overlay.{record.metric}"
        headline = record.value(metric.headline)
        out += [
            (f"{prefix}.overlay", record.overlay),
            (f"{prefix}.circuit", record.circuit),
            (f"{prefix}.value", f"{metric.headline} {_number(headline)} {record.unit} "
                                f"±{_number(record.stats.interval(metric.headline))} (95 %), n = {record.stats.n}"),
            (f"{prefix}.verdict", record.verdict if record.valid else f"INVALID: {'; '.join(record.invalid_reasons)}"),
        ]
        if record.threshold:
            out.append((f"{prefix}.limit", str(record.threshold.get("description", ""))))
        for compared in record.compared:
            change = compared.get("change_pct")
            out.append((f"{prefix}.compared.{compared['stat']}",
                        f"saved {_number(compared['saved'])} {record.unit} (run {compared['run']}), now "
                        f"{_number(compared['now'])}, change {_number(change, 1)} %, noise ±{_number(compared['noise'])}"
                        f", gate {compared.get('gate') or '-'}: {compared.get('verdict') or 'not gated'}"))
    return out


def ab_properties(comparisons: list) -> list[tuple[str, str]]:
    """An A/B test's verdicts (results.ab.ABComparison), a property each metric."""
    return [(f"overlay.ab.{c.metric}",
             f"{c.circuit}: A {c.a} {_number(c.a_mean)} {c.unit}, B {c.b} {_number(c.b_mean)} {c.unit}, B - A "
             f"{_number(c.difference)} ±{_number(c.ci95)} (95 %, {c.n_pairs} pairs), change {_number(c.change_pct, 2)} "
             f"%, margin ±{_number(c.margin)}: {c.verdict}") for c in comparisons]
