"""Noisy neighbours without a testbed: the option, the tests it parametrizes, the records'
field, and the report's table and answer (judged against the underlay's own change)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_overlay import options, report, results
from pytest_overlay.inputs import topology
from pytest_overlay.measure import noise

from .records import record

SUITES = str(Path(__file__).resolve().parents[2] / "suites")
TOPOLOGY = topology.parse({"name": "t", "sites": {"A": {}, "B": {}},
                           "links": [{"between": ["A", "B"], "rtt_ms": 20, "rate_mbit": 1000}]}, "t.yaml")
EXPECTED = {"rtt_ms": 20.0, "rate_mbit": 1000.0, "jitter_ms": 0.0, "loss_pct": 0.0}


def test_neighbours_are_known_kinds_with_cores_this_machine_has():
    assert noise.parse("cpu, memory:0.25") == [noise.Noise("cpu", noise.DEFAULT_CORES), noise.Noise("memory", 0.25)]
    assert noise.parse("cpu:1")[0].label == "cpu:1" and noise.parse("cpu:1")[0].id == "noise-cpu1"
    for bad, said in (("disk", "allowed kinds: cpu, memory"), ("cpu:lots", "cores must be a number"),
                      ("cpu:0", "cores from 0.05"), ("cpu,cpu:0.5", "distinct"), ("", "distinct")):
        with pytest.raises(Exception, match=said):
            noise.parse(bad)


def test_each_neighbour_is_a_test_id_after_the_run_alone(pytester):
    result = pytester.runpytest_inprocess(SUITES, "--topology=local", "--overlay=host", "-m", "tcp",
                                          "--overlay-noise=cpu,memory:0.25", "--overlay-cpu=0.5", "--collect-only",
                                          "-q")
    ids = [line.split("[")[1].rstrip("]") for line in result.stdout.lines if "::" in line]
    assert ids == ["host-A-B-cpu-unlimited-noise-none", "host-A-B-cpu-unlimited-noise-cpu0.5",
                   "host-A-B-cpu-unlimited-noise-memory0.25", "host-A-B-cpu0.5-noise-none",
                   "host-A-B-cpu0.5-noise-cpu0.5", "host-A-B-cpu0.5-noise-memory0.25"]


def test_a_bad_neighbour_is_a_usage_error_naming_the_option(pytester):
    result = pytester.runpytest_subprocess(SUITES, "--overlay-noise=disk", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--overlay-noise" in result.stderr.str() and "allowed kinds: cpu, memory" in result.stderr.str()


def test_the_neighbour_is_part_of_a_records_key_and_of_its_underlay_baseline():
    alone = record("latency", [20.0, 20.1], overlay="host", expected=EXPECTED)
    beside = record("latency", [22.0, 22.1], overlay="host", expected=EXPECTED, noise="cpu:0.5")
    overlay = record("latency", [23.0, 23.1], overlay="weave", expected=EXPECTED, noise="cpu:0.5")
    assert alone.key != beside.key
    assert results.baseline([alone, beside], overlay) is beside
    assert results.Record.from_json(json.loads(json.dumps(overlay.to_json()))).noise == "cpu:0.5"


def test_the_run_metadata_records_the_neighbours_as_labels():
    given = {"overlay_noise": noise.parse("cpu,memory:0.25")}

    class Config:
        def getoption(self, dest):
            return given.get(dest, options.DEFAULTS[dest])

    recorded = options.recorded(Config())
    assert recorded["overlay_noise"] == ["cpu:0.5", "memory:0.25"]
    json.dumps(recorded)


def _at(metric: str, overlay: str, neighbour: str | None, value: float, hog: float | None = None):
    values = [value] * 20 if metric == "tcp_throughput" else [value + i * 0.01 for i in range(100)]
    extra = {"cpu_used": {"A": {"cores_used": 0.3, "throttled_share": 0.0}}}
    if hog is not None:
        extra["noise_used"] = {"A": {"cores_used": hog}, "B": {"cores_used": hog}}
    r = record(metric, values, overlay=overlay, expected=EXPECTED, noise=neighbour,
               total=value if metric == "tcp_throughput" else None, extra=extra)
    r.verdict = "pass"
    return r


def test_the_report_judges_each_overlay_beside_a_neighbour_against_the_underlays_own_change():
    records = [_at("tcp_throughput", "host", None, 950), _at("tcp_throughput", "host", "cpu:0.5", 950, 0.5),
               _at("latency", "host", None, 20), _at("latency", "host", "cpu:0.5", 22, 0.5),
               _at("tcp_throughput", "libnetwork", None, 920), _at("tcp_throughput", "libnetwork", "cpu:0.5", 918, 0.5),
               _at("latency", "libnetwork", None, 20.1), _at("latency", "libnetwork", "cpu:0.5", 22.5, 0.5),
               _at("tcp_throughput", "weave", None, 160), _at("tcp_throughput", "weave", "cpu:0.5", 70, 0.4),
               _at("latency", "weave", None, 21), _at("latency", "weave", "cpu:0.5", 23, 0.4)]
    text = report.tables(records, TOPOLOGY)
    assert "noisy neighbours on A-B: a neighbour is a stress-ng hog" in text
    row = next(line for line in text.splitlines() if line.startswith("| weave") and "| cpu:0.5 " in line)
    assert "| 70 (n=20) " in row and "| 0.80 (2 sites) " in row
    # libnetwork's +2.4 ms is within 1 ms of the underlay's +2.0 ms: the emulated WAN's share
    assert ("Beside a cpu:0.5 neighbour, kept throughput (90 %) and latency (p99 within 1 ms of the underlay's own "
            "change, +2.00 ms): libnetwork 100 %, p99 +2.40 ms; did not: weave 44 %, p99 +2.00 ms") in text
    assert "weave (beside cpu:0.5)" in text
