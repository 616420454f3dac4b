"""pytest-overlay: what a Docker overlay network costs over a high-latency WAN.

Options, markers, fixtures and the reporting hooks. Fixtures wire the layers together:
``overlay_testbed`` (session: namespaces, links, emulator) → ``overlay`` (session, one per
``--overlay`` name) → ``overlay_path`` (per test: one circuit through one overlay, with the
probes and the records they make).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import warnings
from dataclasses import dataclass, field
from typing import Callable

import pytest

from . import emulator as emu
from . import compare, probes, procs, report, results, streaming, thresholds, topology
from .overlays import IMPLEMENTED, KNOWN, Overlay, OverlayUnavailable
from .results import Record, Stats
from .testbed import EmulatedTestbed

MARKERS = {
    "latency": "round-trip latency (min / mean / p99) between two sites",
    "jitter": "variation of round-trip latency (IPDV) between two sites",
    "throughput": "TCP or UDP throughput between two sites",
    "tcp": "TCP measurements",
    "udp": "UDP measurements",
    "streaming": "RTSP streaming under concurrency",
}


# --- option types: bad values are usage errors before anything is created ------------------
def parse_overlays(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one overlay name")
    for name in names:
        if name not in KNOWN:
            raise argparse.ArgumentTypeError(f"unknown overlay {name!r}; allowed: {', '.join(KNOWN)}")
        if name not in IMPLEMENTED:
            raise argparse.ArgumentTypeError(
                f"overlay {name!r} is not available in this version; available: {', '.join(IMPLEMENTED)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"overlay named twice in {value!r}")
    return names


def parse_emulator(value: str) -> str:
    if value not in emu.KINDS:
        raise argparse.ArgumentTypeError(f"{value!r}; allowed: {', '.join(emu.KINDS)}")
    return value


def parse_concurrency(value: str) -> list[int]:
    try:
        levels = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give client counts separated by commas, e.g. 1,5,10") from None
    if not levels or any(not 1 <= n <= 500 for n in levels) or len(set(levels)) != len(levels):
        raise argparse.ArgumentTypeError(f"{value!r}: distinct client counts from 1 to 500, e.g. 1,5,10,25,50")
    return levels


def parse_transports(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names or any(n not in ("udp", "tcp") for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{value!r}; allowed: udp, tcp, or udp,tcp")
    return names


def _bounded(kind: type, low: float, high: float) -> Callable[[str], float]:
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{value!r} is out of range; allowed: {low:g} to {high:g}")
        return number

    parse.__name__ = kind.__name__
    return parse


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("overlay", "pytest-overlay: overlay networks over an emulated WAN")
    group.addoption("--overlay", type=parse_overlays, default="host", metavar="NAME[,NAME...]",
                    help=f"Overlays to measure, of: {', '.join(KNOWN)} (host is the underlay baseline). "
                         "Default: %(default)r")
    group.addoption("--topology", default="geant", metavar="PATH|NAME",
                    help=f"Topology file, or the name of a bundled one ({', '.join(topology.available())}). "
                         "Default: %(default)r")
    group.addoption("--overlay-emulator", type=parse_emulator, default="auto", metavar="KIND",
                    help="WAN link emulator: auto (netem where the kernel has it, else the NFQUEUE delay line), "
                         "netem, delayline, or none (links without delay). Default: %(default)r")
    group.addoption("--overlay-samples", type=_bounded(int, 10, 1_000_000), default=500, metavar="N",
                    help="Request/response round trips per circuit for latency and jitter. Default: %(default)r")
    group.addoption("--overlay-interval", type=_bounded(float, 0.1, 10_000), default=10.0, metavar="MS",
                    help="Milliseconds between latency requests. Default: %(default)r")
    group.addoption("--overlay-duration", type=_bounded(float, 1, 3600), default=5.0, metavar="SECONDS",
                    help="Seconds of each throughput measurement, after one second of warm-up. Default: %(default)r")
    group.addoption("--overlay-udp-rate", type=_bounded(float, 1, 100_000), default=500.0, metavar="MBIT",
                    help="Offered UDP rate in Mbit/s (capped at the circuit's rate). Default: %(default)r")
    group.addoption("--overlay-thresholds", default=None, metavar="PATH",
                    help=f"Threshold file replacing the bundled one ({thresholds.DEFAULT_PATH.name}). Default: %(default)r")
    group.addoption("--overlay-json", default=None, metavar="PATH",
                    help="Write the run's results as versioned JSON to PATH. Default: %(default)r")
    group.addoption("--overlay-rounds", type=_bounded(int, 1, 1000), default=1, metavar="N",
                    help="Repeat every probe N times; with N >= 2 the 95 %% confidence intervals come from "
                         "the rounds. Default: %(default)r")
    group.addoption("--overlay-warmup", type=_bounded(int, 0, 100_000), default=10, metavar="N",
                    help="Round trips discarded at the start of every latency round. Default: %(default)r")
    group.addoption("--overlay-save", default=None, metavar="NAME",
                    help="Save the results in pytest-benchmark's storage (--benchmark-storage), under "
                         "<machine>/overlay/NNNN_NAME.json. Default: %(default)r")
    group.addoption("--overlay-compare", nargs="?", const="", default=None, metavar="NUM|NAME",
                    help="Compare with a saved run (the latest if none is named). Default: %(default)r")
    group.addoption("--overlay-compare-fail", type=compare.parse_gate, action="append", default=[],
                    metavar="METRIC[:STAT]:LIMIT[%]",
                    help="Fail a test whose metric worsened beyond LIMIT against the compared run, e.g. "
                         "tcp_throughput:10%% or latency:p99:2 (ms). Repeatable. Default: %(default)r")
    group.addoption("--overlay-concurrency", type=parse_concurrency, default="1,5,10,25,50", metavar="N,N,...",
                    help="Concurrent RTSP clients per streaming level. Default: %(default)r")
    group.addoption("--overlay-stream-kbit", type=_bounded(int, 50, 50_000), default=1000, metavar="KBIT",
                    help="Bitrate of the H.264 clip the RTSP server streams, kbit/s. Default: %(default)r")
    group.addoption("--overlay-stream-seconds", type=_bounded(float, 2, 3600), default=10.0, metavar="SECONDS",
                    help="Seconds each streaming level is measured. Default: %(default)r")
    group.addoption("--overlay-stream-transport", type=parse_transports, default="udp", metavar="udp|tcp|udp,tcp",
                    help="RTP over UDP, or interleaved in the RTSP connection over TCP. Default: %(default)r")
    group.addoption("--overlay-report", default=None, metavar="DIR",
                    help="Write Markdown, CSV, JSON, plots and an HTML page of the results to DIR. "
                         "Default: %(default)r")


@dataclass
class OverlaySession:
    """What one pytest run knows: its inputs, its testbed once up, and its records."""

    config: pytest.Config
    topology: topology.Topology
    thresholds: thresholds.Thresholds
    overlays: list[str]
    testbed: EmulatedTestbed | None = None
    records: list[Record] = field(default_factory=list)
    cache: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    saved: compare.SavedRun | None = None

    def option(self, name: str):
        return self.config.getoption(name)

    def progress(self, message: str) -> None:
        """Say what bring-up is doing, past pytest's output capture: it takes seconds."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            if reporter._tw.width_of_current_line:
                reporter._tw.line()
            reporter._tw.line(f"[overlay] {message}")


session_key = pytest.StashKey[OverlaySession]()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    if getattr(config.option, "help", False):
        return
    try:
        topo = topology.load(config.getoption("topology"))
        limits = thresholds.load(config.getoption("overlay_thresholds"))
    except topology.InputError as e:
        raise pytest.UsageError(str(e)) from None
    overlays = config.getoption("overlay")
    if isinstance(overlays, str):  # the default is not passed through type=
        overlays = parse_overlays(overlays)
    state = config.stash[session_key] = OverlaySession(config, topo, limits, overlays)
    which = config.getoption("overlay_compare")
    if config.getoption("overlay_compare_fail") and which is None:
        raise pytest.UsageError("--overlay-compare-fail needs a run to compare with: add --overlay-compare "
                                "(the latest saved run) or --overlay-compare=NUM|NAME")
    if which is not None:
        try:
            state.saved = compare.SavedRun.load(_storage(config).find(which))
        except (FileNotFoundError, ValueError) as e:
            raise pytest.UsageError(f"--overlay-compare: {e}") from None
    if not hasattr(config, "workerinput"):
        # SIGTERM tears down like Ctrl-C: pytest unwinds the fixtures on KeyboardInterrupt.
        config.stash[_previous_sigterm] = signal.signal(signal.SIGTERM, _raise_interrupt)


