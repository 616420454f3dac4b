"""Fixtures that wire the layers together.

``overlay_testbed`` (session: namespaces, links, emulator) → ``overlay`` (session, one per
``--overlay`` name) → ``overlay_path`` (per test, cheap: one circuit through one overlay,
with the probes and the records they make). The streaming experiment adds ``stream_clip``
(session), ``stream_server`` (session, one per overlay) and ``stream_path`` (per test); the
faults suite ``fault_path`` and the latency-under-load suite ``load_path`` (per test).
Heavy layers are imported inside the fixtures that need them.
"""

from __future__ import annotations

import os
import signal
import warnings
from typing import TYPE_CHECKING, Callable

import pytest

from . import kinds, options, procs, results, session
from .inputs import topology
from .measure import noise as noise_tools
from .measure.abrun import ABPath, ABRun
from .measure.faultpath import FaultPath
from .measure.loadpath import LoadPath
from .measure.noise import Noise
from .measure.path import OverlayPath
from .measure.pmtu import path_mtu  # noqa: F401  (its maker joins the paths' makers)
from .measure.streampath import StreamPath
from .session import OverlaySession

if TYPE_CHECKING:
    from .overlays import Overlay


@pytest.fixture(scope="session")
def overlay_session(pytestconfig: pytest.Config) -> OverlaySession:
    """Name: overlay_session. Scope: session. Depends on: nothing.

    The run's validated topology, thresholds, records and the saved run it compares with."""
    return session.get(pytestconfig)


@pytest.fixture(scope="session")
def overlay_topology(overlay_session: OverlaySession) -> topology.Topology:
    """Name: overlay_topology. Scope: session. Depends on: overlay_session.

    The validated topology of --topology (a file, or a bundled one by name)."""
    return overlay_session.topology


@pytest.fixture(scope="session")
def overlay_thresholds(overlay_session: OverlaySession):
    """Name: overlay_thresholds. Scope: session. Depends on: overlay_session.

    The limits of --overlay-thresholds merged over the bundled ones."""
    return overlay_session.thresholds


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def overlay_testbed(overlay_session: OverlaySession):
    """Name: overlay_testbed. Scope: session. Depends on: overlay_session.

    The emulated WAN: one namespace per site, links through the emulator; or, when the
    topology's sites name real hosts, those hosts (remote.RemoteTestbed). Checks every tool,
    privilege and host prerequisite before it creates anything, and removes all it made
    when the session ends. While it is up, SIGTERM tears down like Ctrl-C.
    """
    from .measure import machine, probes
    from .testbeds.emulated import TOOLS, EmulatedTestbed

    machine.monitor()  # steal and CPU pressure from now on, for every record's window
    topology = overlay_session.topology
    if any(site.host for site in topology.sites.values()):
        from .testbeds.real.remote import RemoteTestbed

        bed = RemoteTestbed(topology, progress=overlay_session.progress,
                            needs=kinds.host_needs(overlay_session.overlays))
    else:
        problems = procs.missing({**TOOLS, **probes.traffic_tools()})
        if overlay_session.option("overlay_noise"):
            problems += procs.missing(noise_tools.TOOLS)
        if os.geteuid() != 0:
            problems.append("root (network namespaces and NFQUEUE need it)")
        if problems:
            pytest.fail("pytest-overlay cannot build the testbed; missing: " + "; ".join(problems), pytrace=False)
        bed = EmulatedTestbed(topology, overlay_session.option("overlay_emulator"), progress=overlay_session.progress)
    overlay_session.testbed = bed
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # pytest unwinds fixtures on KeyboardInterrupt
    try:
        try:
            bed.__enter__()
        except Exception as e:  # noqa: BLE001
            if bed.bringup_failure_is_input:  # a host not ready: say which, what and how to fix, and stop
                pytest.exit(str(e), returncode=pytest.ExitCode.USAGE_ERROR)
            raise
        try:
            overlay_session.progress(f"testbed up in {bed.timings['up_s']:.2f} s")
            overlay_session.run = results.run_metadata(
                overlay_session.topology, bed.describe(),
                options.recorded(overlay_session.config) | {"thresholds_file": overlay_session.thresholds.path},
                probes.versions())
            saved = overlay_session.saved
            if saved is not None:
                overlay_session.progress(f"comparing with {saved.path.name}")
                differences = saved.differences(overlay_session.run)
                if differences:
                    warnings.warn(pytest.PytestWarning(
                        f"comparing with {saved.path.name}, a run on a different set-up ("
                        + "; ".join(differences) + "): differences may not be the network's"))
            try:
                yield bed
            finally:
                written, failed = overlay_session.write_outputs()
                if written:
                    overlay_session.progress("written before teardown: " + "; ".join(written))
                if failed:
                    overlay_session.progress("before teardown, could not write " + "; ".join(failed))
        finally:
            bed.__exit__(None, None, None)
        overlay_session.progress(f"testbed {bed.run_id} down in {bed.timings['down_s']:.2f} s")
        overlay_session.run["testbed"]["timings"] = dict(bed.timings)
    finally:
        signal.signal(signal.SIGTERM, previous)


