"""A/B in one run: variants and their settings, the paired verdict and its gates."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import pytest

from pytest_overlay import kinds, results
from pytest_overlay.results import ab

from ..conftest import ROOT

SUITES = str(ROOT / "suites")
CAPTURED = Path(__file__).parent / "data" / "ab_pairs.json"


def with_settings() -> dict[str, tuple]:
    """The kinds that declare settings, from the registry."""
    return {name: kinds.get(name).settings for name in kinds.names() if kinds.get(name).settings}


def test_every_declared_setting_parses_its_allowed_values_and_refuses_others():
    assert with_settings(), "no kind declares a setting: A/B of two builds or MTUs has nothing to vary"
    for name, settings in with_settings().items():
        for setting in settings:
            good = str(setting.low) if setting.low is not None else "/opt/next/bin"
            variant = kinds.parse_variant(f"{name}[{setting.name}={good}]", "B")
            assert variant.chosen == ((setting.name, setting.parse(good)),)
            assert str(variant) == f"{name}[{setting.name}={good}]"
            bad = str(setting.high + 1) if setting.low is not None else "relative/path"
            with pytest.raises(ValueError) as error:
                kinds.parse_variant(f"{name}[{setting.name}={bad}]", "B")
            assert f"{setting.name}='{bad}'; allowed: {setting.allowed()}" in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("wireguard[mtu=1380]", "give two variants, A,B"),
    ("wireguard[mtu=1380],wireguard[mtu=100]", "'wireguard[mtu=100]': mtu='100'; allowed: an integer from 576 to 9000"),
    ("wireguard[speed=1],wireguard", "'wireguard[speed=1]': wireguard takes mtu (the MTU of its device at every site)"),
    ("host[mtu=1400],host", "host takes no setting"),
    ("wireguard[mtu=1380,mtu=1400],host", "mtu set twice"),
    ("nowhere,host", "unknown overlay 'nowhere'; known: host"),
    ("a,b,c", "give two variants"),
])
def test_a_bad_variant_is_refused_with_what_is_allowed(text, message):
    with pytest.raises((ValueError, kinds.KindError)) as error:
        kinds.parse_pair(text)
    assert message in str(error.value)


def test_commas_inside_brackets_do_not_split_the_pair():
    a, b = kinds.parse_pair("wireguard[mtu=1380],tinc[mtu=1400]")
    assert (a.label, b.label) == ("A: wireguard[mtu=1380]", "B: tinc[mtu=1400]")


@pytest.mark.parametrize("args, message", [
    (["--overlay-ab=host,host", "--overlay=weave"], "--overlay-ab measures its two variants against each other; it "
                                                     "does not go with --overlay"),
    (["--overlay-ab=host,host", "--overlay-cpu=0.5"], "does not go with --overlay-cpu"),
    (["--overlay-ab-fail=latency:1%"], "--overlay-ab-fail is for an A/B run: add --overlay-ab=A,B"),
    (["--overlay-ab=host,host", "--overlay-ab-fail=latency:p99:1"], "A/B compares latency's mean"),
    (["--overlay-ab=host,host", "--overlay-ab-fail=stream_jitter:1"], "A/B does not compare stream_jitter"),
    (["--overlay-ab=host,host", "--overlay-ab-pairs=1"], "2 <= MIN <= MAX <= 200"),
    (["--overlay-ab=host,host", "--overlay-ab-margin=latency:much"], "expected METRIC:MARGIN[%]"),
    (["--overlay-ab=flannel[bin=/nonexistent/flanneld],flannel"], "/nonexistent/flanneld is not an executable file"),
])
def test_bad_ab_options_are_usage_errors_before_anything_is_made(pytester, args, message):
    result = pytester.runpytest_inprocess(SUITES, "--collect-only", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_an_ab_run_collects_the_ab_tests_only_and_other_runs_never_do(pytester):
    ab_run = pytester.runpytest_inprocess(SUITES, "--collect-only", "-q", "--topology=local", "--overlay-ab=host,host")
    ids = [line for line in ab_run.outlines if "::" in line]
    assert ids and all("test_ab.py::test_ab_" in line for line in ids)
    assert "per-overlay suite test(s) not run: --overlay-ab compares its two variants" in ab_run.stdout.str()
    plain = pytester.runpytest_inprocess(SUITES, "--collect-only", "-q", "--topology=local")
    assert not [line for line in plain.outlines if "test_ab.py" in line]
    assert "A/B test(s) not run; run them with --overlay-ab=A,B" in plain.stdout.str()


def pairs(diffs: list[float], a: float = 20.0, order: str = "AB") -> list[ab.Pair]:
    return [ab.Pair(order, a, a + d) for d in diffs]


def test_the_interval_is_students_t_over_the_pairs_differences():
    diffs = [0.10, 0.12, 0.08, 0.11, 0.09, 0.10]
    c = ab.compare("latency", "A-B", "host", "host", pairs(diffs))
    half = 2.571 * statistics.stdev(diffs) / math.sqrt(6)  # t(0.975, 5)
    assert c.n_pairs == 6 and c.difference == pytest.approx(0.1) and c.ci95 == pytest.approx(half)
    assert c.interval == pytest.approx([0.1 - half, 0.1 + half])
    assert c.change_pct == pytest.approx(0.5) and c.margin == pytest.approx(0.05)  # 0.25 % of 20 ms
    assert c.verdict == ab.DIFFERENT and c.worse_by == pytest.approx(0.1)


@pytest.mark.parametrize("diffs, expected", [
    ([0.01, -0.01, 0.005, -0.004, 0.0, 0.002], ab.SAME),  # the interval well inside ±0.05 ms
    ([0.2, -0.1, 0.15, -0.05, 0.1, 0.0], ab.UNKNOWN),  # crosses the margin's edge
    ([-0.3, -0.31, -0.29, -0.3], ab.DIFFERENT),  # better: different, too
    ([0.1], ab.UNKNOWN),  # one pair has no interval
])
def test_the_three_way_verdict(diffs, expected):
    assert ab.compare("latency", "A-B", "a", "b", pairs(diffs)).verdict == expected


def test_a_pair_with_an_invalid_round_is_left_out_and_said():
    given = pairs([0.0, 0.01, -0.01]) + [ab.Pair("BA", 20.0, None, "B too few clean round trips")]
    c = ab.compare("latency", "A-B", "a", "b", given)
    assert c.n_pairs == 3 and len(c.pairs) == 4
    assert "1 pair(s) left out for an INVALID round (B too few clean round trips)" in c.why


def test_a_margin_given_replaces_the_metrics_own():
    assert ab.margin_of("tcp_throughput", 500.0) == (5.0, "default tcp_throughput:1%")
    assert ab.margin_of("jitter", 0.2) == (0.05, "default jitter:0.05")
    given = [ab.parse_margin("tcp_throughput:0.5%")]
    assert ab.margin_of("tcp_throughput", 500.0, given)[0] == 2.5
    with pytest.raises(argparse.ArgumentTypeError, match="METRIC one of latency, jitter, tcp_throughput"):
        ab.parse_margin("stream_jitter:1")


def test_a_gate_fails_only_where_b_is_worse_beyond_it_and_the_verdict_is_different():
    slower = ab.compare("latency", "A-B", "a", "b", pairs([0.20, 0.21, 0.19, 0.2]))
    faster = ab.compare("latency", "A-B", "a", "b", pairs([-0.20, -0.21, -0.19, -0.2]))
    unsure = ab.compare("latency", "A-B", "a", "b", pairs([0.5, -0.1, 0.6, 0.0]))
    gate = ab.parse_fail("latency:0.5%")
    assert slower.verdict == ab.DIFFERENT and slower.fails(gate)
    assert not faster.fails(gate) and not slower.fails(ab.parse_fail("latency:2%"))
    assert unsure.verdict == ab.UNKNOWN and not unsure.fails(gate)
    # Throughput: lower is worse.
    tcp = ab.compare("tcp_throughput", "A-B", "a", "b", pairs([-30.0, -31.0, -29.0], a=900.0))
    assert tcp.verdict == ab.DIFFERENT and tcp.fails(ab.parse_fail("tcp_throughput:3%"))


def test_captured_rounds_of_the_same_underlay_say_same_or_unknown_never_different():
    """Rounds captured from A/A runs of the underlay on this machine (benchmarks/ab.py):
    the verdict on them, as the run would have made it."""
    captured = json.loads(CAPTURED.read_text())
    assert len(captured["aa"]) >= 5
    for run in captured["aa"]:
        c = ab.compare(run["metric"], run["circuit"], "host", "host", [ab.Pair(*p) for p in run["pairs"]])
        assert c.verdict != ab.DIFFERENT, c.describe()
    shifted = [ab.compare(run["metric"], run["circuit"], "host", "host", [ab.Pair(*p) for p in run["pairs"]])
               for run in captured["shifted"]]
    assert all(c.verdict == ab.DIFFERENT and c.difference > 0 for c in shifted), [c.describe() for c in shifted]


def test_a_comparison_is_written_in_the_results_json():
    c = ab.compare("latency", "A-B", "wireguard[mtu=1380]", "wireguard", pairs([0.1, 0.11, 0.09]))
    document = json.loads(results.dumps(results.document({}, [], [], [c])))
    written = document["comparisons"][0]
    assert {k: written[k] for k in ("metric", "circuit", "a", "b", "verdict")} == {
        "metric": "latency", "circuit": "A-B", "a": "wireguard[mtu=1380]", "b": "wireguard", "verdict": "different"}
    assert written["change_pct"] == pytest.approx(0.5) and len(written["interval"]) == 2
    assert document["version"] == results.SCHEMA_VERSION
