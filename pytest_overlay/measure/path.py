"""One circuit through one overlay: run a probe once (latency and jitter share a run),
bracket it with the emulator's and the overlay's counters, and build typed records with
their validity, thresholds and gates."""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import time
from typing import TYPE_CHECKING, Callable

import pytest

from ..emulation import emulator as emu
from ..inputs.model import Circuit
from ..overlays import Overlay
from ..results import Record, Stats, gates, metrics
from ..results.thresholds import VALIDITY
from . import machine, probes, topup, validity
from .measured import Bracket, Measured, MeasureKey, merged_emulator, merged_wire
from .judging import Judging
from .noise import Neighbour, Noise
from .samples import BATCH_INTERVALS, UDP_RECORDED, LatencySamples, pooled

if TYPE_CHECKING:  # the run's state is the layer above's; a path is handed it
    from ..session import OverlaySession


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


class OverlayPath(Judging):
    adds = True  # its records join the run's (an A/B round's do not: its comparison holds them)

    def __init__(self, overlay: Overlay, circuit: Circuit, state: "OverlaySession", test: str,
                 cpu: float | None = None, noise: Noise | None = None) -> None:
        self.overlay, self.circuit, self.state, self.test = overlay, circuit, state, test
        self.cpu = cpu  # the CPU budget (cores) every site's overlay is held to while probing
        self.noise = noise  # the neighbour whose hogs run beside it while probing
        self.expected = state.topology.expected(circuit)
        self.src, self.dst = overlay.endpoints([circuit.src, circuit.dst])

    @property
    def udp_rate(self) -> float:
        offered = self.state.settings.udp_rate_mbit
        return min(offered, self.expected["rate_mbit"]) if self.expected["rate_mbit"] else offered

    @property
    def rules(self) -> dict[str, float]:
        return self.state.thresholds.for_(VALIDITY, self.overlay.name, self.circuit.id)

    def on(self, overlay: Overlay) -> "OverlayPath":
        """The same circuit through another overlay (the underlay, for a relative limit)."""
        return OverlayPath(overlay, self.circuit, self.state, test=self.test)

    def key(self, kind: str) -> MeasureKey:
        return MeasureKey(self.overlay.name, self.circuit, kind, self.cpu, self.noise)

    def _measure(self, kind: str, probe: Callable[[int | None], object],
                 check: Callable[[object], list[str]] = lambda samples: [],
                 once: Callable[[], Measured] | None = None, want: topup.Want | None = None) -> Measured:
        """Measure once per session. Given `want`, run the probe (`probe(None)` the nominal
        run, `probe(n)` about n units more) until its clean samples are in (topup.top_up);
        else run `once`, a measurement judged whole, taken again up to --overlay-retries times
        where only the machine's load spoiled it. The record says how many runs it took."""
        key = self.key(kind)
        if key not in self.state.cache and kind == "latency" and want is not None:
            self._latency_beside_others()
        if key in self.state.cache:
            return self.state.cache[key]
        if want is not None:
            measured = self._topped_up(kind, probe, check, want, *self.state.started.pop(key, (None, None)))
        else:
            measured = self._retried(kind, once)
        self.state.cache[key] = measured
        return measured

    def _topped_up(self, kind: str, probe: Callable[[int | None], object], check: Callable[[object], list[str]],
                   want: topup.Want, first: Measured | None, first_s: float | None) -> Measured:
        def say(message: str) -> None:
            self.state.progress(f"{self.overlay.name} {self.circuit.id} {kind}: {message}")

        outcome = topup.top_up(lambda size: self._once(kind, lambda: probe(size), check, replaced=True), want,
                               first=first,
                               first_s=first_s, quiet=machine.monitor().wait_quiet, progress=say)
        if outcome.why or outcome.runs > 1:
            self.state.repeated.append(f"{self.overlay.name} {self.circuit.id} {kind}: {outcome.runs} runs, "
                                       f"{outcome.samples_replaced} samples replaced" +
                                       (f" ({outcome.why[0]})" if outcome.why else ""))
        measured = self._merged(kind, outcome.kept or [outcome.last])
        measured.faults = outcome.faults or measured.faults
        measured.tries, measured.earlier_faults = outcome.runs, outcome.why
        measured.replaced = {"samples": outcome.samples_replaced, "runs_added": outcome.runs - 1,
                             "unit": want.unit, "why": outcome.why[:10]}
        if measured.accounting:
            measured.accounting.rule += (f"; INVALID only if still short of its clean {want.unit} after "
                                         f"{want.budget:g} × its nominal time")
        return measured

    def _merged(self, kind: str, runs: list[Measured]) -> Measured:
        """The kept runs of one measurement as one."""
        if len(runs) == 1:
            return runs[0]
        first = runs[0]
        samples = (LatencySamples.merged if kind == "latency" else pooled)([m.samples for m in runs])
        if kind == "udp" and self.state.settings.rounds == 1:
            samples.round_totals = [samples.total_mbit]  # a top-up is no round: the interval comes from batches
        windows = [m.machine for m in runs if m.machine]
        window = machine.monitor().window(windows[0].start_ns, windows[-1].end_ns) if windows else None
        return Measured(samples, [f for m in runs for f in m.faults], merged_emulator([m.emulator for m in runs]),
                        merged_wire([m.wire for m in runs]),
                        accounting=validity.merged([m.accounting for m in runs if m.accounting], kind),
                        machine=window, cpu_used=first.cpu_used, noise_used=first.noise_used, beside=first.beside)

    def _retried(self, kind: str, once: Callable[[], Measured]) -> Measured:
        retries = self.state.settings.retries
        earlier: list[str] = []
        for attempt in range(1, retries + 2):
            measured = once()
            measured.tries, measured.earlier_faults = attempt, list(earlier)
            faults = measured.load_faults
            if attempt > retries or not validity.load_related(faults):
                return measured
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
        return measured

    @property
    def circuit_sites(self) -> set[str]:
        return {self.circuit.src, self.circuit.dst}

    def hops(self) -> tuple[list[validity.Hop], list[validity.Hop]]:
        """The link directions from the circuit's source to its destination, and back."""
        topology, c = self.state.topology, self.circuit
        return tuple([validity.Hop(f"{d.src}->{d.dst}", d.delay_ms, d.jitter_ms) for d in topology.directions(a, b)]
                     for a, b in ((c.src, c.dst), (c.dst, c.src)))

    def _once(self, kind: str, probe: Callable[[], object], check: Callable[[object], list[str]],
              replaced: bool = False) -> Measured:
        """One run of the probe, bracketed and judged on its own path (`replaced`: one of a
        measurement's runs, replaced whole past its bound)."""
        b = self._bracketed(kind, probe)
        samples = b.samples
        there, back = self.hops()
        accounting = validity.account(kind, b.accrued, there, back, samples, self.rules, b.window, replaced=replaced)
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
                    with machine.awake(self.state.settings.cpu_latency_us):
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

    def _latency_probe(self, more: int | None = None) -> LatencySamples:
        """The nominal run (every round), or `more` round trips in one run beside it."""
        s = self.state.settings
        samples, interval, rounds, warmup = s.samples, s.interval_ms, s.rounds, s.warmup
        if more is not None:
            samples, rounds = more, 1
        return probes.LATENCY.run(self.src, self.dst, samples, interval, rounds, warmup)

    def _latency_want(self) -> topup.Want:
        s = self.state.settings
        return topup.Want(s.samples * s.rounds, "round trips", s.topup_budget, least=topup.MIN_ROUND_TRIPS)

    def _latency(self) -> Measured:
        return self._measure("latency", self._latency_probe, want=self._latency_want())

    def _links(self) -> set[frozenset[str]]:
        sites = self.state.topology.path_between(self.circuit.src, self.circuit.dst)
        return {frozenset(pair) for pair in zip(sites, sites[1:])}

    def _latency_beside_others(self) -> None:
        """With --overlay-parallel N: probe this circuit's latency together with up to N - 1
        circuits still to be measured whose paths share no link with it or each other, one
        emulator bracket around them all; each is judged on its own path's windows, so a
        circuit the others disturbed is excluded like any other. Each result is the first run
        of its circuit's measurement, which goes on alone where it is short of clean round
        trips or the machine spoiled it."""
        at_once = self.state.settings.parallel
        if at_once < 2 or self.cpu is not None or self.noise is not None:
            return
        wanted = {Circuit(m.src, m.dst) for nodeid, asked in self.state.requested.items()
                  if self.state.reasons.get(nodeid) != "deselected" for m in asked
                  if m.metric == "latency" and m.overlay == self.overlay.name and m.cpu is None and m.noise is None}
        batch, used = [self], set(self._links())
        for circuit in (c for c in self.state.topology.circuits if c in wanted):
            if len(batch) == at_once:
                break
            key = MeasureKey(self.overlay.name, circuit, "latency")
            if key in self.state.cache or key in self.state.started or circuit == self.circuit:
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
        with machine.awake(self.state.settings.cpu_latency_us), \
                concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
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
        seconds = (ended - started) / 1e9
        for path, measured in judged:
            # Each goes on alone from here: topped up where the machine spoiled round trips.
            self.state.started[path.key("latency")] = (measured, seconds)

    def _throughput(self, protocol: str) -> Measured:
        duration, rounds = self.state.settings.duration_s, self.state.settings.rounds
        rate, cpus = self.udp_rate if protocol == "udp" else None, self.overlay.testbed.probe_cpus()
        budget = self.state.settings.topup_budget
        check = lambda s: validity.sender_faults(s.offered_mbit, s.sent_mbit, self.rules["min_sent_fraction_udp"])
        if protocol == "tcp":
            # A stall slows a TCP flow after it too: a round is judged whole, and replaced whole.
            return self._measure(protocol, lambda _: probes.TCP.run(self.src, self.dst, duration, receiver_cpus=cpus),
                                 check, want=topup.Want(rounds, "rounds", budget, per_round=True))
        # A paced UDP sender does not slow for a stall: its intervals left out are replaced by more.
        datagram = probes.udp_datagram(self.expected.get("mtu", 1500), self.dst.address)
        return self._measure(protocol, lambda more: probes.UDP.run(
            self.src, self.dst, duration if more is None else max(1.0, (more + 1) * probes.INTERVAL_S),
            rate, rounds if more is None else 1, receiver_cpus=cpus, datagram=datagram), check,
            want=topup.Want(None, "intervals", budget))

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
        if self.overlay.chosen:
            datapath["settings"] = dict(self.overlay.chosen)
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
        if record.unit == "ms":
            emulator = gates.instrument_ms(record)
            wait = (record.exclusions.get("probe_wait") or {}).get("typical_ms", 0.0)
            record.instrument = {"emulator_ms": round(emulator, 4), "probe_wait_ms": wait,
                                 "ms": round(emulator + wait, 4)}
        return self.state.add(record) if self.adds else record

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
                           {"sent": s.sent, "lost": s.lost, "interval_ms": s.interval_ms,
                            "rounds": len(set(s.round_of)) if s.round_of else len(s.rounds_ms),
                            "warmup_discarded": s.warmup, "samples": [round(x, 4) for x in s.rtt_ms],
                            "excluded_samples": [round(x, 4) for x in s.excluded_ms]},
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
                           s.round_totals, total=s.total_mbit, batch=BATCH_INTERVALS)

    @makes("udp_throughput", "udp_loss")
    def udp(self) -> tuple[Record, Record]:
        """UDP received rate (Mbit/s) per interval, and the run's loss (%)."""
        measured = self._throughput("udp")
        s = measured.samples
        common = {"offered_mbit": s.offered_mbit, "sent_mbit": s.sent_mbit, "iperf3_jitter_ms": s.jitter_ms,
                  **{k: s.extra.get(k) for k in UDP_RECORDED}}
        rate = self.record("udp_throughput", s.mbit, measured,
                           {**common, "interval_s": s.interval_s, "rounds": len(s.round_totals)},
                           s.round_totals, total=s.total_mbit, batch=BATCH_INTERVALS)
        loss = self.record("udp_loss", [s.lost_pct], measured, common,
                           ci95=loss_interval(common["lost_packets"], common["packets"]),
                           ci95_unit="binomial over the run's datagrams",
                           faults=measured.accounting.loss_faults if measured.accounting else None)
        return rate, loss


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
