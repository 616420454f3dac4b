"""Saved runs and regression gates, in pytest-benchmark's manner.

Runs are saved beside pytest-benchmark's own (``.benchmarks/<machine id>/overlay/``, numbered
``0001_<name>.json``) in the versioned results format, and compared by number, name or as
the latest. ``--overlay-compare-fail`` takes pytest-benchmark's expression style, per
metric: ``tcp_throughput:10%`` (the metric's headline statistic may worsen by at most 10 %),
``latency:p99:2`` (the p99 may worsen by at most 2 ms). Worse means higher for times and
loss, lower for throughput.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .results import SCHEMA, Record, identity

# metric -> (headline statistic, True if a higher value is worse)
METRICS = {
    "latency": ("mean", True),
    "jitter": ("mean", True),
    "tcp_throughput": ("total", False),
    "udp_throughput": ("total", False),
    "udp_loss": ("mean", True),
    "stream_jitter": ("p99", True),
    "stream_bitrate": ("mean", False),
    "stream_loss": ("mean", True),
    "stream_ttff": ("mean", True),
}
STATS = ("min", "mean", "p50", "p99", "max", "total")


def machine_id() -> str:
    """The folder pytest-benchmark files this machine's runs under."""
    from pytest_benchmark.utils import get_machine_id

    return get_machine_id()


@dataclass(frozen=True)
class Gate:
    """One regression limit: a metric's statistic may worsen by `limit` (percent or absolute)."""

    metric: str
    stat: str
    limit: float
    percent: bool

    def __str__(self) -> str:
        return f"{self.metric}:{self.stat}:{self.limit:g}{'%' if self.percent else ''}"


def parse_gate(text: str) -> Gate:
    """METRIC[:STAT]:LIMIT[%], e.g. tcp_throughput:10% or latency:p99:2."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in METRICS:
        raise argparse.ArgumentTypeError(
            f"{text!r}; expected METRIC[:STAT]:LIMIT[%] with METRIC one of {', '.join(METRICS)}, e.g. tcp_throughput:10%")
    stat = parts[1] if len(parts) == 3 else METRICS[parts[0]][0]
    if stat not in STATS:
        raise argparse.ArgumentTypeError(f"{text!r}: statistic {stat!r}; allowed: {', '.join(STATS)}")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(%?)", parts[-1])
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: limit {parts[-1]!r} is not a non-negative number or percentage")
    return Gate(parts[0], stat, float(match.group(1)), bool(match.group(2)))


def value(record: dict, stat: str) -> float | None:
    """A statistic of a saved or live record (as JSON)."""
    if stat == "total":
        return record.get("extra", {}).get("total_mbit", record["stats"]["mean"])
    return record["stats"].get(stat)


@dataclass(frozen=True)
class Comparison:
    metric: str
    overlay: str
    circuit: str
    stat: str
    saved: float
    now: float
    noise: float  # combined 95 % half-width; a change inside it is noise
    unit: str

    @property
    def change_pct(self) -> float:
        return (self.now - self.saved) / self.saved * 100 if self.saved else math.inf

    @property
    def within_noise(self) -> bool:
        return abs(self.now - self.saved) <= self.noise

    def worse_by(self) -> float:
        """How much worse the new value is (negative: better), in the metric's unit."""
        higher_worse = METRICS[self.metric][1]
        return (self.now - self.saved) if higher_worse else (self.saved - self.now)

    def breaks(self, gate: Gate) -> bool:
        worse = self.worse_by()
        if gate.percent:
            return self.saved != 0 and worse / abs(self.saved) * 100 > gate.limit
        return worse > gate.limit

    def describe(self) -> str:
        return (f"{self.metric} {self.stat} on {self.circuit} through {self.overlay}: saved {self.saved:.3f} {self.unit}, "
                f"now {self.now:.3f} {self.unit} ({self.change_pct:+.1f} %"
                f"{', within noise' if self.within_noise else ''})")


class Storage:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(str(root).removeprefix("file://"))
        self.path = self.root / machine_id() / "overlay"

    def runs(self) -> list[Path]:
        return sorted(self.path.glob("[0-9][0-9][0-9][0-9]_*.json")) if self.path.exists() else []

    def save(self, name: str, document: dict) -> Path:
        number = int(self.runs()[-1].name[:4]) + 1 if self.runs() else 1
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / f"{number:04d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.json"
        target.write_text(json.dumps(document, indent=2, default=str) + "\n")
        return target

    def find(self, which: str | None) -> Path:
        """The latest run, or the one whose number or name is `which`."""
        runs = self.runs()
        if not runs:
            raise FileNotFoundError(f"no saved overlay runs in {self.path}; save one with --overlay-save NAME")
        if not which:
            return runs[-1]
        for run in runs:
            number, _, name = run.stem.partition("_")
            if which in (number, run.stem, name) or (which.isdigit() and int(which) == int(number)):
                return run
        raise FileNotFoundError(f"no saved overlay run {which!r} in {self.path}; saved: "
                                + ", ".join(r.stem for r in runs))


@dataclass
class SavedRun:
    path: Path
    run: dict
    results: dict[tuple[str, str, str, str], dict]

    @classmethod
    def load(cls, path: Path) -> "SavedRun":
        document = json.loads(path.read_text())
        if document.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not a pytest-overlay results file (schema {document.get('schema')!r})")
        results = {identity(r): r for r in document["results"]}
        return cls(path, document["run"], results)

    def compare(self, record: Record, stat: str) -> Comparison | None:
        live = record.to_json()
        saved = self.results.get(identity(live))
        if saved is None:
            return None
        before, now = value(saved, stat), value(live, stat)
        if before is None or now is None:
            return None
        noise = math.hypot(_finite(saved["stats"].get("ci95")), _finite(record.stats.ci95)) if stat == "mean" else 0.0
        return Comparison(record.metric, record.overlay, record.circuit, stat, before, now, noise, record.unit)

    def differences(self, run: dict) -> list[str]:
        """What differs between the machines and set-ups of two runs: comparing them needs care."""
        out = []
        for label, getter in (
            ("host", lambda r: r.get("host")), ("kernel", lambda r: r.get("kernel")),
            ("CPUs", lambda r: r.get("cpus")), ("topology", lambda r: r.get("topology", {}).get("name")),
            ("emulator", lambda r: r.get("testbed", {}).get("emulator", {}).get("kind")),
        ):
            if getter(self.run) != getter(run):
                out.append(f"{label}: saved {getter(self.run)!r}, now {getter(run)!r}")
        return out


def _finite(x) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else 0.0
