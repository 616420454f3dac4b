"""The CI recipes in examples/ci: they parse, run the one gate script, keep the baseline
where the next run finds it, publish the JUnit XML, and the script names only options that
exist (checked against pytest's own help with this plugin loaded)."""

from __future__ import annotations

import shlex
import subprocess

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
    assert {"--overlay-compare", "--overlay-compare-fail", "--overlay-save", "--junit-xml"} <= flags
    assert flags <= known_options, flags - known_options
