"""Process bookkeeping: a recorded process is named by pid and start time, and a zombie is dead."""

from __future__ import annotations

import subprocess
import sys
import time

from pytest_overlay import procs


def test_running_process_is_alive_and_a_recycled_pid_is_not():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = procs.start_time(child.pid)
        assert started is not None and procs.is_running(child.pid, started)
        assert not procs.is_running(child.pid, started + 1)  # same pid, another process
    finally:
        child.kill()
        child.wait()


def test_zombie_is_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = procs.start_time(child.pid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    assert procs.start_time(child.pid) == started  # still in the process table, unreaped
    assert not procs.is_running(child.pid, started)
    child.wait()
    assert not procs.is_running(child.pid, started)


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
