"""A measurement goes on until it holds its clean samples: runs the machine spoiled are
replaced, a fault of the path or the overlay never is, and one still short when its budget
is spent is INVALID with the count; the underlay's INVALID baseline is measured again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pytest_overlay.inputs.model import Circuit
from pytest_overlay.kinds import BASELINE
from pytest_overlay.measure import machine, topup, validity
from pytest_overlay.measure.judging import Judging
from pytest_overlay.measure.measured import Measured, MeasureKey, merged_emulator
from pytest_overlay.measure.samples import LatencySamples

LATE = "emulator touched 30 of 100 intervals (30.0 %, bound 25 %) on their path"
WAITED = "probe processes waited for a CPU over 1 ms around 60 of 100 round trips"


def run_of(n: int, excluded: int = 0, faults: list[str] | None = None, burst: bool = False) -> Measured:
    acc = validity.Accounting("latency", ["A->B", "B->A"], n=n, excluded=excluded)
    acc.kept = [True] * (n - excluded) + [False] * excluded
    rtts = [20.0] * (n - excluded)
    window = machine.Window(0, 1, 20.0 if burst else 0.0, 50.0, 0.0, (20.0, 3.0) if burst else None, 3)
    return Measured(LatencySamples([rtts], n, 0, 10.0, times_ns=[[(1, 2)] * len(rtts)]), list(faults or []),
                    {"A->B": {"packets": n, "late": excluded, "p99_late_us": 50.0}}, None, accounting=acc,
                    machine=window)


class Clock:
    """Each run takes 10 ms per unit it is asked for."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def runner(runs: list[Measured], clock: Clock, per_unit_s: float = 0.01):
    asked: list[int | None] = []

    def run(size: int | None) -> Measured:
        asked.append(size)
        made = runs.pop(0)
        clock.now += per_unit_s * (made.accounting.n if size is None or size else 1)
        return made

    return run, asked


def test_round_trips_the_machine_spoiled_are_replaced_until_the_count_is_in():
    clock = Clock()
    run, asked = runner([run_of(500, 40), run_of(60, 5)], clock)
    out = topup.top_up(run, topup.Want(500, "round trips", 3.0, least=topup.MIN_ROUND_TRIPS), clock=clock)
    assert asked[0] is None and asked[1] >= 40  # the nominal run, then at least what it lacked
    assert not out.faults and out.runs == 2 and len(out.kept) == 2
    assert sum(topup.clean(m, topup.Want(500, "", 3)) for m in out.kept) == 515
    assert out.samples_replaced == 45


def test_a_run_beyond_its_bound_for_the_machine_is_replaced_whole():
    clock = Clock()
    run, asked = runner([run_of(500, 300, [WAITED]), run_of(625, 10)], clock)
    out = topup.top_up(run, topup.Want(500, "round trips", 3.0, least=topup.MIN_ROUND_TRIPS), clock=clock)
    assert asked == [None, 625]  # what was lacked, and a quarter more for what the next may lose
    assert len(out.kept) == 1 and out.kept[0].accounting.excluded == 10
    assert out.why == [f"run 1: {WAITED}"] and out.samples_replaced == 500 + 10


def test_a_fault_that_is_not_the_machine_ends_it_at_once():
    clock = Clock()
    bypass = "no libnetwork encapsulated packets crossed A->B: the probe's traffic did not go through the overlay"
    run, asked = runner([run_of(500, 0, [bypass]), run_of(500)], clock)
    out = topup.top_up(run, topup.Want(500, "round trips", 3.0, least=topup.MIN_ROUND_TRIPS), clock=clock)
    assert out.faults == [bypass] and out.runs == 1 and asked == [None]


def test_short_when_the_budget_is_spent_is_invalid_for_the_machine_with_the_count():
    clock = Clock()
    runs = [run_of(500, 400, [WAITED])] + [run_of(200, 150, [WAITED]) for _ in range(5)]
    run, asked = runner(runs, clock)
    out = topup.top_up(run, topup.Want(500, "round trips", 3.0, least=topup.MIN_ROUND_TRIPS), clock=clock)
    assert out.faults and out.faults[0].startswith(topup.TOO_FEW) and "0 of 500" in out.faults[0]
    assert validity.load_related(out.faults)  # a skip that names the machine, never a failure
    assert clock.now <= 3.0 * 500 * 0.01 + 1e-9  # never past 3 × the nominal 5 s


