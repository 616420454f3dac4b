"""The encrypted meshes' configuration, without daemons: what each one's daemon is given (and
that no key is on a command line), how its control plane is read, and how a run asks for
them as a group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_overlay import kinds, options
from pytest_overlay.overlays import nebula, tinc, wireguard
from pytest_overlay.overlays.mesh import MeshOverlay


def test_the_meshes_are_a_group_of_their_own_and_not_in_all():
    meshes = kinds.groups()["meshes"]
    assert {"wireguard", "nebula", "tinc"} <= set(meshes)
    assert all(issubclass(kinds.get(name), MeshOverlay) for name in meshes)
    assert not set(meshes) & set(kinds.in_all())
    assert options.parse_overlays("host,meshes") == ["host", *meshes]
    with pytest.raises(Exception, match=rf"allowed: all \(.*\), meshes \({', '.join(meshes)}\)"):
        options.parse_overlays("mesh")


def test_wireguard_peers_each_site_at_its_endpoint_with_its_block_and_a_keepalive():
    conf = wireguard.configuration("cHJpdmF0ZQ==", [("cHVibGlj", "198.18.0.2", "10.64.1.0/24")])
    assert conf.splitlines() == ["[Interface]", "PrivateKey = cHJpdmF0ZQ==", "ListenPort = 51820", "", "[Peer]",
                                 "PublicKey = cHVibGlj", "Endpoint = 198.18.0.2:51820", "AllowedIPs = 10.64.1.0/24",
                                 "PersistentKeepalive = 25"]


def test_wireguard_sessions_read_from_its_handshake_times():
    """`wg show DEV latest-handshakes` as wg prints it: a session lasts RejectAfterTime."""
    shown = "Pb4=\t1764900000\nQx9=\t1764899700\nRz0=\t0\n"
    assert wireguard.parse_handshakes(shown, now=1764900010) == {"Pb4=": "session", "Qx9=": "no session",
                                                                  "Rz0=": "no session"}


def test_tinc_names_its_nodes_and_connects_to_the_sites_given():
    assert tinc.node_name("AMS-2") == "AMS_2"
    conf = tinc.tinc_conf("AMS-2", "tcabc1230", ["MIL", "BRA"])
    assert "Mode = router" in conf and "ConnectTo = MIL\nConnectTo = BRA" in conf and "Cipher" not in conf
    assert tinc.host_file("198.18.0.1", "10.65.0.0/24", "-----BEGIN RSA PUBLIC KEY-----\n").startswith(
        "Address = 198.18.0.1\nPort = 655\nSubnet = 10.65.0.0/24\n-----BEGIN")


def test_nebula_sites_find_the_lighthouse_which_relays_and_route_the_blocks_via_their_nodes():
    files = {"ca.crt": "/d/ca.crt", "host.crt": "/d/host.crt", "host.key": "/d/host.key"}
    member = json.loads(nebula.configuration(files, "nbabc1231", "10.66.255.1", "198.18.0.1",
                                             [("10.66.0.0/24", "10.66.255.1")]))
    assert member["static_host_map"] == {"10.66.255.1": ["198.18.0.1:4242"]}
    assert member["lighthouse"] == {"am_lighthouse": False, "interval": 60, "hosts": ["10.66.255.1"]}
    assert member["relay"] == {"relays": ["10.66.255.1"], "use_relays": True}
    assert member["tun"]["unsafe_routes"] == [{"route": "10.66.0.0/24", "via": "10.66.255.1"}]
    assert "cipher" not in member  # Nebula's default, AES-256-GCM, as the records say
    lighthouse = json.loads(nebula.configuration(files, "nbabc1230", None, "198.18.0.1", []))
    assert lighthouse["lighthouse"]["am_lighthouse"] and lighthouse["relay"]["am_relay"]
    assert lighthouse["static_host_map"] == {}


def test_the_meshes_table_sets_each_mesh_beside_weaves_encrypted_sleeve():
    """From a real run's records (AMS-MIL latency and TCP, then BRA-LJU cut and LJU partition,
    2026-12-05, trimmed): a row per overlay with its cipher, MTU, RTT over the underlay, TCP,
    CPU per Gbit/s, and what the faults did; tinc's relayed replies during the cut counted."""
    from pytest_overlay.report import meshes
    from pytest_overlay.report.study import load_records

    records = load_records(Path(__file__).parent / "data" / "meshes-run.json")
    rows = {row[0]: row for row in meshes.rows(records, records, ["weave-encrypted", "wireguard", "nebula", "tinc"],
                                               "cut-BRA-LJU", "partition-LJU")}
    assert list(rows) == ["weave-encrypted", "wireguard", "nebula", "tinc"]
    assert rows["wireguard"][1:5] == ["ChaCha20-Poly1305 (Noise IK handshake, Curve25519, BLAKE2s)", "1420",
                                      "+0.42 ±0.02 (n=500)", "204 (n=8)"]
    assert rows["wireguard"][5] == "4.4"  # 0.89 cores at AMS and MIL for 204 Mbit/s
    assert rows["nebula"][2] == "1300" and rows["nebula"][6] == "20.0 / black hole"
    assert rows["tinc"][6] == "18.1 / via a path the WAN counters do not chain (48.7 ms, n=191)"
    assert rows["tinc"][7] == "0.11" and rows["weave-encrypted"][7] == "0.71"


def test_clean_finds_the_control_sockets_a_killed_wireguard_go_left(tmp_path, monkeypatch):
    """wireguard-go removes its socket when ended, not when killed: the run's are found by
    the device names it was given, another run's are not."""
    monkeypatch.setattr(wireguard, "UAPI_DIR", tmp_path)
    for name in ("wgabc1230.sock", "wgabc12311.sock", "wgfff0000.sock", "wg0.sock"):
        (tmp_path / name).touch()
    assert [p.name for p in kinds.leftovers("abc123")] == ["wgabc1230.sock", "wgabc12311.sock"]


def test_nebula_tunnels_read_from_its_log_during_a_cut():
    """BRA's and LJU's nebula logs during a 90 s cut of BRA-LJU (2026-12-05): BRA's tunnel to
    LJU found dead, a direct handshake tried, the relay (the lighthouse, AMS) tried and taken;
    at the heal both roam back to the direct path."""
    logs = json.loads((Path(__file__).parent / "data" / "nebula-relay.json").read_text())
    sites = {"10.66.255.2": "BRA", "10.66.255.3": "LJU"}
    bra, lju = logs["nebula-BRA"], logs["nebula-LJU"]
    states = [nebula.tunnel_states(bra[:n], sites) for n in range(1, len(bra) + 1)]
    assert [s["LJU"] for s in states] == ["dead", "handshaking", "relaying", "relaying", "relayed", "direct"]
    assert nebula.tunnel_states(lju[:3], sites) == {"BRA": "relayed"}
    assert nebula.tunnel_states(lju, sites) == {"BRA": "direct"}
    assert nebula.tunnel_states(bra, {}) == {}  # a peer it does not know is left out
