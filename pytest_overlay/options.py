"""Command-line options: their types (bad values are usage errors before anything is
created), their defaults already parsed, and whether a session gave any of them."""

from __future__ import annotations

import argparse
import os
from typing import Callable

import pytest

from . import kinds
from .measure import noise
from .results import ab, gates

EMULATORS = ("auto", "netem", "delayline", "none")
BUNDLED_TOPOLOGIES = ("geant", "geant-star", "local", "geant.dsl")


def parse_overlays(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one overlay name")
    known, groups = kinds.names(), {"all": kinds.in_all(), **kinds.groups()}
    for name in names:
        if name not in groups and name not in known:
            shown = ", ".join(f"{group} ({', '.join(members)})" for group, members in groups.items())
            raise argparse.ArgumentTypeError(f"unknown overlay {name!r}; allowed: {shown}, {', '.join(known)}")
    names = [member for name in names for member in groups.get(name, (name,))]
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"overlay named twice in {value!r}")
    # The underlay first: limits relative to it need its records.
    return sorted(names, key=lambda n: n != kinds.BASELINE)


def parse_emulator(value: str) -> str:
    if value not in EMULATORS:
        raise argparse.ArgumentTypeError(f"{value!r}; allowed: {', '.join(EMULATORS)}")
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


def parse_buffers(value: str) -> str:
    if value not in ("tuned", "docker"):
        raise argparse.ArgumentTypeError(f"{value!r}; allowed: tuned, docker")
    return value


def parse_cpu(value: str) -> list[float]:
    try:
        budgets = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give CPU budgets in cores separated by commas, e.g. "
                                         "0.25,0.5,1") from None
    cores = os.cpu_count() or 1
    if not budgets or any(not 0.01 <= b <= cores for b in budgets) or len(set(budgets)) != len(budgets):
        raise argparse.ArgumentTypeError(f"{value!r}: distinct budgets from 0.01 to {cores} cores (this machine's), "
                                         "e.g. 0.25,0.5,1")
    return sorted(budgets)


def parse_circuits(value: str) -> tuple[str, int, int]:
    """--overlay-circuits: all, or sample:K[:SEED] of every pair of sites."""
    if value == "all":
        return ("all", 0, 0)
    kind, _, rest = value.partition(":")
    count, _, seed = rest.partition(":")
    if kind == "sample" and count.isdigit() and int(count) >= 1 and (not seed or seed.isdigit()):
        return ("sample", int(count), int(seed or 0))
    raise argparse.ArgumentTypeError(f"{value!r}; allowed: all, or sample:K[:SEED] (e.g. sample:20)")


def parse_names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one name")
    return names


def bounded(kind: type, low: float, high: float) -> Callable[[str], float]:
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


def parse_cpu_latency(value: str) -> int | None:
    """--overlay-cpu-latency: microseconds, or off."""
    if value == "off":
        return None
    return bounded(int, 0, 2_000_000)(value)


