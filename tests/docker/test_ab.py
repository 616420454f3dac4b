"""A/B of one mesh at two MTUs, through a real pytest run: the two variants cannot share the
testbed, so each is brought up in its turn with its own setting, and the rounds are paired."""

from __future__ import annotations

import json

import pytest

from pytest_overlay import procs
from pytest_overlay.overlays import wireguard

from ..conftest import QUICK, run_suites

pytestmark = pytest.mark.skipif(procs.missing(wireguard.WireGuardOverlay.tools) != [],
                                reason="wireguard-go is not installed: "
                                       f"{', '.join(procs.missing(wireguard.WireGuardOverlay.tools))}")


def test_one_mesh_at_two_mtus_is_brought_up_in_turn_with_each_setting(tmp_path, clean_machine):
    out = tmp_path / "ab.json"
    run = run_suites("suites/", *QUICK, "-m", "latency", "-rA", "--overlay-ab=wireguard[mtu=1380],wireguard",
                     "--overlay-ab-pairs=2", "--overlay-ab-seed=3", f"--overlay-json={out}")
    run.passed()
    document = json.loads(out.read_text())
    ab = document["run"]["ab"]
    assert not ab["side_by_side"] and ab["pairs"] == 2 and ab["how"].startswith("alternately")
    rounds = "".join(ab["orders"])
    assert ab["bringups"] == 1 + sum(1 for this, after in zip(rounds, rounds[1:]) if this != after)
    a, b = ab["datapaths"]["A: wireguard[mtu=1380]"], ab["datapaths"]["B: wireguard"]
    assert (a["mesh_device_mtu"], a["settings"]) == (1380, {"mtu": 1380})
    assert b["mesh_device_mtu"] == wireguard.MTU and "settings" not in b
    (latency,) = document["comparisons"]
    assert (latency["a"], latency["b"], len(latency["pairs"])) == ("wireguard[mtu=1380]", "wireguard", 2)
    assert "PASSED suites/test_ab.py::test_ab_latency[A-B]" in run.output
