"""pytest-overlay: what a Docker overlay network costs over a high-latency WAN.

Hooks only. Options live in :mod:`.options`, the run's state in :mod:`.session`, fixtures in
:mod:`.fixtures`, measurement in :mod:`.measure`. The plugin does nothing in a session that
uses neither its options nor its fixtures: no topology is read, no signal handler is set
and no heavy module is imported.
"""

from __future__ import annotations

import pytest

from . import options, session
from .fixtures import (  # noqa: F401  (fixtures are found on the plugin module)
    ab_path,
    cpu_budget,
    fault_path,
    load_path,
    noise,
    overlay,
    overlay_ab,
    overlay_path,
    overlay_session,
    overlay_testbed,
    overlay_thresholds,
    overlay_topology,
    stream_clip,
    stream_path,
    stream_server,
)

MARKERS = {
    "latency": "round-trip latency (min / mean / p99) between two sites",
    "jitter": "variation of round-trip latency (IPDV) between two sites",
    "throughput": "TCP or UDP throughput between two sites",
    "tcp": "TCP measurements",
    "udp": "UDP measurements",
    "streaming": "RTSP streaming under concurrency",
    "faults": "WAN faults (cut, partition, flap, loss burst, reroute): outage and recovery through each overlay; "
              "runs only when selected (-m faults) or named (--overlay-faults)",
    "pmtu": "path MTU: the largest packet carried end to end, whether the sender learns the limit, and a bulk "
            "TCP transfer's outcome (full speed, slowed, black hole)",
    "load": "latency under load (flent's RRUL): RTT idle and beside TCP flows both ways, and the flows' goodput; "
            "runs only when selected (-m load)",
}
# Suites that take minutes per overlay, or ask a question of their own (path MTU): they run
# only when -m names them (or, for faults, --overlay-faults picks scenarios), never in a plain
# `pytest suites/`.
HELD_BACK = {"faults": ("WAN fault test(s)", "minutes each"), "load": ("latency-under-load test(s)", "minutes each"),
             "pmtu": ("path MTU test(s)", "a bulk transfer and a bisection each")}


def pytest_addoption(parser: pytest.Parser) -> None:
    options.addoption(parser)


