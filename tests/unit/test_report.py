"""The terminal tables, from records as the measurement layer makes them: every figure with
what it is, its unit and its sample count; INVALID rows with their reason; differences from
the underlay."""

from __future__ import annotations

from pytest_overlay import report
from pytest_overlay.inputs import topology

from .records import record

TOPOLOGY = topology.parse({"name": "t", "sites": {"A": {}, "B": {}},
                           "links": [{"between": ["A", "B"], "rtt_ms": 20, "rate_mbit": 1000}]}, "t.yaml")
EXPECTED = {"rtt_ms": 20.0, "rate_mbit": 1000.0, "jitter_ms": 0.0, "loss_pct": 0.0}


def _latency(overlay: str, base: float, **fields):
    r = record("latency", [base + i * 0.01 for i in range(100)], overlay=overlay, expected=EXPECTED, **fields)
    r.verdict = "pass"
    return r


def test_latency_table_with_the_difference_from_the_underlay():
    text = report.tables([_latency("host", 20.0), _latency("libnetwork", 20.3)], TOPOLOGY)
    assert "Latency: round-trip time in ms (irtt request/response; n = round trips; ± instrument = " in text
    lines = text.splitlines()
    head = next(line for line in lines if line.startswith("| Circuit"))
    assert [c.strip() for c in head.strip("|").split("|")] == [
        "Circuit", "Overlay", "Min", "Mean", "99th %", "±95% CI", "± instrument", "n", "Topology RTT",
        "Δ mean vs host ±95% CI",
        "Verdict"]
    row = next(line for line in lines if "libnetwork" in line)
    assert "| +0.30 ±" in row and "| 100 " in row and "| 20.0 " in row


def test_invalid_row_names_its_reason_under_the_table():
    bad = _latency("host", 20.0, valid=False, invalid_reasons=["emulator released 9 of 100 packets on A->B late"])
    text = report.tables([bad], TOPOLOGY)
    assert "INVALID [1]" in text
    assert "[1] A-B host latency: emulator released 9 of 100 packets on A->B late" in text


def test_throughput_ratio_to_the_underlay():
    host = record("tcp_throughput", [950.0, 940.0], expected=EXPECTED, total=945.0)
    vx = record("tcp_throughput", [900.0, 910.0], overlay="libnetwork", expected=EXPECTED, total=907.2)
    text = report.tables([host, vx], TOPOLOGY)
    row = next(line for line in text.splitlines() if "libnetwork" in line)
    assert "| 0.96 " in row and "| 907 " in row


def test_streaming_table_per_level():
    common = {"nominal_kbit": 1000.0, "client_cpu_pct": 3.5}
    level = [record(m, v, concurrency=5, transport="udp", extra=common) for m, v in (
        ("stream_jitter", [0.1, 0.2, 0.3, 0.2, 0.1]), ("stream_bitrate", [1000.0, 990.0, 1010.0, 1000.0, 995.0]),
        ("stream_loss", [0.0] * 5), ("stream_ttff", [21.0] * 5))]
    text = report.tables(level, TOPOLOGY)
    assert "Streaming: H.264 over RTSP/RTP from A to B" in text
    row = next(line for line in text.splitlines() if line.startswith("| host"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:8] == ["host", "udp", "5", "0.18", "0.30", "999", "990", "1000"]


def test_comparison_table_says_what_is_noise():
    r = _latency("host", 20.0)
    r.compared = [{"run": "0001_base.json", "stat": "mean", "saved": 20.0, "now": 20.5, "change_pct": 2.5,
                   "noise": 0.1, "within_noise": False, "gate": "latency:mean:5%"}]
    text = report.tables([r], TOPOLOGY)
    assert "Compared with saved run 0001_base.json" in text
    row = next(line for line in text.splitlines() if "latency:mean:5%" in line)
    assert "| +2.5 " in row and "| 0.100 " in row and "| no " in row


def test_what_was_not_measured_is_listed_with_its_reason():
    from pytest_overlay.results import Missing

    missing = [Missing("libnetwork", "latency", "A", "B", "bring-up failed: libnetwork did not come up"),
               Missing("libnetwork", "latency", "B", "A", "bring-up failed: libnetwork did not come up"),
               Missing("host", "stream_jitter", "A", "B", "deselected", concurrency=5, transport="udp")]
    missing += [Missing("host", "stream_jitter", "A", "B", "skipped: no clip", concurrency=5, transport="udp")]
    missing += [Missing("host", "jitter", "A", "B", "deselected")] * 55
    text = report.tables([_latency("host", 20.0)], TOPOLOGY, missing)
    assert "Not measured: 3 requested measurements, with the reason" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and ("bring-up" in line or "skipped" in line)]
    assert "| latency " in rows[1] and "| A – B, B – A " in rows[1] and "libnetwork did not come up" in rows[1]
    assert "| stream_jitter " in rows[0] and "| A – B (udp, 5 clients) " in rows[0] and rows[0].startswith("| host ")
    # What -m or -k left out is the user's choice: one line, not a row per measurement.
    assert "56 requested measurements deselected (-m/-k)" in text
    assert not [line for line in text.splitlines() if line.startswith("| ") and "deselected" in line]


def test_every_registered_metric_has_a_section_of_the_tables():
    from pytest_overlay.results import metrics

    shown = {name for names, _ in report.SECTIONS for name in names}
    assert set(metrics.METRICS) <= shown, f"no table for {sorted(set(metrics.METRICS) - shown)}"


def test_a_metric_added_to_the_registry_without_a_section_still_prints(monkeypatch):
    """A new metric measured but forgotten in the report: a plain table with its headline,
    spread, n and verdict, never silently left out."""
    from pytest_overlay.results import metrics

    new = metrics.Metric("handshake_ms", "ms", "TCP handshake time", "p50", True)
    monkeypatch.setitem(metrics.METRICS, new.name, new)
    r = record("handshake_ms", [1.0, 2.0, 3.0, 4.0], overlay="weave", expected=EXPECTED)
    r.verdict = "pass"
    text = report.tables([_latency("host", 20.0), r], TOPOLOGY)
    assert "TCP handshake time in ms (headline: p50; n = samples)" in text
    row = next(line for line in text.splitlines() if "weave" in line)
    assert [c.strip() for c in row.strip("|").split("|")] == ["A – B", "weave", "2.50", "1.00", "4.00", "4", "pass"]


def test_an_invalid_latency_curve_is_drawn_apart_and_named(tmp_path, monkeypatch):
    from pytest_overlay.report import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    rtts = [36.5 + i / 1000 for i in range(100)]
    made = [record("latency", rtts, "host", extra={"samples": rtts}),
            record("latency", rtts + [38.5] * 5, "libnetwork", valid=False, invalid_reasons=["x"],
                   extra={"samples": rtts + [38.5] * 5})]
    assert plots.latency_cdf(made, tmp_path / "cdf.png")
    (line_host, line_invalid) = figures[0].axes[0].get_lines()
    assert line_host.get_label() == "host (n=100)" and line_host.get_linestyle() == "-"
    assert line_invalid.get_label() == "libnetwork (n=105) INVALID" and line_invalid.get_linestyle() == ":"
