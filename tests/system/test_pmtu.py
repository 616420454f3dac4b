"""Link MTUs, ICMP black holes, reordering and duplication as the embedded WAN makes them, on
this machine's kernel: the router says "fragmentation needed" from the link's own address, a
link that drops it is a black hole the path MTU suite calls so (and ends in bounded time), and
every packet the delay line sends on ahead, and every copy it makes, is counted, exactly as a
receiver counts it."""

from __future__ import annotations

import json
import time

import pytest

from pytest_overlay import procs
from pytest_overlay.emulation import emulator
from pytest_overlay.inputs import topology
from pytest_overlay.measure import pmtu
from pytest_overlay.testbeds.emulated import EmulatedTestbed
from pytest_overlay.testbeds.wanpaths import ROUTER_ADDRESSES

from ..conftest import on_the_machines_time

TRIANGLE = {
    "name": "mtus", "sites": {"A": {}, "B": {}, "C": {}},
    "links": [{"between": ["A", "B"], "rtt_ms": 4, "rate_mbit": 200, "mtu": 1400},
              {"between": ["B", "C"], "rtt_ms": 4, "rate_mbit": 200, "mtu": 1400, "icmp": "drop"},
              {"between": ["A", "C"], "rtt_ms": 10, "reorder_pct": 2}],
}

# Numbered datagrams, 1 ms apart; the receiver writes the order they came in.
SEND = ("import socket, sys, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for i in range(int(sys.argv[2])):\n    s.sendto(i.to_bytes(4, 'big'), (sys.argv[1], 9000)); time.sleep(0.001)\n")
RECEIVE = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind((sys.argv[1], 9000))\n"
           "s.settimeout(2)\nprint('ready', flush=True)\nseen = []\n"
           "while True:\n    try:\n        seen.append(int.from_bytes(s.recv(64), 'big'))\n"
           "    except socket.timeout:\n        break\nopen(sys.argv[2], 'w').write(str(seen))\n")


@pytest.mark.parametrize("underlay", ["ipv4", "ipv6"])
def test_a_smaller_link_tells_the_sender_and_one_that_drops_icmp_is_a_black_hole(clean_machine, underlay):
    topo = topology.parse({**TRIANGLE, "underlay": underlay}, "<test>")
    version = topo.families[0]
    with on_the_machines_time(), EmulatedTestbed(topo, emulator="delayline") as bed:
        a, b, c = (bed.underlay_endpoint(site) for site in "ABC")
        first = bed.run("A", ["ping", "-n", "-M", "do", "-s", str(1500 - pmtu.HEADERS[version]), "-c", "1", "-W",
                              "1", bed.address("B")])
        told = pmtu.measure(a, b, 200, bulk_s=2.0)
        started = time.monotonic()
        hole = pmtu.measure(b, c, 200, bulk_s=2.0)
        hole_s = time.monotonic() - started
    router = str(ROUTER_ADDRESSES[version] + 1)  # A's end of link 0: where A's packets to B come in
    assert ":" in a.address if version == 6 else "." in a.address
    assert (told.largest, told.discovery, told.told_mtu) == (1400, "told", 1400)
    said = "Frag needed and DF set (mtu = 1400)" if version == 4 else "Packet too big: mtu=1400"
    assert f"From {router} icmp_seq=1 {said}" in first.stdout, first
    assert told.tcp in ("full speed", "slowed")
    assert told.tcp_detail["pmtu"] == 1400 and told.tcp_detail["bytes_acked"] > 1_000_000
    assert (hole.largest, hole.discovery, hole.told_mtu, hole.tcp) == (1400, "silent", None, "black hole")
    assert hole.tcp_detail["connected"] and hole.tcp_detail["bytes_acked"] <= 1
    assert hole_s < 60, hole_s  # bounded: the transfer, then a bisection of 1 s pings


def test_a_dual_stack_testbed_routes_both_families_and_overlays_use_ipv4(clean_machine):
    topo = topology.parse({**TRIANGLE, "underlay": "dual-stack"}, "<test>")
    with on_the_machines_time(), EmulatedTestbed(topo, emulator="delayline") as bed:
        handle = bed.sites["C"]
        assert bed.address("C") == handle.addresses[4]
        for version in (4, 6):  # over their own 10 ms link, each family
            answer = bed.run("A", ["ping", f"-{version}", "-n", "-c", "1", "-W", "2", handle.addresses[version]])
            assert answer.ok and "time=1" in answer.stdout, answer
        counted = bed.emulator_counters()
    assert counted["A->C"]["packets"] == 2 and counted["C->A"]["packets"] == 2


