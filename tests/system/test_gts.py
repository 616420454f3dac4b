"""A GÉANT Testbeds Service file measured as it is: two of the study's locations, their
link's RTT the study's own, through the suites."""

from __future__ import annotations

import json
import textwrap

import pytest

from ..conftest import QUICK, run_suites

PAIR = textwrap.dedent("""\
    type Pair {
    \tdescription = "Amsterdam and Bratislava"
    \thost { id="AMS" location="AMS" port { id="p1" } }
    \thost { id="BRA" location="BRA" port { id="p1" } }
    \tlink { id="l1" port { id="src" } port { id="dst" } }
    \tadjacency AMS.p1, l1.src
    \tadjacency BRA.p1, l1.dst
    }
    """)


def test_a_gts_testbed_is_measured_with_the_rtt_the_study_measured(tmp_path, clean_machine):
    path = tmp_path / "pair.dsl"
    path.write_text(PAIR)
    out = tmp_path / "results.json"
    run = run_suites("suites/", *QUICK, f"--topology={path}", "-m", "latency", f"--overlay-json={out}")
    run.passed()
    (record,) = [r for r in json.loads(out.read_text())["results"] if r["metric"] == "latency"]
    assert record["expected"]["rtt_ms"] == 17.7  # the study's AMS-BRA (libnetwork mean)
    assert record["expected"]["rtt_source"] == {"AMS-BRA": "the study's measurement (libnetwork mean)"}
    assert record["stats"]["mean"] == pytest.approx(17.7, abs=1.0)
