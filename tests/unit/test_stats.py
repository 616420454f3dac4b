"""Statistics of a measurement, and the strict, versioned JSON they are saved as."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from pytest_overlay import results
from pytest_overlay.results import Record, Stats, percentile

from .records import record


def test_percentiles_interpolate_like_numpy():
    data = sorted(float(x) for x in range(1, 101))
    assert percentile(data, 50) == pytest.approx(50.5)
    assert percentile(data, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


def test_mean_interval_uses_student_t_for_small_samples():
    values = [10.0, 11.0, 12.0, 13.0]
    stats = Stats.of(values)
    assert stats.ci95 == pytest.approx(3.182 * statistics.stdev(values) / 2)
    assert (stats.min, stats.max, stats.n) == (10.0, 13.0, 4)


def test_rounds_give_the_interval_of_the_mean():
    stats = Stats.of([1.0] * 50 + [3.0] * 50, round_values=[1.9, 2.1])
    assert stats.ci95 == pytest.approx(12.706 * statistics.stdev([1.9, 2.1]) / math.sqrt(2))


def test_every_statistic_has_an_interval_and_a_single_sample_has_none():
    stats = Stats.of([float(x % 17) for x in range(500)])
    for stat in ("min", "p50", "p99", "max", "mean", "total"):
        assert 0 <= stats.interval(stat) < 17
    assert Stats.of([1.0, 2.0, 3.0]).interval("p99") == Stats.of([1.0, 2.0, 3.0]).interval("p99")  # seeded
    assert math.isinf(Stats.of([5.0]).interval("p99")) and math.isinf(Stats.of([5.0]).ci95)


def test_given_interval_replaces_the_mean_s():
    assert Stats.of([0.0], ci95=0.01).interval("mean") == 0.01


def test_json_is_strict_and_round_trips():
    r = record("udp_loss", [0.0], extra={"note": float("nan")}, total=None)
    text = results.dumps(results.document({"started": "x"}, [r]))
    document = json.loads(text)  # parses: no NaN or Infinity
    assert "NaN" not in text and "Infinity" not in text
    saved = document["results"][0]
    assert saved["stats"]["ci95"] is None and saved["extra"]["note"] is None
    again = Record.from_json(saved)
    assert again.key == r.key and math.isinf(again.stats.ci95)


def test_version_1_records_are_read_into_typed_fields():
    v1 = {"overlay": "host", "metric": "stream_bitrate", "src": "A", "dst": "B", "unit": "kbit/s",
          "stats": {"min": 1, "mean": 2, "p50": 2, "p99": 3, "max": 3, "stdev": 1, "n": 3, "ci95": 2.5},
          "valid": True, "invalid_reasons": [], "threshold": None, "verdict": "pass", "test": "t",
          "extra": {"concurrency": 5, "transport": "udp", "datapath": {"kind": "underlay"}, "total_mbit": 7.0,
                    "nominal_kbit": 1000}}
    r = Record.from_json(v1, version=1)
    assert (r.concurrency, r.transport, r.datapath, r.total) == (5, "udp", {"kind": "underlay"}, 7.0)
    assert r.extra == {"nominal_kbit": 1000, "total_mbit": 7.0}


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "out" / "results.json"
    results.write_json(path, {}, [record("latency", [1.0, 2.0])])
    assert json.loads(path.read_text())["version"] == results.SCHEMA_VERSION
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_a_flows_interval_comes_from_batch_means_and_says_so():
    """Half-second intervals of one flow are not independent: with one round, the mean's
    interval is taken over 1 s batch means, and the record says so and how many."""
    intervals = [956.0, 957.0, 955.0, 956.5, 956.2, 955.8, 957.1, 955.9, 956.3, 956.0]
    stats = Stats.of(intervals, batch=2)
    assert (stats.ci95_unit, stats.ci95_n) == ("batches of 2 intervals", 5)
    batches = [statistics.fmean(intervals[i:i + 2]) for i in range(0, 10, 2)]
    assert stats.ci95 == pytest.approx(2.776 * statistics.stdev(batches) / math.sqrt(5), rel=1e-3)
    assert Stats.of(intervals, [955.0, 957.0, 956.0], batch=2).ci95_unit == "rounds"  # whole runs come first
    assert Stats.of(intervals[:5], batch=2).ci95_unit == "samples"  # two batches are too few
    loss = Stats.of([0.3], ci95=0.1, ci95_unit="binomial over the run's datagrams")
    assert (loss.ci95, loss.ci95_unit) == (0.1, "binomial over the run's datagrams")
    again = Stats.from_json(json.loads(json.dumps(stats.rounded())))
    assert (again.ci95_unit, again.ci95_n) == ("batches of 2 intervals", 5)
    older = {k: v for k, v in stats.rounded().items() if k not in ("ci95_unit", "ci95_n")}  # schema 6 and before
    assert (Stats.from_json(older).ci95_unit, Stats.from_json(older).ci95_n) == ("samples", 10)
