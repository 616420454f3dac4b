"""The two documentation pages that are made, not written, so they cannot drift: the options
(docs/options.md, from the option definitions, as `pytest --help` is) and the results'
fields (docs/results-schema.md, from the record's dataclasses). `python -m pytest_overlay
docs` writes them; a unit test fails when a page differs from what this makes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from . import options
from .results import ab, records

PAGES = {"options.md": "options", "results-schema.md": "schema"}
PIPE = "\\|"  # a | inside a Markdown table's cell


class _Group:
    """Stands where pytest's option group does, keeping what each option says."""

    def __init__(self) -> None:
        self.options: list[tuple[str, object, str, str]] = []

    def addoption(self, flag: str, default=None, help: str = "", metavar: str | None = None, action=None,
                  **_) -> None:
        value = "" if action == "store_true" else f" {metavar or flag.lstrip('-').split('-')[-1].upper()}"
        self.options.append((flag + value, default, help.replace(" Default: %(default)r", ""), action or ""))


class _Parser:
    def __init__(self) -> None:
        self.group = _Group()

    def getgroup(self, *_, **__) -> _Group:
        return self.group


def _plain(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def options_page() -> str:
    parser = _Parser()
    options.addoption(parser)
    lines = ["# Options", "",
             "Made by `python -m pytest_overlay docs` from the option definitions "
             "(`pytest_overlay/options.py`); `pytest --help` shows the same. Every option goes after "
             "`pytest suites/`.", "",
             "| option | what it does | default |", "|---|---|---|"]
    for flag, default, text, _ in parser.group.options:
        cell, flag = text.replace("%%", "%").replace("|", PIPE), flag.replace("|", PIPE)
        lines.append(f"| `{flag}` | {cell} | `{_plain(default)}` |")
    return "\n".join(lines) + "\n"


def _fields(cls, docs: dict | None = None) -> list[str]:
    """A row per field: its name, its type as the class declares it, what it is."""
    docs = docs or records.FIELD_DOCS[cls.__name__]
    return [f"| `{f.name}` | `{str(f.type).replace('|', 'or')}` | {docs[f.name]} |" for f in dataclasses.fields(cls)]


def schema_page() -> str:
    lines = ["# Results: the JSON schema", "",
             "Made by `python -m pytest_overlay docs` from the record's definition "
             "(`pytest_overlay/results/records.py`).", "",
             f"A results file (`--overlay-json`, a saved run, a report's `results.json`) is one JSON document: "
             f"`schema` is `{records.SCHEMA}`, `version` is `{records.SCHEMA_VERSION}` (files of versions "
             f"{', '.join(map(str, records.READABLE_VERSIONS))} are read), `run` holds the run's metadata "
             "(machine, kernel, tools, options, the overlays' bring-up timings, the verdicts), `results` one "
             "record per measured metric, `missing` what was asked for and not measured, with why, and "
             "`comparisons` the verdicts of an A/B run (`--overlay-ab`; [docs/ab.md](ab.md)).", "",
             "## A record", "", "| field | type | what it is |", "|---|---|---|", *_fields(records.Record), "",
             "## `stats`", "", "| field | type | what it is |", "|---|---|---|", *_fields(records.Stats), "",
             "## A comparison (A/B)", "", "| field | type | what it is |", "|---|---|---|",
             *_fields(ab.ABComparison, ab.FIELD_DOCS), "",
             "## Versions", "", *[f"- {line}" for line in records.VERSIONS]]
    return "\n".join(lines) + "\n"


def write(directory: Path) -> list[Path]:
    written = []
    for name, kind in PAGES.items():
        path = directory / name
        path.write_text(options_page() if kind == "options" else schema_page())
        written.append(path)
    return written
