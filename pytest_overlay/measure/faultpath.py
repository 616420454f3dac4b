"""A WAN fault through one overlay: the fault's steps applied while a probe runs across it,
and the outage, recovery and control-plane records made of what it saw."""

from __future__ import annotations

import statistics
import time

from ..emulation import emulator as emu
from ..inputs.model import Fault
from ..results import Record
from . import faults, machine, validity
from .measured import MeasureKey
from .path import Measured, OverlayPath, counts_only
from .samples import LatencySamples


class FaultPath(OverlayPath):
    """One WAN fault scenario through one overlay: the circuit it affects probed from before
    the fault until recovery, a circuit it leaves alone beside it."""

    def __init__(self, overlay, fault: Fault, state, test) -> None:
        super().__init__(overlay, fault.probe, state, test)
        self.fault = fault

    @property
    def fault_key(self) -> MeasureKey:
        return MeasureKey(self.overlay.name, self.circuit, f"fault-{self.fault.name}")

    def run(self) -> dict[str, Record]:
        """The scenario's records by metric (detour_rtt only where replies came while the
        fault was on; fault_goodput only for a loss burst, which runs a TCP transfer)."""
        cached = self.state.cache.get(self.fault_key)
        if cached is not None:
            return cached
        testbed = self.overlay.testbed
        self._stop_if_a_daemon_died(f"fault {self.fault.name}")
        monitor = machine.monitor()
        started = time.time_ns()
        before = testbed.emulator_counters(reset=True)
        self.state.progress(f"{self.overlay.name} {self.fault.name}: probing {self.fault.probe.id} and "
                            f"{self.fault.watch.id if self.fault.watch else 'no other circuit'}; "
                            f"{self.fault.kind} for {self.fault.duration_s:g} s after {faults.BEFORE_S:g} s")
        run = faults.run(self.overlay, self.fault, self.state.settings.fault_bound_s,
                         tcp=self.fault.kind in ("loss", "mtu"), progress=self.state.progress)
        self._stop_if_a_daemon_died(f"fault {self.fault.name}", "during")
        accrued = emu.delta(before, testbed.emulator_counters(since=started))
        outcome = faults.analyse(run.trips, run.steps, bound_s=self.state.settings.fault_bound_s,
                                 calm_until_ns=run.calm_until_ns)
        replies = [t for t in run.trips if t.rtt_ms is not None]
        samples = LatencySamples([[t.rtt_ms for t in replies]], len(run.trips), len(run.trips) - len(replies),
                                        faults.INTERVAL_MS, times_ns=[[(t.send_ns, t.receive_ns) for t in replies]])
        there, back = self.hops()
        rules = {**self.rules, "max_excluded_share_latency": self.rules["max_excluded_share_faults"]}
        window = monitor.window(started, run.ended_ns)
        accounting = validity.account("latency", accrued, there, back, samples, rules, window,
                                      held=[t.seq in outcome.held_seqs for t in replies],
                                      resolution_ms=faults.INTERVAL_MS)
        problems = list(accounting.faults) + validity.outage_faults(accounting.troubles, outcome.outage_ns,
                                                                    faults.INTERVAL_MS)
        if run.restore_error:
            problems.append(f"the fault could not be healed ({run.restore_error}): what followed is not a recovery")
        problems += timer_healed(run.sent)
        counts_only(accrued)
        measured = Measured(samples, problems, accrued, None, accounting=accounting, machine=window)
        records = self._records(run, outcome, measured)
        self.state.cache[self.fault_key] = records
        return records

    def _records(self, run: faults.FaultRun, outcome: faults.Outcome, measured: Measured) -> dict[str, Record]:
        fault, origin = self.fault, run.origin_ns
        exclude = set()
        if fault.watch:
            hops = self.state.topology.path_between(fault.watch.src, fault.watch.dst)
            exclude = {f"{a}->{b}" for a, b in zip(hops, hops[1:])} | {f"{b}->{a}" for a, b in zip(hops, hops[1:])}
        detour_links = faults.detour(run.wire_during, len(outcome.during_ms), exclude)
        path = faults.relay_path(detour_links, fault.probe.src, fault.probe.dst)
        watch = faults.analyse(run.watch_trips, run.steps, bound_s=outcome.bound_s,
                               calm_until_ns=run.calm_until_ns) if run.watch_trips else None
        common = {
            "fault": {"kind": fault.kind, "links": [f"{link.a}-{link.b}" for link in fault.links], "site": fault.site,
                      "seconds": fault.seconds, "up_s": fault.up_s, "times": fault.times, "loss_pct": fault.loss_pct,
                      "add_rtt_ms": fault.add_rtt_ms,
                      **({"mtu": fault.mtu, "icmp": "drop" if fault.icmp_drop else "pass"} if fault.kind == "mtu" else {})},
            "steps": [{"what": st.what, "planned_s": st.planned_s, "at_ns": st.at_ns,
                       "offset_ms": round((st.at_ns - origin) / 1e6, 3)} for st in run.steps],
            "outcome": outcome.to_json(),
            "interval_ms": faults.INTERVAL_MS,
        }
        low, high = self.overlay.expected_outage_s(fault, run.logs)
        common["timers"] = [{"what": w, "default": d, "source": src} for w, d, src in self.overlay.timers]
        common["expected_outage_s"] = [low, high]
        # One probe interval either side: the outage is resolved to it.
        common["agrees_with_timers"] = (low * 1e3 - faults.INTERVAL_MS <= outcome.outage_ms
                                        <= high * 1e3 + faults.INTERVAL_MS)
        level = {"fault": fault.name}
        out: dict[str, Record] = {}
        out["outage_ms"] = self.record(
            "outage_ms", [outcome.outage_ms], measured, {
                **common,
                "outage_from_s": round((outcome.outage_ns[0] - origin) / 1e9, 3),
                "outage_to_s": round((outcome.outage_ns[1] - origin) / 1e9, 3),
                "control_before": run.control_before,
                "control_events": [e.to_json(origin) for e in run.events],
                "control_logs": run.logs,
                "wire_during": run.wire_during, "detour_links": detour_links, "detour_path": path,
                "watch": ({"circuit": fault.watch.id, "outage_ms": watch.outage_ms, "lost": watch.sent - watch.replies,
                           "sent": watch.sent, "level_ms": watch.level_ms} if watch else None),
                "timeline": {"t_ms": [round((t.send_ns - origin) / 1e6, 2) for t in run.trips],
                             "rtt_ms": [None if t.rtt_ms is None else round(t.rtt_ms, 3) for t in run.trips]},
                "notes": run.notes,
            }, **level)
        if outcome.during_ms:
            out["detour_rtt"] = self.record("detour_rtt", outcome.during_ms, measured,
                                            {"path": path, "links": detour_links, "level_ms": outcome.level_ms},
                                            **level)
        out["fault_lost"] = self.record("fault_lost", [outcome.lost_during], measured,
                                        {"sent": outcome.sent_during}, **level)
        for metric, value in (("recovery_ms", outcome.first_reply_ms), ("recovery_level_ms", outcome.back_to_level_ms)):
            censored = value is None
            out[metric] = self.record(metric, [outcome.bound_s * 1e3 if censored else value], measured,
                                      {"censored": censored, "bound_s": outcome.bound_s,
                                       "observed_after_s": outcome.observed_after_s}, **level)
        if run.tcp is not None:
            spans = run.tcp.spans_ns
            windows = faults.fault_windows(run.steps)
            during = [m for m, sp in zip(run.tcp.mbit, spans) if any(a <= sp[0] and sp[1] <= b for a, b in windows)]
            before = [m for m, sp in zip(run.tcp.mbit, spans) if sp[1] <= windows[0][0]]
            level_mbit = statistics.fmean(before) if before else None
            out["fault_goodput"] = self.record(
                "fault_goodput", during, measured,
                {"before_mbit": level_mbit, "before_n": len(before),
                 "retransmits": run.tcp.retransmits, "interval_s": run.tcp.interval_s,
                 **({"flowing_after_ms": flowing_after_ms(run.tcp.mbit, spans, windows, level_mbit)}
                    if fault.kind == "mtu" else {})}, **level)
        return out


