"""Records as the measurement layer makes them, for tests of the layers above it."""

from __future__ import annotations

from pytest_overlay.results import Record, Stats, metrics


def record(metric: str, values: list[float], overlay: str = "host", src: str = "A", dst: str = "B",
           **fields) -> Record:
    round_values = fields.pop("round_values", None)
    return Record(overlay=overlay, metric=metric, src=src, dst=dst, unit=metrics.get(metric).unit,
                  stats=Stats.of(values, round_values), **fields)
