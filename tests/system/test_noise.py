"""A noisy neighbour on this machine's kernel: the hog runs in the site's namespace, in its own
cgroup under the quota it was given, ends with the measurement (or with the process that
started it, if that is killed), and leaves no cgroup; a suite run records it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_overlay import procs
from pytest_overlay.inputs import topology
from pytest_overlay.measure import noise
from pytest_overlay.testbeds import budget
from pytest_overlay.testbeds.emulated import EmulatedTestbed

from ..conftest import RELAXED, run_suites, two_sites, wait_for

pytestmark = pytest.mark.skipif(bool(budget.unavailable()), reason=f"CPU budgets unavailable: {budget.unavailable()}")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _quota(name: str) -> str:
    roots = budget.roots()
    if "v1" in roots:
        return (roots["cpu"] / name / "cpu.cfs_quota_us").read_text().strip()
    return (roots["cpu"] / name / "cpu.max").read_text().split()[0]


def test_the_hog_runs_in_the_sites_namespace_under_its_quota_and_goes_after(tmp_path):
    with EmulatedTestbed(topology.load(two_sites(tmp_path, 2))) as bed:
        neighbour = noise.Neighbour(noise.Noise("cpu", 0.2), bed.prefix, {"A": bed.netns_of("A")}, tmp_path)
        def running() -> list[int] | None:
            tree = procs.process_tree(neighbour.hogs["A"].pid)
            return tree if len(tree) >= 2 else None  # stress-ng and its worker

        with neighbour:
            hogs = wait_for(running, "stress-ng and its worker running")
            site_ns = os.stat(f"/run/netns/{bed.netns_of('A')}").st_ino
            assert {os.stat(f"/proc/{pid}/ns/net").st_ino for pid in hogs} == {site_ns}
            assert all(f"/{bed.prefix}-noise-A/{budget.DAEMONS}" in Path(f"/proc/{pid}/cgroup").read_text()
                       for pid in hogs)
            assert _quota(f"{bed.prefix}-noise-A") == str(int(0.2 * budget.PERIOD_US))
            assert neighbour.dead() == []
            wait_for(lambda: neighbour.used()["A"]["cpu_s"] > 0, "the hog used CPU time", timeout=10)
        assert not any(_alive(pid) for pid in hogs)
        assert procs.cgroup_dirs(f"{bed.prefix}-noise-") == []
        assert "successful run completed" in (tmp_path / "noise-A.log").read_text()


STARTER = """
import sys, time
from pathlib import Path
from pytest_overlay.measure import noise
n = noise.Neighbour(noise.Noise("memory", 0.1), sys.argv[1], {"A": None}, Path(sys.argv[2]))
n.__enter__()
print(n.hogs["A"].pid, flush=True)
time.sleep(60)
"""


def test_a_killed_run_leaves_no_hog_running(tmp_path):
    name = f"ovl{int(time.time() * 1000) % 0xffffff:06x}"
    starter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(STARTER), name, str(tmp_path)],
                               stdout=subprocess.PIPE, text=True)
    try:
        hog = int(starter.stdout.readline())
        time.sleep(0.5)
        hogs = procs.process_tree(hog)
        assert len(hogs) >= 2
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in hogs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in hogs)
    assert procs.remove_cgroups(f"{name}-noise-") == []  # empty once the hog ended: `clean` removes it so


def test_a_suite_run_records_the_neighbour_and_what_it_used(tmp_path, clean_machine):
    out = tmp_path / "results.json"
    run = run_suites("suites/", f"--topology={two_sites(tmp_path, 4)}", "--overlay=host", "-m", "latency",
                     "--overlay-samples=100", "--overlay-noise=cpu:0.2", RELAXED, f"--overlay-json={out}")
    run.passed()
    records = json.loads(out.read_text())["results"]
    assert [(r["metric"], r["noise"]) for r in records if r["metric"] == "latency"] == [("latency", None),
                                                                                      ("latency", "cpu:0.2")]
    beside = next(r for r in records if r["noise"])
    assert set(beside["extra"]["noise_used"]) == {"A", "B"}  # both sites of the path
    assert all(0 < u["cores_used"] <= 0.3 for u in beside["extra"]["noise_used"].values())
    assert "noisy neighbours on A-B" in run.output
