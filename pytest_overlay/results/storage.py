"""Saved runs, in pytest-benchmark's manner.

Runs are saved beside pytest-benchmark's own (``.benchmarks/<machine id>/overlay/``, numbered
``0001_<name>.json``) in the versioned results format, and found by number, name or as the
latest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .records import READABLE_VERSIONS, SCHEMA, Record, dumps, write_atomic


def machine_id() -> str:
    """The folder pytest-benchmark files this machine's runs under."""
    from pytest_benchmark.utils import get_machine_id

    return get_machine_id()


class Storage:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(str(root).removeprefix("file://"))
        self.path = self.root / machine_id() / "overlay"

    def runs(self) -> list[Path]:
        return sorted(self.path.glob("[0-9][0-9][0-9][0-9]_*.json")) if self.path.exists() else []

    def save(self, name: str, document: dict, target: Path | None = None) -> Path:
        """Save as the next numbered run, or over `target` (the same run saved again, final)."""
        if target is None:
            runs = self.runs()
            number = int(runs[-1].name[:4]) + 1 if runs else 1
            target = self.path / f"{number:04d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.json"
        return write_atomic(target, dumps(document))

    def find(self, which: str | None) -> Path:
        """The latest run, or the one whose number or name is `which` (of several saved under
        one name, the newest: a branch's baseline saved again replaces the one compared)."""
        runs = self.runs()
        if not runs:
            raise FileNotFoundError(f"no saved overlay runs in {self.path}; save one with --overlay-save NAME")
        if not which:
            return runs[-1]
        for run in reversed(runs):
            number, _, name = run.stem.partition("_")
            if which in (number, run.stem, name) or (which.isdigit() and int(which) == int(number)):
                return run
        raise FileNotFoundError(f"no saved overlay run {which!r} in {self.path}; saved: "
                                + ", ".join(r.stem for r in runs))


@dataclass
class SavedRun:
    path: Path
    run: dict
    results: dict[tuple, Record]

    @classmethod
    def load(cls, path: Path) -> "SavedRun":
        """A saved run; ValueError, naming the file and what is wrong, for anything else."""
        try:
            document = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path}: not readable as JSON ({e})") from None
        if not isinstance(document, dict) or document.get("schema") != SCHEMA:
            schema = document.get("schema") if isinstance(document, dict) else type(document).__name__
            raise ValueError(f"{path}: not a pytest-overlay results file (schema {schema!r})")
        version = document.get("version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"{path}: results version {version!r}; this pytest-overlay reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
        try:
            records = [Record.from_json(r, version) for r in document["results"]]
            run = dict(document["run"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: a result has the wrong shape ({type(e).__name__}: {e})") from None
        return cls(path, run, {r.key: r for r in records})

    def get(self, record: Record) -> Record | None:
        return self.results.get(record.key)

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