BRINGUP_ATTEMPTS = 2  # an overlay that fails to come up is torn down and tried once more


@pytest.fixture(scope="session")
def overlay(request: pytest.FixtureRequest, overlay_testbed, overlay_session: OverlaySession):
    """Name: overlay. Scope: session, one instance per --overlay name. Depends on: overlay_testbed.

    The overlay network across every site, with its endpoints; torn down after its tests.
    Skipped, with the overlay's own reason, where this machine cannot run it. A bring-up
    that fails (the environment, not a measurement) is torn down and retried once, then
    fails that overlay's tests with the overlay, the cause and the daemons' last log lines.
    """
    from . import overlays

    name = request.param
    unsupported = overlays.get(name).remote_unsupported
    if not overlay_testbed.own_sites and unsupported:
        pytest.skip(f"{name} across real hosts is not supported in this version: {unsupported}")
    if overlay_testbed.topology.families[0] == 6 and overlays.get(name).ipv6_unsupported:
        pytest.skip(f"{name} over an IPv6 underlay: {overlays.get(name).ipv6_unsupported}")
    instance = bring_up(name, lambda: overlays.get(name)(overlay_testbed, **_overlay_options(overlay_session)),
                        overlay_session)
    try:
        yield instance
    finally:
        instance.down()
        overlay_session.run.setdefault("overlays", {})[instance.name] = {
            "description": instance.description, "timings": dict(instance.timings)}


def _overlay_options(state: OverlaySession) -> dict:
    return {"container_buffers": state.option("overlay_container_buffers"),
            "converge_s": state.option("overlay_converge")}


def bring_up(name: str, make: Callable[[], Overlay], state: OverlaySession) -> Overlay:
    """An overlay made by `make`, up. Skips, with the overlay's own reason, where this
    machine cannot run it; a bring-up that fails (the environment, not a measurement) is torn
    down and retried once, then fails the tests with the cause and the daemons' last lines."""
    from . import overlays

    for attempt in range(1, BRINGUP_ATTEMPTS + 1):
        instance = make()
        try:
            instance.up()  # tears down what it made if it fails
            break
        except overlays.OverlayUnavailable as e:
            pytest.skip(str(e))
        except Exception as e:  # noqa: BLE001  (any failure of the environment: reported, retried once)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if attempt < BRINGUP_ATTEMPTS:
                state.progress(f"{name}: bring-up attempt {attempt} failed ({first}); tearing down and trying again")
                continue
            state.bringup_failures[name] = (f"{name} did not come up ({BRINGUP_ATTEMPTS} attempts); the last one "
                                            f"failed with {type(e).__name__}: {e}")
            pytest.fail(state.bringup_failures[name], pytrace=False)
    instance.timings["attempts"] = attempt
    return instance


