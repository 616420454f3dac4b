"""The link emulator's counters, release-error histograms and verdicts, without a kernel."""

import math
import re
import subprocess

from pytest_overlay.emulation import emulator
from pytest_overlay.emulation.linkqueue import HIST_EDGES_US, Queue


def test_compiled_and_portable_cores_share_histogram_edges():
    source = emulator.CORE_SOURCE.read_text()
    edges = re.search(r"hist_edges_us\[HIST_BUCKETS - 1\] = \{([^}]*)\}", source).group(1)
    assert tuple(int(e) for e in edges.replace("\n", " ").split(",")) == HIST_EDGES_US
    assert int(re.search(r"#define HIST_BUCKETS (\d+)", source).group(1)) == len(HIST_EDGES_US) + 1


def test_compiled_core_builds_without_warnings(tmp_path):
    built = subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp_path / "core"),
                            str(emulator.CORE_SOURCE)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    usage = subprocess.run([str(tmp_path / "core"), "--queue", "bad"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: delayline-core" in usage.stderr


def test_portable_core_buckets_release_errors():
    queue = Queue(num=0, delay_s=0.01, jitter_s=0, loss=0)
    for late_s in (0.00001, 0.00001, 0.0012, 0.2):
        queue.count_release(late_s)
    counts = queue.counters(reset=True)
    assert counts["late"] == 2 and counts["released"] == 4
    assert counts["late_hist"][0] == 2 and counts["late_hist"][HIST_EDGES_US.index(1500)] == 1
    assert counts["late_hist"][-1] == 1
    assert counts["window_max_late_us"] == 200000.0
    assert queue.counters()["window_max_late_us"] == 0.0 and queue.counters()["max_late_us"] == 200000.0


def test_percentile_bound_is_the_bucket_edge_holding_it():
    hist = [0] * (len(HIST_EDGES_US) + 1)
    assert emulator.percentile_bound_us(hist, 99) is None
    hist[2] = 990
    hist[HIST_EDGES_US.index(2000)] = 10
    assert emulator.percentile_bound_us(hist, 99) == 100.0
    hist[HIST_EDGES_US.index(2000)] = 11
    assert emulator.percentile_bound_us(hist, 99) == 2000.0
    hist[-1] = 500
    assert math.isinf(emulator.percentile_bound_us(hist, 99))


def test_delta_gives_the_window_p99_and_max():
    before = {"A->B": {"packets": 100, "late": 1, "late_hist": [100] + [0] * len(HIST_EDGES_US), "max_late_us": 9000.0}}
    hist = [150] + [0] * len(HIST_EDGES_US)
    hist[HIST_EDGES_US.index(3000)] = 5
    after = {"A->B": {"packets": 205, "late": 6, "late_hist": hist, "max_late_us": 2400.0}}
    accrued = emulator.delta(before, after)["A->B"]
    assert accrued == {"packets": 105, "late": 5, "p99_late_us": 3000.0, "max_late_us": 2400.0}


def test_faults_name_the_worst_link_first_with_its_release_error():
    assert emulator.faults({"A->B": {"packets": 1000, "dropped": 0, "late": 10}}) == []
    assert emulator.faults({"A->B": {"packets": 100, "dropped": 0, "late": 2}}) == []
    assert emulator.faults({"A->B": {"packets": 1000, "dropped": 0, "late": 11}}) == [
        "emulator released 11 of 1000 packets on A->B over 1 ms late"]
    assert emulator.faults({"_enobufs": {"dropped": 2}}) == ["emulator dropped 2 packets on enobufs (queue overflow)"]
    accrued = {
        "A->B": {"packets": 1000, "late": 20, "p99_late_us": 1500.0, "max_late_us": 2100.0},
        "B->A": {"packets": 1000, "late": 90, "p99_late_us": None, "max_late_us": 180000.0},
    }
    assert emulator.faults(accrued) == [
        "emulator released 90 of 1000 packets on B->A over 1 ms late (release error p99 over 100 ms, max 180.0 ms)",
        "emulator released 20 of 1000 packets on A->B over 1 ms late (release error p99 <= 1.5 ms, max 2.1 ms)",
    ]


def test_core_falls_back_to_the_portable_one_when_asked(monkeypatch):
    monkeypatch.setenv(emulator.CORE_ENV, "python")
    core, why = emulator.compiled_core()
    assert core is None and emulator.CORE_ENV in why
