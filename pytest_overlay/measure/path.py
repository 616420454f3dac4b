"""One circuit through one overlay: run a probe once (latency and jitter share a run),
bracket it with the emulator's and the overlay's counters, and build typed records with
their validity, thresholds and gates."""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest

from .. import kinds, results
from ..emulation import emulator as emu
from ..inputs.model import Circuit, Fault
from ..kinds import BASELINE
from ..overlays import Overlay
from ..results import Record, Stats, gates, metrics
from ..results.thresholds import VALIDITY
from ..session import OverlaySession
from . import faults, load, machine, probes, streaming, validity
from .noise import Neighbour, Noise


@dataclass
class Bracket:
    """A probe's samples and what happened around them while it ran."""

    samples: object
    accrued: dict  # what the emulator accrued, with its late windows
    wire: dict[str, int] | None  # packets the overlay put on each hop of the path
    window: machine.Window
    cpu_used: dict  # by site: the overlay's cgroup
    noise_used: dict  # by site: the neighbour's hog
    faults: list[str]  # a neighbour that was not there throughout


@dataclass
class Measured:
    """What one probe run gave, and why it may not be vouched for."""

    samples: object  # what the statistics are made of: the samples the emulator did not touch
    faults: list[str]
    emulator: dict
    wire: dict[str, int] | None
    tries: int = 1
    earlier_faults: list[str] = field(default_factory=list)  # why the tries before this one were invalid
    accounting: validity.Accounting | None = None
    machine: machine.Window | None = None
    parts: dict[str, validity.Accounting] = field(default_factory=dict)  # a probe of several flows: each one's
    cpu_used: dict = field(default_factory=dict)  # by site: CPU its overlay's cgroup used, and was throttled
    noise_used: dict = field(default_factory=dict)  # by site: CPU the neighbour's hog used
    beside: list[str] = field(default_factory=list)  # circuits probed at the same time (--overlay-parallel)

    @property
    def exclusions(self) -> dict:
        return self.accounting.to_json() if self.accounting else {}


