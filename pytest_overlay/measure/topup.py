"""Measure until the figure holds the clean samples it was asked for.

A sample the machine spoiled (the emulator released late around it, the probe's own
process waited for a CPU) is left out of the statistics. Judging a record whole by how
many were left out threw good measurements away: the round trips kept were as good as a
quiet machine's (benchmarks/exclusions.py). So a measurement goes on, run after run of its
probe, until it holds the clean samples it was asked for: round trips for latency and
intervals for a paced UDP flow (a stall of the machine is independent of the path, so the
samples around it are unbiased); whole rounds for TCP (a flow a stall slowed keeps running
slower, so a round is judged whole, by its bounds, and one beyond them is replaced). A run
spoiled for the machine is replaced, and the record says how many samples were, in how
many runs, and why. Only a measurement that cannot reach its clean samples within its
budget (a multiple of its nominal time) is INVALID.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from . import validity
from .measured import Measured

TOO_FEW = validity.TOO_FEW  # how the fault of a measurement that ran out of budget begins
MIN_ROUND_TRIPS = 20  # a latency run shorter than this costs more in its server's start than it gives


@dataclass(frozen=True)
class Want:
    """What a measurement must hold: `count` clean units (round trips, rounds; None: as many
    as its nominal run measured), within `budget` times the nominal time of measuring them."""

    count: int | None
    unit: str
    budget: float
    per_round: bool = False  # a unit is a whole run (a round), not a sample within it
    least: int = 1  # the smallest run worth its start (a server started, a warm-up)


@dataclass
class Outcome:
    """The runs a measurement took: those kept, and why the others were replaced."""

    kept: list[Measured]
    last: Measured  # the last run, what a record shows where no run was kept
    why: list[str]
    runs: int
    samples_replaced: int
    faults: list[str]


def clean(measured: Measured, want: Want) -> int:
    """The clean units a usable run brings: one, where a unit is a whole run; else its
    samples less those excluded."""
    if want.per_round:
        return 1
    return measured.accounting.n - measured.accounting.excluded


def top_up(run: Callable[[int | None], Measured], want: Want, *, first: Measured | None = None,
           first_s: float | None = None, quiet: Callable[[], tuple[float, bool]] = lambda: (0.0, True),
           progress: Callable[[str], None] = lambda _: None, clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Run `run(None)` (the nominal run: every unit of a round-trip probe, one round of a
    per-round one), or start from `first` (taken beside others, in `first_s`), then
    `run(n)` for about n more units while short, until `want` is met or its budget spent.

    A run with a fault that is not the machine's load ends the measurement with that fault:
    nothing is replaced that the overlay or the path did. A run spoiled only by the
    machine is replaced whole; a burst of steal is waited out (`quiet`) before the next."""
    spent = 0.0  # seconds measuring; a wait for the machine to calm down is not counted
    kept: list[Measured] = []
    why: list[str] = []
    have = replaced = runs = 0
    unit_s: float | None = None
    size: int | None = None
    measured = first
    while True:
        if measured is None:
            started = clock()
            measured = run(size)
            took = clock() - started
        else:
            took = first_s or 0.0
        spent += took
        runs += 1
        asked = measured.accounting.n if measured.accounting and not want.per_round else 1
        if unit_s is None:
            unit_s = took / max(asked, 1)
            wanted = want.count if want.count is not None else asked
        faults = measured.load_faults
        if faults and not validity.load_related(faults):
            return Outcome(kept + [measured], measured, why, runs, replaced, list(measured.faults))
        if faults:
            why.append(f"run {runs}: {faults[0]}")
            replaced += asked if want.per_round else measured.accounting.n if measured.accounting else 0
        else:
            kept.append(measured)
            have += clean(measured, want)
            if measured.accounting and not want.per_round:
                replaced += measured.accounting.excluded
        if have >= wanted:
            return Outcome(kept, measured, why, runs, replaced, [])
        short = wanted - have
        size = 1 if want.per_round else max(want.least, math.ceil(short * _spoiled_ratio(kept, runs)))
        budget_s = want.budget * unit_s * wanted
        if spent + unit_s * size > budget_s:
            cause = f" (last: {why[-1]})" if why else ""
            return Outcome(kept, measured, why, runs, replaced, [
                f"{TOO_FEW} {want.unit}: {have} of {wanted} within {want.budget:g} × the nominal "
                f"{unit_s * wanted:.1f} s, in {runs} runs{cause}"])
        waited, calm = quiet() if measured.machine is not None and measured.machine.steal_burst else (0.0, True)
        progress(f"{short} {want.unit} short: measuring {size} more" + (
            f" after waiting {waited:.1f} s for the hypervisor's burst of steal to pass" if waited >= 0.5 and calm
            else " though the hypervisor still takes CPU time" if not calm else ""))
        measured = None


def _spoiled_ratio(kept: list[Measured], runs: int) -> float:
    """How many to ask for per clean unit wanted, from what the runs kept so far gave."""
    asked = sum(m.accounting.n for m in kept if m.accounting)
    good = sum(m.accounting.n - m.accounting.excluded for m in kept if m.accounting)
    return min(2.0, asked / good) if good else 1.0 + 0.25 * runs
