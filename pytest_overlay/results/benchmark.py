"""The bridge to pytest-benchmark: latency tests hand their measured round trips to it, one
"call" per round trip, so --benchmark-save, --benchmark-compare and --benchmark-compare-fail
work on them as on any benchmark."""

from __future__ import annotations

import pytest

from .records import Record

GROUP = "overlay latency (round-trip time)"


class ReplayClock:
    """A timer for pytest-benchmark that replays measured durations, one per call of step()."""

    __name__ = "replay_clock"

    def __init__(self) -> None:
        self.now = 0.0
        self.durations: list[float] = []

    def __call__(self) -> float:
        return self.now

    def step(self) -> None:
        self.now += self.durations.pop()


REPLAY_CLOCK = ReplayClock()


def mark(items: list[pytest.Item]) -> None:
    """Give every test that takes both `benchmark` and `overlay_path` the replay timer."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "benchmark" in names and "overlay_path" in names:
            item.add_marker(pytest.mark.benchmark(group=GROUP, timer=REPLAY_CLOCK, disable_gc=False, warmup=False))


def replay(benchmark, record: Record) -> None:
    """Hand a latency record's round trips to pytest-benchmark, as seconds per call."""
    REPLAY_CLOCK.durations = [ms / 1e3 for ms in reversed(record.extra["samples"])]
    benchmark.extra_info.update(overlay=record.overlay, circuit=record.circuit, unit="round-trip time, s",
                                tool=record.tool)
    benchmark.pedantic(REPLAY_CLOCK.step, rounds=len(REPLAY_CLOCK.durations), iterations=1)