def test_throughput_counts_whole_rounds_and_replaces_a_spoiled_round():
    clock = Clock()
    tcp = [run_of(10, 3, [LATE]), run_of(10, 1), run_of(10, 0)]
    run, asked = runner(tcp, clock, per_unit_s=0.6)
    out = topup.top_up(run, topup.Want(2, "rounds", 3.0, per_round=True), clock=clock)
    assert asked == [None, 1, 1] and len(out.kept) == 2 and not out.faults
    assert out.samples_replaced == 1  # the spoiled round, as one unit


def test_a_burst_of_steal_is_waited_out_before_the_next_run():
    clock, waits = Clock(), []
    run, _ = runner([run_of(500, 100, [WAITED], burst=True), run_of(500)], clock)
    topup.top_up(run, topup.Want(500, "round trips", 3.0, least=topup.MIN_ROUND_TRIPS), quiet=lambda: waits.append(1) or (4.0, True),
                 clock=clock)
    assert waits == [1]


def test_a_first_run_taken_beside_others_is_the_start():
    clock = Clock()
    run, asked = runner([run_of(50)], clock)
    out = topup.top_up(run, topup.Want(500, "round trips", 3.0, least=topup.MIN_ROUND_TRIPS), first=run_of(480), first_s=4.8, clock=clock)
    assert asked == [topup.MIN_ROUND_TRIPS] and not out.faults and out.runs == 2


def test_merged_runs_keep_their_rounds_for_the_interval_and_their_pairs_for_ipdv():
    a = LatencySamples([[10.0, 11.0], [20.0, 21.0]], 4, 0, 10.0, times_ns=[[(1, 2)] * 2, [(3, 4)] * 2])
    b = LatencySamples([[12.0]], 1, 0, 10.0, times_ns=[[(5, 6)]])
    c = LatencySamples([[22.0, 22.0]], 2, 0, 10.0, times_ns=[[(7, 8)] * 2])
    merged = LatencySamples.merged([a, b, LatencySamples.merged([c])])
    assert merged.round_of == [0, 1, 0, 1]  # each top-up joins the round that kept the fewest
    assert merged.round_means == pytest.approx([11.0, 21.25])
    assert merged.ipdv_ms == pytest.approx([1.0, 1.0, 0.0])  # no pair spans two runs
    assert merged.sent == 7 and len(merged.spans_ns) == 7


def test_the_emulators_counts_add_up_and_its_error_is_the_worst():
    merged = merged_emulator([{"A->B": {"packets": 10, "late": 1, "p99_late_us": 50.0}},
                              {"A->B": {"packets": 5, "late": 0, "p99_late_us": 100.0}}])
    assert merged == {"A->B": {"packets": 15, "late": 1, "p99_late_us": 100.0}}


class Path(Judging):
    """Enough of a path to measure the underlay for a relative limit."""

    def __init__(self, state, overlay: str = "libnetwork") -> None:
        self.state, self.circuit, self.test = state, Circuit("A", "B"), "t"
        self.overlay = SimpleNamespace(name=overlay, testbed=None)
        self.measured = 0

    def on(self, overlay) -> "Path":
        host = Path(self.state, BASELINE)
        return host

    def key(self, kind: str) -> MeasureKey:
        return MeasureKey(self.overlay.name, self.circuit, kind)

    def measure(self, metric: str):
        key = self.key("latency")
        if key not in self.state.cache:
            self.state.cache[key] = SimpleNamespace(valid=True, verdict="")
        return self.state.cache[key]


def test_an_invalid_underlay_baseline_is_measured_again(monkeypatch):
    monkeypatch.setattr("pytest_overlay.kinds.get", lambda name: lambda testbed: None)
    invalid = SimpleNamespace(valid=False, verdict="")
    state = SimpleNamespace(cache={MeasureKey(BASELINE, Circuit("A", "B"), "latency"): invalid}, repeated=[],
                            progress=lambda message: None)
    record = SimpleNamespace(metric="latency", circuit="A-B", overlay="libnetwork")
    made = Path(state)._measure_underlay(record, again=True)
    assert made is not invalid and made.valid
    assert state.repeated and "measured again as the baseline of libnetwork" in state.repeated[0]


def test_intervals_of_a_paced_flow_are_replaced_up_to_what_its_nominal_run_measured():
    clock = Clock()
    runs = [run_of(10, 3), run_of(4, 0)]  # UDP: 3 of 10 intervals touched; a short run gives 4 more
    run, asked = runner(runs, clock, per_unit_s=0.6)
    out = topup.top_up(run, topup.Want(None, "intervals", 3.0), clock=clock)
    assert asked[0] is None and asked[1] >= 3 and not out.faults and out.samples_replaced == 3
