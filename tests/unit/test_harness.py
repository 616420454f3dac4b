"""The project's own test harness: a child run failed only by the machine's load is told
apart from a real failure, so plumbing tests skip with the cause instead of failing."""

from __future__ import annotations

import json

import pytest

from ..conftest import Run, left_behind, run_suites

NODE = "suites/test_throughput.py::test_udp_throughput[host-A-B]"
LOAD = "emulator touched 4 of 8 intervals (50.0 %, bound 25 %) on their path; worst A->B: 9 released late"


def results(tmp_path, reasons: list[str], test: str = NODE):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": [
        {"test": test, "valid": not reasons, "invalid_reasons": reasons, "overlay": "host", "src": "A", "dst": "B",
         "metric": "udp_throughput", "tries": 3}]}))
    return path


def test_a_run_failed_only_by_load_is_starved(tmp_path):
    run = Run(1, f"FAILED {NODE} - AssertionError: measurement invalid\n1 failed", results(tmp_path, [LOAD]))
    assert run.starved() == f"host A-B udp_throughput INVALID 3 times: {LOAD}"
    with pytest.raises(pytest.skip.Exception, match="machine starved: host A-B udp_throughput INVALID 3 times"):
        run.passed()


@pytest.mark.parametrize("output, reasons", [
    (f"FAILED {NODE} - AssertionError: mean RTT", []),  # a threshold: the network's verdict
    (f"FAILED {NODE} - x", ["no libnetwork encapsulated packets crossed A->B"]),  # bypass: a real fault
    (f"FAILED {NODE} - x\nFAILED suites/test_latency.py::test_latency[host-A-B] - y", [LOAD]),  # another failure
    ("ERROR suites/ - usage", [LOAD]),
])
def test_any_other_failure_fails(tmp_path, output, reasons):
    run = Run(1, output, results(tmp_path, reasons))
    assert run.starved() is None
    with pytest.raises(AssertionError):
        run.passed()


def test_the_leak_check_leaves_a_lasting_run_its_cgroups_and_nothing_else():
    before = {"netns": ["ovlaaaaaa-A"], "files": [], "links": [], "processes": [], "cgroups": []}
    after = {"netns": ["ovlaaaaaa-A", "ovlbbbbbb-A"], "files": [], "links": [], "processes": [],
             "cgroups": ["ovlaaaaaa-A", "ovlbbbbbb-A", "ovlcccccc-B"]}
    assert left_behind(before, after) == {"netns": ["ovlbbbbbb-A"], "cgroups": ["ovlbbbbbb-A", "ovlcccccc-B"]}
    gone = {**after, "netns": ["ovlbbbbbb-A"]}  # the lab went down during the test: its cgroups are a leak
    assert left_behind(before, gone)["cgroups"] == ["ovlaaaaaa-A", "ovlbbbbbb-A", "ovlcccccc-B"]


def test_a_child_run_must_print_its_failed_tests():
    """Without its FAILED lines a run failed by the load cannot be told from a real failure."""
    with pytest.raises(ValueError, match="-rs hides the FAILED lines"):
        run_suites("suites/", "-rs")
