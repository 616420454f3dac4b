"""One circuit through one overlay: run a probe once (latency and jitter share a run),
bracket it with the emulator's and the overlay's counters, and build typed records with
their validity, thresholds and gates."""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest

from .. import kinds, results
from ..emulation import emulator as emu
from ..inputs.model import Circuit
from ..kinds import BASELINE
from ..overlays import Overlay
from ..results import Record, Stats, gates, metrics
from ..results.thresholds import VALIDITY
from ..session import OverlaySession
from . import machine, probes, streaming, validity
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


MAKERS: dict[str, tuple[Callable, int | None]] = {}  # metric -> (the path method, which of its records)


def makes(*names: str) -> Callable:
    """Marks the path method that measures these metrics (its record, or a tuple of records
    in the same order): a new metric is its registry entry, its probe, this method and its
    suite test."""
    def mark(method: Callable) -> Callable:
        for index, name in enumerate(names):
            metrics.get(name)  # a metric the registry does not know fails at import
            MAKERS[name] = (method, index if len(names) > 1 else None)
        return method
    return mark


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
        counts_only(b.accrued)
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
        counts_only(accrued)
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
            self.src, self.dst, protocol, duration, rate, rounds, self.overlay.testbed.probe_cpus()),
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
        ci95, ci95_unit = fields.pop("ci95", None), fields.pop("ci95_unit", "given")
        batch = fields.pop("batch", 0)
        faults = measured.faults + (faults or [])
        if not values:
            values = [math.nan]
            faults = faults or ["every sample was excluded"]
        record = Record(
            overlay=self.overlay.name, metric=metric, src=self.circuit.src, dst=self.circuit.dst,
            unit=metrics.get(metric).unit, stats=Stats.of(values, round_values, ci95, batch, ci95_unit), valid=not faults,
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

    def measure(self, metric: str) -> Record:
        """The record of `metric` on this circuit, by the method that makes it."""
        method, index = MAKERS[metric]
        made = method(self)
        return made if index is None else made[index]

    @makes("latency")
    def latency(self) -> Record:
        """Round-trip times (ms) of the request/response probe."""
        measured = self._latency()
        s = measured.samples
        return self.record("latency", s.rtt_ms, measured,
                           {"sent": s.sent, "lost": s.lost, "interval_ms": s.interval_ms, "rounds": len(s.rounds_ms),
                            "warmup_discarded": s.warmup, "samples": [round(x, 4) for x in s.rtt_ms]},
                           s.round_means)

    @makes("jitter")
    def jitter(self) -> Record:
        """IPDV between consecutive round trips (ms), from the same run as latency()."""
        measured = self._latency()
        return self.record("jitter", measured.samples.ipdv_ms, measured, {"definition": "|RTT[i] - RTT[i-1]|"})

    @makes("tcp_throughput")
    def tcp(self) -> Record:
        """TCP goodput (Mbit/s) per half-second interval, from src to dst."""
        measured = self._throughput("tcp")
        s = measured.samples
        return self.record("tcp_throughput", s.mbit, measured,
                           {"retransmits": s.retransmits, "interval_s": s.interval_s, "rounds": len(s.round_totals)},
                           s.round_totals, total=s.total_mbit, batch=probes.BATCH_INTERVALS)

    @makes("udp_throughput", "udp_loss")
    def udp(self) -> tuple[Record, Record]:
        """UDP received rate (Mbit/s) per interval, and the run's loss (%)."""
        measured = self._throughput("udp")
        s = measured.samples
        common = {"offered_mbit": s.offered_mbit, "sent_mbit": s.sent_mbit, "iperf3_jitter_ms": s.jitter_ms,
                  **{k: s.extra.get(k) for k in probes.UDP_RECORDED}}
        rate = self.record("udp_throughput", s.mbit, measured,
                           {**common, "interval_s": s.interval_s, "rounds": len(s.round_totals)},
                           s.round_totals, total=s.total_mbit, batch=probes.BATCH_INTERVALS)
        loss = self.record("udp_loss", [s.lost_pct], measured, common,
                           ci95=loss_interval(common["lost_packets"], common["packets"]),
                           ci95_unit="binomial over the run's datagrams",
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
            judged = gates.regression_failures(record, self.state.saved.get(record), self.state.saved.path.name,
                                               self.state.option("overlay_compare_fail"), limits)
            failures += judged.regressed
            if judged.regressed:
                self.state.regressed.add(record.test)
            if self.state.option("overlay_compare_strict"):
                failures += judged.inconclusive
            else:
                self.state.inconclusive.setdefault(record.test, []).extend(judged.inconclusive)
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
        made = host.measure(record.metric)
        made.verdict = "measured as the baseline of a relative limit"
        return made


def counts_only(accrued: dict[str, dict]) -> None:
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
