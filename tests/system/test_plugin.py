"""The plugin as users drive it: options, markers, test ids, the JSON and the tables, all
through a real pytest run of the suites on the emulated testbed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pytest_overlay import results

from ..conftest import QUICK, RELAXED_FILE, run_suites


def test_suites_pass_on_local_and_report(tmp_path, clean_machine):
    """Every suite on the two-site topology, in two rounds: the tests pass, the tables and the
    JSON (and its journal) say what was measured, and the report directory holds the Markdown,
    CSV, JSON, plots and HTML page."""
    out = tmp_path / "results.json"
    report = tmp_path / "report"
    run = run_suites("suites/", *QUICK, "--overlay-concurrency=1,5", f"--overlay-json={out}", "-rA",
                     f"--overlay-report={report}", "--overlay-rounds=2")
    run.passed()
    for test_id in ("test_latency.py::test_latency[host-A-B]", "test_latency.py::test_jitter[host-A-B]",
                    "test_throughput.py::test_tcp_throughput[host-A-B]",
                    "test_throughput.py::test_udp_throughput[host-A-B]", "test_streaming.py::test_streaming[host-udp-1]",
                    "test_streaming.py::test_streaming[host-udp-5]"):
        assert f"PASSED suites/{test_id}" in run.output
    assert "Latency: round-trip time in ms (irtt request/response; n = round trips; ± instrument = " in run.output
    assert "TCP throughput in Mbit/s received (iperf3; Total = the whole run;" in run.output
    assert "| Circuit   | Overlay   | Min   | Mean   | 99th %" in run.output
    assert run.output.index(f"written before teardown: JSON {out}") < re.search(
        r"\[overlay\] testbed \w+ down in", run.output).start()

    document = json.loads(out.read_text())
    journal = [json.loads(line) for line in Path(f"{out}.records.jsonl").read_text().splitlines()]
    assert [(r["metric"], r["overlay"]) for r in journal] == [(r["metric"], r["overlay"]) for r in document["results"]]
    assert (document["schema"], document["version"]) == ("pytest-overlay/results", results.SCHEMA_VERSION)
    run_meta = document["run"]
    assert run_meta["topology"]["name"] == "local"
    assert run_meta["testbed"]["emulator"]["kind"] in ("netem", "delayline")
    assert "net.ipv4.tcp_rmem" in run_meta["testbed"]["sites"]["A"]["sysctls"]
    assert run_meta["tools"]["iperf3"].startswith("iperf 3")
    metrics = {r["metric"]: r for r in document["results"]}
    assert set(metrics) == {"latency", "jitter", "tcp_throughput", "udp_throughput", "udp_loss",
                            "stream_jitter", "stream_bitrate", "stream_loss", "stream_ttff"}
    latency = metrics["latency"]
    assert {k: latency[k] for k in ("overlay", "src", "dst", "unit", "valid", "verdict")} == {
        "overlay": "host", "src": "A", "dst": "B", "unit": "ms", "valid": True, "verdict": "pass"}
    assert set(latency["stats"]) >= {"min", "mean", "p50", "p99", "max", "stdev", "n"}
    # 2 rounds of 60 requests: a few may be lost, and the emulator's exclusions are counted apart
    assert latency["extra"]["rounds"] == 2 and latency["extra"]["warmup_discarded"] == 10
    assert latency["stats"]["n"] + latency["exclusions"].get("n_excluded", 0) >= 2 * 55
    assert latency["stats"]["ci95_unit"] == "rounds" and latency["stats"]["ci95_n"] == 2
    assert latency["stats"]["mean"] == pytest.approx(20, abs=1)
    assert latency["threshold"]["expected_ms"] == 20
    if run_meta["testbed"]["emulator"]["kind"] == "delayline":
        link = latency["emulator"]["A->B"]
        assert link["packets"] >= 55 and 0 < link["p99_late_us"] <= 100_000 and link["max_late_us"] > 0
    _report_directory(report)


def test_threshold_failure_fails_the_test_and_is_recorded(tmp_path, clean_machine):
    limits = tmp_path / "limits.yaml"
    # The plumbing's own validity rules (relaxed), then the limits under test.
    limits.write_text(RELAXED_FILE.read_text() + "tcp_throughput:\n  min_fraction_of_rate: 5\n"
                      "overrides:\n  - {metric: latency, circuit: A-B, p99_over_rtt_ms: 0}\n")
    first = len(RELAXED_FILE.read_text().splitlines()) + 1
    out = tmp_path / "results.json"
    run = run_suites("suites/", *QUICK, "-m", "tcp or latency", f"--overlay-thresholds={limits}",
                     f"--overlay-json={out}")
    run.skip_if_starved("test_tcp_throughput[host-A-B]", "test_latency[host-A-B]")
    assert run.rc == 1, run.output
    assert "below 5000 Mbit/s" in run.output
    assert "exceeds 20 ms" in run.output
    # Which limit, from which file and line; and that it is the underlay, not an overlay, that missed it.
    assert f"[limit min_fraction_of_rate = 5: tcp_throughput.min_fraction_of_rate in {limits}:{first + 1}]" \
        in run.output
    assert f"[limit p99_over_rtt_ms = 0: latency.p99_over_rtt_ms in {limits}:{first + 3} (overrides[0])]" \
        in run.output
    assert "this is the underlay itself: the testbed, not an overlay, missed the limit" in run.output
    verdicts = {r["metric"]: r["verdict"] for r in json.loads(out.read_text())["results"]}
    assert verdicts == {"latency": "fail", "tcp_throughput": "fail"}


def _report_directory(report: Path) -> None:
    assert sorted(p.name for p in report.iterdir()) == [
        "index.html", "latency_cdf.png", "report.md", "results.csv", "results.json", "streaming.png", "throughput.png"]
    for png in ("latency_cdf.png", "throughput.png", "streaming.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report / "index.html").read_text()
    assert "<img src='latency_cdf.png'" in page and "<h2>Latency: round-trip time in ms" in page
    rows = (report / "results.csv").read_text().splitlines()
    # A header, the five point-to-point records, and four streaming records per level (two levels).
    assert rows[0].startswith("overlay,metric,src,dst,unit,min,mean") and len(rows) == 1 + 5 + 4 * 2
    assert "## Latency: round-trip time in ms" in (report / "report.md").read_text()
