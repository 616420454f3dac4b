"""Nothing is left behind: after Ctrl-C, SIGTERM and SIGKILL mid-run (with `clean`), and a
live run is never touched by another run's sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pytest_overlay import procs
from pytest_overlay.inputs import topology
from pytest_overlay.testbeds import engines, runs
from pytest_overlay.testbeds.emulated import EmulatedTestbed

from ..conftest import PYTEST, QUICK, ROOT, foreign_runs, left_behind, machine_state


def start_run() -> subprocess.Popen:
    """A run that is measuring TCP for 30 s once its processes are up: whatever waits for
    them lands mid-measurement, not in a phase too short to be caught. SIGINT is given its
    default action first: a shell without job control starts background commands with it
    ignored, Python then keeps ignoring it, and Ctrl-C would test nothing."""
    return subprocess.Popen(
        [*PYTEST, "suites/", *QUICK, "-m", "tcp",
         "--overlay-duration=30"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_traffic(before: dict, timeout: float = 30) -> dict:
    """Wait until the run has its namespaces and a probe running in them (its delay line,
    iperf3's server and client: three processes that `before` did not have)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = machine_state()
        if len(state["netns"]) > len(before["netns"]) and len(set(state["processes"]) - set(before["processes"])) >= 3:
            return state
        time.sleep(0.1)
    raise AssertionError(f"the run never got going: {machine_state()}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_mid_run_leaves_nothing(clean_machine, signum):
    run = start_run()
    wait_for_traffic(clean_machine)
    run.send_signal(signum)
    output, _ = run.communicate(timeout=60)
    assert run.returncode in (1, 2), output  # interrupted, not crashed
    assert "Interrupted" in output or "KeyboardInterrupt" in output


def test_sigkill_mid_run_then_clean_removes_only_the_dead_run(clean_machine):
    with EmulatedTestbed(topology.load("local")) as live:
        run = start_run()
        during = wait_for_traffic(machine_state())
        run.kill()
        run.communicate(timeout=30)
        left = machine_state()
        assert set(left["netns"]) > set(live.created)
        assert left["processes"]  # the dead run's emulator and probe servers
        swept = subprocess.run([sys.executable, "-m", "pytest_overlay", "clean"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
        assert swept.returncode == 0, swept.stderr
        assert "namespace(s) of runs that are over removed" in swept.stdout
        after = machine_state()
        assert sorted(after["netns"]) == sorted(live.created)  # the live run is untouched
        assert live.run("A", ["ping", "-c", "1", "-W", "2", live.address("B")]).ok
        assert set(after["processes"]) <= set(during["processes"]) - set(left["processes"]) | set(
            p for p in after["processes"] if p in left["processes"] and p in [d.pid for d in live.emulator.daemons])


def test_clean_after_sigkill_removes_the_sockets_its_containers_shims_left(clean_machine):
    """A run with containers killed mid-measurement: its engines' shims leave their sockets
    in containerd's shared /run/containerd/s when `clean` ends them; `clean` removes those,
    found by the run's own container ids and engine addresses."""
    sockets = set(os.listdir(engines.SHIM_SOCKETS)) if engines.SHIM_SOCKETS.exists() else set()
    run = subprocess.Popen([*PYTEST, "suites/", *QUICK, "--overlay=libnetwork", "-m", "tcp", "--overlay-duration=30"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    made: set[str] = set()
    while time.monotonic() < deadline and not made:  # a container's shim is up
        time.sleep(0.2)
        made = set(os.listdir(engines.SHIM_SOCKETS)) - sockets if engines.SHIM_SOCKETS.exists() else set()
    run.kill()
    output, _ = run.communicate(timeout=30)
    swept = subprocess.run([sys.executable, "-m", "pytest_overlay", "clean"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert made, output
    assert swept.returncode == 0, swept.stderr
    assert set(os.listdir(engines.SHIM_SOCKETS)) & made == set()


def test_what_clean_cannot_remove_stays_with_its_lock_for_the_next_clean(tmp_path):
    """A mount still held under a run's directory (a dying dockerd's sandbox) stops its
    removal: the lock stays, so the run is still provably over and a later clean finishes."""
    run_dir = tmp_path / "0ddba2"
    held = run_dir / "docker-B" / "exec" / "netns"
    held.mkdir(parents=True)
    (run_dir / runs.LOCK).touch()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(held)], check=True)
    said: list[str] = []
    try:
        runs.sweep(tmp_path, said.append, only="0ddba2")
        assert (run_dir / runs.LOCK).exists() and any("left " in line and "for a later clean" in line for line in said)
    finally:
        subprocess.run(["umount", str(held)], check=True)
    runs.sweep(tmp_path, said.append, only="0ddba2")
    assert not run_dir.exists(), said


def test_clean_leaves_alone_what_it_cannot_prove_over_unless_forced(clean_machine):
    """A namespace or cgroup that merely looks like ours (no run, no lock) is not clean's to
    remove; --force removes both."""
    foreign = "ovl0ddba1-X"
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    cgroup = procs.cgroup_roots()[0] / foreign
    cgroup.mkdir()
    try:
        swept = subprocess.run([sys.executable, "-m", "pytest_overlay", "clean"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
        assert swept.returncode == 0, swept.stderr
        assert f"left alone: run 0ddba1 ({foreign}) cannot be proven over" in swept.stdout
        assert foreign in machine_state()["netns"]
        forced = subprocess.run([sys.executable, "-m", "pytest_overlay", "clean", "--force"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert f"removed namespace {foreign}" in forced.stdout and "removed the cgroups of run 0ddba1" in forced.stdout
        assert foreign not in machine_state()["netns"] and not cgroup.exists()
    finally:
        subprocess.run(["ip", "netns", "delete", foreign], capture_output=True)
        if cgroup.exists():
            cgroup.rmdir()


def test_a_run_of_another_session_is_not_counted_as_ours(clean_machine):
    """A `make bench` beside the tests comes and goes on its own: its namespaces are not a
    leak of the test that saw them, nor a theft when they go."""
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom pytest_overlay.inputs import topology\n"
         "from pytest_overlay.testbeds.emulated import EmulatedTestbed\n"
         "with EmulatedTestbed(topology.load('local')) as bed:\n    print(bed.run_id, flush=True)\n    sys.stdin.read()"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTEST_OVERLAY_TEST_SESSION"})
    try:
        run_id = other.stdout.readline().strip()
        assert run_id and f"ovl{run_id}-A" in os.listdir("/run/netns")
        assert foreign_runs() == {run_id}
        assert left_behind(clean_machine, machine_state()) == {}
    finally:
        other.communicate(input="", timeout=60)
    assert other.returncode == 0 and f"ovl{run_id}-A" not in os.listdir("/run/netns")