def _numbered(bed: EmulatedTestbed, src: str, dst: str, count: int, tmp_path) -> list[int]:
    """The numbers of `count` datagrams sent from src to dst 1 ms apart, in the order they came."""
    send, receive = tmp_path / "send.py", tmp_path / "receive.py"
    send.write_text(SEND)
    receive.write_text(RECEIVE)
    sink = bed.start(dst, "receive", ["python3", str(receive), bed.address(dst), str(tmp_path / "seen")],
                     ready="ready")
    bed.run(src, ["python3", str(send), bed.address(dst), str(count)]).check()
    sink.popen.wait(30)
    return json.loads((tmp_path / "seen").read_text())


def test_every_copy_a_duplicating_link_makes_is_counted_as_the_receiver_sees_it(clean_machine, tmp_path):
    topo = topology.parse({"name": "dup", "sites": {"A": {}, "B": {}},
                           "links": [{"between": ["A", "B"], "rtt_ms": 4, "duplicate_pct": 3}]}, "<test>")
    with on_the_machines_time(), EmulatedTestbed(topo, emulator="delayline") as bed:
        before = bed.emulator_counters()["A->B"]
        seen = _numbered(bed, "A", "B", 2000, tmp_path)
        accrued = emulator.delta({"A->B": before}, {"A->B": bed.emulator_counters()["A->B"]})["A->B"]
    assert sorted(set(seen)) == list(range(2000))  # none lost
    copies = len(seen) - 2000
    assert copies == accrued["duplicated"]
    assert 25 <= copies <= 100, copies  # 3 % of 2000, with a 5-sigma margin either way


def test_every_packet_sent_on_ahead_is_counted_as_the_receiver_sees_it(clean_machine, tmp_path):
    topo = topology.parse(TRIANGLE, "<test>")
    with on_the_machines_time(), EmulatedTestbed(topo, emulator="delayline") as bed:
        before = bed.emulator_counters()["A->C"]
        seen = _numbered(bed, "A", "C", 2000, tmp_path)
        accrued = emulator.delta({"A->C": before}, {"A->C": bed.emulator_counters()["A->C"]})["A->C"]
    assert sorted(seen) == list(range(2000))  # none lost, none doubled
    early, lowest = 0, float("inf")
    for number in reversed(seen):  # a packet is early where one sent before it arrived after it
        early += number > lowest
        lowest = min(lowest, number)
    assert early == accrued["reordered"]
    assert 10 <= early <= 80, early  # 2 % of 2000, with a 5-sigma margin either way


@pytest.mark.parametrize("icmp, flows", [("pass", True), ("drop", False)])
def test_an_mtu_fault_lets_tcp_flow_again_only_where_the_sender_is_told(clean_machine, monkeypatch, icmp, flows):
    """A TCP flow at full size when A-B's MTU drops to 1380 for 4 s: told ("fragmentation
    needed"), it carries half its goodput again within a second or two; not told, nothing of
    it flows until the heal. The link has its own MTU back afterwards."""
    from pytest_overlay.measure import faultpath, faults
    from pytest_overlay.overlays.host import HostOverlay

    monkeypatch.setattr(faults, "BEFORE_S", 1.5)
    monkeypatch.setattr(faults, "SETTLE_S", 0.5)
    monkeypatch.setattr(faults, "TCP_LEAD_S", 2.5)
    topo = topology.parse({"name": "mtu", "sites": {"A": {}, "B": {}},
                           "links": [{"between": ["A", "B"], "rtt_ms": 10, "rate_mbit": 200}],
                           "faults": {"tunnel": {"kind": "mtu", "link": ["A", "B"], "seconds": 4, "icmp": icmp}}},
                          "<test>")
    with on_the_machines_time(), EmulatedTestbed(topo, emulator="delayline") as bed:
        run = faults.run(HostOverlay(bed), topo.faults["tunnel"], tcp=True)
        # The sites keep the 1380 they were told for 10 min, as hosts do: the wan's own routes say.
        after = procs.run(["ip", "-n", bed.wan, "route", "show", "table", "all"]).check()
    windows = faults.fault_windows(run.steps)
    before = [m for m, sp in zip(run.tcp.mbit, run.tcp.spans_ns) if sp[1] <= windows[0][0]]
    flowing = faultpath.flowing_after_ms(run.tcp.mbit, run.tcp.spans_ns, windows, sum(before) / len(before))
    assert (flowing is not None) == flows, (flowing, run.tcp.mbit)
    if flows:
        assert flowing < 2500, flowing
    assert "mtu" not in after.stdout and after.stdout.count("default via") == 2, after.stdout  # its 1500 back