@pytest.fixture(scope="session")
def overlay_ab(overlay_testbed, overlay_session: OverlaySession, request: pytest.FixtureRequest) -> ABRun:
    """Name: overlay_ab. Scope: session. Depends on: overlay_testbed.

    The A/B run of --overlay-ab: its two variants brought up on the testbed (alternately,
    or beside the underlay) and measured in interleaved pairs of rounds, at the first test
    that asks, for every metric and circuit the selected A/B tests compare. Skipped, with
    the variant's own reason, where one cannot run here."""
    from .measure.abrun import ABRun, ab_test_metrics

    wanted: dict[topology.Circuit, list[str]] = {}
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "ab_path" in getattr(item, "fixturenames", ()) and "circuit" in params:
            chosen = wanted.setdefault(params["circuit"], [])
            chosen += [m for m in ab_test_metrics(item.originalname) if m not in chosen]
    variants = overlay_session.settings.ab
    for variant in variants:
        unsupported = kinds.get(variant.kind).remote_unsupported
        if not overlay_testbed.own_sites and unsupported:
            pytest.skip(f"{variant.kind} across real hosts is not supported in this version: {unsupported}")

    def up(variant: kinds.Variant):
        overlay_session.progress(f"A/B: bringing up {variant.label}")
        instance = bring_up(variant.label, lambda: variant.make(overlay_testbed, **_overlay_options(overlay_session)),
                            overlay_session)
        overlay_session.run.setdefault("ab_bringups", []).append(
            {"variant": variant.label, "timings": dict(instance.timings)})
        return instance

    hook = request.config.hook.pytest_overlay_ab_round
    return ABRun(overlay_session, variants, wanted, up, lambda variant, overlay: hook(variant=variant, overlay=overlay))


@pytest.fixture
def ab_path(overlay_ab, circuit: topology.Circuit, overlay_session: OverlaySession,
            request: pytest.FixtureRequest) -> ABPath:
    """Name: ab_path. Scope: function (cheap). Depends on: overlay_ab, circuit.

    One A/B test on one circuit: its metrics' verdicts, B against A, and its gates."""
    return ABPath(overlay_ab, circuit, overlay_session, request.node.nodeid, request.node.originalname)


@pytest.fixture
def cpu_budget() -> float | None:
    """Name: cpu_budget. Scope: function. Depends on: nothing.

    The CPU budget (cores) of a latency or throughput test: None, unless --overlay-cpu
    parametrizes the tests over its budgets."""
    return None


@pytest.fixture
def noise() -> Noise | None:
    """Name: noise. Scope: function. Depends on: nothing.

    The noisy neighbour of a latency or throughput test: None, unless --overlay-noise
    parametrizes the tests over its neighbours."""
    return None


@pytest.fixture
def overlay_path(overlay, circuit: topology.Circuit, cpu_budget: float | None, noise: Noise | None,
                 overlay_session: OverlaySession, request: pytest.FixtureRequest) -> OverlayPath:
    """Name: overlay_path. Scope: function (cheap). Depends on: overlay, circuit, cpu_budget, noise.

    One circuit through one overlay: runs the probes (each at most once per session, so
    latency and jitter share one run) and records what the test measured. At a CPU budget,
    every site's overlay is held to it while the probes run; skipped, saying why, where
    nothing can be held (the underlay, real hosts, no cgroup CPU controller). Beside a
    noisy neighbour, its hogs run while the probes do (the underlay's too: it shows what
    the neighbour costs the emulated WAN itself).
    """
    if cpu_budget is not None:
        why = overlay.testbed.budgets_unavailable() or (
            "the underlay runs no overlay process: a CPU budget caps nothing (its unbudgeted record is every "
            "budget's baseline)" if overlay.name == kinds.BASELINE else "")
        if why:
            pytest.skip(f"CPU budget {cpu_budget:g} cores: {why}")
    if noise is not None:
        why = overlay.testbed.budgets_unavailable()
        if why:
            pytest.skip(f"neighbour {noise.label}: {why}")
    return OverlayPath(overlay, circuit, overlay_session, request.node.nodeid, cpu=cpu_budget, noise=noise)