class OverlayPath:
    def __init__(self, overlay: Overlay, circuit: Circuit, state: OverlaySession, test: str,
                 cpu: float | None = None, noise: Noise | None = None) -> None:
        self.overlay, self.circuit, self.state, self.test = overlay, circuit, state, test
        self.cpu = cpu  # the CPU budget (cores) every site's overlay is held to while probing
        self.noise = noise  # the neighbour whose hogs run beside it while probing
        self.expected = state.topology.expected(circuit)
        self.src, self.dst = overlay.endpoints([circuit.src, circuit.dst])

    @property
    def udp_rate(self) -> float:
        offered = self.state.option("overlay_udp_rate")
        return min(offered, self.expected["rate_mbit"]) if self.expected["rate_mbit"] else offered

    @property
    def rules(self) -> dict[str, float]:
        return self.state.thresholds.for_(VALIDITY, self.overlay.name, self.circuit.id)

    def _measure(self, kind: str, probe: Callable[[], object],
                 check: Callable[[object], list[str]] = lambda samples: [],
                 once: Callable[[], Measured] | None = None) -> Measured:
        """Run a probe once per session, with the emulator's and the overlay's counters
        around it (or `once`, which does). A run invalid only for the machine's load is taken
        again, up to --overlay-retries times; the record says how many tries it took."""
        key = (self.overlay.name, self.circuit, kind, self.cpu, self.noise)
        if key not in self.state.cache and kind == "latency" and once is None:
            self._latency_beside_others()
        if key not in self.state.cache:
            retries = self.state.option("overlay_retries")
            earlier: list[str] = []
            for attempt in range(1, retries + 2):
                measured = once() if once else self._once(kind, probe, check)
                measured.tries, measured.earlier_faults = attempt, list(earlier)
                faults = measured.faults + (measured.accounting.loss_faults if measured.accounting else [])
                if attempt > retries or not validity.load_related(faults):
                    break
                earlier += [f"try {attempt}: {f}" for f in faults]
                self.state.repeated.append(f"{self.overlay.name} {self.circuit.id} {kind}: {faults[0]}")
                self.state.progress(f"{self.overlay.name} {self.circuit.id} {kind}: invalid ({faults[0]}); "
                                    f"measuring again ({attempt}/{retries})")
                waited, quiet = machine.monitor().wait_quiet()
                if waited >= 0.5 or not quiet:
                    self.state.progress(
                        f"{self.overlay.name} {self.circuit.id} {kind}: " +
                        (f"waited {waited:.1f} s for the hypervisor to take under {machine.STEAL_BURST_PCT:g} % "
                         f"of the CPUs for {machine.QUIET_S:g} s" if quiet else
                         f"the hypervisor still took CPU time after {waited:.0f} s: measuring all the same"))
            self.state.cache[key] = measured
        return self.state.cache[key]

    @property
    def circuit_sites(self) -> set[str]:
        return {self.circuit.src, self.circuit.dst}

    def hops(self) -> tuple[list[validity.Hop], list[validity.Hop]]:
        """The link directions from the circuit's source to its destination, and back."""
        topology, c = self.state.topology, self.circuit
        return tuple([validity.Hop(f"{d.src}->{d.dst}", d.delay_ms, d.jitter_ms) for d in topology.directions(a, b)]
                     for a, b in ((c.src, c.dst), (c.dst, c.src)))

    def _once(self, kind: str, probe: Callable[[], object], check: Callable[[object], list[str]]) -> Measured:
        b = self._bracketed(kind, probe)
        samples = b.samples
        there, back = self.hops()
        accounting = validity.account(kind, b.accrued, there, back, samples, self.rules, b.window)
        if accounting.kept and hasattr(samples, "keep"):
            samples = samples.keep(accounting.kept)
        faults = accounting.faults + check(samples) + self._wire_faults(b.wire) + b.faults
        _counts_only(b.accrued)
        return Measured(samples, faults, b.accrued, b.wire, accounting=accounting, machine=b.window,
                        cpu_used=b.cpu_used, noise_used=b.noise_used)

    def _neighbour(self) -> Neighbour | contextlib.nullcontext:
        """The hogs beside the overlay at every site the path crosses, or nothing."""
        if self.noise is None:
            return contextlib.nullcontext()
        testbed = self.overlay.testbed
        sites = testbed.topology.path_between(self.circuit.src, self.circuit.dst)
        return Neighbour(self.noise, testbed.prefix, {site: testbed.netns_of(site) for site in sites},
                         testbed.run_dir / "noise")

    def _bracketed(self, kind: str, probe: Callable[[], object]) -> Bracket:
        """The probe's samples with what the emulator accrued meanwhile (with its windows), the
        packets the overlay put on each hop of the path, the machine's window, and the CPU the
        overlay used at the circuit's two sites (held to the path's budget, if it has one) and
        the neighbour's hogs beside it (if it has one)."""
        testbed = self.overlay.testbed
        self._stop_if_a_daemon_died(kind)
        monitor = machine.monitor()
        if self.cpu is not None:
            self.overlay.cap(self.cpu)
        noise_used: dict = {}
        noise_faults: list[str] = []
        try:
            with self._neighbour() as neighbour:
                started = time.time_ns()
                before, wire_before = testbed.emulator_counters(reset=True), self.overlay.wire_counters()
                cpu_before = self.overlay.cpu_usage()
                try:
                    samples = probe()
                except Exception:
                    self._stop_if_a_daemon_died(kind)  # the cause, rather than the probe's own error
                    raise
                finally:
                    cpu_after = self.overlay.cpu_usage()
                if neighbour is not None:
                    noise_used, noise_faults = neighbour.used(), neighbour.dead()
        finally:
            if self.cpu is not None:
                self.overlay.cap(None)
        ended = time.time_ns()
        seconds = (ended - started) / 1e9
        cpu_used = {site: used.minus(cpu_before[site]).to_json(seconds)
                    for site, used in cpu_after.items() if site in cpu_before and site in self.circuit_sites}
        self._stop_if_a_daemon_died(kind, "during")
        accrued = emu.delta(before, testbed.emulator_counters(since=started))
        wire = None
        if wire_before is not None:
            wire = self._wire_on_path(wire_before, self.overlay.wire_counters())
        return Bracket(samples, accrued, wire, monitor.window(started, ended), cpu_used, noise_used, noise_faults)

    def _wire_on_path(self, before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        """Packets the overlay put on each hop of this circuit's path between two readings."""
        hops = self.state.topology.path_between(self.circuit.src, self.circuit.dst)
        return {n: after.get(n, 0) - before.get(n, 0) for n in (f"{a}->{b}" for a, b in zip(hops, hops[1:]))}

    def _wire_faults(self, wire: dict | None) -> list[str]:
        return [] if wire is None else validity.wire_faults(self.overlay.name, wire, self.overlay.wire_what)

    def _latency_probe(self) -> probes.LatencySamples:
        samples, interval, rounds, warmup = (self.state.option(o) for o in (
            "overlay_samples", "overlay_interval", "overlay_rounds", "overlay_warmup"))
        return probes.repeated_latency(self.src, self.dst, samples, interval, rounds, warmup)

    def _latency(self) -> Measured:
        return self._measure("latency", self._latency_probe)

    def _links(self) -> set[frozenset[str]]:
        sites = self.state.topology.path_between(self.circuit.src, self.circuit.dst)
        return {frozenset(pair) for pair in zip(sites, sites[1:])}

    def _latency_beside_others(self) -> None:
        """With --overlay-parallel N: probe this circuit's latency together with up to N - 1
        circuits still to be measured whose paths share no link with it or each other, one
        emulator bracket around them all; each is judged on its own path's windows, so a
        circuit the others disturbed is excluded or INVALID like any other. A result invalid
        only for the machine's load is not kept: its circuit is measured again alone."""
        at_once = self.state.option("overlay_parallel")
        if at_once < 2 or self.cpu is not None or self.noise is not None:
            return
        wanted = {Circuit(m.src, m.dst) for nodeid, asked in self.state.requested.items()
                  if self.state.reasons.get(nodeid) != "deselected" for m in asked
                  if m.metric == "latency" and m.overlay == self.overlay.name and m.cpu is None and m.noise is None}
        batch, used = [self], set(self._links())
        for circuit in (c for c in self.state.topology.circuits if c in wanted):
            if len(batch) == at_once:
                break
            if (self.overlay.name, circuit, "latency", None, None) in self.state.cache or circuit == self.circuit:
                continue
            other = OverlayPath(self.overlay, circuit, self.state, "")
            if not other._links() & used:
                batch.append(other)
                used |= other._links()
        if len(batch) < 2:
            return
        self.state.progress(f"{self.overlay.name}: latency of {', '.join(p.circuit.id for p in batch)} at once "
                            "(their paths share no link)")
        testbed = self.overlay.testbed
        self._stop_if_a_daemon_died("latency")
        monitor = machine.monitor()
        started = time.time_ns()
        before, wire_before = testbed.emulator_counters(reset=True), self.overlay.wire_counters()
        with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
            results = list(pool.map(lambda path: path._latency_probe(), batch))
        ended = time.time_ns()
        self._stop_if_a_daemon_died("latency", "during")
        accrued = emu.delta(before, testbed.emulator_counters(since=started))
        wire_after = self.overlay.wire_counters() if wire_before is not None else None
        window = monitor.window(started, ended)
        judged = []
        for path, samples in zip(batch, results):
            there, back = path.hops()
            accounting = validity.account("latency", accrued, there, back, samples, path.rules, window)
            if accounting.kept:
                samples = samples.keep(accounting.kept)
            wire = None if wire_after is None else path._wire_on_path(wire_before, wire_after)
            measured = Measured(samples, accounting.faults + path._wire_faults(wire), accrued, wire,
                                accounting=accounting, machine=window,
                                beside=[p.circuit.id for p in batch if p is not path])
            judged.append((path, measured))
        _counts_only(accrued)
        for path, measured in judged:
            faults = measured.faults + measured.accounting.loss_faults
            if validity.load_related(faults):
                self.state.repeated.append(f"{self.overlay.name} {path.circuit.id} latency (beside others): {faults[0]}")
                continue
            self.state.cache[(self.overlay.name, path.circuit, "latency", None, None)] = measured

    def _throughput(self, protocol: str) -> Measured:
        duration, rounds = self.state.option("overlay_duration"), self.state.option("overlay_rounds")
        rate = self.udp_rate if protocol == "udp" else None
        return self._measure(protocol, lambda: probes.repeated_throughput(
            self.src, self.dst, protocol, duration, rate, rounds),
            lambda s: validity.sender_faults(s.offered_mbit, s.sent_mbit, self.rules["min_sent_fraction_udp"]))

    def _stop_if_a_daemon_died(self, kind: str, when: str = "before") -> None:
        """A daemon of the run died (the emulator, an engine, an overlay's): nothing measured
        after this could be vouched for, so the session stops, saying which and why."""
        dead = self.overlay.testbed.dead_daemons()
        if dead:
            pytest.exit(f"stopping: a daemon of the testbed died {when} {self.overlay.name} {self.circuit.id} {kind}: "
                        + "\n".join(dead), returncode=pytest.ExitCode.TESTS_FAILED)

    def record(self, metric: str, values: list[float], measured: Measured, extra: dict | None = None,
               round_values: list[float] | None = None, faults: list[str] | None = None, **fields) -> Record:
        testbed = self.overlay.testbed
        datapath = {**self.overlay.datapath(self.circuit.src, self.circuit.dst), "testbed": testbed.backend,
                    "hosts": [testbed.host_of(self.circuit.src), testbed.host_of(self.circuit.dst)]}
        if measured.wire is not None:
            datapath[self.overlay.wire_key] = measured.wire
        ci95 = fields.pop("ci95", None)
        faults = measured.faults + (faults or [])
        if not values:
            values = [math.nan]
            faults = faults or ["every sample was excluded"]
        record = Record(
            overlay=self.overlay.name, metric=metric, src=self.circuit.src, dst=self.circuit.dst,
            unit=metrics.get(metric).unit, stats=Stats.of(values, round_values, ci95), valid=not faults,
            invalid_reasons=list(faults), test=self.test, expected=self.expected, datapath=datapath,
            emulator=measured.emulator, tool=measured.samples.tool, tries=measured.tries,
            exclusions=measured.exclusions, measured=measured.machine.to_json() if measured.machine else {},
            extra={**(extra or {}), **({"earlier_tries": measured.earlier_faults} if measured.earlier_faults else {}),
                   **({"cpu_used": measured.cpu_used} if measured.cpu_used else {}),
                   **({"noise_used": measured.noise_used} if measured.noise_used else {}),
                   **({"measured_beside": measured.beside} if measured.beside else {})},
            cpu=self.cpu, noise=self.noise.label if self.noise else None, **fields,
        )
        return self.state.add(record)

    def latency(self) -> Record:
        """Round-trip times (ms) of the request/response probe."""
        measured = self._latency()
        s = measured.samples
        return self.record("latency", s.rtt_ms, measured,
                           {"sent": s.sent, "lost": s.lost, "interval_ms": s.interval_ms, "rounds": len(s.rounds_ms),
                            "warmup_discarded": s.warmup, "samples": [round(x, 4) for x in s.rtt_ms]},
                           s.round_means)

    def jitter(self) -> Record:
        """IPDV between consecutive round trips (ms), from the same run as latency()."""
        measured = self._latency()
        return self.record("jitter", measured.samples.ipdv_ms, measured, {"definition": "|RTT[i] - RTT[i-1]|"})

    def tcp(self) -> Record:
        """TCP goodput (Mbit/s) per half-second interval, from src to dst."""
        measured = self._throughput("tcp")
        s = measured.samples
        return self.record("tcp_throughput", s.mbit, measured,
                           {"retransmits": s.retransmits, "interval_s": s.interval_s, "rounds": len(s.round_totals)},
                           s.round_totals, total=s.total_mbit)

    def udp(self) -> tuple[Record, Record]:
        """UDP received rate (Mbit/s) per interval, and the run's loss (%)."""
        measured = self._throughput("udp")
        s = measured.samples
        packets, lost = s.extra.get("packets"), s.extra.get("lost_packets")
        common = {"offered_mbit": s.offered_mbit, "sent_mbit": s.sent_mbit, "packets": packets, "lost_packets": lost,
                  "iperf3_jitter_ms": s.jitter_ms}
        rate = self.record("udp_throughput", s.mbit, measured,
                           {**common, "interval_s": s.interval_s, "rounds": len(s.round_totals)},
                           s.round_totals, total=s.total_mbit)
        loss = self.record("udp_loss", [s.lost_pct], measured, common, ci95=loss_interval(lost, packets),
                           faults=measured.accounting.loss_faults if measured.accounting else None)
        return rate, loss

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
                record.vs_host = {"stat": metrics.get(record.metric).headline, "host": None, "now": None,
                                  "unknown": f"the underlay's record is INVALID ({base.invalid_reasons[0]}), "
                                             "measured twice: the overlay's difference from it cannot be told"}
        if self.state.saved is not None:
            failures += gates.regression_failures(record, self.state.saved.get(record), self.state.saved.path.name,
                                                  self.state.option("overlay_compare_fail"), limits)
        if failures and record.verdict != "invalid":
            record.verdict = "fail"
        return failures

    def _measure_underlay(self, record: Record, again: bool = False) -> Record:
        """The underlay's record on the same circuit, measured now: first, or `again`
        where the one measured is INVALID (an overhead needs a valid baseline)."""
        kind = metrics.get(record.metric).probe
        if again:
            self.state.cache.pop((BASELINE, self.circuit, kind), None)
            self.state.repeated.append(f"{BASELINE} {record.circuit} {kind}: measured again as the baseline of "
                                       f"{record.overlay}, its record was INVALID")
        self.state.progress(f"measuring the underlay's {record.metric} on {record.circuit} "
                            f"{'again' if again else 'first'}: a limit of {record.overlay}'s is relative to it")
        host = OverlayPath(kinds.get(BASELINE)(self.overlay.testbed), self.circuit, self.state, test="")
        made = {"latency": host.latency, "jitter": host.jitter, "tcp_throughput": host.tcp,
                "udp_throughput": lambda: host.udp()[0]}[record.metric]()
        made.verdict = "measured as the baseline of a relative limit"
        return made


def _counts_only(accrued: dict[str, dict]) -> None:
    """The emulator's counters as a record keeps them: counts; the path's windows are in its
    exclusions."""
    for counts in accrued.values():
        counts.pop("windows", None)
        counts.pop("windows_incomplete", None)


def loss_interval(lost: int | None, packets: int | None) -> float:
    """95 % half-width of a loss percentage over `packets` (binomial; rule of three at 0)."""
    if not packets:
        return math.inf
    p = min((lost or 0) / packets, 1.0)
    if p == 0:
        return 3 / packets * 100
    return 1.96 * math.sqrt(p * (1 - p) / packets) * 100


class StreamPath(OverlayPath):
    """One streaming level: N clients at the circuit's destination, the server at its source."""

    def __init__(self, overlay, circuit, state, test, server: streaming.StreamServer, concurrency: int,
                 transport: str) -> None:
        super().__init__(overlay, circuit, state, test)
        self.server, self.concurrency, self.transport = server, concurrency, transport

    @property
    def nominal_kbit(self) -> float:
        return self.server.clip.kbit

    def stream(self) -> tuple[Record, Record, Record, Record]:
        seconds = self.state.option("overlay_stream_seconds")
        measured = self._measure(
            f"stream-{self.transport}-{self.concurrency}",
            lambda: streaming.watch(self.dst, self.server, self.concurrency, seconds, self.transport),
            lambda data: validity.cpu_faults(data.cpu_pct, self.concurrency, self.rules["max_client_cpu_pct"]))
        data = measured.samples
        reports = data.reports
        common = {"nominal_kbit": self.nominal_kbit, "client_cpu_pct": data.cpu_pct, "clients": len(reports),
                  "seconds": data.seconds, "reordered": sum(r["reordered"] for r in reports), "url": self.server.url}
        level = {"concurrency": self.concurrency, "transport": self.transport}
        ttffs = [r["ttff_ms"] for r in reports if r["ttff_ms"] is not None] or [float("nan")]
        return (
            self.record("stream_jitter", [r["jitter_ms"] for r in reports], measured,
                        {**common, "definition": "RFC 3550 interarrival jitter at the end of the run, per client"},
                        **level),
            self.record("stream_bitrate", [r["bitrate_kbit"] for r in reports], measured, common, **level),
            self.record("stream_loss", [r["loss_pct"] for r in reports], measured, common, **level),
            self.record("stream_ttff", ttffs, measured, {**common, "definition": "PLAY to the first frame's last packet"},
                        **level),
        )


class FaultPath(OverlayPath):
    """One WAN fault scenario through one overlay: the circuit it affects probed from before
    the fault until recovery, a circuit it leaves alone beside it."""

    def __init__(self, overlay, fault: Fault, state, test) -> None:
        super().__init__(overlay, fault.probe, state, test)
        self.fault = fault

    def run(self) -> dict[str, Record]:
        """The scenario's records by metric (detour_rtt only where replies came while the
        fault was on; fault_goodput only for a loss burst, which runs a TCP transfer)."""
        cached = self.state.cache.get((self.overlay.name, self.fault.name))
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
        run = faults.run(self.overlay, self.fault, self.state.option("overlay_fault_bound"),
                         tcp=self.fault.kind == "loss", progress=self.state.progress)
        self._stop_if_a_daemon_died(f"fault {self.fault.name}", "during")
        accrued = emu.delta(before, testbed.emulator_counters(since=started))
        outcome = faults.analyse(run.trips, run.steps, bound_s=self.state.option("overlay_fault_bound"),
                                 calm_until_ns=run.calm_until_ns)
        replies = [t for t in run.trips if t.rtt_ms is not None]
        samples = probes.LatencySamples([[t.rtt_ms for t in replies]], len(run.trips), len(run.trips) - len(replies),
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
        _counts_only(accrued)
        measured = Measured(samples, problems, accrued, None, accounting=accounting, machine=window)
        records = self._records(run, outcome, measured)
        self.state.cache[(self.overlay.name, self.fault.name)] = records
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
                      "add_rtt_ms": fault.add_rtt_ms},
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
            out["fault_goodput"] = self.record(
                "fault_goodput", during, measured,
                {"before_mbit": statistics.fmean(before) if before else None, "before_n": len(before),
                 "retransmits": run.tcp.retransmits, "interval_s": run.tcp.interval_s}, **level)
        return out


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
            measured = self._measure(kind, lambda: None, once=self._load_once)
        finally:
            if self.queue_ms is not None:
                testbed.rebuffer(self.state.topology.with_queue(self.circuit, None))
        return self._records(measured)

    def _load_once(self) -> Measured:
        seconds, flows = self.state.option("overlay_load_seconds"), self.state.option("overlay_load_flows")
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
        _counts_only(accrued)
        return Measured(run, faults, accrued, wire, accounting=latency, machine=window, parts=goodput,
                        cpu_used=b.cpu_used)

    def _records(self, measured: Measured) -> dict[str, Record]:
        run: load.LoadRun = measured.samples
        idle, loaded = run.idle.rtt_ms, run.loaded.rtt_ms
        common = {"seconds": self.state.option("overlay_load_seconds"), "flows_each_way": len(run.flows["up"].per_flow_mbit),
                  "buffer_ms": self.expected["queue_ms"], "buffers_both_ways_ms": self.buffer_ms,
                  "warmup_s": load.WARMUP_S,
                  "idle_s": load.idle_seconds(self.state.option("overlay_load_seconds"))}
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
                                    measured.earlier_faults, _merged(measured.parts), measured.machine,
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


def _merged(accountings: dict[str, validity.Accounting]) -> validity.Accounting:
    """The accountings of several flow groups (one per direction) as one record's exclusions."""
    parts = list(accountings.values())
    merged = validity.Accounting("tcp", list(dict.fromkeys(link for a in parts for link in a.path)))
    merged.n = sum(a.n for a in parts)
    merged.excluded = sum(a.excluded for a in parts)
    merged.rule = parts[0].rule if parts else ""
    merged.troubles = [t for a in parts for t in a.troubles]
    merged.faults = [f for a in parts for f in a.faults]
    return merged
