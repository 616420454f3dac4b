"""WAN faults applied by the real link emulator on this machine's kernel, measured on the
underlay: a cut is as long as it was made, a reroute and a loss burst change what they say,
the watched circuit is left alone, and every fault is undone, also when the run is
interrupted in the middle of one."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_overlay.emulation import emulator
from pytest_overlay.inputs import topology
from pytest_overlay.measure import faults
from pytest_overlay.overlays.calico import bird_query
from pytest_overlay.overlays.host import HostOverlay
from pytest_overlay.testbeds.emulated import EmulatedTestbed
from pytest_overlay.testbeds.runs import netns_inode, pids_in_netns

from ..conftest import on_the_machines_time

TRIANGLE = {
    "name": "triangle", "sites": {"A": {}, "B": {}, "C": {}},
    "links": [{"between": ["A", "B"], "rtt_ms": 20}, {"between": ["B", "C"], "rtt_ms": 10},
              {"between": ["A", "C"], "rtt_ms": 30}],
    "faults": {
        "cut": {"kind": "cut", "link": ["A", "B"], "seconds": 1},
        "slow": {"kind": "reroute", "link": ["A", "B"], "add_rtt_ms": 20, "seconds": 1.5},
        "lossy": {"kind": "loss", "link": ["A", "B"], "loss_pct": 30, "seconds": 1.5},
        "long": {"kind": "cut", "link": ["A", "B"], "seconds": 10},
    },
}


@pytest.fixture
def quick(monkeypatch):
    """Shorter lead-in and settling than a suite's: the subject is the emulator's timing."""
    monkeypatch.setattr(faults, "BEFORE_S", 1.5)
    monkeypatch.setattr(faults, "SETTLE_S", 0.5)


def rtt_min(bed: EmulatedTestbed, src: str, dst: str) -> float:
    out = bed.run(src, ["ping", "-q", "-n", "-c", "5", "-i", "0.05", bed.address(dst)]).check().stdout
    return float(re.search(r"= ([\d.]+)/[\d.]+/", out).group(1))


def test_a_cut_lasts_as_long_as_it_was_made_and_is_undone(clean_machine, quick):
    topo = topology.parse(TRIANGLE, "<test>")
    with on_the_machines_time():
        with EmulatedTestbed(topo, emulator="delayline") as bed:
            run = faults.run(HostOverlay(bed), topo.faults["cut"])
            outcome = faults.analyse(run.trips, run.steps)
            watch = faults.analyse(run.watch_trips, run.steps)
            after = rtt_min(bed, "A", "B")
        applied = run.steps[1].at_ns - run.steps[0].at_ns
        assert abs(applied / 1e6 - 1000) < 50, run.steps  # the emulator says when; the sleep only aims
        assert applied / 1e6 - 10 <= outcome.outage_ms <= applied / 1e6 + 60, outcome
        assert 90 <= outcome.lost_during <= 105 and outcome.sent_during >= outcome.lost_during
        assert outcome.first_reply_ms is not None and outcome.first_reply_ms < 100
        assert outcome.back_to_level_ms is not None and outcome.back_to_level_ms < 500
        assert 19.5 <= outcome.level_ms < 22
        assert run.fault.watch.id == "B-C" and watch.outage_ms < 100 and watch.lost_during == 0
        assert 20 <= after < 21  # healed: the link is back at its topology's delay


def test_the_probe_server_keeps_its_client_through_the_whole_fault(clean_machine, quick, monkeypatch):
    """irtt's server forgets a client it has not heard from for its --timeout (1 min by
    default) and then answers it once more, never again: a 90 s cut through libnetwork
    looked like a black hole that outlived the heal by 120 s. Here the same, scaled down to a
    1 s timeout and a 10 s cut (irtt looks for idle clients every few seconds: a 5 s cut
    outlived a 1 s timeout), and the probe's own timeout that covers the run."""
    topo = topology.parse(TRIANGLE, "<test>")

    def replies_after_heal(run: faults.FaultRun) -> int:
        return sum(t.rtt_ms is not None and t.send_ns >= run.steps[-1].at_ns for t in run.trips)

    with on_the_machines_time():
        with EmulatedTestbed(topo, emulator="delayline") as bed:
            overlay = HostOverlay(bed)
            kept = faults.run(overlay, topo.faults["long"], bound_s=3)
            monkeypatch.setattr(faults, "server_idle_s", lambda seconds: 1.0)
            forgot = faults.run(overlay, topo.faults["long"], bound_s=3)
        outcome = faults.analyse(kept.trips, kept.steps, bound_s=3)
        assert outcome.back_to_level_ms is not None and 9990 <= outcome.outage_ms < 10_100, outcome
    assert replies_after_heal(kept) >= faults.LEVEL_RUN
    # Forgotten: the first request after the heal is answered, and nothing after it.
    assert faults.analyse(forgot.trips, forgot.steps, bound_s=3).back_to_level_ms is None
    assert replies_after_heal(forgot) <= 1


