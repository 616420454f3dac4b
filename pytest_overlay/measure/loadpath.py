"""Latency under load through one overlay: bulk TCP flows fill a circuit's bottleneck while
irtt and ping measure what the queue adds."""

from __future__ import annotations

import math
import statistics

from .. import results
from ..inputs.model import Circuit
from ..results import Record
from . import load, probes, validity
from .path import Measured, OverlayPath, counts_only


class LoadPath(OverlayPath):
    """Latency under load on one circuit through one overlay, at the links' own buffer or at
    `queue_ms` set on every rate-limited direction of the circuit's path for the test."""

    def __init__(self, overlay, circuit: Circuit, queue_ms: float | None, state, test) -> None:
        super().__init__(overlay, circuit, state, test)
        self.queue_ms = queue_ms
        self.buffers = state.topology.with_queue(circuit, queue_ms)
        self.expected = {**self.expected, "queue_ms": {f"{d.src}->{d.dst}": d.buffer_ms for d in self.buffers}}

    @property
    def buffer_ms(self) -> float:
        """The most the path's buffers can add to a round trip: each rate-limited direction
        full, both ways."""
        return sum(d.buffer_ms for d in self.buffers)

    def run(self) -> dict[str, Record]:
        kind = f"load-{self.queue_ms}"
        testbed = self.overlay.testbed
        if self.queue_ms is not None:
            testbed.rebuffer(self.buffers)
            self.state.progress(f"{self.overlay.name} {self.circuit.id}: link buffers set to {self.queue_ms:g} ms "
                                f"on {', '.join(self.expected['queue_ms'])}")
        try:
            measured = self._measure(kind, lambda _: None, once=self._load_once)
        finally:
            if self.queue_ms is not None:
                testbed.rebuffer(self.state.topology.with_queue(self.circuit, None))
        return self._records(measured)

    def _load_once(self) -> Measured:
        seconds, flows = self.state.settings.load_seconds, self.state.settings.load_flows
        b = self._bracketed("load", lambda: load.run(self.src, self.dst, seconds, flows, self.state.progress))
        run, accrued, wire, window = b.samples, b.accrued, b.wire, b.window
        there, back = self.hops()
        rules = {**self.rules, "max_excluded_share_latency": self.rules["max_excluded_share_load"],
                 "max_excluded_share_throughput": 1.0}  # the goodput is judged on its whole loaded time, below
        latency = validity.account("latency", accrued, there, back, run.all_latency, rules, window)
        goodput = {d: validity.account("tcp", accrued, there, back, f.sums, rules, window) for d, f in run.flows.items()}
        late = validity.late_share(latency.troubles, run.loaded_ns)
        if late > self.rules["max_late_share_load"]:
            cause = window.cause() if window else ""
            goodput["up"].faults.append(
                f"emulator released late or dropped on the path for {late * 100:.1f} % of the loaded time (bound "
                f"{self.rules['max_late_share_load'] * 100:g} %): the flows' goodput may be its doing"
                + (f": {cause}" if cause else ""))
        if latency.kept:
            n_idle = len(run.idle.rtt_ms)
            run.idle, run.loaded = run.idle.keep(latency.kept[:n_idle]), run.loaded.keep(latency.kept[n_idle:])
        for direction, accounting in goodput.items():
            if accounting.kept:
                run.flows[direction].sums = run.flows[direction].sums.keep(accounting.kept)
        # The cause first, the flows it concerns after: a cause of the machine's load is told by
        # how it begins (validity.load_related), so that the run is taken again.
        faults = latency.faults + [f"{f} ({d} flows)" for d, acc in goodput.items() for f in acc.faults]
        faults += self._wire_faults(wire)
        counts_only(accrued)
        return Measured(run, faults, accrued, wire, accounting=latency, machine=window, parts=goodput,
                        cpu_used=b.cpu_used)

    def _records(self, measured: Measured) -> dict[str, Record]:
        run: load.LoadRun = measured.samples
        idle, loaded = run.idle.rtt_ms, run.loaded.rtt_ms
        common = {"seconds": self.state.settings.load_seconds, "flows_each_way": len(run.flows["up"].per_flow_mbit),
                  "buffer_ms": self.expected["queue_ms"], "buffers_both_ways_ms": self.buffer_ms,
                  "warmup_s": load.WARMUP_S,
                  "idle_s": load.idle_seconds(self.state.settings.load_seconds)}
        icmp = {"idle_p50": load.median(run.icmp_idle_ms), "idle_p99": _p99(run.icmp_idle_ms), "idle_n": len(run.icmp_idle_ms),
                "loaded_p50": load.median(run.icmp_loaded_ms), "loaded_p99": _p99(run.icmp_loaded_ms),
                "loaded_n": len(run.icmp_loaded_ms)}
        faults = [] if idle else ["no idle round trip came back (or every one was excluded): no level to compare with"]
        latency = self.record("load_latency", loaded, measured, {
            **common,
            "idle": {"n": len(idle), "p50": load.median(idle), "p99": _p99(idle), "mean": _mean(idle),
                     "sent": run.idle.sent, "lost": run.idle.lost},
            "loaded": {"sent": run.loaded.sent, "lost": run.loaded.lost},
            "induced_p50_ms": load.median(loaded) - load.median(idle), "induced_p99_ms": _p99(loaded) - _p99(idle),
            "icmp": icmp, "interval_ms": load.INTERVAL_MS,
            "idle_samples": [round(x, 3) for x in idle], "samples": [round(x, 3) for x in loaded],
            "timeline": run.timeline,
        }, faults=faults, queue_ms=self.queue_ms)
        up, down = run.flows["up"], run.flows["down"]
        sums = [a + b for a, b in zip(up.sums.mbit, down.sums.mbit)]
        goodput_measured = Measured(run, measured.faults, measured.emulator, measured.wire, measured.tries,
                                    measured.earlier_faults, validity.merged(list(measured.parts.values()), "tcp"),
                                    measured.machine,
                                    cpu_used=measured.cpu_used)
        goodput = self.record("load_goodput", sums, goodput_measured, {
            **common,
            "per_flow_mbit": {d: [round(m, 2) for m in f.per_flow_mbit] for d, f in run.flows.items()},
            "direction_mbit": {d: f.total_mbit for d, f in run.flows.items()},
            "fairness": {d: load.jain(f.per_flow_mbit) for d, f in run.flows.items()},
            "fairness_all": load.jain(up.per_flow_mbit + down.per_flow_mbit),
            "retransmits": {d: f.retransmits for d, f in run.flows.items()},
            "rate_mbit": self.expected["rate_mbit"], "interval_s": probes.INTERVAL_S,
            "definition": "per interval: the receivers' goodput of every flow, both ways, summed",
        }, total=up.total_mbit + down.total_mbit, queue_ms=self.queue_ms)
        return {"load_latency": latency, "load_goodput": goodput}


def _p99(values: list[float]) -> float:
    return results.percentile(sorted(values), 99) if values else math.nan


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan
