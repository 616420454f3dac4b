"""pytest-overlay: what a Docker overlay network costs over a high-latency WAN.

Options, markers, fixtures and the reporting hooks. Fixtures wire the layers together:
``overlay_testbed`` (session: namespaces, links, emulator) → ``overlay`` (session, one per
``--overlay`` name) → ``overlay_path`` (per test: one circuit through one overlay, with the
probes and the records they make).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from . import emulator as emu
from . import probes, report, results, thresholds, topology
from .overlays import IMPLEMENTED, KNOWN, Overlay, OverlayUnavailable
from .results import Record, Stats
from .testbed import EmulatedTestbed

MARKERS = {
    "latency": "round-trip latency (min / mean / p99) between two sites",
    "jitter": "variation of round-trip latency (IPDV) between two sites",
    "throughput": "TCP or UDP throughput between two sites",
    "tcp": "TCP measurements",
    "udp": "UDP measurements",
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
    config.stash[session_key] = OverlaySession(config, topo, limits, overlays)
    if not hasattr(config, "workerinput"):
        # SIGTERM tears down like Ctrl-C: pytest unwinds the fixtures on KeyboardInterrupt.
        config.stash[_previous_sigterm] = signal.signal(signal.SIGTERM, _raise_interrupt)


_previous_sigterm = pytest.StashKey[object]()


def pytest_unconfigure(config: pytest.Config) -> None:
    previous = config.stash.get(_previous_sigterm, None)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every test that takes ``overlay_path`` over overlay × circuit.

    Only the overlay is a session-scoped parameter, so pytest runs every test of one overlay
    before it builds the next; circuits are cheap.
    """
    if "overlay_path" not in metafunc.fixturenames:
        return
    state = metafunc.config.stash[session_key]
    metafunc.parametrize("overlay", state.overlays, indirect=True, scope="session")
    metafunc.parametrize("circuit", state.topology.circuits, ids=lambda c: c.id)


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
    problems = probes.missing_tools()
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


@dataclass
class Check:
    """A threshold and its verdict, as recorded in the results."""

    description: str
    passed: bool
    limit: dict

    def __bool__(self) -> bool:
        return self.passed


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
    LATE_TOLERANCE = {"latency": 0.01, "tcp": 0.05, "udp": 0.05}

    def _measure(self, kind: str, probe: Callable[[], object]):
        """Run a probe once per session, with the emulator's counters around it."""
        key = (self.overlay.name, self.circuit, kind)
        if key not in self.state.cache:
            testbed = self.overlay.testbed
            before, wire_before = testbed.emulator_counters(), self.overlay.wire_counters()
            samples = probe()
            accrued = emu.delta(before, testbed.emulator_counters())
            faults = emu.faults(accrued, self.LATE_TOLERANCE[kind])
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
        samples = self.state.option("overlay_samples")
        interval = self.state.option("overlay_interval")
        return self._measure("latency", lambda: probes.latency(self.src, self.dst, samples, interval))

    def _throughput(self, protocol: str):
        duration = self.state.option("overlay_duration")
        rate = self.udp_rate if protocol == "udp" else None
        return self._measure(protocol, lambda: probes.throughput(self.src, self.dst, protocol, duration, rate))

    def record(self, metric: str, unit: str, values: list[float], measured, extra: dict | None = None) -> Record:
        samples, faults, accrued, wire = measured
        datapath = self.overlay.datapath(self.circuit.src, self.circuit.dst)
        if wire is not None:
            datapath["encapsulated_packets_on_wan"] = wire
        record = Record(
            overlay=self.overlay.name, metric=metric, src=self.circuit.src, dst=self.circuit.dst, unit=unit,
            stats=Stats.of(values), valid=not faults, invalid_reasons=list(faults), test=self.test,
            extra={"expected": self.expected, "datapath": datapath, "emulator": accrued, "tool": samples.tool,
                   **(extra or {})},
        )
        self.state.records.append(record)
        return record

    def latency(self) -> Record:
        """Round-trip times (ms) of the request/response probe."""
        measured = self._latency()
        s = measured[0]
        return self.record("latency", "ms", s.rtt_ms, measured, {"sent": s.sent, "lost": s.lost, "interval_ms": s.interval_ms})

    def jitter(self) -> Record:
        """IPDV between consecutive round trips (ms), from the same run as latency()."""
        measured = self._latency()
        return self.record("jitter", "ms", measured[0].ipdv_ms, measured, {"definition": "|RTT[i] - RTT[i-1]|"})

    def tcp(self) -> Record:
        """TCP goodput (Mbit/s) per half-second interval, from src to dst."""
        measured = self._throughput("tcp")
        s = measured[0]
        return self.record("tcp_throughput", "Mbit/s", s.mbit, measured,
                           {"total_mbit": s.total_mbit, "retransmits": s.retransmits, "interval_s": s.interval_s})

    def udp(self) -> tuple[Record, Record]:
        """UDP received rate (Mbit/s) per interval, and the run's loss (%)."""
        measured = self._throughput("udp")
        s = measured[0]
        common = {"offered_mbit": s.offered_mbit, "packets": s.extra.get("packets"),
                  "lost_packets": s.extra.get("lost_packets"), "iperf3_jitter_ms": s.jitter_ms}
        rate = self.record("udp_throughput", "Mbit/s", s.mbit, measured,
                           {**common, "total_mbit": s.total_mbit, "interval_s": s.interval_s})
        loss = self.record("udp_loss", "%", [s.lost_pct], measured, common)
        return rate, loss

    def judge(self, record: Record, description: str, passed: bool, **limit: float) -> Check:
        """Record a threshold and its verdict on the record; return it for the assertion."""
        check = Check(description, passed, limit)
        record.threshold = {"description": description, **limit}
        record.verdict = "invalid" if not record.valid else "pass" if passed else "fail"
        return check

    def limits(self, metric: str) -> dict[str, float]:
        return self.state.thresholds.for_(metric, self.overlay.name, self.circuit.id)


def _options(state: OverlaySession) -> dict:
    names = ("overlay", "topology", "overlay_emulator", "overlay_samples", "overlay_interval",
             "overlay_duration", "overlay_udp_rate", "overlay_thresholds")
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
    path = session.config.getoption("overlay_json")
    if path and state.records:
        results.write_json(path, state.run, state.records)
