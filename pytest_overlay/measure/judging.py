"""What a suite test does with a record once measured: its threshold and verdict, a failure
said so that a broken testbed and an overlay's cost can be told apart, and the limits
relative to the underlay and to a compared run."""

from __future__ import annotations

import math
from typing import Callable

from .. import kinds, results
from ..kinds import BASELINE
from ..results import Record, gates, metrics


class Judging:
    """The judging half of a path (OverlayPath): it has the path's overlay, circuit and state,
    and `on(overlay)`, the same circuit through another overlay."""

    def judge(self, record: Record, description: str, passed: bool, **limit: float) -> None:
        """Record a threshold and its verdict on the record (the test asserts it)."""
        record.threshold = {"description": description, **limit}
        record.verdict = "invalid" if not record.valid else "pass" if passed else "fail"

    def why(self, record: Record, failed: str, key: str, metric: str | None = None) -> str:
        """A failed threshold, said so that a broken testbed and an overlay's cost can be told
        apart: what failed, the limit with the file and key it came from, and for an overlay
        what it added over the underlay on the same circuit in this run, with its datapath."""
        metric = metric or record.metric
        limit = self.limits(metric).get(key)
        source = self.state.thresholds.source(metric, key, self.overlay.name, self.circuit.id)
        text = f"{failed} [limit {key} = {limit:g}: {source}]"
        if record.overlay == BASELINE:
            return text + "; this is the underlay itself: the testbed, not an overlay, missed the limit"
        datapath = record.datapath
        how = ", ".join(str(part) for part in (datapath.get("kind"), f"MTU {datapath['mtu']}" if datapath.get("mtu")
                                               else None) if part)
        base = results.baseline(self.state.records, record)
        unit = record.unit
        if base is None:
            added = "the underlay was not measured in this run (add host to --overlay to see what the overlay adds)"
        elif not base.valid:
            added = f"what it added is unknown: the underlay's record is INVALID ({base.invalid_reasons[0]})"
        elif record.total is not None and base.total:
            added = (f"it carried {record.total:.0f} {unit}, {record.total / base.total:.2f} × the underlay's "
                     f"{base.total:.0f} {unit} on {record.circuit} in this run")
        else:
            diff, half = results.difference(record, base) or (math.nan, math.nan)
            added = (f"it added {diff:+.3f} ±{half:.3f} {unit} (95 %) to the mean over the underlay's "
                     f"{base.stats.mean:.3f} {unit} on {record.circuit} in this run (n = {record.stats.n} and "
                     f"{base.stats.n})")
        return f"{text}; {record.overlay} ({how}): {added}"

    def conclude(self, records: list[Record], broken: list[str | Callable[[], str]]) -> None:
        """How every suite test ends: each record's gates judged (relative to the underlay,
        against a compared run: the underlay measured first where a limit needs it), then
        the test fails where a record is INVALID (its reasons first: a limit broken by a
        figure no one can vouch for says nothing), else where a limit is (each of `broken`
        says it, by `why`; one that says what the overlay added over the underlay is given as
        a callable, said once a relative limit has had the underlay measured) or a gate is."""
        gate_failures = [failure for record in records for failure in self.gate_failures(record)]
        invalid = [record for record in records if not record.valid]
        if invalid:
            raise AssertionError(f"measurement invalid: {'; '.join(invalid[0].invalid_reasons)}")
        said = [say() if callable(say) else say for say in broken]
        if said or gate_failures:
            raise AssertionError("\n".join(said + gate_failures))

    def limits(self, metric: str) -> dict[str, float]:
        return self.state.thresholds.for_(metric, self.overlay.name, self.circuit.id)

    def gate_failures(self, record: Record) -> list[str]:
        """Limits relative to the underlay and to the compared run that this record breaks.

        Where a relative limit needs the underlay's record and its test has not run (it was
        deselected, or runs later), the underlay is measured now, on the same circuit.
        """
        limits = self.limits(record.metric)
        failures = []
        if record.overlay != BASELINE and gates.needs_host(limits):
            base = results.baseline(self.state.records, record)
            if base is None or not base.valid:
                base = self._measure_underlay(record, again=base is not None)
            if base.valid:
                failures += gates.relative_failures(record, base, limits)
            else:
                unknown = (f"the underlay's record is INVALID ({base.invalid_reasons[0]}), measured twice: the "
                           "overlay's difference from it cannot be told")
                record.vs_host = {"stat": metrics.get(record.metric).headline, "host": None, "now": None,
                                  "unknown": unknown}
                self.state.inconclusive.setdefault(record.test, []).append(
                    f"{record.overlay} {record.circuit} {record.metric}: its limit relative to the underlay was not "
                    f"checked: {unknown}")
        if self.state.saved is not None:
            judged = gates.regression_failures(record, self.state.saved.get(record), self.state.saved.path.name,
                                               list(self.state.settings.compare_fail), limits)
            failures += judged.regressed
            if judged.regressed:
                self.state.regressed.add(record.test)
            if self.state.settings.compare_strict:
                failures += judged.inconclusive
            else:
                self.state.inconclusive.setdefault(record.test, []).extend(judged.inconclusive)
        if failures and record.verdict != "invalid":
            record.verdict = "fail"
        return failures

    def _measure_underlay(self, record: Record, again: bool = False) -> Record:
        """The underlay's record on the same circuit, measured now: first, or `again`
        where the one measured is INVALID (an overhead needs a valid baseline)."""
        host = self.on(kinds.get(BASELINE)(self.overlay.testbed))
        if again:
            self.state.cache.pop(host.key(metrics.get(record.metric).probe), None)
            self.state.repeated.append(f"{BASELINE} {record.circuit} {record.metric}: measured again as the "
                                       f"baseline of {record.overlay}, its record was INVALID")
        self.state.progress(f"measuring the underlay's {record.metric} on {record.circuit} "
                            f"{'again' if again else 'first'}: a limit of {record.overlay}'s is relative to it")
        made = host.measure(record.metric)
        made.verdict = "measured as the baseline of a relative limit"
        return made
