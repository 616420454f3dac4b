"""WAN fault scenarios without a testbed: the topology's faults: section, the timeline
arithmetic (outage, loss, detour, recovery, censoring) on real irtt output and on made-up
timelines, the report's table, and the suite being held back unless asked for."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pytest_overlay import report
from pytest_overlay.inputs import scenarios, topology
from pytest_overlay.inputs.topology import Circuit, InputError
from pytest_overlay.measure import faults
from pytest_overlay.measure.faults import Step, Trip

DATA = Path(__file__).parent / "data"
SUITES = str(Path(__file__).resolve().parents[2] / "suites")
MS = 1_000_000

THREE = """\
name: t
sites: {A: {}, B: {}, C: {}, D: {}}
links:
  - {between: [A, B], rtt_ms: 20}
  - {between: [B, C], rtt_ms: 10}
  - {between: [A, C], rtt_ms: 30}
  - {between: [C, D], rtt_ms: 5}
"""


def load(tmp_path, faults_yaml: str) -> topology.Topology:
    path = tmp_path / "t.yaml"
    path.write_text(THREE + textwrap.dedent(faults_yaml))
    return topology.load(path)


def test_bundled_geant_has_every_kind_of_fault_with_an_untouched_watch():
    geant = topology.load("geant")
    # Every kind but mtu, whose scenarios sit with the path MTU suite's topology.
    assert {f.kind for f in geant.faults.values()} == set(topology.FAULT_KINDS) - {"mtu"}
    assert {f.kind for f in topology.load("pmtu").faults.values()} == {"mtu"}
    for fault in geant.faults.values():
        assert fault.watch is not None and fault.watch != fault.probe
        assert scenarios.untouched(geant, fault, fault.watch)
    cut = geant.faults["cut-BRA-LJU"]
    assert (cut.probe, cut.seconds, cut.duration_s) == (Circuit("BRA", "LJU"), 20.0, 20.0)
    flap = geant.faults["flap-AMS-BRA"]
    assert flap.duration_s == 5 * 2 + 4 * 3
    assert [(t, what) for t, what, _ in flap.steps()][:4] == [(0, "fault"), (2, "heal"), (5, "fault"), (7, "heal")]


def test_each_kind_changes_only_its_links(tmp_path):
    topo = load(tmp_path, """\
        faults:
          part: {kind: partition, site: C, seconds: 5}
          slow: {kind: reroute, link: [A, B], add_rtt_ms: 8}
          lossy: {kind: loss, link: [B, C], loss_pct: 5}
        """)
    part = topo.faults["part"]
    assert sorted(part.faulty()) == ["A->C", "B->C", "C->A", "C->B", "C->D", "D->C"]
    assert all(d.loss_pct == 100 for d in part.faulty().values())
    assert part.watch == Circuit("A", "B")  # the one pair whose path avoids C
    slow = topo.faults["slow"].faulty()
    assert slow["A->B"].delay_ms == 10 + 4 and slow["B->A"].delay_ms == 14 and slow["A->B"].loss_pct == 0
    assert topo.faults["slow"].healthy()["A->B"].delay_ms == 10
    assert {d.loss_pct for d in topo.faults["lossy"].faulty().values()} == {5}


@pytest.mark.parametrize("text, line, field, message", [
    ("faults:\n  x: {kind: melt, link: [A, B]}\n", 9, "faults.x.kind", "must be one of cut, partition, flap"),
    ("faults:\n  x: {kind: cut}\n", 9, "faults.x.link", "must name a link as [SITE, SITE]"),
    ("faults:\n  x: {kind: cut, link: [A, D]}\n", 9, "faults.x.link", "no link between A and D"),
    ("faults:\n  x: {kind: partition, link: [A, B]}\n", 9, "faults.x.link", "a partition fault takes no link"),
    ("faults:\n  x: {kind: partition, site: Z}\n", 9, "faults.x.site", "unknown site 'Z'"),
    ("faults:\n  x: {kind: flap, link: [A, B], times: 2.5}\n", 9, "faults.x.times", "whole number"),
    ("faults:\n  x: {kind: cut, link: [A, B], seconds: 0}\n", 9, "faults.x.seconds", "must be > 0"),
    ("faults:\n  x: {kind: cut, link: [A, B], watch: [B, A]}\n", 9, "faults.x.watch", "the fault touches B-A"),
    ("faults:\n  x: {kind: cut, link: [A, B], loss_pct: 5}\n", 9, "faults.x.loss_pct", "takes no loss_pct"),
    ("faults:\n  x:\n    kind: cut\n    link: [A, B]\n    probe: [A, A]\n", 12, "faults.x.probe", "two different"),
    ("faults: [cut]\n", 8, "faults", "must be a mapping"),
])
def test_bad_faults_name_file_line_and_field(tmp_path, text, line, field, message):
    with pytest.raises(InputError) as e:
        load(tmp_path, text)
    assert f"t.yaml:{line}: {field}: " in str(e.value) and message in str(e.value)


def test_a_cut_read_off_real_irtt_output():
    """irtt's JSON of 100 requests at 10 ms, with UDP dropped for 0.3 s: lost round trips
    keep their send times, and the outage is the gap between replies, less one interval."""
    trips = faults.parse_trips((DATA / "irtt-cut.json").read_text())
    assert len(trips) == 100 and sum(t.rtt_ms is None for t in trips) == 30
    lost = [t for t in trips if t.rtt_ms is None]
    on, off = lost[0].send_ns - 1, lost[-1].send_ns + 1
    outcome = faults.analyse(trips, [Step("fault", 0, on), Step("heal", 0.3, off)])
    assert 290 <= outcome.outage_ms <= 310
    assert (outcome.lost_during, outcome.sent_during) == (30, 30)
    assert outcome.first_reply_ms is not None and 0 <= outcome.first_reply_ms < 15
    assert outcome.level_ms is not None and outcome.level_ms < 1


def test_live_lines_as_irtt_prints_them():
    replies = faults.live_replies((DATA / "irtt-cut.lines").read_text())
    assert replies[0][0] == 0 and all(0 < rtt < 5 for _, rtt in replies)
    assert faults.live_replies("seq=7 rtt=1.5ms ipdv=n/a\nseq=8 rtt=2s ipdv=1s\n[Connected]") == [(7, 1.5), (8, 2000.0)]


def timeline(rtts: list[float | None], start_ns: int = 10**18, interval_ms: float = 10.0) -> list[Trip]:
    out = []
    for i, rtt in enumerate(rtts):
        sent = start_ns + int(i * interval_ms * MS)
        out.append(Trip(i, sent, None if rtt is None else sent + int(rtt * MS), rtt))
    return out


def test_an_overlay_that_relays_shows_a_detour_and_no_outage():
    rtts = [20.0] * 300 + [35.0] * 200 + [20.0] * 100
    trips = timeline(rtts)
    steps = [Step("fault", 0, trips[300].send_ns - MS), Step("heal", 2, trips[500].send_ns - MS)]
    outcome = faults.analyse(trips, steps)
    assert outcome.outage_ms == pytest.approx(15, abs=0.01)  # the RTT's step: one reply came 15 ms later
    assert outcome.lost_during == 0 and len(outcome.during_ms) == 200 and set(outcome.during_ms) == {35.0}
    assert outcome.level_ms == 20.0
    assert outcome.back_to_level_ms == pytest.approx(21, abs=0.1)  # the first reply sent after the heal


def test_recovery_not_seen_within_the_bound_is_censored():
    rtts = [20.0] * 200 + [None] * 400
    trips = timeline(rtts)
    steps = [Step("fault", 0, trips[200].send_ns - MS), Step("heal", 1, trips[300].send_ns - MS)]
    outcome = faults.analyse(trips, steps, bound_s=2.0)
    assert outcome.first_reply_ms is None and outcome.back_to_level_ms is None
    assert outcome.outage_ms > 3000  # to the end of the probe: nothing came back


def test_a_slow_return_to_level_is_timed_from_the_heal():
    rtts = [20.0] * 200 + [None] * 100 + [30.0] * 50 + [20.0] * 100
    trips = timeline(rtts)
    steps = [Step("fault", 0, trips[200].send_ns - MS), Step("heal", 1, trips[300].send_ns - MS)]
    outcome = faults.analyse(trips, steps)
    assert outcome.outage_ms == pytest.approx(1000 + 10, abs=1)  # the first reply after took 10 ms longer
    assert outcome.first_reply_ms == pytest.approx(31, abs=0.1)
    # The first run of 20 whose median is back starts at the 41st (11 at 20 ms); its first at 20 ms, the 50th.
    assert outcome.back_to_level_ms == pytest.approx(50 * 10 + 1 + 20, abs=0.1)


def test_replies_held_through_the_fault_end_the_outage_when_they_arrive():
    """Weave's sleeve held requests sent during a partition and answered them seconds after
    the heal (seen: RTT 2660 ms): they are no detour, and the outage lasts until they came."""
    rtts = [20.0] * 200 + [None] * 80 + [2000.0 - 10 * i for i in range(20)] + [20.0] * 200
    trips = timeline(rtts)
    steps = [Step("fault", 0, trips[200].send_ns - MS), Step("heal", 1, trips[300].send_ns - MS)]
    outcome = faults.analyse(trips, steps)
    assert outcome.held == 20 and outcome.held_max_ms == 2000.0 and outcome.during_ms == []
    assert outcome.lost_during == 80
    # The last reply before came at 199 x 10 + 20 ms; the first after, to a request sent at the heal.
    assert outcome.outage_ms == pytest.approx((3000 + 20) - (1990 + 20) - 10, abs=0.1)


def test_a_wandering_rtt_is_back_at_its_level_by_its_median():
    rtts = [20.0, 21.5] * 100 + [None] * 100 + [20.0, 22.0, 19.0, 21.5] * 50
    trips = timeline(rtts)
    steps = [Step("fault", 0, trips[200].send_ns - MS), Step("heal", 1, trips[300].send_ns - MS)]
    outcome = faults.analyse(trips, steps)
    assert outcome.level_ms == pytest.approx(20.75)
    assert outcome.back_to_level_ms is not None and outcome.back_to_level_ms < 200


def test_requests_in_flight_when_the_probe_stops_are_not_lost():
    trips = timeline([20.0] * 100 + [None] * 3)
    assert len(faults.in_time(trips)) == 100
    # In flight: sent in the last 2 x 20 ms + 200 ms, 24 requests at 10 ms.
    assert len(faults.in_time(timeline([20.0] * 100 + [None] * 60))) == 100 + 60 - 24


def test_the_probe_stops_once_the_rtt_is_back_for_a_run_of_replies():
    level = 20.0
    ok = [(i, 20.3) for i in range(100, 100 + faults.LEVEL_RUN)]
    assert faults.recovered_live(ok, level, after_seq=99)
    assert not faults.recovered_live(ok[:-1], level, after_seq=99)
    assert not faults.recovered_live(ok[:5] + ok[6:] + [(200, 20.0)], level, after_seq=99)  # a gap: not a run
    assert not faults.recovered_live([(i, 25.0) for i in range(100, 130)], level, after_seq=99)
    assert not faults.recovered_live(ok, None, after_seq=99)


def test_the_path_during_a_fault_is_read_off_the_wire_counts():
    wire = {"B->A": 190, "A->C": 188, "C->A": 185, "A->B": 186, "B->C": 3, "C->D": 500}
    links = faults.detour(wire, requests=200, exclude={"C->D", "D->C"})
    assert links == ["A->B", "A->C", "B->A", "C->A"]
    assert faults.relay_path(links, "B", "C") == "B->A->C"
    assert faults.relay_path(["B->A"], "B", "C") == ""
    assert faults.detour(None, 200, set()) == [] and faults.detour({"A->B": 5}, 0, set()) == []


def test_the_report_has_a_table_per_scenario_with_censoring_said():
    """Records of a real run of the cut through libnetwork and Weave; Weave's return to level
    then marked as a run marks one it did not see within the bound."""
    records = [report_record(m) for m in json.loads((DATA / "fault-records.json").read_text())]
    level = next(r for r in records if r.overlay == "weave" and r.metric == "recovery_level_ms")
    level.extra.update(censored=True, bound_s=120.0)
    text = report.tables(records, topology.load("geant"))
    assert "WAN fault cut-BRA-LJU: link BRA-LJU drops everything for 20 s." in text
    assert "> 120000 (censored)" in text
    assert "agrees" in text and "weave router/network_router.go HeartbeatTimeout" in text


def report_record(data: dict):
    from pytest_overlay.results import Record

    return Record.from_json(data)


def test_the_faults_suite_is_held_back_unless_asked_for(pytester):
    plain = pytester.runpytest_inprocess(SUITES, "--topology=geant", "--overlay=host,weave", "--collect-only", "-q")
    assert plain.ret == pytest.ExitCode.OK
    assert not any("test_fault[" in line for line in plain.stdout.lines)
    assert "10 WAN fault test(s) not run (minutes each); run them with -m faults" in plain.stdout.str()
    picked = pytester.runpytest_inprocess(SUITES, "--topology=geant", "--overlay-faults=cut-BRA-LJU", "-m", "faults",
                                          "--collect-only", "-q")
    assert [line.split("::")[1] for line in picked.stdout.lines if "::" in line] == ["test_fault[host-cut-BRA-LJU]"]
    bad = pytester.runpytest_inprocess(SUITES, "--topology=geant", "--overlay-faults=meteor", "--collect-only")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--overlay-faults: no scenario meteor in" in bad.stderr.str() and "cut-BRA-LJU, partition-LJU" in bad.stderr.str()


def test_libnetwork_expects_a_partition_to_outlast_its_heal_by_a_reconnect():
    """Measured: the network database drops a partitioned site at +6 s and lists it again
    1.2-1.7 s after the heal; a cut between two of four sites drops nothing."""
    from pytest_overlay.overlays.libnetwork import LibnetworkOverlay

    overlay = LibnetworkOverlay.__new__(LibnetworkOverlay)
    topo = topology.load("geant")
    assert overlay.expected_outage_s(topo.faults["partition-LJU"]) == (20.0, 22.0)
    assert overlay.expected_outage_s(topo.faults["cut-BRA-LJU"]) == (20.0, 21.0)
    # Seen once in four: LJU's bulk sync timed out, and LJU answered 34.1 s after the heal.
    logs = {"dockerd-LJU": ['time="2026-11-29T04:03:09.607820858Z" level=error msg="Bulk sync to node 761491923d1a '
                            'timed out"'],
            "dockerd-BRA": ['level=warning msg="memberlist: Refuting a suspect message (from: e758cee71213)"']}
    assert overlay.expected_outage_s(topo.faults["partition-LJU"], logs) == (20.0, 52.0)


def test_the_control_logs_leave_out_what_the_overlay_calls_noise(tmp_path):
    """libnetwork's dockerd logs an error per remote endpoint at every verbose inspect, which
    its control state makes once a second: those lines would push out the gossip's own."""

    class Daemon:
        name = "dockerd-A"
        log = tmp_path / "dockerd.log"

        def log_size(self) -> int:
            return self.log.stat().st_size

        def log_from(self, offset: int) -> str:
            return self.log.read_text()[offset:]

    class Overlay:
        control_log_noise = ("Inconsistent driver",)
        daemon = Daemon()

        def control_logs(self):
            return [self.daemon]

        def control_state(self) -> dict[str, str]:
            return {}

    Daemon.log.write_text("before the fault\n")
    watch = faults.ControlWatch(Overlay())
    watch.start()
    with Daemon.log.open("a") as f:
        f.write('level=error msg="Inconsistent driver and libnetwork state for endpoint 1"\n'
                'level=warning msg="memberlist: Suspect 9621e317659d has failed, no acks received"\n')
    assert watch.finish() == {"dockerd-A": ['level=warning msg="memberlist: Suspect 9621e317659d has failed, '
                                            'no acks received"']}