_previous_sigterm = pytest.StashKey[object]()


def _storage(config: pytest.Config) -> compare.Storage:
    """pytest-benchmark's storage, which overlay runs share."""
    return compare.Storage(config.getoption("benchmark_storage", "file://./.benchmarks"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Latency tests hand their round trips to pytest-benchmark, so --benchmark-save,
    --benchmark-compare and --benchmark-compare-fail work on them as on any benchmark."""
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()) and "overlay_path" in item.fixturenames:
            item.add_marker(pytest.mark.benchmark(group="overlay latency (round-trip time)", timer=REPLAY_CLOCK,
                                                  disable_gc=False, warmup=False))


class ReplayClock:
    """A timer for pytest-benchmark that replays measured durations, one per call of step()."""

    __name__ = "replay_clock"

    def __init__(self) -> None:
        self.now = 0.0
        self.durations: list[float] = []

    def __call__(self) -> float:
        return self.now

    def step(self) -> None:
        self.now += self.durations.pop()


REPLAY_CLOCK = ReplayClock()


def pytest_unconfigure(config: pytest.Config) -> None:
    previous = config.stash.get(_previous_sigterm, None)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every test that takes ``overlay_path`` over overlay × circuit.

    Only the overlay is a session-scoped parameter, so pytest runs every test of one overlay
    before it builds the next; circuits are cheap.
    """
    state = metafunc.config.stash[session_key]
    if "overlay_path" in metafunc.fixturenames:
        metafunc.parametrize("overlay", state.overlays, indirect=True, scope="session")
        metafunc.parametrize("circuit", state.topology.circuits, ids=lambda c: c.id)
    elif "stream_path" in metafunc.fixturenames:
        metafunc.parametrize("overlay", state.overlays, indirect=True, scope="session")
        metafunc.parametrize("transport", _listed(metafunc.config, "overlay_stream_transport", parse_transports))
        metafunc.parametrize("concurrency", _listed(metafunc.config, "overlay_concurrency", parse_concurrency))


def _listed(config: pytest.Config, name: str, parse: Callable[[str], list]) -> list:
    value = config.getoption(name)
    return parse(value) if isinstance(value, str) else value  # defaults skip type=


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def overlay_session(pytestconfig: pytest.Config) -> OverlaySession:
    """Name: overlay_session. Scope: session. The run's validated topology, thresholds and
    records."""
    return pytestconfig.stash[session_key]


@pytest.fixture(scope="session")
def overlay_topology(overlay_session: OverlaySession) -> topology.Topology:
    """Name: overlay_topology. Scope: session. The validated topology of --topology."""
    return overlay_session.topology


@pytest.fixture(scope="session")
def overlay_thresholds(overlay_session: OverlaySession) -> thresholds.Thresholds:
    """Name: overlay_thresholds. Scope: session. The limits of --overlay-thresholds."""
    return overlay_session.thresholds


@pytest.fixture(scope="session")
def overlay_testbed(overlay_session: OverlaySession):
    """Name: overlay_testbed. Scope: session. Depends on: overlay_session.

    The emulated WAN: one namespace per site, links through the emulator. Checks every tool
    and privilege before it creates anything, and removes all it made when the session ends.
    """
    problems = procs.missing(probes.TOOLS)
    if os.geteuid() != 0:
        problems.append("root (network namespaces and NFQUEUE need it)")
    if problems:
        pytest.fail("pytest-overlay cannot build the testbed; missing: " + "; ".join(problems), pytrace=False)
    bed = EmulatedTestbed(overlay_session.topology, overlay_session.option("overlay_emulator"),
                          progress=overlay_session.progress)
    overlay_session.testbed = bed
    with bed:
        overlay_session.progress(f"testbed up in {bed.timings['up_s']:.2f} s")
        overlay_session.run = results.run_metadata(
            overlay_session.topology, bed.describe(), _options(overlay_session), probes.versions())
        if overlay_session.saved is not None:
            differences = overlay_session.saved.differences(overlay_session.run)
            overlay_session.progress(f"comparing with {overlay_session.saved.path.name}")
            if differences:
                warnings.warn(pytest.PytestWarning(
                    f"comparing with {overlay_session.saved.path.name}, a run on a different set-up ("
                    + "; ".join(differences) + "): differences may not be the network's"))
        yield bed
    overlay_session.progress(f"testbed {bed.run_id} down in {bed.timings['down_s']:.2f} s")
    overlay_session.run["testbed"]["timings"] = dict(bed.timings)


@pytest.fixture(scope="session")
def overlay(request: pytest.FixtureRequest, overlay_testbed: EmulatedTestbed,
            overlay_session: OverlaySession) -> Overlay:
    """Name: overlay. Scope: session, one instance per --overlay name. Depends on: overlay_testbed.

    Skipped, with the overlay's own reason, where this machine cannot run it.
    """
    instance = IMPLEMENTED[request.param](overlay_testbed)
    try:
        instance.up()
    except OverlayUnavailable as e:
        pytest.skip(str(e))
    try:
        yield instance
    finally:
        instance.down()
        overlay_session.run.setdefault("overlays", {})[instance.name] = {
            "description": instance.description, "timings": dict(instance.timings)}


@pytest.fixture
def overlay_path(overlay: Overlay, circuit: topology.Circuit, overlay_session: OverlaySession,
                 request: pytest.FixtureRequest) -> "OverlayPath":
    """Name: overlay_path. Scope: function (cheap). Depends on: overlay, circuit.

    One circuit through one overlay: runs the probes (each at most once per session, so
    latency and jitter share one run) and records what the test measured.
    """
    return OverlayPath(overlay, circuit, overlay_session, request.node.nodeid)


@pytest.fixture(scope="session")
def stream_clip(overlay_session: OverlaySession) -> streaming.Clip:
    """Name: stream_clip. Scope: session. The H.264 clip, encoded once (and cached) before any
    measurement, long enough for every client of a level to play it to the end."""
    problems = streaming.missing()
    if problems:
        pytest.fail("the streaming experiment cannot run; missing: " + "; ".join(problems), pytrace=False)
    seconds = int(overlay_session.option("overlay_stream_seconds")) + 20
    overlay_session.progress(f"encoding the H.264 clip ({overlay_session.option('overlay_stream_kbit')} kbit/s, "
                             f"{seconds} s) unless cached")
    return streaming.encode_clip(overlay_session.option("overlay_stream_kbit"), seconds)


@pytest.fixture(scope="session")
def stream_server(overlay: Overlay, stream_clip: streaming.Clip, overlay_session: OverlaySession) -> streaming.StreamServer:
    """Name: stream_server. Scope: session, one per overlay. Depends on: overlay, stream_clip.

    The RTSP server at the topology's hub (else the first circuit's source)."""
    circuit = stream_circuit(overlay_session.topology)
    server = streaming.start_server(overlay.endpoint(circuit.src), stream_clip)
    overlay_session.progress(f"{overlay.name}: RTSP server at {circuit.src} serving {server.url}")
    try:
        yield server
    finally:
        server.daemon.stop()


def stream_circuit(topo: topology.Topology) -> topology.Circuit:
    """Server at the hub, clients at the far end of the first circuit from it."""
    hub = topo.hub or topo.circuits[0].src
    for c in topo.circuits:
        if hub in (c.src, c.dst):
            return topology.Circuit(hub, c.dst if c.src == hub else c.src)
    return topology.Circuit(hub, next(s for s in topo.sites if s != hub))


@pytest.fixture
def stream_path(overlay: Overlay, stream_server: streaming.StreamServer, concurrency: int, transport: str,
                overlay_session: OverlaySession, request: pytest.FixtureRequest) -> "StreamPath":
    """Name: stream_path. Scope: function. Depends on: overlay, stream_server.

    `concurrency` clients at the far site watching the stream over `transport`."""
    return StreamPath(overlay, stream_circuit(overlay_session.topology), overlay_session, request.node.nodeid,
                      stream_server, concurrency, transport)


class OverlayPath:
    def __init__(self, overlay: Overlay, circuit: topology.Circuit, state: OverlaySession, test: str) -> None:
        self.overlay, self.circuit, self.state, self.test = overlay, circuit, state, test
        self.expected = state.topology.expected(circuit)
        self.src, self.dst = overlay.endpoints([circuit.src, circuit.dst])

    @property
    def udp_rate(self) -> float:
        offered = self.state.option("overlay_udp_rate")
        return min(offered, self.expected["rate_mbit"]) if self.expected["rate_mbit"] else offered

    # Share of packets the emulator may release over a millisecond late before a measurement
    # is invalid: latency's 99th percentile cannot hide 1 %; throughput barely feels 5 %.
    LATE_TOLERANCE = {"latency": 0.01, "tcp": 0.05, "udp": 0.05, "stream": 0.01}

    def _measure(self, kind: str, probe: Callable[[], object]):
        """Run a probe once per session, with the emulator's counters around it."""
        key = (self.overlay.name, self.circuit, kind)
        if key not in self.state.cache:
            testbed = self.overlay.testbed
            before, wire_before = testbed.emulator_counters(), self.overlay.wire_counters()
            samples = probe()
            accrued = emu.delta(before, testbed.emulator_counters())
            faults = emu.faults(accrued, self.LATE_TOLERANCE[kind.split("-")[0]])
            wire = None
            if wire_before is not None:
                after = self.overlay.wire_counters()
                hops = self.overlay.testbed.topology.path_between(self.circuit.src, self.circuit.dst)
                names = [f"{a}->{b}" for a, b in zip(hops, hops[1:])]
                wire = {n: after.get(n, 0) - wire_before.get(n, 0) for n in names}
                if not all(wire.values()):
                    faults.append(f"no {self.overlay.name} encapsulated packets crossed {', '.join(names)}: "
                                  "the probe's traffic did not go through the overlay")
            self.state.cache[key] = (samples, faults, accrued, wire)
        return self.state.cache[key]

    def _latency(self):
        samples, interval, rounds, warmup = (self.state.option(o) for o in (
            "overlay_samples", "overlay_interval", "overlay_rounds", "overlay_warmup"))
        return self._measure("latency", lambda: probes.repeated_latency(
            self.src, self.dst, samples, interval, rounds, warmup))

    def _throughput(self, protocol: str):
        duration, rounds = self.state.option("overlay_duration"), self.state.option("overlay_rounds")
        rate = self.udp_rate if protocol == "udp" else None
        return self._measure(protocol, lambda: probes.repeated_throughput(
            self.src, self.dst, protocol, duration, rate, rounds))

    def record(self, metric: str, unit: str, values: list[float], measured, extra: dict | None = None,
               round_values: list[float] | None = None) -> Record:
        samples, faults, accrued, wire = measured
        datapath = self.overlay.datapath(self.circuit.src, self.circuit.dst)
        if wire is not None:
            datapath["encapsulated_packets_on_wan"] = wire
        record = Record(
            overlay=self.overlay.name, metric=metric, src=self.circuit.src, dst=self.circuit.dst, unit=unit,
            stats=Stats.of(values, round_values), valid=not faults, invalid_reasons=list(faults), test=self.test,
            extra={"expected": self.expected, "datapath": datapath, "emulator": accrued, "tool": samples.tool,
                   **(extra or {})},
        )
        self.state.records.append(record)
        return record

    def latency(self) -> Record:
        """Round-trip times (ms) of the request/response probe."""
        measured = self._latency()
        s = measured[0]
        return self.record("latency", "ms", s.rtt_ms, measured,
                           {"sent": s.sent, "lost": s.lost, "interval_ms": s.interval_ms, "rounds": len(s.rounds_ms),
                            "warmup_discarded": s.warmup, "samples": [round(x, 4) for x in s.rtt_ms]},
                           s.round_means)

    def jitter(self) -> Record:
        """IPDV between consecutive round trips (ms), from the same run as latency()."""
        measured = self._latency()
        return self.record("jitter", "ms", measured[0].ipdv_ms, measured, {"definition": "|RTT[i] - RTT[i-1]|"})

    def tcp(self) -> Record:
        """TCP goodput (Mbit/s) per half-second interval, from src to dst."""
        measured = self._throughput("tcp")
        s = measured[0]
        return self.record("tcp_throughput", "Mbit/s", s.mbit, measured,
                           {"total_mbit": s.total_mbit, "retransmits": s.retransmits, "interval_s": s.interval_s,
                            "rounds": len(s.round_totals)}, s.round_totals)

    def udp(self) -> tuple[Record, Record]:
        """UDP received rate (Mbit/s) per interval, and the run's loss (%)."""
        measured = self._throughput("udp")
        s = measured[0]
        common = {"offered_mbit": s.offered_mbit, "packets": s.extra.get("packets"),
                  "lost_packets": s.extra.get("lost_packets"), "iperf3_jitter_ms": s.jitter_ms}
        rate = self.record("udp_throughput", "Mbit/s", s.mbit, measured,
                           {**common, "total_mbit": s.total_mbit, "interval_s": s.interval_s,
                            "rounds": len(s.round_totals)}, s.round_totals)
        loss = self.record("udp_loss", "%", [s.lost_pct], measured, common)
        return rate, loss

    def judge(self, record: Record, description: str, passed: bool, **limit: float) -> None:
        """Record a threshold and its verdict on the record (the test asserts it)."""
        record.threshold = {"description": description, **limit}
        record.verdict = "invalid" if not record.valid else "pass" if passed else "fail"

    def limits(self, metric: str) -> dict[str, float]:
        return self.state.thresholds.for_(metric, self.overlay.name, self.circuit.id)

    def gate_failures(self, record: Record) -> list[str]:
        """Limits relative to the underlay and to the compared run that this record breaks.

        Each comparison is recorded on the record, with whether it is within noise.
        """
        failures = []
        limits = self.limits(record.metric)
        stat = compare.METRICS[record.metric][0]
        now = compare.value(record.to_json(), stat)
        base = results.baseline(self.state.records, record) if record.overlay != "host" else None
        if base is not None:
            before = compare.value(base.to_json(), stat)
            record.extra["vs_host"] = {"stat": stat, "host": before, "now": now}
            if "max_over_host_pct" in limits and before and (now - before) / before * 100 > limits["max_over_host_pct"]:
                failures.append(f"{record.metric} {stat} {now:.3f} {record.unit} is more than "
                                f"{limits['max_over_host_pct']:g} % above the underlay's {before:.3f}")
            if "min_fraction_of_host" in limits and before and now < limits["min_fraction_of_host"] * before:
                failures.append(f"{record.metric} {stat} {now:.3f} {record.unit} is below "
                                f"{limits['min_fraction_of_host']:g} × the underlay's {before:.3f}")
        if self.state.saved is not None:
            gates = [g for g in self.state.option("overlay_compare_fail") if g.metric == record.metric]
            if not gates and "regression_pct" in limits:
                gates = [compare.Gate(record.metric, stat, limits["regression_pct"], True)]
            for gate in gates or [compare.Gate(record.metric, stat, math.inf, True)]:
                comparison = self.state.saved.compare(record, gate.stat)
                if comparison is None:
                    continue
                record.extra.setdefault("compared", []).append(
                    {"run": self.state.saved.path.name, "stat": gate.stat, "saved": comparison.saved,
                     "now": comparison.now, "change_pct": comparison.change_pct,
                     "within_noise": comparison.within_noise, "gate": None if math.isinf(gate.limit) else str(gate)})
                if comparison.breaks(gate):
                    failures.append(f"regression beyond {gate}: {comparison.describe()} "
                                    f"[saved run {self.state.saved.path.name}]")
        if failures:
            record.verdict = "fail"
        return failures

    def replay(self, benchmark, record: Record) -> None:
        """Hand a latency record's round trips to pytest-benchmark, as seconds per call."""
        REPLAY_CLOCK.durations = [ms / 1e3 for ms in reversed(record.extra["samples"])]
        benchmark.extra_info.update(overlay=record.overlay, circuit=record.circuit, unit="round-trip time, s",
                                    tool=record.extra["tool"])
        benchmark.pedantic(REPLAY_CLOCK.step, rounds=len(REPLAY_CLOCK.durations), iterations=1)


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
        measured = self._measure(f"stream-{self.transport}-{self.concurrency}", lambda: streaming.watch(
            self.dst, self.server, self.concurrency, seconds, self.transport))
        data = measured[0]
        reports = data.reports
        if data.cpu_pct >= streaming.CPU_BOUND_PCT:
            measured[1].append(f"clients CPU-bound: {data.cpu_pct:.0f} % of a core for {self.concurrency} clients; "
                               "their own delays would pass for network jitter")
        common = {"concurrency": self.concurrency, "transport": self.transport, "nominal_kbit": self.nominal_kbit,
                  "client_cpu_pct": data.cpu_pct, "clients": len(reports), "seconds": data.seconds,
                  "reordered": sum(r["reordered"] for r in reports), "url": self.server.url}
        ttffs = [r["ttff_ms"] for r in reports if r["ttff_ms"] is not None] or [float("nan")]
        return (
            self.record("stream_jitter", "ms", [r["jitter_ms"] for r in reports], measured,
                        {**common, "definition": "RFC 3550 interarrival jitter at the end of the run, per client"}),
            self.record("stream_bitrate", "kbit/s", [r["bitrate_kbit"] for r in reports], measured, common),
            self.record("stream_loss", "%", [r["loss_pct"] for r in reports], measured, common),
            self.record("stream_ttff", "ms", ttffs, measured, {**common, "definition": "PLAY to the first frame's last packet"}),
        )


def _options(state: OverlaySession) -> dict:
    names = ("overlay", "topology", "overlay_emulator", "overlay_samples", "overlay_interval",
             "overlay_duration", "overlay_udp_rate", "overlay_thresholds", "overlay_rounds", "overlay_warmup",
             "overlay_compare", "overlay_concurrency", "overlay_stream_kbit", "overlay_stream_seconds",
             "overlay_stream_transport")
    return {n: state.option(n) for n in names} | {"thresholds_file": state.thresholds.path}


# --- reporting ------------------------------------------------------------------------------
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(session_key, None)
    if state is None or not state.records:
        return
    terminalreporter.section("pytest-overlay results")
    for line in report.tables(state.records, state.topology).splitlines():
        terminalreporter.write_line(line)
    path = config.getoption("overlay_json")
    if path:
        terminalreporter.write_line(f"results written to {path}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Safety net: the testbed comes down even if fixture teardown never ran, then the JSON."""
    state = session.config.stash.get(session_key, None)
    if state is None:
        return
    if state.testbed is not None:
        state.testbed.down()
    if not state.records:
        return
    path = session.config.getoption("overlay_json")
    if path:
        results.write_json(path, state.run, state.records)
    name = session.config.getoption("overlay_save")
    if name:
        saved = _storage(session.config).save(name, results.document(state.run, state.records))
        state.progress(f"results saved as {saved}")
    directory = session.config.getoption("overlay_report")
    if directory:
        written = report.write_files(directory, state.records, state.topology, state.run)
        state.progress(f"report written to {directory}: {', '.join(written)}")
