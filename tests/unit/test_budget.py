"""CPU budgets without a testbed: the option, the tests it parametrizes, the cgroup files read
as the kernel writes them (v1 and v2), and the report's table and answer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_overlay import options, procs, report
from pytest_overlay.inputs import topology
from pytest_overlay.report import plots
from pytest_overlay.testbeds import budget

from .records import record

SUITES = str(Path(__file__).resolve().parents[2] / "suites")
TOPOLOGY = topology.parse({"name": "t", "sites": {"A": {}, "B": {}},
                           "links": [{"between": ["A", "B"], "rtt_ms": 20, "rate_mbit": 1000}]}, "t.yaml")
EXPECTED = {"rtt_ms": 20.0, "rate_mbit": 1000.0, "jitter_ms": 0.0, "loss_pct": 0.0}


def test_budgets_are_distinct_cores_this_machine_has():
    assert options.parse_cpu("1, 0.25,0.5") == [0.25, 0.5, 1.0]
    for bad in ("0", "0.5,0.5", "many", str((os.cpu_count() or 1) + 1)):
        with pytest.raises(Exception, match="budgets|cores"):
            options.parse_cpu(bad)


def test_each_budget_is_a_test_id_after_the_unlimited_run(pytester):
    result = pytester.runpytest_inprocess(SUITES, "--topology=local", "--overlay=host,weave", "-m", "tcp",
                                          "--overlay-cpu=0.5,0.1", "--collect-only", "-q")
    ids = [line.split("[")[1].rstrip("]") for line in result.stdout.lines if "::" in line]
    assert ids == ["host-A-B-cpu-unlimited", "host-A-B-cpu0.1", "host-A-B-cpu0.5",
                   "weave-A-B-cpu-unlimited", "weave-A-B-cpu0.1", "weave-A-B-cpu0.5"]


def test_cgroup_v1_files_read_as_usage(tmp_path, monkeypatch):
    acct, cpu = tmp_path / "cpuacct", tmp_path / "cpu"
    for root in (acct, cpu):
        (root / "ovl1-A" / budget.DAEMONS).mkdir(parents=True)
    (acct / "ovl1-A" / "cpuacct.usage").write_text("2500000000\n")
    (acct / "ovl1-A" / budget.DAEMONS / "cpuacct.usage").write_text("2000000000\n")
    (cpu / "ovl1-A" / "cpu.stat").write_text("nr_periods 40\nnr_throttled 10\nthrottled_time 600000000\n")
    monkeypatch.setattr(budget, "roots", lambda: {"cpu": cpu, "acct": acct, "v1": cpu})
    used = budget.SiteBudget("ovl1-A").usage()
    assert (used.total_s, used.daemons_s, used.throttled_s, used.throttled_periods) == (2.5, 2.0, 0.6, 10)
    before = budget.Usage(0.5, 0.5, 0.1, 2, 20)
    assert used.minus(before).to_json(4.0) == {"cpu_s": 2.0, "daemons_cpu_s": 1.5, "cores_used": 0.5,
                                               "throttled_s": 0.5, "throttled_share": 0.4}
    assert budget.SiteBudget("ovl1-B").usage() is None  # no cgroup yet: nothing to say


def test_cgroup_v2_limit_and_usage(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "roots", lambda: {"cpu": tmp_path, "acct": tmp_path, "v2": tmp_path})
    site = budget.SiteBudget("ovl1-A")
    site.apply(0.25, [])
    assert (tmp_path / "ovl1-A" / "cpu.max").read_text() == "25000 100000"
    assert (tmp_path / "ovl1-A" / "cgroup.subtree_control").read_text() == "+cpu"
    site.apply(None, [])
    assert (tmp_path / "ovl1-A" / "cpu.max").read_text() == "max 100000"
    (tmp_path / "ovl1-A" / "cpu.stat").write_text("usage_usec 300000\nnr_periods 5\nnr_throttled 1\nthrottled_usec 2000\n")
    assert budget.SiteBudget("ovl1-A").usage().total_s == 0.3


def test_a_daemon_is_found_with_its_children():
    assert procs.process_tree(os.getpid())[0] == os.getpid()
    assert os.getpid() in procs.process_tree(os.getppid())


def _at(metric: str, overlay: str, cpu: float | None, value: float, cores: float, throttled: float):
    values = [value] * 20 if metric == "tcp_throughput" else [value + i * 0.01 for i in range(100)]
    r = record(metric, values, overlay=overlay, expected=EXPECTED, cpu=cpu,
               total=value if metric == "tcp_throughput" else None,
               extra={"cpu_used": {"A": {"cores_used": cores, "throttled_share": throttled},
                                   "B": {"cores_used": cores, "throttled_share": throttled}}})
    r.verdict = "pass"
    return r


def test_the_report_says_which_overlays_keep_their_throughput_at_their_smallest_budget(tmp_path):
    records = [_at("tcp_throughput", "weave", None, 80, 0.9, 0.0), _at("tcp_throughput", "weave", 0.1, 12, 0.1, 0.9),
               _at("latency", "weave", None, 21, 0.1, 0.0), _at("latency", "weave", 0.1, 25, 0.1, 0.5),
               _at("tcp_throughput", "libnetwork", None, 900, 0.05, 0.0),
               _at("tcp_throughput", "libnetwork", 0.1, 890, 0.05, 0.0),
               _at("latency", "libnetwork", None, 20.2, 0.01, 0.0), _at("latency", "libnetwork", 0.1, 20.3, 0.01, 0.0)]
    text = report.tables(records, TOPOLOGY)
    assert "CPU budgets on A-B: every site's overlay" in text
    row = next(line for line in text.splitlines() if line.startswith("| weave") and "| 0.1 " in line)
    assert "| 12 (n=20) " in row and "| 0.20 " in row and "| 90 % " in row
    assert "kept throughput (90 %) and latency (p99 within 1 ms): libnetwork 99 % of its TCP goodput" in text
    assert "did not: weave 15 % of its TCP goodput, p99 +4.00 ms at 0.1 cores" in text
    assert "weave (CPU 0.1)" in text  # the plain tables say the budget beside the overlay
    assert plots.cpu_budgets(records, tmp_path / "cpu.png")
