"""The probe's own processes' waits for a CPU, read from the kernel's run-queue accounting
of real processes: two busy loops made to share one CPU wait about half the time each, a
sleeping one never."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pytest_overlay.measure import runqueue

HERE = os.stat("/proc/self/ns/net").st_ino


@pytest.fixture
def program(tmp_path):
    """program(binary, *args, cpu=None): a copy of `binary` named `ovlprobe`, started with a
    marker argument (its needle) and pinned to `cpu`; ended by its pid after the test."""
    started: list[subprocess.Popen] = []

    def start(binary: str, *args: str, cpu: int | None = None) -> str:
        copy = tmp_path / "ovlprobe"
        if not copy.exists():
            shutil.copy(shutil.which(binary), copy)
        needle = f"ovl-{uuid.uuid4().hex[:8]}"
        pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
        started.append(subprocess.Popen([str(copy), *args, needle], stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, preexec_fn=pin))
        return needle

    yield start
    for p in started:
        p.kill()
        p.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"), reason="kernel without schedstats")
def test_two_busy_processes_sharing_a_cpu_each_wait_about_half_the_time(program):
    cpu = min(os.sched_getaffinity(0))
    first, second = program("yes", cpu=cpu), program("yes", cpu=cpu)
    sides = [runqueue.Side("client", "ovlprobe", first, HERE), runqueue.Side("server", "ovlprobe", second, HERE)]
    began = time.time_ns()
    with runqueue.Watch(sides, precede=False) as watch:  # in the probes' class, one would starve the other
        time.sleep(1.0)
    watched_ms = (time.time_ns() - began) / 1e6
    waits = watch.waits
    assert waits.found == {"client", "server"}
    for side in ("client", "server"):
        # Each runs about half the time it is watched; the hypervisor's steal only adds.
        assert 0.25 * watched_ms < waits.total_ms(side) <= watched_ms + 20, (side, waits.total_ms(side))
    windows = [w for w in waits.windows if w.side == "client"]
    assert any(w.wait_ns > 1_000_000 for w in windows)
    # One thread: its wait in a window is all the side waited there, and no longer than it.
    assert all(w.wait_ns == w.total_ns <= w.end_ns - w.start_ns + 2_000_000 for w in windows)


def settled(needle: str, timeout: float = 10.0) -> None:
    """Until the process has stopped running: its CPU time and run-queue wait hold still for
    0.2 s (on a busy machine its start-up waits for a CPU too)."""
    side = runqueue.Side("client", "ovlprobe", needle, HERE)
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        pids = runqueue.find(side)
        now = [Path(f"/proc/{pid}/schedstat").read_text().split()[:2] for pid in pids]
        if pids and now == last:
            return
        last = now
        time.sleep(0.2)
    raise AssertionError(f"the process {needle} did not settle in {timeout:g} s")


def test_a_sleeping_process_waits_for_nothing_and_others_are_not_watched(program):
    needle = program("cat", "-")  # reading a pipe nobody writes
    settled(needle)
    elsewhere = runqueue.Side("server", "ovlprobe", needle, HERE + 1)  # another namespace's
    with runqueue.Watch([runqueue.Side("client", "ovlprobe", needle, HERE), elsewhere]) as watch:
        time.sleep(0.3)
    assert watch.waits.total_ms("client") == 0 and "client" in watch.waits.found
    assert "server" not in watch.waits.found and not [w for w in watch.waits.windows if w.side == "server"]


@pytest.mark.skipif(os.geteuid() != 0, reason="a real-time scheduling class needs root")
def test_the_watched_probes_threads_and_only_theirs_are_put_before_the_machines_other_work(program):
    watched, other = program("cat", "-"), program("cat", "-")  # each reading a pipe nobody writes
    with runqueue.Watch([runqueue.Side("client", "ovlprobe", watched, HERE)]) as watch:
        time.sleep(0.2)
    pids = {pid for pid, _ in watch.waits.preceded}
    assert len(pids) == 1 and watch.waits.preceded
    (pid,) = pids
    assert all(os.sched_getscheduler(int(tid)) == os.SCHED_RR for tid in os.listdir(f"/proc/{pid}/task"))
    (bystander,) = runqueue.find(runqueue.Side("client", "ovlprobe", other, HERE))
    assert os.sched_getscheduler(bystander) == os.SCHED_OTHER


@pytest.mark.skipif(os.geteuid() != 0, reason="a negative nice needs root")
def test_a_flows_processes_and_only_theirs_are_given_weight(program):
    flow, other = program("cat", "-"), program("cat", "-")
    with runqueue.Boost([runqueue.Side("client", "ovlprobe", flow, HERE)]) as boost:
        deadline = time.monotonic() + 5
        while not boost.boosted and time.monotonic() < deadline:
            time.sleep(0.01)
    (pid,) = runqueue.find(runqueue.Side("client", "ovlprobe", flow, HERE))
    assert boost.boosted == {pid} and os.getpriority(os.PRIO_PROCESS, pid) == runqueue.FLOW_NICE
    (bystander,) = runqueue.find(runqueue.Side("client", "ovlprobe", other, HERE))
    assert os.getpriority(os.PRIO_PROCESS, bystander) == 0
