"""Saved runs, comparisons and regression gates, the report directory, and repeated rounds:
real runs of the suites, a saved one and a later one on a changed WAN."""

from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest

from ..conftest import QUICK, RELAXED, run_suites

THREE_SITES = """\
name: three
sites: {{A: {{}}, B: {{}}, C: {{}}}}
links:
  - {{between: [A, B], rtt_ms: 20}}
  - {{between: [A, C], rtt_ms: {ac}}}
"""


@pytest.fixture
def storage(tmp_path):
    return f"--benchmark-storage=file://{tmp_path / 'storage'}"


def topology(tmp_path, ac: float):
    path = tmp_path / f"three-{ac:g}.yaml"
    path.write_text(THREE_SITES.format(ac=ac))
    return f"--topology={path}"


LATENCY = ["-m", "latency", "--overlay-samples=80", "--overlay-interval=5", RELAXED]


def test_gate_fails_on_exactly_the_changed_circuit(tmp_path, storage, clean_machine):
    saved = run_suites("suites/", topology(tmp_path, 30), *LATENCY, storage, "--overlay-save=base")
    saved.passed()
    assert "written: saved run" in saved.output and "0001_base.json" in saved.output

    out = tmp_path / "later.json"
    junit = tmp_path / "junit.xml"
    later = run_suites("suites/", topology(tmp_path, 33), *LATENCY, storage, "--overlay-compare=base",
                       "--overlay-compare-fail=latency:5%", f"--overlay-json={out}", "-rA", f"--junit-xml={junit}")
    later.skip_if_starved("[host-A-C]", "[host-A-B]")
    assert later.rc == 1, later.output
    assert "FAILED suites/test_latency.py::test_latency[host-A-C]" in later.output
    assert "PASSED suites/test_latency.py::test_latency[host-A-B]" in later.output
    assert "regression beyond latency:mean:5%: latency mean on A-C through host: saved 30." in later.output
    assert "Compared with saved run 0001_base.json" in later.output
    compared = {r["src"] + r["dst"]: r["compared"][0]
                for r in json.loads(out.read_text())["results"] if r["metric"] == "latency"}
    assert compared["AC"]["change_pct"] == pytest.approx(10, abs=2.5) and not compared["AC"]["within_noise"]
    assert abs(compared["AB"]["change_pct"]) < 2.5
    # The CI's own report carries the figures: the failed test's entry names its change and verdict.
    cases = {case.get("name"): case for case in ElementTree.parse(junit).iter("testcase")}
    said = {p.get("name"): p.get("value") for p in cases["test_latency[host-A-C]"].iter("property")}
    assert said["overlay.latency.circuit"] == "A-C" and said["overlay.latency.value"].startswith("mean 3")
    assert said["overlay.latency.compared.mean"].endswith("gate latency:mean:5%: regressed")


def test_pytest_benchmark_gates_latency_too(tmp_path, storage, clean_machine):
    first = run_suites("suites/", topology(tmp_path, 30), *LATENCY, storage, "--benchmark-save=base")
    first.passed()
    assert "Saved benchmark data in" in first.output and "test_latency[host-A-C]" in first.output
    later = run_suites("suites/", topology(tmp_path, 33), *LATENCY, storage, "--benchmark-compare",
                       "--benchmark-compare-fail=mean:5%")
    assert later.rc != 0, later.output
    assert "Performance has regressed" in later.output
    regressed = [line for line in later.output.splitlines() if "has failed PercentageRegressionCheck" in line]
    assert len(regressed) == 1 and "test_latency[host-A-C]" in regressed[0], later.output


def test_comparing_with_another_set_up_warns(tmp_path, storage, clean_machine):
    assert run_suites("suites/", *QUICK, "-m", "latency", storage, "--overlay-save=plain",
                      "--overlay-emulator=none").rc == 1  # no delay: far from the topology's RTT
    run = run_suites("suites/", *QUICK, "-m", "latency", storage, "--overlay-compare=plain")
    assert "a run on a different set-up (emulator: saved 'none', now 'delayline')" in run.output