class Hooks:
    """Hooks other plugins and conftest files may implement."""

    @staticmethod
    def pytest_overlay_ab_round(variant, overlay) -> None:  # noqa: F811  (the hook names it so)
        """Called before each round of an A/B run (--overlay-ab), with the round's variant
        (kinds.Variant: role, kind and settings) and its overlay, up: a place to switch
        something that is not an overlay setting between A's rounds and B's, or to inject a
        known change when measuring the method's power (benchmarks/ab.py)."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(Hooks)


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    if options.given(config) and not getattr(config.option, "help", False):
        session.get(config)  # bad input is a usage error now, before anything is collected or created


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every test that takes ``overlay_path`` over overlay × circuit, and every
    test that takes ``stream_path`` over overlay × transport × concurrency.

    Only the overlay is a session-scoped parameter, so pytest runs every test of one overlay
    before it builds the next; circuits are cheap. An A/B test (``ab_path``) is parametrized
    over the circuits alone: its run brings up both variants itself.
    """
    names = metafunc.fixturenames
    if not {"overlay_path", "stream_path", "fault_path", "load_path", "ab_path"} & set(names):
        return
    state = session.get(metafunc.config)
    if "ab_path" in names:
        metafunc.parametrize("circuit", state.topology.circuits, ids=lambda c: c.id)
        return
    metafunc.parametrize("overlay", state.overlays, indirect=True, scope="session")
    if "load_path" in names:
        metafunc.parametrize("load_level", state.topology.load.levels(),
                             ids=lambda level: f"{level[0].id}-{'links' if level[1] is None else f'q{level[1]:g}ms'}")
    elif "fault_path" in names:
        none = pytest.param(None, id="no-faults", marks=pytest.mark.skip(
            reason=f"topology {state.topology.name} declares no faults: add a faults: section (README, 'WAN faults')"))
        metafunc.parametrize("fault", state.faults or [none], ids=lambda f: f.name if f else "no-faults")
    elif "overlay_path" in names:
        metafunc.parametrize("circuit", state.topology.circuits, ids=lambda c: c.id)
        if state.option("overlay_cpu"):  # unlimited first: every budget's reference, and the underlay's only run
            metafunc.parametrize("cpu_budget", [None, *state.option("overlay_cpu")],
                                 ids=lambda cores: "cpu-unlimited" if cores is None else f"cpu{cores:g}")
        if state.option("overlay_noise"):  # alone first: every neighbour's reference
            metafunc.parametrize("noise", [None, *state.option("overlay_noise")],
                                 ids=lambda n: "noise-none" if n is None else n.id)
    else:
        metafunc.parametrize("transport", state.option("overlay_stream_transport"))
        metafunc.parametrize("concurrency", state.option("overlay_concurrency"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Before -m and -k deselect anything: note what every suite test is to measure, so a
    report can say what was asked for and not measured."""
    state = session.existing(config)
    if state is not None:
        from .results import benchmark

        benchmark.mark(items)
        _one_kind_of_run(config, items)
        state.request(items)
        for marker in HELD_BACK:
            _hold_back(config, items, marker)


def _one_kind_of_run(config: pytest.Config, items: list[pytest.Item]) -> None:
    """An A/B run (--overlay-ab) runs the A/B tests and no other suite test; any other run,
    the other way round. What is left out is said in one line."""
    ab = config.getoption("overlay_ab") is not None
    wanted = {"overlay_path", "stream_path", "fault_path", "load_path"} if ab else {"ab_path"}
    left = [item for item in items if wanted & set(getattr(item, "fixturenames", ()))]
    if not left:
        return
    config.hook.pytest_deselected(items=left)
    items[:] = [item for item in items if item not in left]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"pytest-overlay: {len(left)} per-overlay suite test(s) not run: --overlay-ab compares its two variants "
            "(suites/test_ab.py)" if ab else
            f"pytest-overlay: {len(left)} A/B test(s) not run; run them with --overlay-ab=A,B")


def _hold_back(config: pytest.Config, items: list[pytest.Item], marker: str) -> None:
    """A suite of HELD_BACK runs only when -m names it (or --overlay-faults picks fault
    scenarios); otherwise its tests are deselected, said in one line."""
    if marker in (config.getoption("markexpr") or "") or (marker == "faults" and config.getoption("overlay_faults")):
        return
    held = [item for item in items if item.get_closest_marker(marker)]
    if not held:
        return
    config.hook.pytest_deselected(items=held)
    items[:] = [item for item in items if not item.get_closest_marker(marker)]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        named = " or --overlay-faults NAME,..." if marker == "faults" else ""
        what, why = HELD_BACK[marker]
        reporter.write_line(f"pytest-overlay: {len(held)} {what} not run ({why}); run them with "
                            f"-m {marker}{named}")


def pytest_deselected(items: list[pytest.Item]) -> None:
    state = session.existing(items[0].config) if items else None
    if state is not None:
        for item in items:
            state.note(item.nodeid, "deselected")


# A test that could not be judged ends as a skip with this cause, never as a pass or a failure.
UNDECIDED = "could not judge: "


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A suite test's figures as JUnit properties; its end as a skip where it could not be
    judged (a gate inconclusive, a measurement INVALID for the machine's load); and why a
    suite test measured nothing: its overlay did not come up, was skipped, or the test
    errored."""
    report = yield
    state = session.existing(item.config)
    if state is not None and report.when == "call":
        from .results import junit

        records = [r for r in state.records if r.test == item.nodeid]
        # JUnit XML writes the properties of the teardown's report, made from the item's.
        item.user_properties.extend(junit.properties(records))
        item.user_properties.extend(junit.ab_properties(state.ab_by_test.get(item.nodeid, [])))
        why = _undecided(state, item.nodeid, records, report, call)
        if why:
            state.undecided[item.nodeid] = why
            report.outcome = "skipped"
            report.longrepr = (str(item.path), (item.location[1] or 0) + 1, f"Skipped: {UNDECIDED}{why}")
    if state is not None and item.nodeid in state.requested and report.outcome != "passed":
        overlay_name = item.callspec.params.get("overlay")
        text = str(call.excinfo.value) if call.excinfo else report.longreprtext
        first = text.strip().splitlines()[0] if text.strip() else report.outcome
        if report.skipped:
            state.note(item.nodeid, f"skipped: {first.removeprefix('Skipped: ')}")
        elif report.when == "setup" and overlay_name in state.bringup_failures:
            state.note(item.nodeid, f"bring-up failed: {first}")
        elif report.when != "teardown":
            state.note(item.nodeid, f"errored in {report.when}: {first}")
    return report


def _undecided(state: session.OverlaySession, nodeid: str, records: list, report: pytest.TestReport,
               call: pytest.CallInfo) -> str | None:
    """Why a test cannot be judged, or None: it passed but a gate was inconclusive; or it
    failed only because its measurement is INVALID for the machine's load (re-measuring
    may give a valid one), which says nothing of the overlay."""
    if report.passed and state.inconclusive.get(nodeid):
        return "; ".join(state.inconclusive[nodeid])
    if not report.failed or call.excinfo is None or "measurement invalid" not in str(call.excinfo.value):
        return None
    from .measure import validity

    invalid = [r for r in records if not r.valid]
    if not invalid or not all(validity.load_related(r.invalid_reasons) for r in invalid):
        return None
    first = invalid[0]
    return (f"{first.overlay} {first.circuit} {first.metric} INVALID for the machine's load after {first.tries} "
            f"runs: {first.invalid_reasons[0]}")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = session.existing(config)
    if state is None or not (state.records or state.requested or state.comparisons) or config.option.collectonly:
        return
    from . import report

    terminalreporter.section("pytest-overlay results")
    for line in report.tables(state.records, state.topology, state.missing(), state.comparisons,
                              state.run.get("ab")).splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(_verdicts_line(state))
    for nodeid, why in state.undecided.items():
        terminalreporter.write_line(f"  could not judge {nodeid}: {why}")
    if state.repeated:
        terminalreporter.write_line(f"{len(state.repeated)} measurement(s) topped up or taken again for the machine "
                                    "(--overlay-topup-budget, --overlay-retries): " + "; ".join(state.repeated))
    path = config.getoption("overlay_json")
    if path:
        terminalreporter.write_line(f"results written to {path}")


def _verdicts_line(state: session.OverlaySession) -> str:
    inconclusive = sum(1 for nodeid in state.undecided if nodeid in state.inconclusive)
    load = len(state.undecided) - inconclusive
    return (f"pytest-overlay verdicts: {len(state.regressed)} regressed (a gate failed), {inconclusive} inconclusive "
            f"(a gate's change within its noise), {load} INVALID for the machine's load (could not judge); "
            f"the last two end as skips, and make the run exit {state.option('overlay_undecided_status')} "
            "(--overlay-undecided-status)")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Safety net: the testbed comes down even if fixture teardown never ran; then the files,
    final (they were first written before the testbed came down)."""
    from . import session as run_state

    state = run_state.existing(session.config)
    if state is None:
        return
    if state.testbed is not None:
        state.testbed.down()
    written, failed = state.write_outputs()
    for what in written:
        state.progress(f"written: {what}")
    if failed:
        state.progress("could not write " + "; ".join(failed))
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
    elif state.undecided and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = state.option("overlay_undecided_status")
