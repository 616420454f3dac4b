"""Result records: statistics of one measurement, its validity and verdict, and the run's
metadata, saved as versioned JSON that users script against (keep the field names)."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = "pytest-overlay/results"
SCHEMA_VERSION = 1

# Two-sided 95 % Student t quantiles for small samples; 1.96 beyond.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def _t95(dof: int) -> float:
    if dof >= 40:
        return 1.96
    return _T95[max(k for k in _T95 if k <= dof)] if dof >= 1 else math.inf


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) on sorted data."""
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class Stats:
    min: float
    mean: float
    p50: float
    p99: float
    max: float
    stdev: float
    n: int
    ci95: float  # half-width of the 95 % confidence interval of the mean

    @classmethod
    def of(cls, samples: list[float], round_values: list[float] | None = None) -> "Stats":
        """Statistics of the samples. With two or more rounds, the confidence interval comes
        from the rounds' own values: samples within one round are not independent."""
        if not samples:
            raise ValueError("no samples")
        ordered = sorted(samples)
        n = len(ordered)
        stdev = statistics.stdev(ordered) if n > 1 else 0.0
        ci95 = _t95(n - 1) * stdev / math.sqrt(n) if n > 1 else math.inf
        if round_values and len(round_values) > 1:
            ci95 = _t95(len(round_values) - 1) * statistics.stdev(round_values) / math.sqrt(len(round_values))
        return cls(
            min=ordered[0], mean=statistics.fmean(ordered), p50=percentile(ordered, 50),
            p99=percentile(ordered, 99), max=ordered[-1], stdev=stdev, n=n, ci95=ci95,
        )

    def rounded(self, digits: int = 4) -> dict:
        return {k: (round(v, digits) if isinstance(v, float) and math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class Record:
    """One measured metric on one circuit through one overlay."""

    overlay: str
    metric: str
    src: str
    dst: str
    unit: str
    stats: Stats
    valid: bool = True
    invalid_reasons: list[str] = field(default_factory=list)
    threshold: dict | None = None
    verdict: str = "not judged"
    test: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def circuit(self) -> str:
        return f"{self.src}-{self.dst}"

    def to_json(self) -> dict:
        out = asdict(self)
        out["stats"] = self.stats.rounded()
        return out


def identity(record: dict) -> tuple:
    """What identifies a result across runs and overlays: overlay, metric, circuit (and
    streaming level), from its JSON form."""
    extra = record.get("extra", {})
    return (record["overlay"], record["metric"], record["src"], record["dst"],
            extra.get("concurrency"), extra.get("transport"))


def baseline(records: list[Record], record: Record, overlay: str = "host") -> Record | None:
    """The underlay's record of the same metric on the same circuit (and streaming level)."""
    wanted = identity(vars(record))[1:]
    for other in records:
        if other.overlay == overlay and identity(vars(other))[1:] == wanted:
            return other
    return None


def run_metadata(topology, testbed_description: dict, options: dict, tools: dict) -> dict:
    uname = platform.uname()
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": uname.node,
        "kernel": f"{uname.system} {uname.release}",
        "machine": uname.machine,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "topology": {"name": topology.name, "path": topology.path},
        "testbed": testbed_description,
        "options": options,
        "tools": tools,
    }


def document(run: dict, records: list[Record]) -> dict:
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "run": {**run, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "results": [r.to_json() for r in records],
    }


def write_json(path: str | Path, run: dict, records: list[Record]) -> None:
    document_ = document(run, records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document_, indent=2, default=str) + "\n")
    tmp.replace(path)
