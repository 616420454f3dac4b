"""The path MTU suite's reading of what it saw (ping's and the bulk sender's real output,
captured on the pmtu topology), the topology's MTU, ICMP and reordering fields, and the
"What breaks" table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pytest_overlay import report
from pytest_overlay.inputs import topology
from pytest_overlay.inputs.model import Circuit
from pytest_overlay.inputs.yamlfile import InputError
from pytest_overlay.measure import pmtu

from .records import record

DATA = Path(__file__).parent / "data"
PINGS = json.loads((DATA / "ping_df.json").read_text())
SENT = json.loads((DATA / "bulk_sent.json").read_text())


@pytest.mark.parametrize("case, answered, told", [
    ("told", False, 1400),      # "Frag needed and DF set (mtu = 1400)" from the link's router
    ("local", False, 1400),     # the sender's own route has learned it: "message too long, mtu=1400"
    ("silent", False, None),    # the black hole: nothing came back, nothing was said
    ("answered", True, None),
    ("told6", False, 1400),     # ICMPv6 "Packet too big: mtu=1400"
    ("local6", False, 1400),    # "message too long, mtu: 1400"
    ("silent6", False, None),
    ("answered6", True, None),
])
def test_ping_with_df_tells_answered_told_and_silent_apart(case, answered, told):
    outcome = pmtu.parse_ping(PINGS[case], 1500)
    assert (outcome.answered, outcome.told_mtu) == (answered, told)


@pytest.mark.parametrize("case, rate, verdict", [
    ("host MIL-LJU", 1000, "black hole"),   # 1 byte acknowledged in 4 s, 4 retransmissions
    ("host AMS-MIL", 1000, "full speed"),   # 915 Mbit/s after learning 1400 from the router
    ("wireguard AMS-MIL", 1000, "slowed"),  # 194 Mbit/s: wireguard-go, fragmenting
    ("wireguard AMS-MIL", None, "full speed"),  # no rate to hold it to, and no stall
])
def test_a_bulk_transfer_is_judged_on_what_the_receiver_acknowledged(case, rate, verdict):
    assert pmtu.tcp_verdict(SENT[case], rate)[0] == verdict


def test_a_transfer_that_stalled_before_it_flowed_is_slowed_even_without_a_rate():
    stalled = {**SENT["host AMS-MIL"], "first_ack_ms": 3200.0}
    assert pmtu.tcp_verdict(stalled, None)[0] == "slowed"
    assert pmtu.tcp_verdict({"connected": False, "error": "timed out"}, 1000) == ("no connection", 0.0)


def test_the_bundled_pmtu_topology_promises_each_path_its_mtu_icmp_and_reordering():
    topo = topology.load("pmtu")
    blackhole = topo.expected(Circuit("MIL", "LJU"))
    assert (blackhole["mtu"], blackhole["mtu_back"], blackhole["icmp_dropped"]) == (1400, 1400, ["MIL->LJU", "LJU->MIL"])
    told = topo.expected(Circuit("AMS", "MIL"))
    assert told["icmp_dropped"] == [] and told["reorder_pct"] == 0
    assert topo.expected(Circuit("AMS", "LJU"))["reorder_pct"] == pytest.approx(1.0)


def _load(tmp_path, link: str, hosts: tuple[str, str] = ("", "")) -> topology.Topology:
    path = tmp_path / "t.yaml"
    path.write_text(f"sites:\n  A: {{{hosts[0]}}}\n  B: {{{hosts[1]}}}\nlinks:\n"
                    f"  - {{between: [A, B], rtt_ms: 10, {link}}}\n")
    return topology.load(path)


@pytest.mark.parametrize("link, said", [
    ("mtu: 575", "links[0].mtu: must be >= 576 and <= 9000, got 575"),
    ("mtu: 1400.5", "links[0].mtu: must be a whole number of bytes, got 1400.5"),
    ("icmp: block", "links[0].icmp: must be one of pass, drop, got 'block'"),
    ("icmp: drop", "links[0].icmp: a link drops \"fragmentation needed\" only where a packet can be too big for it"),
    ("reorder_pct: -1", "links[0].reorder_pct: must be >= 0 and <= 100, got -1"),
    ("duplicate_pct: 101", "links[0].duplicate_pct: must be >= 0 and <= 100, got 101"),
])
def test_a_bad_mtu_icmp_or_reorder_field_is_refused_with_its_file_line_and_field(tmp_path, link, said):
    with pytest.raises(InputError) as error:
        _load(tmp_path, link)
    assert f"t.yaml:5: {said}" in str(error.value)


def test_real_hosts_refuse_what_only_the_embedded_wan_can_do(tmp_path):
    with pytest.raises(InputError, match="mtu/icmp/reorder_pct/duplicate_pct on A->B: across real hosts the path "
                                         "between them is the hosts' own"):
        _load(tmp_path, "mtu: 1400", ("host: {ssh: root@192.0.2.10}", "host: {ssh: root@192.0.2.11}"))


def test_what_breaks_sets_each_overlay_against_each_kind_of_path():
    def found(overlay, src, dst, largest, tcp, mtu=1400, dropped=(), reorder=0.0):
        expected = {"mtu": mtu, "icmp_dropped": list(dropped), "reorder_pct": reorder}
        detail = {"connected": True, "total_retrans": 4, "first_ack_ms": None}
        return record("path_mtu", [largest], overlay, src, dst, expected=expected, verdict="pass",
                      extra={"pmtu": {"interface_mtu": 1420, "discovery": "silent", "tcp": tcp, "tcp_mbit": 0.0,
                                      "tcp_detail": detail}})

    records = [found("wireguard", "A", "B", 1420, "slowed"),
               found("wireguard", "B", "C", 1328, "black hole", dropped=["B->C", "C->B"]),
               found("host", "B", "C", 1400, "black hole", dropped=["B->C", "C->B"])]
    text = report.tables(records, topology.load("local"))
    assert "| wireguard | slowed (1420 B)      | black hole (1328 B)     |" in text
    assert "| host      | -                    | black hole (1400 B)     |" in text
    assert "MTU 1400 without ICMP" in text and "MTU 1400 with ICMP" in text


def test_an_underlay_family_is_one_of_three_and_only_on_the_embedded_wan(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("underlay: ipv5\nsites: {A: {}, B: {}}\nlinks: [{between: [A, B], rtt_ms: 10}]\n")
    with pytest.raises(InputError, match="t.yaml:1: underlay: must be one of ipv4, ipv6, dual-stack, got 'ipv5'"):
        topology.load(path)
    path.write_text("underlay: ipv6\nsites: {A: {host: {ssh: root@192.0.2.1}}, B: {host: {ssh: root@192.0.2.2}}}\n"
                    "links: [{between: [A, B], rtt_ms: 10}]\n")
    with pytest.raises(InputError, match="underlay: across real hosts the underlay is the hosts' own addresses"):
        topology.load(path)
    six = topology.load("pmtu-ipv6")
    assert six.families == (6,) and six.expected(six.circuits[0])["underlay"] == "ipv6"


def test_an_address_and_port_are_written_as_every_tool_reads_them():
    from pytest_overlay.testbeds.contract import host_port

    assert host_port("198.18.0.1", 655) == "198.18.0.1:655"
    assert host_port("2001:2::1", 655) == "[2001:2::1]:655"


def test_every_kind_either_runs_over_ipv6_or_says_what_its_trial_showed():
    from pytest_overlay import kinds

    said = {name: kinds.get(name).ipv6_unsupported for name in kinds.names()}
    assert {name for name, why in said.items() if not why} >= {"host", "wireguard", "tinc", "nebula"}
    assert all("tried here" in why for why in said.values() if why), said


def test_an_mtu_fault_is_read_with_its_size_and_icmp_and_refused_when_wrong(tmp_path):
    base = "sites: {A: {}, B: {}}\nlinks: [{between: [A, B], rtt_ms: 10}]\nfaults:\n  tun: {kind: mtu, link: [A, B]"
    path = tmp_path / "t.yaml"
    path.write_text(base + ", seconds: 6, icmp: drop}\n")
    fault = topology.load(path).faults["tun"]
    (_, what, changes), (_, healed, back) = fault.steps()
    assert (what, fault.mtu, fault.icmp_drop) == ("fault", 1380, True)
    assert {d.mtu for d in changes.values()} == {1380} and all(d.icmp_drop for d in changes.values())
    assert healed == "heal" and {d.mtu for d in back.values()} == {None}
    for bad, said in ((", mtu: 100}", "faults.tun.mtu: must be >= 576 and <= 9000, got 100"),
                      (", icmp: [drop]}", "faults.tun.icmp: must be one of pass, drop, got ['drop']"),
                      (", loss_pct: 5}", "faults.tun.loss_pct: a mtu fault takes no loss_pct")):
        path.write_text(base + bad + "\n")
        with pytest.raises(InputError, match=re.escape(said)):
            topology.load(path)


def test_the_time_until_a_flow_carries_half_its_goodput_again_is_read_from_its_intervals():
    from pytest_overlay.measure.faultpath import flowing_after_ms

    s = 1_000_000_000
    spans = [(i * s // 2, (i + 1) * s // 2) for i in range(12)]  # 0.5 s intervals from t = 0
    windows = [(2 * s, 5 * s)]
    told = [180, 180, 180, 180, 10, 20, 150, 170, 175, 180, 180, 180]
    assert flowing_after_ms(told, spans, windows, 180.0) == 1000.0  # the interval from 3.0 s
    hole = [180, 180, 180, 180, 0, 0, 0, 0, 0, 0, 170, 180]
    assert flowing_after_ms(hole, spans, windows, 180.0) is None  # not while the fault was on
