"""An overlay that does not come up: retried once, then its tests fail with the cause, and
every report says what was asked for and not measured, and why."""

from __future__ import annotations

import json

from ..conftest import QUICK, run_suites


def test_failed_bring_up_is_retried_then_reported_as_missing(tmp_path, clean_machine):
    report = tmp_path / "report"
    # Docker's data roots under /proc cannot be made: every libnetwork bring-up fails.
    run = run_suites("suites/", *QUICK, "--overlay=host,libnetwork", "-m", "latency or streaming",
                     f"--overlay-report={report}", env={"PYTEST_OVERLAY_DATA": "/proc/pytest-overlay-nowhere"})
    assert run.rc == 1, run.output
    assert "libnetwork: bring-up attempt 1 failed" in run.output and "trying again" in run.output
    assert "libnetwork did not come up (2 attempts); the last one failed with" in run.output
    document = json.loads((report / "results.json").read_text())
    assert {r["overlay"] for r in document["results"]} == {"host"}
    missing = {(m["overlay"], m["metric"], m["concurrency"]): m["reason"] for m in document["missing"]}
    assert missing["libnetwork", "latency", None].startswith("bring-up failed: libnetwork did not come up")
    assert missing["libnetwork", "stream_jitter", 5].startswith("bring-up failed")
    assert missing["host", "tcp_throughput", None] == missing["libnetwork", "jitter", None] == "deselected"
    for page in ("report.md", "index.html"):
        text = (report / page).read_text()
        assert "Not measured" in text and "bring-up failed: libnetwork did not come up" in text
    assert "Not measured: " in run.output
