"""Options and bad input, through pytest itself (in process): usage errors before anything
is collected or created, test ids and markers, and a plugin that stays out of sessions that
do not use it."""

from __future__ import annotations

import textwrap

import pytest

from pytest_overlay import kinds, options
from pytest_overlay.emulation import emulator

from ..conftest import ROOT

SUITES = str(ROOT / "suites")


# What --overlay takes, from the registry: a new kind needs no line here.
ALLOWED = ", ".join([f"all ({', '.join(kinds.in_all())})"] + [f"{group} ({', '.join(members)})"
                                                            for group, members in kinds.groups().items()]
                    + list(kinds.names()))


@pytest.mark.parametrize("option, message", [
    ("--overlay=foo", f"unknown overlay 'foo'; allowed: {ALLOWED}"),
    ("--overlay=all,weave", "overlay named twice"),
    ("--overlay=host,host", "overlay named twice"),
    ("--overlay-emulator=magic", "'magic'; allowed: auto, netem, delayline, none"),
    ("--overlay-samples=3", "'3' is out of range; allowed: 10 to 1e+06"),
    ("--overlay-duration=soon", "'soon' is not a number"),
    ("--overlay-concurrency=0,5", "distinct client counts from 1 to 500"),
    ("--overlay-compare-fail=speed:5%", "expected METRIC[:STAT]:LIMIT[%] with METRIC one of latency"),
    ("--overlay-compare-fail=latency:p95:5%", "statistic 'p95'; allowed: min, mean, p50, p99, max, total"),
])
def test_bad_option_is_a_usage_error(pytester, option, message):
    result = pytester.runpytest_inprocess(SUITES, "--collect-only", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


@pytest.mark.parametrize("args, message", [
    (["--overlay-compare-fail=latency:5%"], "--overlay-compare-fail needs a run to compare with"),
    (["--overlay-compare", "--overlay-compare-fail=latency:5%"], "no saved overlay runs in"),
    (["--topology=atlantis"], "no such topology file; bundled topologies: geant, geant-star, geant.dsl, local, pmtu, pmtu-ipv6"),
])
def test_bad_combination_is_a_usage_error(pytester, tmp_path, args, message):
    result = pytester.runpytest_inprocess(SUITES, "--collect-only", f"--benchmark-storage=file://{tmp_path}", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_bad_files_name_file_line_and_field(pytester, tmp_path):
    limits = tmp_path / "limits.yaml"
    limits.write_text("latency:\n  mean_tolerance_ms: 1\n  p99_over_rtt: 3\n")
    result = pytester.runpytest_inprocess(SUITES, "--collect-only", f"--overlay-thresholds={limits}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"{limits}:3: latency.p99_over_rtt: unknown setting; allowed: mean_tolerance_ms" in result.stderr.str()
    topo = tmp_path / "t.yaml"
    topo.write_text("name: t\nsites: {A: {}, B: {}}\nlinks:\n  - {between: [A, B], delay_ms: -5}\n")
    result = pytester.runpytest_inprocess(SUITES, "--collect-only", f"--topology={topo}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"{topo}:4: links[0].delay_ms: must be >= 0" in result.stderr.str()
    topo.write_text("name: t\nsites:\n  A: {host: {docker: 'tcp://192.0.2.1:2376'}}\n  B: {host: {ssh: u@192.0.2.2}}\n"
                    "links:\n  - {between: [A, B], delay_ms: 5}\n")
    result = pytester.runpytest_inprocess(SUITES, "--collect-only", f"--topology={topo}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"{topo}:3: sites.A.host.tls: missing: Docker over TCP needs tls" in result.stderr.str()


def test_marker_selects_a_metric(pytester):
    result = pytester.runpytest_inprocess(SUITES, "--topology=geant", "-m", "latency", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    collected = [line for line in result.stdout.lines if "::" in line]
    assert len(collected) == 6 and all("test_latency[host-" in line for line in collected)
    assert any(line.endswith("test_latency.py::test_latency[host-AMS-MIL]") for line in collected)


def test_each_overlay_is_built_once_with_the_underlay_first(pytester):
    result = pytester.runpytest_inprocess(SUITES, "--topology=geant", "--overlay=libnetwork,host",
                                          "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    overlays = [line.split("[")[1].split("-")[0] for line in result.stdout.lines if "::" in line]
    assert len(overlays) == 2 * (4 * 6 + 5)  # 4 tests x 6 circuits, 5 streaming levels
    assert overlays == sorted(overlays, key=["host", "libnetwork"].index)


def test_all_is_the_underlay_and_the_studys_overlays(pytester):
    result = pytester.runpytest_inprocess(SUITES, "--topology=local", "--overlay=all,flannel-udp", "-m", "latency",
                                          "--collect-only", "-q")
    overlays = [line.split("[")[1].rsplit("-A-B", 1)[0] for line in result.stdout.lines if "::" in line]
    assert overlays == ["host", "libnetwork", "weave", "flannel", "calico", "flannel-udp"]


def test_streaming_levels_are_test_ids(pytester):
    result = pytester.runpytest_inprocess(SUITES, "-m", "streaming", "--overlay-concurrency=1,7",
                                          "--overlay-stream-transport=udp,tcp", "--collect-only", "-q")
    ids = sorted(line.split("[")[1].rstrip("]") for line in result.stdout.lines if "::" in line)
    assert ids == ["host-tcp-1", "host-tcp-7", "host-udp-1", "host-udp-7"]


def test_help_lists_every_option_with_its_default(pytester):
    result = pytester.runpytest_inprocess("--help")
    text = " ".join(result.stdout.str().split())
    assert "pytest-overlay: overlay networks over an emulated WAN" in text
    for flag in ("--overlay=", "--topology=", "--overlay-concurrency=", "--overlay-report="):
        assert flag in text
    assert "Default: ['host']" in text and "Default: 'geant'" in text


def test_emulator_kinds_agree():
    assert options.EMULATORS == emulator.KINDS


def test_unrelated_project_is_left_alone(pytester):
    """The plugin loads everywhere it is installed; with nothing of it used, it reads no
    topology, sets no signal handler and imports nothing heavy."""
    pytester.makepyfile(test_plain=textwrap.dedent("""\
        import signal
        import sys

        def test_nothing_of_ours_was_loaded(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("pytest_overlay.plugin")
            heavy = {"docker", "matplotlib", "pytest_overlay.testbeds.emulated", "pytest_overlay.testbeds.engines", "pytest_overlay.report"}
            assert heavy.isdisjoint(sys.modules), heavy & set(sys.modules)
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.assert_outcomes(passed=1)


def test_fixtures_explain_themselves(pytester):
    result = pytester.runpytest_inprocess("--fixtures")
    text = result.stdout.str()
    for name in ("overlay_testbed", "overlay", "overlay_path", "stream_server", "stream_path"):
        assert f"{name} [" in text or f"{name} --" in text, name
    assert "Name: overlay_testbed. Scope: session. Depends on: overlay_session." in text
