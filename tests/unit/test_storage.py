"""Saved runs: found by number or name, and refused clearly when they are not ours."""

from __future__ import annotations

import json

import pytest

from pytest_overlay import results
from pytest_overlay.results.storage import SavedRun, Storage

from .records import record


def test_save_number_and_find(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    document = results.document({"host": "h"}, [record("latency", [1.0, 2.0])])
    first, second = storage.save("base", document), storage.save("later run", document)
    assert (first.name, second.name) == ("0001_base.json", "0002_later_run.json")
    assert storage.find(None) == second and storage.find("1") == first and storage.find("base") == first
    with pytest.raises(FileNotFoundError, match="no saved overlay run 'nope'.*saved: 0001_base, 0002_later_run"):
        storage.find("nope")
    loaded = SavedRun.load(first)
    assert loaded.get(record("latency", [5.0])).stats.mean == 1.5


@pytest.mark.parametrize("content, message", [
    ("{not json", "not readable as JSON"),
    ("[]", "not a pytest-overlay results file (schema 'list')"),
    ('{"schema": "other"}', "not a pytest-overlay results file (schema 'other')"),
    ('{"schema": "pytest-overlay/results", "version": 99, "run": {}, "results": []}', "results version 99"),
    ('{"schema": "pytest-overlay/results", "version": 2, "run": {}, "results": [{"overlay": "host"}]}',
     "a result has the wrong shape (KeyError"),
])
def test_bad_saved_run_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "0001_x.json"
    path.write_text(content)
    with pytest.raises(ValueError) as error:
        SavedRun.load(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_version_1_run_is_still_compared(tmp_path):
    v1 = {"schema": "pytest-overlay/results", "version": 1, "run": {},
          "results": [{"overlay": "host", "metric": "tcp_throughput", "src": "A", "dst": "B", "unit": "Mbit/s",
                       "stats": {"min": 1, "mean": 900, "p50": 2, "p99": 3, "max": 3, "stdev": 1, "n": 3, "ci95": 2},
                       "extra": {"total_mbit": 901.0}}]}
    path = tmp_path / "0001_old.json"
    path.write_text(json.dumps(v1))
    saved = SavedRun.load(path).get(record("tcp_throughput", [1.0]))
    assert saved.value("total") == 901.0


def test_of_two_runs_saved_under_one_name_the_newer_is_compared(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    document = results.document({"host": "h"}, [record("latency", [1.0])])
    storage.save("base", document)
    storage.save("other", document)
    newer = storage.save("base", document)
    assert newer.name == "0003_base.json" and storage.find("base") == newer