@pytest.fixture(scope="session")
def stream_clip(overlay_session: OverlaySession):
    """Name: stream_clip. Scope: session. Depends on: overlay_session.

    The H.264 clip, encoded once (and cached) before any measurement, long enough for every
    client of a level to play it to the end."""
    from .measure import streaming

    problems = streaming.missing()
    if problems:
        pytest.fail("the streaming experiment cannot run; missing: " + "; ".join(problems), pytrace=False)
    seconds = int(overlay_session.option("overlay_stream_seconds")) + 20
    overlay_session.progress(f"encoding the H.264 clip ({overlay_session.option('overlay_stream_kbit')} kbit/s, "
                             f"{seconds} s) unless cached")
    return streaming.encode_clip(overlay_session.option("overlay_stream_kbit"), seconds)


@pytest.fixture(scope="session")
def stream_server(overlay, stream_clip, overlay_session: OverlaySession):
    """Name: stream_server. Scope: session, one per overlay. Depends on: overlay, stream_clip.

    The RTSP server at the topology's hub (else the first circuit's source)."""
    from .measure import streaming

    circuit = overlay_session.topology.stream_circuit()
    server = streaming.start_server(overlay.endpoint(circuit.src), stream_clip)
    overlay_session.progress(f"{overlay.name}: RTSP server at {circuit.src} serving {server.url}")
    try:
        yield server
    finally:
        server.daemon.stop()


@pytest.fixture
def stream_path(overlay, stream_server, concurrency: int, transport: str, overlay_session: OverlaySession,
                request: pytest.FixtureRequest) -> StreamPath:
    """Name: stream_path. Scope: function (cheap). Depends on: overlay, stream_server.

    `concurrency` clients at the far site watching the stream over `transport`."""
    return StreamPath(overlay, overlay_session.topology.stream_circuit(), overlay_session, request.node.nodeid,
                      stream_server, concurrency, transport)


@pytest.fixture
def fault_path(overlay, fault: topology.Fault, overlay_session: OverlaySession,
               request: pytest.FixtureRequest) -> FaultPath:
    """Name: fault_path. Scope: function. Depends on: overlay, fault (a scenario of the
    topology's faults: section).

    One WAN fault scenario through one overlay, applied by the link emulator (on real hosts:
    firewall rules between them, and netem where they emulate) while probes run through the
    overlay; skipped, saying why, where the testbed cannot apply this fault."""
    why = overlay.testbed.fault_unsupported(fault.faulty())
    if why:
        pytest.skip(f"fault {fault.name} cannot be applied on the {overlay.testbed.backend} testbed: {why}")
    return FaultPath(overlay, fault, overlay_session, request.node.nodeid)


@pytest.fixture
def load_path(overlay, load_level: tuple[topology.Circuit, float | None], overlay_session: OverlaySession,
              request: pytest.FixtureRequest) -> LoadPath:
    """Name: load_path. Scope: function. Depends on: overlay, load_level (a circuit of the
    topology's load: section, and the link buffer to run it at, None for the links' own).

    Latency under load on one circuit through one overlay; skipped, saying why, where the
    testbed cannot set the link buffer asked for."""
    circuit, queue_ms = load_level
    why = overlay.testbed.buffers_unavailable() if queue_ms is not None else ""
    if why:
        pytest.skip(f"a link buffer of {queue_ms:g} ms needs the embedded testbed's link emulator: {why}")
    return LoadPath(overlay, circuit, queue_ms, overlay_session, request.node.nodeid)
