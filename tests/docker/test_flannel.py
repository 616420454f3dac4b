"""Flannel's real flanneld at every site, its leases in a real etcd that demands client
certificates, each site's dockerd on its lease: measured beside the underlay, proven to
cross the WAN in the backend's encapsulation."""

from __future__ import annotations

import json
import sys

import pytest

from pytest_overlay import procs
from pytest_overlay.inputs import topology
from pytest_overlay.overlays.flannel import FlannelOverlay
from pytest_overlay.testbeds.emulated import EmulatedTestbed

from ..conftest import QUICK, ROOT, STARVED_SKIP, run_suites, steal_during, two_sites

TLS_CLIENT = """\
import socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[2])
if len(sys.argv) > 3:
    context.load_cert_chain(sys.argv[3], sys.argv[4])
with socket.create_connection((sys.argv[1], 2379), timeout=5) as raw:
    with context.wrap_socket(raw, server_hostname=sys.argv[1]) as tls:
        try:
            tls.sendall(b"GET /version HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            print("answered:", tls.recv(100))
        except ssl.SSLError as e:
            print("refused:", e.reason)
"""
# flannel-udp forwards in one userspace thread: a few hundred Mbit/s here, not the link's 1000.
UDP_BACKEND_LIMITS = """\
overrides:
  - {metric: tcp_throughput, overlay: flannel-udp, min_fraction_of_rate: 0.05}
"""


def test_flannel_backends_next_to_the_underlay(tmp_path, clean_machine):
    limits = tmp_path / "limits.yaml"
    limits.write_text((ROOT / "tests" / "relaxed-thresholds.yaml").read_text() + UDP_BACKEND_LIMITS)
    out = tmp_path / "results.json"
    run = run_suites("suites/", *QUICK, "--overlay=host,flannel,flannel-udp,flannel-host-gw", "-m", "latency or tcp",
                     f"--overlay-thresholds={limits}", f"--overlay-json={out}", "-rfs")
    run.passed()
    assert "flannel host-gw needs every site on one L2 segment" in run.output and "2 skipped" in run.output
    records = {(r["overlay"], r["metric"]): r for r in json.loads(out.read_text())["results"]}
    vxlan = records["flannel", "tcp_throughput"]["datapath"]
    assert (vxlan["backend"], vxlan["vni"], vxlan["udp_port"], vxlan["mtu"]) == ("vxlan", 1, 8472, 1450)
    assert vxlan["encapsulated_packets_on_wan"]["A->B"] > 0
    assert vxlan["kv_site"] == "A"
    lease_b = vxlan["leases"]["B"]
    assert lease_b.startswith("10.40.") and " dev flannel.1 " in " " + vxlan["routes"]["A"][lease_b] + " "
    udp = records["flannel-udp", "latency"]["datapath"]
    assert (udp["backend"], udp["udp_port"], udp["mtu"]) == ("udp", 8285, 1472)
    assert udp["encapsulated_packets_on_wan"]["A->B"] > 0
    tcp = records["flannel", "tcp_throughput"], records["host", "tcp_throughput"]
    if tcp[0]["total"] <= 0.8 * tcp[1]["total"] and steal_during(*tcp):
        pytest.skip(STARVED_SKIP + steal_during(*tcp))
    assert tcp[0]["total"] > 0.8 * tcp[1]["total"], (tcp[0]["total"], tcp[1]["total"])


def test_etcd_demands_a_client_certificate_and_sits_where_the_topology_says(tmp_path, clean_machine):
    with EmulatedTestbed(topology.load(two_sites(tmp_path, 10, "kv: B\n")), emulator="none") as bed:
        overlay = FlannelOverlay(bed)
        try:
            overlay._etcd()
            assert overlay._etcdctl("get", "/coreos.com/network/config").check().stdout.count('"vxlan"') == 1
            anonymous = procs.run([sys.executable, "-c", TLS_CLIENT, "198.18.0.2", str(overlay.client.ca)],
                                  bed.netns_of("B"), timeout=30)
            known = procs.run([sys.executable, "-c", TLS_CLIENT, "198.18.0.2", str(overlay.client.ca),
                               str(overlay.client.cert), str(overlay.client.key)], bed.netns_of("B"), timeout=30)
            assert overlay._endpoint() == "https://198.18.0.2:2379"
        finally:
            overlay.down()
    assert anonymous.ok and known.ok, anonymous.stderr + known.stderr
    assert anonymous.stdout.startswith("refused: ") and "CERTIFICATE" in anonymous.stdout, anonymous.stdout
    assert known.stdout.startswith("answered: b'HTTP/1.1 200 OK"), known.stdout


@pytest.mark.parametrize("name", ["flannel"])
def test_missing_flanneld_skips_naming_it(name):
    run = run_suites("suites/", *QUICK, f"--overlay={name}", "-m", "latency", "-rfs",
                     env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTEST_OVERLAY_BIN": ""})
    assert run.rc == 0 and "1 skipped" in run.output, run.output
    assert "flanneld (Flannel's daemon, not in $PYTEST_OVERLAY_BIN or on PATH" in run.output
