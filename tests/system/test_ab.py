"""A/B in one run, through a real pytest run of the suites on the emulated testbed: the
rounds are paired, in the seeded order, and a change switched on for B's rounds only is
found on B's side and gated."""

from __future__ import annotations

import json
import random

import pytest

from ..conftest import QUICK, STARVED_SKIP, run_suites


def test_a_change_on_bs_rounds_only_is_found_on_bs_side_and_gated(tmp_path, clean_machine):
    """The underlay against itself, with every link's RTT 2 ms longer during B's rounds
    (benchmarks/abshift.py): latency is different with B slower by about 2 ms, and its gate
    fails; jitter, which the shift does not move, is not gated and passes whatever its verdict."""
    out = tmp_path / "ab.json"
    run = run_suites("suites/", *QUICK, "-p", "benchmarks.abshift", "-m", "latency or jitter", "-rA",
                     "--overlay-ab=host,host", "--overlay-ab-pairs=3", "--overlay-ab-seed=7",
                     "--overlay-ab-fail=latency:1%", f"--overlay-json={out}", env={"AB_SHIFT_MS": "2"})
    document = json.loads(out.read_text())
    compared = {c["metric"]: c for c in document["comparisons"]}
    latency = compared["latency"]
    if latency["n_pairs"] < 3:
        pytest.skip(f"{STARVED_SKIP}{latency['why']}")
    assert set(compared) == {"latency", "jitter"} and document["results"] == []
    assert latency["verdict"] == "different" and latency["difference"] == pytest.approx(2.0, abs=0.3)
    assert latency["a_mean"] == pytest.approx(20, abs=1) and latency["b_mean"] == pytest.approx(22, abs=1)
    assert [p["order"] for p in latency["pairs"]] == document["run"]["ab"]["orders"]
    order = random.Random(7)
    assert document["run"]["ab"]["orders"] == [order.choice(("AB", "BA")) for _ in range(3)]
    assert document["run"]["ab"]["side_by_side"] and document["run"]["ab"]["pairs"] == 3
    assert run.rc == 1, run.output
    assert "FAILED suites/test_ab.py::test_ab_latency[A-B]" in run.output
    assert "B worse than A beyond latency:mean:1%" in run.output
    assert "PASSED suites/test_ab.py::test_ab_jitter[A-B]" in run.output
    assert "A/B: A = host, B = host." in run.output and "| DIFFERENT" in run.output
