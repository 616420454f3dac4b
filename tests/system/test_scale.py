"""Past 255 links on this machine's kernel: a generated 24-site mesh (276 links) comes up with
a distinct MAC on every interface, and the links past the old limit carry traffic at their
RTT; the testbed goes with nothing left."""

from __future__ import annotations

import json
import re

from pytest_overlay import procs
from pytest_overlay.inputs import generate, topology
from pytest_overlay.testbeds.emulated import EmulatedTestbed


def test_a_mesh_past_255_links_carries_traffic_on_its_last_link(tmp_path, clean_machine):
    path = tmp_path / "mesh24.yaml"
    generate.write(generate.Spec("mesh", 24, rate_mbit=None), path, "test")
    topo = topology.load(path)
    assert len(topo.links) == 276
    with EmulatedTestbed(topo) as bed:
        shown = json.loads(procs.run(["ip", "-j", "link", "show"], bed.wan).check().stdout)
        macs = [d["address"] for d in shown if d["ifname"].startswith(bed.prefix)]
        assert len(macs) == 2 * 276 and len(set(macs)) == len(macs)
        last = topo.links[-1]
        assert last.index == 275
        ping = procs.run(["ping", "-n", "-q", "-c", "5", "-i", "0.2", bed.address(last.b)], bed.netns_of(last.a)).check()
        rtt_min = float(re.search(r"= ([\d.]+)/", ping.stdout).group(1))
        assert last.rtt_ms <= rtt_min <= last.rtt_ms + 2.0, ping.stdout


def test_circuits_that_share_no_link_are_probed_at_once_and_judged_each_on_its_own_path(tmp_path, clean_machine):
    from ..conftest import RELAXED, run_suites

    path = tmp_path / "ring6.yaml"
    generate.write(generate.Spec("ring", 6, rate_mbit=None), path, "test")
    out = tmp_path / "results.json"
    run = run_suites("suites/", f"--topology={path}", "--overlay=host", "-m", "latency", "-k", "not jitter",
                     "--overlay-samples=100", "--overlay-parallel=3", RELAXED, f"--overlay-json={out}")
    run.passed()
    records = json.loads(out.read_text())["results"]
    assert len(records) == 6
    ring = topology.load(path)
    beside = {f"{r['src']}-{r['dst']}": r["extra"].get("measured_beside", []) for r in records}
    together = [c for c, others in beside.items() if others]
    assert together, beside  # the ring's six links make two sets of three that share none
    for circuit, others in beside.items():
        a, b = circuit.split("-")
        mine = {frozenset(p) for p in zip(ring.path_between(a, b), ring.path_between(a, b)[1:])}
        for other in others:
            c, d = other.split("-")
            theirs = {frozenset(p) for p in zip(ring.path_between(c, d), ring.path_between(c, d)[1:])}
            assert not mine & theirs, (circuit, other)
    assert "at once (their paths share no link)" in run.output
