"""Calico's data plane, modelled from real BIRD and kernel routes: every BGP session
established and every block learned before measuring, and traffic across the WAN with the
workloads' own addresses, unencapsulated."""

from __future__ import annotations

import json

import pytest

from pytest_overlay.overlays import calico

from ..conftest import QUICK, ROOT, STARVED_SKIP, run_suites, steal_during


def test_bird_config_announces_the_block_to_every_peer():
    text = calico.bird_config("198.18.0.1", "10.48.0.0/26", {"B": "198.18.0.2", "C": "198.18.0.3"})
    assert "local 198.18.0.1 as 64512;" in text and "multihop;" in text
    assert "route 10.48.0.0/26 blackhole;" in text
    assert "protocol bgp peer_B from mesh { neighbor 198.18.0.2 as 64512; }" in text
    assert "protocol bgp peer_C from mesh { neighbor 198.18.0.3 as 64512; }" in text
    assert [str(calico.block(i)) for i in range(3)] == ["10.48.0.0/26", "10.48.0.64/26", "10.48.0.128/26"]


def test_calico_next_to_the_underlay_in_a_pool_the_topology_moved(tmp_path, clean_machine):
    """The star with `ranges: {calico: 10.77.0.0/24}`: every BGP session established, each
    site's block (from the topology's pool, which BIRD's import filter names) learned by BIRD
    at the others, the workloads' packets on the WAN unencapsulated, and TCP at the
    underlay's rate. One bring-up proves the data plane and the moved pool."""
    star = tmp_path / "star.yaml"
    star.write_text((ROOT / "topologies" / "geant-star.yaml").read_text() + "ranges: {calico: 10.77.0.0/24}\n")
    out = tmp_path / "results.json"
    run = run_suites("suites/", *QUICK, f"--topology={star}", "--overlay=host,calico", "-m", "latency or tcp",
                     "-k", "BRA-AMS or BRA-LJU", f"--overlay-json={out}", timeout=600)
    run.passed()
    records = [r for r in json.loads(out.read_text())["results"] if r["overlay"] == "calico"]
    assert len(records) == 4
    for record in records:
        path = record["datapath"]
        assert path["kind"] == "calico-model" and path["encapsulation"] is None and path["mtu"] == 1500
        assert "calico-node (felix, confd) not run" in path["model"]
        # Each site's block from the moved pool, one /26 each (the record names its circuit's two).
        assert set(path["blocks"].values()) <= {"10.77.0.0/26", "10.77.0.64/26", "10.77.0.128/26", "10.77.0.192/26"}
        assert len(set(path["blocks"].values())) == len(path["blocks"]) >= 2
        src, dst = record["src"], record["dst"]
        assert set(path["bgp_sessions"][src].values()) == {"Established"} and len(path["bgp_sessions"][src]) == 3
        assert path["blocks"][dst] in path["routes_learned"][src]
        assert "proto bird" in path["routes_learned"][src][path["blocks"][dst]]
        hops = [f"{a}->{b}" for a, b in zip(path["path"], path["path"][1:])]
        assert all(path["workload_packets_on_wan"][hop] > 0 for hop in hops)
    tcp = {r["overlay"]: r for r in json.loads(out.read_text())["results"]
           if r["metric"] == "tcp_throughput" and r["dst"] == "AMS"}
    near = tcp["calico"]["total"] > 0.9 * tcp["host"]["total"]  # no encapsulation, no userspace: the underlay's rate
    if not near and steal_during(tcp["calico"], tcp["host"]):
        pytest.skip(STARVED_SKIP + steal_during(tcp["calico"], tcp["host"]))
    assert near, (tcp["calico"]["total"], tcp["host"]["total"])
