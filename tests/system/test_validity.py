"""Measurements the tool cannot vouch for, made on purpose: the delay line stalled for a few
tens of milliseconds during a probe leaves no stalled round trip among the samples kept (they
are excluded and counted, and beyond the bound the record is INVALID with how late it
released), and a delay line that dies mid-run stops the session with its own last words."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pytest_overlay.emulation import emulator
from pytest_overlay.inputs import topology
from pytest_overlay.measure import probes, validity
from pytest_overlay.overlays.host import HostOverlay
from pytest_overlay.results.thresholds import load
from pytest_overlay.testbeds.emulated import EmulatedTestbed

from ..conftest import PYTEST, QUICK, ROOT, machine_state, wait_for


@pytest.mark.parametrize("core", ["compiled", "python"])
def test_a_stalled_delay_line_makes_the_measurement_invalid(clean_machine, monkeypatch, core):
    if core == "python":
        monkeypatch.setenv(emulator.CORE_ENV, "python")
    with EmulatedTestbed(topology.load("local"), emulator="delayline") as bed:
        assert bed.emulator.core == ("compiled core" if core == "compiled" else
                                     f"portable core forced by {emulator.CORE_ENV}=python")
        a, b = HostOverlay(bed).endpoints(["A", "B"])
        (line,) = bed.emulator.daemons
        before = bed.emulator_counters(reset=True)

        def stall() -> None:
            time.sleep(0.5)
            for _ in range(3):  # three stalls of 40 ms while round trips are in flight
                os.kill(line.pid, signal.SIGSTOP)
                time.sleep(0.04)
                os.kill(line.pid, signal.SIGCONT)
                time.sleep(0.2)

        staller = threading.Thread(target=stall)
        started = time.time_ns()
        staller.start()
        samples = probes.LATENCY.run(a, b, 300, 5)
        staller.join()
        accrued = emulator.delta(before, bed.emulator_counters(since=started))
    there = [validity.Hop("A->B", 10.0)]
    back = [validity.Hop("B->A", 10.0)]
    # The bound as a strict thresholds file sets it (the bundled one replaces a run whole only past half).
    rules = {**load().for_("validity", "host", "A-B"), "max_excluded_share_latency": 0.05}
    accounting = validity.account("latency", accrued, there, back, samples, rules)
    kept = samples.keep(accounting.kept)
    assert max(samples.rtt_ms) > 20 + 30  # a round trip held behind a stall was measured ...
    assert max(kept.rtt_ms) < 20 + 5, accounting.to_json()  # ... and none such is among those kept
    assert accounting.excluded == kept.excluded >= 3 and accounting.n == len(samples.rtt_ms)
    windows = [w for link in accrued.values() for w in link.get("windows", [])]
    assert len(windows) >= 3 and max(w[4] for w in windows) > 30_000  # how late, per window
    # Three stalls of 40 ms over a 20 ms path at one round trip per 5 ms touch well over 5 %.
    assert accounting.faults and accounting.faults[0].startswith("emulator touched"), accounting.faults
    assert "released late (up to " in accounting.faults[0]
    assert validity.load_related(accounting.faults)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_a_delay_line_that_dies_mid_run_stops_the_session(clean_machine):
    run = subprocess.Popen([*PYTEST, "suites/", *QUICK,
                            "-m", "latency or throughput", "--overlay-duration=4"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    victim = None
    while time.monotonic() < deadline and victim is None:
        for pid in machine_state()["processes"]:
            try:
                command = open(f"/proc/{pid}/cmdline", "rb").read()
                if b"delayline-core-" in command or b"pytest_overlay.emulation.delayline" in command:
                    victim = pid
            except OSError:
                pass
        time.sleep(0.1)
    assert victim, "the run never started its delay line"
    # Into the measurements: a probe of the run is running.
    wait_for(lambda: any(_comm(pid) in ("irtt", "iperf3") for pid in machine_state()["processes"]),
             "the run started a probe", timeout=60)
    os.kill(victim, signal.SIGKILL)
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 1, output
    assert re.search(r"stopping: a daemon of the testbed died (before|during) host A-B", output), output
    assert "delayline (pid" in output and "exited with status -9" in output