@pytest.mark.parametrize("core", ["compiled", "python"])
def test_a_reroute_and_a_loss_burst_change_the_link_for_their_time(clean_machine, quick, monkeypatch, core):
    if core == "python":
        monkeypatch.setenv(emulator.CORE_ENV, "python")
    topo = topology.parse(TRIANGLE, "<test>")
    with EmulatedTestbed(topo, emulator="delayline") as bed:
        overlay = HostOverlay(bed)
        slow = faults.analyse(*(lambda r: (r.trips, r.steps))(faults.run(overlay, topo.faults["slow"])))
        lossy = faults.analyse(*(lambda r: (r.trips, r.steps))(faults.run(overlay, topo.faults["lossy"])))
        after = rtt_min(bed, "A", "B")
    during = sorted(slow.during_ms)
    assert 39.5 <= during[len(during) // 2] < 42, slow  # 20 ms + 20 ms added
    assert slow.lost_during == 0 and slow.outage_ms < 100
    assert slow.back_to_level_ms is not None and slow.back_to_level_ms < 500
    share = lossy.lost_during / lossy.sent_during
    assert 0.35 <= share <= 0.65, lossy  # 30 % each way: 1 - 0.7 x 0.7 = 51 % of round trips
    assert 20 <= after < 21


def test_a_run_interrupted_in_the_middle_of_a_fault_heals_the_link(clean_machine, quick):
    topo = topology.parse(TRIANGLE, "<test>")
    with EmulatedTestbed(topo, emulator="delayline") as bed:
        def interrupt(message: str) -> None:
            if "fault at" in message:
                raise KeyboardInterrupt("Ctrl-C during the fault")

        with pytest.raises(KeyboardInterrupt):
            faults.run(HostOverlay(bed), topo.faults["cut"], progress=interrupt)
        assert 20 <= rtt_min(bed, "A", "B") < 21
        assert "irtt" not in commands_in(bed)  # the probes were ended too


def commands_in(bed: EmulatedTestbed) -> list[str]:
    names = []
    for site in bed.sites:
        for pid in pids_in_netns(netns_inode(bed.netns_of(site))):
            try:
                names.append(Path(f"/proc/{pid}/comm").read_text().strip())
            except OSError:
                pass
    return names


def test_bgp_sessions_read_over_birds_socket_match_birdc(tmp_path):
    if not shutil.which("bird") or not shutil.which("birdc"):
        pytest.skip("bird2 is not installed (make venv installs it)")
    config = tmp_path / "bird.conf"
    config.write_text("router id 192.0.2.1;\nprotocol device { scan time 10; }\n"
                      "protocol bgp peer_AMS { local 192.0.2.1 as 64512; neighbor 192.0.2.2 as 64512; multihop; "
                      "ipv4 { import all; export none; }; }\n")
    control = tmp_path / "bird.ctl"
    bird = subprocess.Popen(["bird", "-f", "-c", str(config), "-s", str(control), "-P", str(tmp_path / "pid")])
    try:
        for _ in range(50):
            if bird_query(str(control), "show status"):
                break
            subprocess.run(["sleep", "0.1"])
        shown = subprocess.run(["birdc", "-s", str(control), "show", "protocols"], capture_output=True, text=True)
        ours = bird_query(str(control), "show protocols")
        # birdc's first line is BIRD's greeting; each "Since" is worked out anew per query, and its
        # milliseconds can differ by one between two
        since = re.compile(r"\d\d:\d\d:\d\d\.\d+")
        assert since.sub("T", ours).splitlines() == since.sub("T", shown.stdout).splitlines()[1:]
        assert "peer_AMS" in ours
        assert bird_query(str(control), "show nonsense").startswith("syntax error")
        assert bird_query(str(tmp_path / "nothing.ctl"), "show protocols") == ""
    finally:
        bird.terminate()
        bird.wait(10)
