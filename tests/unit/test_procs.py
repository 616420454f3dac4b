"""Process bookkeeping: a recorded process is named by pid and start time, and a run is over
once its lock can be taken, its owner a zombie or gone."""

from __future__ import annotations

import subprocess
import sys
import time

from pytest_overlay import procs
from pytest_overlay.testbeds import runs

LOCKER = """\
import sys, time
from pathlib import Path
from pytest_overlay.testbeds.runs import hold_lock
lock = hold_lock(Path(sys.argv[1]) / "lock")
print("held", flush=True)
time.sleep(60)
"""


def test_a_run_is_over_once_its_owner_is_dead_even_as_a_zombie(tmp_path):
    assert runs.run_is_over(tmp_path) is None  # no lock: nothing can be proven
    owner = subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline() == "held\n"
        assert runs.run_is_over(tmp_path) is False
        owner.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _state(owner.pid) != "Z":
            time.sleep(0.01)
        assert _state(owner.pid) == "Z"  # killed, not yet reaped: dead all the same
        assert runs.run_is_over(tmp_path) is True
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()


def _state(pid: int) -> str:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]


def test_recorded_process_is_named_by_pid_and_start_time():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = procs.start_time(child.pid)
        assert started is not None
        assert not procs.kill_recorded(child.pid, started + 1)  # same pid, another process: left alone
        assert child.poll() is None
        assert procs.kill_recorded(child.pid, started)
        assert child.wait(10) == -9
    finally:
        child.kill()
        child.wait()


def test_failed_command_shows_command_exit_code_and_output():
    result = procs.run([sys.executable, "-c", "import sys; print('out'); sys.exit('bad thing')"])
    assert (result.rc, result.ok) == (1, False)
    try:
        result.check()
    except procs.CommandError as e:
        assert "command failed (exit 1):" in str(e) and "bad thing" in str(e) and "out" in str(e)
    else:
        raise AssertionError("check() passed a failed command")
    assert procs.run(["/nonexistent/tool"]).rc == 127


def test_a_run_id_never_repeats_one_in_use_on_this_machine(tmp_path, monkeypatch):
    """The first ids drawn are taken (a run's state folder, a dead run's data root): the one
    returned is the first free one."""
    (tmp_path / "state" / "aaaaaa").mkdir(parents=True)
    (tmp_path / "data" / "bbbbbb").mkdir(parents=True)
    monkeypatch.setattr(runs, "DATA_ROOT", tmp_path / "data")
    drawn = iter(["aaaaaa", "bbbbbb", "cccccc"])
    monkeypatch.setattr(runs.secrets, "token_hex", lambda n: next(drawn))
    assert runs.new_run_id(tmp_path / "state") == "cccccc"
