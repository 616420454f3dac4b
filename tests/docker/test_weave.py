"""Weave Net's real router at every site, containers attached by Weave's own CNI plugin:
measured beside the underlay, proven to cross the WAN in Weave's encapsulation."""

from __future__ import annotations

import json
import os

import pytest

from ..conftest import QUICK, ROOT, run_suites

# Sleeve forwards in userspace: on two shared cores it adds about a millisecond of RTT and
# carries tens of Mbit/s, not the link's 1000. These tests check Weave's plumbing; the
# suites' own limits judge its speed.
SLEEVE_LIMITS = """\
overrides:
  - {metric: tcp_throughput, overlay: weave, min_fraction_of_rate: 0.01}
  - {metric: udp_throughput, overlay: weave, min_fraction_of_offered: 0.3, max_loss_pct: 60}
  - {metric: latency, overlay: weave, mean_tolerance_ms: 5}
  - {metric: latency, overlay: weave-encrypted, mean_tolerance_ms: 5}
"""


@pytest.fixture
def sleeve_limits(tmp_path) -> str:
    limits = tmp_path / "limits.yaml"
    limits.write_text((ROOT / "tests" / "relaxed-thresholds.yaml").read_text() + SLEEVE_LIMITS)
    return f"--overlay-thresholds={limits}"


def test_weave_and_its_encrypted_sleeve_next_to_the_underlay(tmp_path, sleeve_limits, clean_machine):
    """Weave (every probe) and weave-encrypted (latency) in one run: sleeve over UDP 6783, the
    mesh established, packets on the WAN in Weave's encapsulation; with a password, sleeve's
    NaCl reported by Weave itself, and the password in no record."""
    out = tmp_path / "results.json"
    run = run_suites("suites/", *QUICK, "--overlay=host,weave,weave-encrypted", "-m", "latency or jitter or throughput",
                     "-k", "not (weave-encrypted and (jitter or throughput))", "--overlay-udp-rate=40", sleeve_limits,
                     f"--overlay-json={out}")
    run.passed()
    assert "weave: mesh established" in run.output
    results = json.loads(out.read_text())["results"]
    weave = [r for r in results if r["overlay"] == "weave"]
    assert {r["metric"] for r in weave} == {"latency", "jitter", "tcp_throughput", "udp_throughput", "udp_loss"}
    for record in weave:
        path = record["datapath"]
        # This kernel has no openvswitch: Weave itself reports sleeve, over UDP 6783.
        assert path["weave_datapath"] in ("sleeve", "fastdp")
        assert path["udp_port"] == (6783 if path["weave_datapath"] == "sleeve" else 6784)
        assert path["encapsulated_packets_on_wan"]["A->B"] > 0
        assert [c["state"] for c in path["peer_connections"]["A"]] == ["established"]
        assert path["encrypted"] is False and path["encryption_reported"] is False
        # Sleeve's bridge is 65535 by Weave's design; its connections find the path MTU.
        assert path["mtu"] in (65535, 1376)
        assert all(c["mtu"] < 1500 for c in path["peer_connections"]["A"])
    latency = next(r for r in weave if r["metric"] == "latency")
    assert latency["stats"]["mean"] > 20 and latency["vs_host"] is None  # no relative limit asked
    assert json.loads(out.read_text())["run"]["overlays"]["weave"]["timings"]["up_s"] > 0
    (encrypted,) = [r for r in results if r["overlay"] == "weave-encrypted"]
    assert encrypted["metric"] == "latency"
    assert encrypted["datapath"]["encrypted"] and encrypted["datapath"]["encryption_reported"] is True
    assert "WEAVE_PASSWORD" not in out.read_text()


def test_missing_weaver_skips_naming_it():
    hidden = ":".join(d for d in os.environ["PATH"].split(":") if not os.path.exists(os.path.join(d, "weaver")))
    run = run_suites("suites/", *QUICK, "--overlay=weave", "-m", "latency", "-rfs",
                     env={"PATH": hidden, "PYTEST_OVERLAY_BIN": ""})
    assert run.rc == 0 and "1 skipped" in run.output, run.output
    assert "Weave Net is not installed: weaver (Weave Net's router)" in run.output