def parse_ab(value: str) -> tuple:
    """--overlay-ab=A,B: two variants (kinds.Variant)."""
    try:
        return kinds.parse_pair(value)
    except (ValueError, kinds.KindError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_pairs(value: str) -> tuple[int, int]:
    """--overlay-ab-pairs MIN[:MAX]."""
    low, _, high = value.partition(":")
    if low.isdigit() and (not high or high.isdigit()):
        least, most = int(low), int(high or low)
        if 2 <= least <= most <= 200:
            return least, most
    raise argparse.ArgumentTypeError(f"{value!r}: give MIN[:MAX] pairs, 2 <= MIN <= MAX <= 200, e.g. 6:20")


# A run whose every test passed or was skipped, but some could not be judged: not green.
UNDECIDED_STATUS = 6

# dest -> default, already parsed (argparse passes only strings through type=)
DEFAULTS: dict[str, object] = {}


def _add(group, flag: str, default, help: str, **kwargs) -> None:
    dest = flag.lstrip("-").replace("-", "_")
    DEFAULTS[dest] = default
    group.addoption(flag, default=default, help=help + " Default: %(default)r", **kwargs)


def addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("overlay", "pytest-overlay: overlay networks over an emulated WAN")
    _add(group, "--overlay", [kinds.BASELINE], f"Overlays to measure, of: {', '.join(kinds.names())}; or all "
         "(the study's: every kind that declares itself part of it); or a group kinds declare themselves in "
         "(`python -m pytest_overlay overlays` shows each kind's). "
         f"{kinds.BASELINE} is the underlay baseline, measured first.", type=parse_overlays, metavar="NAME[,NAME...]")
    _add(group, "--topology", "geant", "Topology file, or the name of a bundled one "
         f"({', '.join(BUNDLED_TOPOLOGIES)}).", metavar="PATH|NAME")
    _add(group, "--overlay-circuits", None, "Circuits to measure instead of the topology's (its circuits:, else "
         "every linked pair): all (every pair of sites, N(N-1)/2), or sample:K[:SEED], K of them drawn at random, "
         "the same K for the same topology and seed.", type=parse_circuits, metavar="all|sample:K[:SEED]")
    _add(group, "--overlay-emulator", "auto", "WAN link emulator: auto (netem where the kernel has it, else the "
         "NFQUEUE delay line), netem, delayline, or none (links without delay).", type=parse_emulator, metavar="KIND")
    _add(group, "--overlay-samples", 500, "Request/response round trips per circuit for latency and jitter.",
         type=bounded(int, 10, 1_000_000), metavar="N")
    _add(group, "--overlay-interval", 10.0, "Milliseconds between latency requests.",
         type=bounded(float, 0.1, 10_000), metavar="MS")
    _add(group, "--overlay-duration", 5.0, "Seconds of each throughput measurement, after one second of warm-up.",
         type=bounded(float, 1, 3600), metavar="SECONDS")
    _add(group, "--overlay-udp-rate", 500.0, "Offered UDP rate in Mbit/s (capped at the circuit's rate).",
         type=bounded(float, 1, 100_000), metavar="MBIT")
    _add(group, "--overlay-thresholds", None, "Threshold file whose limits replace the bundled ones "
         "(pytest_overlay/data/thresholds.yaml).", metavar="PATH")
    _add(group, "--overlay-json", None, "Write the run's results as versioned JSON to PATH.", metavar="PATH")
    _add(group, "--overlay-rounds", 1, "Repeat every probe N times; with N >= 2 the 95 %% confidence intervals "
         "come from the rounds (with one, a throughput's from 1 s batch means of its intervals).", type=bounded(int, 1, 1000), metavar="N")
    _add(group, "--overlay-topup-budget", 3.0, "Latency and throughput go on until they hold the clean samples "
         "asked for (round trips; whole rounds of a flow): a run the machine spoiled is replaced by another, for up "
         "to FACTOR times the measurement's nominal time; only one still short then is INVALID. The record says "
         "how many samples were replaced, in how many runs, and why.", type=bounded(float, 1, 100), metavar="FACTOR")
    _add(group, "--overlay-cpu-latency", 0, "While a probe runs, ask (PM QoS, /dev/cpu_dma_latency) that no CPU "
         "take longer than US microseconds to wake, so that a CPU waking from a deep idle state is not part of a "
         "round trip; off makes no request.", type=parse_cpu_latency, metavar="US|off")
    _add(group, "--overlay-retries", 2, "Measure again, up to N times, a streaming level, a WAN fault or a load "
         "test (each judged whole) that is invalid only because the machine was busy (the emulator touched too "
         "many samples, clients CPU-bound); the record says how many tries it took, and the summary how many were "
         "repeated and why.", type=bounded(int, 0, 10), metavar="N")
    _add(group, "--overlay-parallel", 1, "Probe the latency of up to N circuits at once where their paths share no "
         "link (each judged on its own path's emulator windows); 1 probes one circuit at a time.",
         type=bounded(int, 1, 64), metavar="N")
    _add(group, "--overlay-warmup", 10, "Round trips discarded at the start of every latency round.",
         type=bounded(int, 0, 100_000), metavar="N")
    _add(group, "--overlay-save", None, "Save the results in pytest-benchmark's storage (--benchmark-storage), "
         "under <machine>/overlay/NNNN_NAME.json.", metavar="NAME")
    _add(group, "--overlay-compare", None, "Compare with a saved run (the latest if none is named).",
         nargs="?", const="", metavar="NUM|NAME")
    _add(group, "--overlay-compare-fail", [], "Fail a test whose metric worsened beyond LIMIT against the compared "
         "run, e.g. tcp_throughput:10%% or latency:p99:2 (ms). Repeatable.", type=gates.parse_gate,
         action="append", metavar="METRIC[:STAT]:LIMIT[%]")
    _add(group, "--overlay-compare-strict", False, "Fail a test whose gated change is beyond its limit but within "
         "the comparison's noise (inconclusive); without it, such a test is skipped with the change named.",
         action="store_true")
    _add(group, "--overlay-undecided-status", UNDECIDED_STATUS, "Exit status of a run with no failure where some "
         "test could not be judged (a gate inconclusive, a measurement INVALID for the machine's load, a limit "
         "relative to an INVALID underlay); pytest's own status otherwise. The summary names each such test and "
         "why; 0 keeps such a run green.", type=bounded(int, 0, 255), metavar="STATUS")
    _add(group, "--overlay-ab", None, "Compare two variants in one run, instead of --overlay: each an overlay kind, "
         "or a kind with settings it declares (KIND[NAME=VALUE,...]; `python -m pytest_overlay overlays` lists "
         "them), e.g. flannel,flannel-udp or wireguard[mtu=1380],wireguard. Both are measured on one testbed in "
         "interleaved rounds on each circuit (A B or B A, in random order), and every metric gets a paired verdict: "
         "same, different or unknown (suites/test_ab.py; docs/ab.md).", type=parse_ab, metavar="A,B")
    _add(group, "--overlay-ab-pairs", (6, 20), "Pairs of A and B rounds taken at least, and at most while a "
         "verdict is unknown.", type=parse_pairs, metavar="MIN[:MAX]")
    _add(group, "--overlay-ab-margin", [], "The change too small to matter, for a verdict of same (default: the "
         "metric's own, e.g. latency:0.25%%). Repeatable.", type=ab.parse_margin, action="append",
         metavar="METRIC:MARGIN[%]")
    _add(group, "--overlay-ab-fail", [], "Fail a test where B is worse than A beyond LIMIT and the verdict is "
         "different; unknown is undecided. E.g. latency:0.5%%. Repeatable.", type=ab.parse_fail, action="append",
         metavar="METRIC:LIMIT[%]")
    _add(group, "--overlay-ab-seed", None, "Seed of the rounds' random order (default: drawn, and recorded).",
         type=bounded(int, 0, 2**32 - 1), metavar="N")
    _add(group, "--overlay-concurrency", [1, 5, 10, 25, 50], "Concurrent RTSP clients per streaming level.",
         type=parse_concurrency, metavar="N,N,...")
    _add(group, "--overlay-stream-kbit", 1000, "Bitrate of the H.264 clip the RTSP server streams, kbit/s.",
         type=bounded(int, 50, 50_000), metavar="KBIT")
    _add(group, "--overlay-stream-seconds", 10.0, "Seconds each streaming level is measured.",
         type=bounded(float, 2, 3600), metavar="SECONDS")
    _add(group, "--overlay-stream-transport", ["udp"], "RTP over UDP, or interleaved in the RTSP connection over "
         "TCP.", type=parse_transports, metavar="udp|tcp|udp,tcp")
    _add(group, "--overlay-container-buffers", "tuned", "TCP buffers inside measurement containers: tuned (the "
         "site's, sized for the bandwidth-delay product) or docker (Docker's defaults, as the study ran).",
         type=parse_buffers, metavar="tuned|docker")
    _add(group, "--overlay-converge", None, "Seconds a container overlay has, once up, until every container "
         "answers every other over it; beyond, its bring-up fails (and is tried again). None: 30 + 100 x the "
         "topology's worst RTT.", type=bounded(float, 1, 3600), metavar="S")
    _add(group, "--overlay-faults", None, "WAN fault scenarios of the topology's faults: section to run (the "
         "faults suite runs only when named here or selected with -m faults).", type=parse_names,
         metavar="NAME[,NAME...]")
    _add(group, "--overlay-fault-bound", 120.0, "Seconds after a fault heals within which recovery must be seen; "
         "beyond, it is reported as censored (> bound).", type=bounded(float, 1, 3600), metavar="SECONDS")
    _add(group, "--overlay-load-seconds", 20.0, "Seconds of TCP load in the latency-under-load suite (-m load), "
         "after 2 s of warm-up and 5 s of idle probing.", type=bounded(float, 1, 3600), metavar="SECONDS")
    _add(group, "--overlay-load-flows", 4, "TCP flows each way in the latency-under-load suite (flent's RRUL: 4).",
         type=bounded(int, 1, 64), metavar="N")
    _add(group, "--overlay-cpu", None, "CPU budgets in cores (e.g. 0.25,0.5,1): the latency and throughput tests run "
         "at each, with every site's overlay (its containers and daemons, not the kernel's datapath) held to it.",
         type=parse_cpu, metavar="CORES[,CORES...]")
    _add(group, "--overlay-noise", None, "Noisy neighbours (stress-ng): the latency and throughput tests run without "
         "one and beside each, a cpu or memory-bandwidth hog at every site the path crosses, held to CORES "
         f"(default {noise.DEFAULT_CORES:g}) per site, e.g. cpu,memory:0.25.", type=noise.parse,
         metavar="KIND[:CORES][,...]")
    _add(group, "--overlay-report", None, "Write Markdown, CSV, JSON, plots and an HTML page of the results to DIR.",
         metavar="DIR")


def given(config: pytest.Config) -> list[str]:
    """The options of this plugin that the session set to something other than the default."""
    return [dest for dest, default in DEFAULTS.items() if config.getoption(dest, default) != default]


def recorded(config: pytest.Config) -> dict:
    """Every option's value, for the run's metadata."""
    def plain(value):
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value.label if isinstance(value, noise.Noise) else value

    gated = ("overlay_compare_fail", "overlay_ab_fail")
    return {dest: plain(config.getoption(dest)) for dest in DEFAULTS if dest not in (*gated, "overlay_ab")} | {
        dest: [str(g) for g in config.getoption(dest)] for dest in gated} | {
        "overlay_ab": [str(v) for v in config.getoption("overlay_ab") or ()]}
