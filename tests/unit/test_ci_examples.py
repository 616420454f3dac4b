"""The CI recipes in examples/ci: they parse, run the one gate script, keep the baseline
where the next run finds it, publish the JUnit XML, and the script names only options that
exist (checked against pytest's own help with this plugin loaded)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from ..conftest import ROOT

CI = ROOT / "examples" / "ci"


def test_github_workflow_restores_gates_publishes_and_saves_on_main():
    workflow = yaml.safe_load((CI / "github-actions.yml").read_text())
    steps = workflow["jobs"]["gate"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    runs = " ".join(s.get("run", "") for s in steps)
    assert uses.index("actions/cache/restore@v4") < uses.index("actions/cache/save@v4")
    assert "examples/ci/gate.sh" in runs and "make venv" in runs
    restore = steps[uses.index("actions/cache/restore@v4")]["with"]
    save = steps[uses.index("actions/cache/save@v4")]
    assert restore["path"] == save["with"]["path"] == ".benchmarks" and "refs/heads/main" in save["if"]
    assert steps[uses.index("actions/upload-artifact@v4")]["with"]["path"] == "results/"


def test_gitlab_jobs_pull_the_baseline_and_only_main_pushes_it():
    jobs = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    template = jobs[".overlay-gate"]
    assert "examples/ci/gate.sh" in template["script"] and template["artifacts"]["reports"]["junit"] == "results/junit.xml"
    assert jobs["overlay-gate"]["cache"]["policy"] == "pull" and jobs["overlay-gate"]["variables"]["SAVE_BASELINE"] == "0"
    assert jobs["overlay-gate-main"]["cache"]["policy"] == "pull-push"
    assert jobs["overlay-gate-main"]["variables"]["SAVE_BASELINE"] == "1"
    assert {jobs[j]["cache"]["paths"][0] for j in ("overlay-gate", "overlay-gate-main")} == {".benchmarks/"}


def test_the_gate_script_names_only_options_that_exist(known_options):
    script = (CI / "gate.sh").read_text().replace("\\\n", " ")
    assert subprocess.run(["bash", "-n", str(CI / "gate.sh")]).returncode == 0
    words = [w for line in script.splitlines() if not line.lstrip().startswith("#")
             for w in shlex.split(line.replace("(", " ").replace(")", " "), comments=True)]
    flags = {w.split("=", 1)[0] for w in words if w.startswith("--")}
    assert {"--overlay-compare", "--overlay-compare-fail", "--overlay-save", "--junit-xml", "--overlay-ab",
            "--overlay-ab-fail"} <= flags
    assert flags <= known_options, flags - known_options


def gate(tmp_path: Path, env: dict[str, str], baseline: str | None = None, status: int = 0):
    """examples/ci/gate.sh in a scratch checkout, with PYTEST a stand-in that records its
    arguments and exits `status` (the script's choices are the subject, not a measurement)."""
    checkout = tmp_path / "checkout"
    (checkout / "examples" / "ci").mkdir(parents=True)
    shutil.copy(CI / "gate.sh", checkout / "examples" / "ci" / "gate.sh")
    if baseline:
        saved = checkout / ".benchmarks" / "machine" / "overlay" / baseline
        saved.parent.mkdir(parents=True)
        saved.write_text("{}")
    fake = tmp_path / "pytest"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path}/args\nexit {status}\n")
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(checkout / "examples" / "ci" / "gate.sh")], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "PYTEST": str(fake), **env})
    return done, (tmp_path / "args").read_text().splitlines()


def test_no_baseline_is_never_a_silent_pass(tmp_path):
    done, args = gate(tmp_path, {"GITHUB_ACTIONS": "true"})
    assert done.returncode == 7 and "::warning::no saved 'baseline' run" in done.stdout
    assert not [a for a in args if a.startswith(("--overlay-compare", "--overlay-save"))]


def test_a_failure_without_a_baseline_keeps_pytests_status(tmp_path):
    assert gate(tmp_path, {}, status=1)[0].returncode == 1


def test_first_baseline_makes_one_and_passes(tmp_path):
    done, args = gate(tmp_path, {"FIRST_BASELINE": "1"})
    assert done.returncode == 0 and "--overlay-save=baseline" in args and "ungated, is saved as the first" in done.stderr


def test_with_a_baseline_it_gates_against_the_newest_of_that_name(tmp_path):
    done, args = gate(tmp_path, {"FAIL": "latency:1%", "OVERLAYS": "host,weave", "TOPOLOGY": "local"},
                      baseline="0003_baseline.json")
    assert done.returncode == 0
    assert {"--overlay-compare=baseline", "--overlay-compare-fail=latency:1%", "--overlay=host,weave",
            "--topology=local"} <= set(args) and "--overlay-save=baseline" not in args


def test_ab_needs_no_baseline_and_gates_b_against_a(tmp_path):
    done, args = gate(tmp_path, {"AB": "flannel,flannel-udp", "FAIL": "tcp_throughput:3%", "MARKS": "tcp"})
    assert done.returncode == 0
    assert {"--overlay-ab=flannel,flannel-udp", "--overlay-ab-fail=tcp_throughput:3%", "-m", "tcp"} <= set(args)
    assert not [a for a in args if a.startswith("--overlay-compare")]


def test_the_tables_go_to_the_github_step_summary(tmp_path):
    summary = tmp_path / "summary.md"
    checkout = tmp_path / "checkout"
    (checkout / "results" / "report").mkdir(parents=True)
    (checkout / "results" / "report" / "report.md").write_text("| table |\n")
    gate(tmp_path, {"GITHUB_STEP_SUMMARY": str(summary), "FIRST_BASELINE": "1"})
    assert summary.read_text() == "| table |\n"
