"""Latency under load without a testbed: the topology's link buffers and load: section, the
tc queues they make, the probes' outputs (real iperf3 -P and ping -D from loopback, real irtt)
split into idle and loaded, Jain's index, the report's table and plots on records of a real
run, and the suite held back unless asked for."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pytest_overlay import report
from pytest_overlay.emulation import emulator
from pytest_overlay.inputs import topology
from pytest_overlay.inputs.topology import Circuit, InputError
from pytest_overlay.measure import load
from pytest_overlay.report import plots
from pytest_overlay.results import Record

DATA = Path(__file__).parent / "data"
SUITES = str(Path(__file__).resolve().parents[2] / "suites")

PAIR = """\
name: t
sites: {A: {}, B: {}, C: {}}
links:
  - {between: [A, B], rtt_ms: 20, rate_mbit: 100}
  - {between: [B, C], rtt_ms: 10, rate_mbit: 1000, queue_ms: 3}
  - {between: [A, C], rtt_ms: 50}
"""


def make(tmp_path, extra: str = "") -> topology.Topology:
    path = tmp_path / "t.yaml"
    path.write_text(PAIR + textwrap.dedent(extra))
    return topology.load(path)


def test_a_links_buffer_is_its_own_or_rtt_plus_10_ms_and_is_recorded(tmp_path):
    topo = make(tmp_path)
    ab = topo.link_between("A", "B").direction("A")
    assert ab.buffer_ms == 30.0  # RTT 20 + 10
    assert topo.link_between("B", "C").direction("C").buffer_ms == 3.0
    assert topo.link_between("A", "C").direction("A").buffer_ms is None  # no rate limit: no queue builds
    assert topo.expected(Circuit("A", "B"))["queue_ms"] == {"A->B": 30.0, "B->A": 30.0}
    assert topo.expected(Circuit("A", "C"))["queue_ms"] == {}
    assert [d.buffer_ms for d in topo.with_queue(Circuit("A", "B"), 5)] == [5, 5]
    # tbf's limit is the buffer at the link's rate: 30 ms at 100 Mbit/s.
    tbf = emulator._tbf(ab, "veth0")
    assert tbf[tbf.index("limit") + 1] == str(int(100e6 / 8 * 0.030))
    assert emulator.queue_packets(ab) >= int(100e6 / 8 * (0.010 * 2 + 0.030) / 1500)


def test_without_a_load_section_every_circuit_runs_at_its_own_buffers(tmp_path):
    topo = make(tmp_path)
    assert topo.load.levels() == [(c, None) for c in topo.circuits]
    topo = make(tmp_path, "load: {circuits: [[A, B]], queue_ms: [5, 50]}\n")
    assert topo.load.levels() == [(Circuit("A", "B"), None), (Circuit("A", "B"), 5.0), (Circuit("A", "B"), 50.0)]
    assert topology.load("geant").load.levels() == [(Circuit("AMS", "MIL"), None), (Circuit("AMS", "MIL"), 5.0)]


@pytest.mark.parametrize("text, line, field, message", [
    ("load: {queue_ms: [0]}\n", 7, "load.queue_ms[0]", "must be a number of ms in (0, 10000], got 0"),
    ("load: {queue_ms: [5, 5]}\n", 7, "load.queue_ms[1]", "5 is given twice"),
    ("load: {queue_ms: 5}\n", 7, "load.queue_ms", "must be a list of buffer sizes in ms"),
    ("load: {circuits: [[A, Z]]}\n", 7, "load.circuits[0]", "must be [SRC, DST], two different sites of A, B, C"),
    ("load: {circuits: [[A, C]], queue_ms: [5]}\n", 7, "load.queue_ms", "circuit A-C has no rate_mbit on its path"),
    ("load: {flows: 4}\n", 7, "load.flows", "unknown key; allowed: circuits, queue_ms"),
])
def test_bad_load_sections_name_file_line_and_field(tmp_path, text, line, field, message):
    with pytest.raises(InputError) as error:
        make(tmp_path, text)
    assert f"t.yaml:{line}: {field}: {message}" in str(error.value)


def test_a_buffer_without_a_rate_is_refused(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nsites: {A: {}, B: {}}\nlinks:\n  - {between: [A, B], rtt_ms: 20, queue_ms: 5}\n")
    with pytest.raises(InputError, match=r"t.yaml:4: links\[0\].queue_ms: a buffer fills only behind a rate limit"):
        topology.load(path)


def test_each_flows_goodput_is_the_receivers_and_the_warm_up_is_left_out():
    up, intervals, retransmits = load.parse_flows((DATA / "iperf3-p4-up.json").read_text(), "up")
    assert [round(m) for m in up] == [20, 20, 20, 20]  # four flows at -b 20M each
    assert intervals and all(i["end"] - i["start"] >= 0.4 for i in intervals)
    assert sum(i["mbit"] for i in intervals) / len(intervals) == pytest.approx(80, rel=0.1)
    assert retransmits is not None  # TCP's, summed over the flows
    down, intervals, _ = load.parse_flows((DATA / "iperf3-p4-down.json").read_text(), "down")  # -R: the client received
    assert [round(m) for m in down] == [20, 20, 20, 20] and len(intervals) >= 4
    with pytest.raises(load.ProbeError, match="unreadable output"):
        load.parse_flows('{"error": "unable to connect"}', "up")


def test_jains_index():
    assert load.jain([5, 5, 5, 5]) == pytest.approx(1.0)
    assert load.jain([20, 0, 0, 0]) == pytest.approx(0.25)
    assert load.jain([3, 1]) == pytest.approx(16 / 20)


def test_ping_replies_are_placed_at_their_send_time():
    echoes = load.parse_ping((DATA / "ping-loopback.txt").read_text())
    assert len(echoes) == 30
    first_line = (DATA / "ping-loopback.txt").read_text().splitlines()[1]
    stamp = float(first_line[1:first_line.index("]")])
    assert echoes[0][1] == 0.029 and echoes[0][0] == int(stamp * 1e9 - 0.029 * 1e6)


def test_round_trips_are_idle_before_the_flows_and_loaded_after_their_warm_up():
    data = json.loads((DATA / "irtt-loopback.json").read_text())
    # Real round trips, their send times spread 100 ms apart: 6 s, as a short run would have.
    sends = []
    for i, trip in enumerate(t for t in data["round_trips"] if t.get("lost") == "false"):
        clock = trip["timestamps"]["client"]
        clock["send"]["wall"] = 1_700_000_000 * 10**9 + i * 10**8
        clock["receive"]["wall"] = clock["send"]["wall"] + trip["delay"]["rtt"]
        sends.append(clock["send"]["wall"])
    irtt = json.dumps(data)
    started = sends[0] - int(load.SETTLE_S * 1e9)
    launched = started + int(2e9)  # idle: the second after the settling one
    seconds = (sends[-1] - launched) / 1e9 - load.WARMUP_S
    iperf = {d: (DATA / f"iperf3-p4-{d}.json").read_text() for d in load.DIRECTIONS}
    exited = {d: launched + int((load.WARMUP_S + seconds) * 1e9) for d in load.DIRECTIONS}
    ping = (DATA / "ping-loopback.txt").read_text()
    run = load.assemble(irtt, ping, iperf, started, launched, exited, seconds, "A -> B")
    idle_window = (started + int(load.SETTLE_S * 1e9), launched)
    assert run.idle.rtt_ms and all(idle_window[0] <= s < idle_window[1] for s, _ in run.idle.spans_ns)
    assert run.loaded.rtt_ms and all(run.loaded_ns[0] <= s < run.loaded_ns[1] for s, _ in run.loaded.spans_ns)
    assert run.loaded_ns[0] == launched + int((load.WARMUP_S + 0.5) * 1e9)  # the warm-up is neither
    assert len(run.all_latency.rtt_ms) == len(run.idle.rtt_ms) + len(run.loaded.rtt_ms)
    assert run.flows["up"].total_mbit == pytest.approx(81, abs=2)
    assert set(run.timeline) >= {"rtt", "icmp", "goodput", "loaded_s"}


def records() -> list[Record]:
    return [Record.from_json(r) for r in json.loads((DATA / "load-records.json").read_text())]


def test_the_report_answers_which_overlays_add_latency_beyond_the_links_buffers():
    """Records of a real run of the five on geant's AMS-MIL (`pytest suites/ -m load --overlay=all`):
    Weave's sleeve queues beyond the links' 5 ms buffers, the kernel datapaths do not."""
    text = report.tables(records(), topology.load("geant"))
    assert "Latency under load on AMS-MIL at the links' own buffers (RRUL: 4 TCP flows each way for 20 s" in text
    assert "Latency under load on AMS-MIL at buffers set to 5 ms" in text
    assert "buffers in ms: AMS->MIL 46.5, MIL->AMS 46.5" in text
    assert ("Added latency under load beyond the links' buffers (10 ms both ways), median: weave +18.4 ms (more than "
            "1 ms beyond); within them: host +8.9 ms, calico +8.9 ms, flannel +8.9 ms, libnetwork +8.9 ms") in text
    row = next(line for line in text.splitlines() if line.startswith("| weave") and "+18.37" in line)
    assert "(n=1513)" in row and "intervals)" in row and row.rstrip(" |").endswith("fail")


def test_the_plots_draw_rtt_and_goodput_over_time_and_the_cdfs(tmp_path):
    recs = records()
    assert plots.load_timeline(recs, "AMS-MIL", None, tmp_path / "t.png")
    assert plots.load_cdf(recs, "AMS-MIL", 5.0, tmp_path / "c.png")
    assert not plots.load_cdf(recs, "AMS-MIL", 50.0, tmp_path / "none.png")
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_load_suite_is_held_back_unless_asked_for(pytester):
    plain = pytester.runpytest_inprocess(SUITES, "--topology=geant", "--overlay=host,weave", "--collect-only", "-q")
    assert plain.ret == pytest.ExitCode.OK
    assert not any("test_load[" in line for line in plain.stdout.lines)
    assert "4 latency-under-load test(s) not run (minutes each); run them with -m load" in plain.stdout.str()
    picked = pytester.runpytest_inprocess(SUITES, "--topology=geant", "--overlay=host", "-m", "load", "--collect-only",
                                          "-q")
    assert [line.split("::")[1] for line in picked.stdout.lines if "::" in line] == [
        "test_load[host-AMS-MIL-links]", "test_load[host-AMS-MIL-q5ms]"]


def test_the_emulators_late_time_is_counted_once_where_windows_overlap():
    from pytest_overlay.measure.validity import Trouble, late_share

    troubles = [Trouble("A->B", 0, 10, 3, 0, 900.0), Trouble("B->A", 5, 20, 2, 0, 800.0),
                Trouble("A->B", 50, 60, 1, 0, 1200.0), Trouble("A->B", 95, 130, 1, 0, 1500.0)]
    assert late_share(troubles, (0, 100)) == pytest.approx((20 + 10 + 5) / 100)
    assert late_share([], (0, 100)) == 0.0 and late_share(troubles, (10, 10)) == 0.0
