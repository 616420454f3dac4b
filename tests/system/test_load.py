"""Latency under load on this machine's kernel, through the underlay: a link's buffer is the
tbf queue in front of its rate limit, set for a test and restored after it, and RRUL through
a 100 Mbit/s link fills the buffer it was given and no more."""

from __future__ import annotations

import json

import pytest

from pytest_overlay import procs
from pytest_overlay.inputs import topology
from pytest_overlay.inputs.topology import Circuit
from pytest_overlay.testbeds.emulated import EmulatedTestbed

from ..conftest import RELAXED, run_suites

PAIR = """\
name: pair
sites: {A: {}, B: {}}
links:
  - {between: [A, B], rtt_ms: 20, rate_mbit: 100, queue_ms: 30}
load:
  queue_ms: [5]
"""


def tbf_waits_ms(bed: EmulatedTestbed) -> dict[str, float]:
    """How long a full tbf queue takes to drain at its rate, from what the kernel reports: its
    `limit` (bytes), or where that exceeds the burst, `lat` (µs), which is (limit - burst) / rate."""
    shown = json.loads(procs.run(["tc", "-j", "qdisc", "show"], bed.wan).check().stdout)
    out = {}
    for q in (q for q in shown if q.get("kind") == "tbf"):
        o = q["options"]
        limit = o["limit"] if "limit" in o else o["lat"] / 1e6 * o["rate"] + o["burst"]
        out[q["dev"]] = round(limit / o["rate"] * 1e3, 1)
    return out


def test_a_links_buffer_is_set_for_a_test_and_restored(tmp_path):
    path = tmp_path / "pair.yaml"
    path.write_text(PAIR)
    topo = topology.load(path)
    with EmulatedTestbed(topo) as bed:
        if bed.emulator.kind != "delayline":
            pytest.skip(f"the link emulator here is {bed.emulator.kind}: this test reads the delay line's tbf queues")
        own = tbf_waits_ms(bed)
        assert sorted(own.values()) == [30.0, 30.0]  # each way
        bed.rebuffer(topo.with_queue(Circuit("A", "B"), 5))
        assert sorted(tbf_waits_ms(bed).values()) == [5.0, 5.0]
        bed.rebuffer(topo.with_queue(Circuit("A", "B"), None))
        assert tbf_waits_ms(bed) == own


def test_rrul_through_the_underlay_fills_the_buffer_it_was_given(tmp_path, clean_machine):
    path = tmp_path / "pair.yaml"
    path.write_text(PAIR)
    out = tmp_path / "results.json"
    run = run_suites("suites/", f"--topology={path}", "--overlay=host", "-m", "load", "-k", "q5ms",
                     "--overlay-load-seconds=2", "--overlay-retries=2", RELAXED, f"--overlay-json={out}")
    run.passed()
    records = {r["metric"]: r for r in json.loads(out.read_text())["results"]}
    latency, goodput = records["load_latency"], records["load_goodput"]
    assert latency["queue_ms"] == goodput["queue_ms"] == 5.0
    assert latency["expected"]["queue_ms"] == {"A->B": 5.0, "B->A": 5.0}
    induced = latency["extra"]["induced_p50_ms"]
    assert 1.0 < induced < 5 + 5 + 3, latency["extra"]  # the 5 ms buffers filled, and nothing queued beyond them
    assert latency["stats"]["n"] > 50 and latency["extra"]["idle"]["n"] > 80  # 2 s idle, as long as the load
    assert all(mbit > 50 for mbit in goodput["extra"]["direction_mbit"].values()), goodput["extra"]
    assert goodput["extra"]["fairness"]["up"] > 0.5
    assert "Latency under load on A-B at buffers set to 5 ms" in run.output
