"""A CPU budget on this machine's kernel: a process moved into a site's budget cgroup is held to
it, what it used and how often it was held back are read back, and the cgroups go after."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pytest_overlay import procs
from pytest_overlay.testbeds import budget

from ..conftest import on_the_machines_time


def test_a_busy_daemon_is_held_to_its_budget_and_the_cgroups_go():
    why = budget.unavailable()
    if why:
        pytest.skip(f"CPU budgets unavailable here: {why}")
    name = f"ovl{int(time.time() * 1000) % 0xffffff:06x}-A"
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        site = budget.SiteBudget(name)
        site.apply(0.2, procs.process_tree(spinner.pid))
        with on_the_machines_time():
            before, started = site.usage(), time.monotonic()
            time.sleep(1.5)  # the span the quota is measured over, not a wait for anything
            used = site.usage().minus(before).to_json(time.monotonic() - started)
            assert 0.1 <= used["cores_used"] <= 0.3, used  # 0.2 cores, give or take the periods at the edges
        assert used["daemons_cpu_s"] == pytest.approx(used["cpu_s"], abs=0.05)
        assert used["throttled_share"] > 0.5 and used["throttled_s"] > 0.5, used
        site.apply(None, [])
        before, started = site.usage(), time.monotonic()
        time.sleep(1.0)
        assert site.usage().minus(before).to_json(time.monotonic() - started)["cores_used"] > 0.5  # the limit lifted
    finally:
        spinner.kill()
        spinner.wait()
    assert procs.remove_cgroups(name) == []
    assert procs.cgroup_dirs(name) == []
