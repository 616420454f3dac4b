"""The run's state: its validated inputs, its testbed once up, its records and the saved run
it compares with. Made on first use, so a pytest session that never touches the plugin
pays nothing for it."""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .inputs import topology
from .measure.settings import Settings
from .results import Missing, Record, finite, metrics, thresholds
from .results.storage import SavedRun, Storage


@dataclass
class OverlaySession:
    config: pytest.Config
    topology: topology.Topology
    thresholds: thresholds.Thresholds
    overlays: list[str]
    testbed: object | None = None  # the EmulatedTestbed, once up
    records: list[Record] = field(default_factory=list)
    cache: dict = field(default_factory=dict)  # MeasureKey -> Measured, or a fault's records
    started: dict = field(default_factory=dict)  # MeasureKey -> (first run, its seconds), taken beside others
    run: dict = field(default_factory=dict)
    saved: SavedRun | None = None
    # What each collected suite test is to measure, and why it did not where it did not.
    requested: dict[str, list[Missing]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    bringup_failures: dict[str, str] = field(default_factory=dict)  # overlay -> why it did not come up
    saved_to: Path | None = None  # this run's own saved file, rewritten as the run ends
    repeated: list[str] = field(default_factory=list)  # measurements taken again, and why
    # Tests that could not be judged, by nodeid: a gate inconclusive, or INVALID for the machine's load.
    inconclusive: dict[str, list[str]] = field(default_factory=dict)
    undecided: dict[str, str] = field(default_factory=dict)  # nodeid -> why it ended as a skip
    regressed: set[str] = field(default_factory=set)  # nodeids a gate failed
    comparisons: list = field(default_factory=list)  # A/B verdicts (results.ab.ABComparison)
    ab_by_test: dict[str, list] = field(default_factory=dict)  # nodeid -> its A/B verdicts

    @functools.cached_property
    def settings(self) -> Settings:
        """What the measurements are asked for, read once from the options."""
        return Settings.of(self.option)

    def request(self, items: list[pytest.Item]) -> None:
        """Note what every collected suite test is to measure (before -m/-k deselect any)."""
        for item in items:
            params = getattr(getattr(item, "callspec", None), "params", {})
            if "overlay" not in params or ("fault" in params and params["fault"] is None):
                continue
            fault = params.get("fault")
            circuit, queue_ms = params.get("load_level") or (None, None)
            circuit = fault.probe if fault else circuit or params.get("circuit") or self.topology.stream_circuit()
            wanted = metrics.measured_by(item.originalname)
            if fault:  # these two exist only where the scenario makes them
                wanted = [m for m in wanted if m != "detour_rtt" and (m != "fault_goodput" or fault.kind == "loss")]
            self.requested[item.nodeid] = [
                Missing(params["overlay"], metric, circuit.src, circuit.dst, "not run", params.get("concurrency"),
                        params.get("transport"), item.nodeid, fault.name if fault else None, queue_ms,
                        params.get("cpu_budget"), params["noise"].label if params.get("noise") else None)
                for metric in wanted]

    def note(self, nodeid: str, reason: str) -> None:
        if nodeid in self.requested:
            self.reasons.setdefault(nodeid, reason)

    def missing(self) -> list[Missing]:
        """Requested measurements with no record, each with the reason its test gave."""
        measured = {r.key for r in self.records}
        out = []
        for nodeid, wanted in self.requested.items():
            for m in wanted:
                if m.key not in measured:
                    m.reason = self.reasons.get(nodeid, "not run (the session ended before it)")
                    out.append(m)
        return out

    @property
    def faults(self) -> list:
        """The fault scenarios to run: those named by --overlay-faults, else all of the topology's."""
        names = self.option("overlay_faults") or list(self.topology.faults)
        return [self.topology.faults[n] for n in names]

    def option(self, name: str):
        return self.config.getoption(name)

    def add(self, record: Record) -> Record:
        """Keep a record; a second record of the same result (a baseline measured early for a
        relative limit, then by its own test) replaces the first. With --overlay-json, the
        record is also appended at once to PATH.records.jsonl, so a killed run loses nothing
        it measured."""
        for i, other in enumerate(self.records):
            if other.key == record.key:
                self.records[i] = record
                break
        else:
            self.records.append(record)
        path = self.option("overlay_json")
        if path:
            journal = Path(f"{path}.records.jsonl")
            journal.parent.mkdir(parents=True, exist_ok=True)
            with open(journal, "a") as f:
                f.write(json.dumps(finite(record.to_json()), allow_nan=False, default=str) + "\n")
        return record

    def write_outputs(self) -> tuple[list[str], list[str]]:
        """Write the JSON, the saved run and the report (each atomically, each on its own: one
        that fails must not cost the others); return what could not be written. Called
        before the testbed comes down, so a teardown that hangs or is killed loses none of
        them, and again as the session ends, with the final outcomes. Returns what was
        written and what could not be."""
        from . import report, results

        if not (self.records or self.requested or self.comparisons) or self.config.option.collectonly:
            return [], []
        missing = self.missing()
        self.run["verdicts"] = {"regressed": sorted(self.regressed), "undecided": dict(self.undecided)}
        outputs = []
        path = self.option("overlay_json")
        if path:
            outputs.append((f"JSON {path}", lambda: results.write_json(path, self.run, self.records, missing,
                                                                       self.comparisons)))
        name = self.option("overlay_save")
        if name:
            def save() -> str:
                self.saved_to = storage(self.config).save(
                    name, results.document(self.run, self.records, missing, self.comparisons), self.saved_to)
                return f"saved run {self.saved_to}"
            outputs.append((f"saved run {name}", save))
        directory = self.option("overlay_report")
        if directory:
            outputs.append((f"report {directory}", lambda: f"report in {directory}: " + ", ".join(
                report.write_files(directory, self.records, self.topology, self.run, missing, self.comparisons))))
        written, failed = [], []
        for what, write in outputs:
            try:
                written.append(write() or what)
            except Exception as e:  # noqa: BLE001  (reported, and the other outputs still written)
                failed.append(f"{what}: {type(e).__name__}: {e}")
        return written, failed

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


_key = pytest.StashKey[OverlaySession]()


def storage(config: pytest.Config) -> Storage:
    """pytest-benchmark's storage, which overlay runs share."""
    return Storage(config.getoption("benchmark_storage", "file://./.benchmarks"))


def get(config: pytest.Config) -> OverlaySession:
    """The run's state, validated and made on first use. Bad input is a usage error."""
    state = config.stash.get(_key, None)
    if state is not None:
        return state
    which = config.getoption("overlay_compare")
    if config.getoption("overlay_compare_fail") and which is None:
        raise pytest.UsageError("--overlay-compare-fail needs a run to compare with: add --overlay-compare "
                                "(the latest saved run) or --overlay-compare=NUM|NAME")
    _check_ab(config)
    try:
        topo = topology.load(config.getoption("topology"))
        chosen = config.getoption("overlay_circuits")
        if chosen:
            topo.circuits = _circuits(topo, *chosen)
        limits = thresholds.load(config.getoption("overlay_thresholds"))
        limits.check_circuits([c.id for c in topo.circuits])
    except topology.InputError as e:
        raise pytest.UsageError(str(e)) from None
    unknown = [n for n in config.getoption("overlay_faults") or [] if n not in topo.faults]
    if unknown:
        raise pytest.UsageError(
            f"--overlay-faults: no scenario {', '.join(unknown)} in {topo.path}; "
            + (f"its scenarios: {', '.join(topo.faults)}" if topo.faults else "it has no faults: section"))
    _check_binaries(config, topo)
    state = OverlaySession(config, topo, limits, list(config.getoption("overlay")))
    if which is not None:
        try:
            state.saved = SavedRun.load(storage(config).find(which))
        except (FileNotFoundError, ValueError) as e:
            raise pytest.UsageError(f"--overlay-compare: {e}") from None
    config.stash[_key] = state
    return state


def _check_ab(config: pytest.Config) -> None:
    """--overlay-ab against the options it cannot go with, each said with what to do instead."""
    if config.getoption("overlay_ab") is None:
        for flag in ("overlay_ab_fail", "overlay_ab_margin", "overlay_ab_seed"):
            if config.getoption(flag):
                raise pytest.UsageError(f"--{flag.replace('_', '-')} is for an A/B run: add --overlay-ab=A,B")
        return
    from .kinds import BASELINE

    clashes = {"overlay": config.getoption("overlay") != [BASELINE], "overlay_cpu": config.getoption("overlay_cpu"),
               "overlay_noise": config.getoption("overlay_noise"),
               "overlay_compare": config.getoption("overlay_compare") is not None}
    given = [f"--{flag.replace('_', '-')}" for flag, clash in clashes.items() if clash]
    if given:
        raise pytest.UsageError(f"--overlay-ab measures its two variants against each other; it does not go with "
                                f"{', '.join(given)}: run those in a run of their own")


def _check_binaries(config: pytest.Config, topo: topology.Topology) -> None:
    """A variant's binary (`flannel[bin=PATH]`) must be there before anything is made. On real
    hosts the path is each host's: one missing there keeps its daemon from starting, and the
    bring-up says so."""
    import os

    from . import kinds

    if any(site.host for site in topo.sites.values()):
        return
    for variant in config.getoption("overlay_ab") or ():
        chosen = dict(variant.chosen)
        for setting in kinds.get(variant.kind).settings:
            path = chosen.get(setting.name) if setting.binary else None
            if path and not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise pytest.UsageError(f"--overlay-ab: {variant}: {path} is not an executable file on this "
                                        "machine, where the embedded testbed's sites run it")


def _circuits(topo: topology.Topology, how: str, count: int, seed: int) -> list[topology.Circuit]:
    """--overlay-circuits: every pair of sites, or a seeded sample of them (in the topology's order)."""
    import random

    sites = list(topo.sites)
    pairs = [topology.Circuit(a, b) for i, a in enumerate(sites) for b in sites[i + 1:]]
    if how == "all":
        return pairs
    if count > len(pairs):
        raise pytest.UsageError(f"--overlay-circuits=sample:{count}: {topo.name} has {len(pairs)} pairs of sites; "
                                f"give at most {len(pairs)}, or all")
    drawn = set(random.Random(f"{topo.name}:{seed}").sample(range(len(pairs)), count))
    return [c for i, c in enumerate(pairs) if i in drawn]


def existing(config: pytest.Config) -> OverlaySession | None:
    """The run's state if anything has used the plugin, else None."""
    return config.stash.get(_key, None)