def timer_healed(sent: list[tuple[str, float, float, float | None]]) -> list[str]:
    """Why the fault did not last as planned, where a step was sent after the hosts' own timer
    could have removed the one before (real hosts: a step held that long heals by itself); `sent`
    is (what, planned, sent at, hold_s) per step, in seconds from the fault's start."""
    for (_, _, at, hold_s), (what, planned, next_at, _) in zip(sent, sent[1:]):
        if hold_s is not None and next_at > at + max(1, round(hold_s)):
            return [f"the {what} planned at +{planned:g} s was sent at +{next_at:.1f} s, after the hosts' own timer "
                    f"had removed the fault (+{at + max(1, round(hold_s)):.1f} s at the latest): the fault did not "
                    "last as planned"]
    return []


def flowing_after_ms(mbit: list[float], spans: list[tuple[int, int]], windows: list[tuple[int, int]],
                     level_mbit: float | None) -> float | None:
    """An mtu fault: from its start to the start of the first TCP interval within it carrying
    half the goodput of before (full-size traffic flowing again, at the smaller size); None
    where none did while the fault was on (the intervals are 0.5 s: that is its resolution)."""
    if not level_mbit or not windows:
        return None
    start, end = windows[0]
    return next(((sp[0] - start) / 1e6 for m, sp in zip(mbit, spans)
                 if start <= sp[0] and sp[1] <= end and m >= level_mbit / 2), None)
