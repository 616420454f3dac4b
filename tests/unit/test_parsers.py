"""The probes: their registry and commands, and their parsers on real output captured from
irtt 0.9 and iperf3 3.12 on loopback."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from pytest_overlay.measure import probes
from pytest_overlay.measure.probes import INTERVAL_S, ProbeError, parse_iperf3, parse_irtt
from pytest_overlay.results import metrics, thresholds
from pytest_overlay.results.records import Stats
from pytest_overlay.measure.samples import BATCH_INTERVALS, measured_intervals, parse_snmp

DATA = Path(__file__).parent / "data"


def test_irtt_round_trips_in_ms():
    output = (DATA / "irtt-loopback.json").read_text()
    samples = parse_irtt(output, 5.0)
    trips = json.loads(output)["round_trips"]
    assert samples.sent == 60 and samples.lost == 0 and len(samples.rtt_ms) == 60
    assert samples.rtt_ms[0] == pytest.approx(trips[0]["delay"]["rtt"] / 1e6)
    assert all(0 < rtt < 10 for rtt in samples.rtt_ms)
    assert len(samples.ipdv_ms) == 59
    assert samples.ipdv_ms[0] == pytest.approx(abs(samples.rtt_ms[1] - samples.rtt_ms[0]))


def test_irtt_lost_round_trips_are_counted_not_averaged():
    data = json.loads((DATA / "irtt-loopback.json").read_text())
    for trip in data["round_trips"][:3]:
        trip["lost"] = "true"
        trip["delay"] = {}
    samples = parse_irtt(json.dumps(data), 5.0)
    assert (samples.sent, samples.lost, len(samples.rtt_ms)) == (60, 3, 57)


def test_irtt_with_nothing_back_is_an_error():
    data = json.loads((DATA / "irtt-loopback.json").read_text())
    for trip in data["round_trips"]:
        trip["lost"] = "true"
    with pytest.raises(ProbeError, match="none of 60 requests came back"):
        parse_irtt(json.dumps(data), 5.0, "irtt A -> B")


def test_irtt_garbage_is_an_error_that_shows_it():
    with pytest.raises(ProbeError, match="irtt A -> B: unreadable output .*'Error: no route'"):
        parse_irtt("Error: no route", 5.0, "irtt A -> B")


def test_iperf3_tcp_uses_the_receivers_intervals():
    output = (DATA / "iperf3-tcp-loopback.json").read_text()
    data = json.loads(output)
    samples = parse_iperf3(output, "tcp")
    received = [i["sum"] for i in data["server_output_json"]["intervals"]
                if not i["sum"].get("omitted") and i["sum"]["seconds"] >= 0.8 * INTERVAL_S]
    assert samples.mbit == pytest.approx([i["bits_per_second"] / 1e6 for i in received])
    assert samples.total_mbit == pytest.approx(data["end"]["sum_received"]["bits_per_second"] / 1e6)
    assert samples.retransmits == data["end"]["sum_sent"]["retransmits"]
    assert len(samples.mbit) >= 3  # 2 s in 0.5 s intervals after the omitted second, stub dropped


def test_the_interval_iperf3_reports_where_the_warm_up_ends_is_not_a_sample():
    """Captured over geant's AMS-BRA (17.7 ms), iperf3 3.12, -O 1 -i 0.5 -t 5: the receiver
    reports a first 'measured' interval at 0.5 s lasting 1.0 s at half the flow's rate (474
    Mbit/s beside 956): the last omitted interval, folded in. Counted as a sample it took the
    mean of intervals 4.6 % under the total (912 against 956) and, in a 2 s run (n = 4),
    gave the ±380 Mbit/s interval of the study's report."""
    output = (DATA / "iperf3-omit-boundary.json").read_text()
    data = json.loads(output)
    boundary = [i["sum"] for i in data["server_output_json"]["intervals"]
                if not i["sum"].get("omitted") and i["sum"]["seconds"] > 1.2 * INTERVAL_S]
    assert len(boundary) == 1 and boundary[0]["bits_per_second"] < 0.6 * data["end"]["sum_received"]["bits_per_second"]
    samples = parse_iperf3(output, "tcp")
    # 5 s of 0.5 s intervals, less the first (iperf3 folded it into the boundary interval) and
    # the end's stub
    assert len(samples.mbit) == 9 and samples.offsets_s[0][0] == pytest.approx(0.5, abs=0.01)
    assert statistics.fmean(samples.mbit) == pytest.approx(samples.total_mbit, rel=0.002)
    assert [end - start for start, end in samples.offsets_s] == pytest.approx([INTERVAL_S] * 9, abs=0.01)


def test_iperf3_udp_rate_and_loss():
    output = (DATA / "iperf3-udp-loopback.json").read_text()
    samples = parse_iperf3(output, "udp", 200)
    total = json.loads(output)["end"]["sum_received"]
    # The sender's rate times the share delivered; what the receiver read, beside it.
    assert samples.total_mbit == pytest.approx(samples.sent_mbit * (1 - total["lost_packets"] / total["packets"]))
    assert samples.extra["read_mbit"] == pytest.approx(total["bits_per_second"] / 1e6)
    assert samples.total_mbit == pytest.approx(samples.extra["read_mbit"], rel=0.01)
    assert samples.total_mbit == pytest.approx(200, rel=0.05)
    assert (samples.extra["packets"], samples.extra["lost_packets"]) == (total["packets"], total["lost_packets"])
    assert samples.lost_pct == pytest.approx(total["lost_percent"])
    assert samples.offered_mbit == 200
    assert samples.sent_mbit == pytest.approx(json.loads(output)["end"]["sum_sent"]["bits_per_second"] / 1e6)


def test_iperf3_udp_loss_over_the_warm_up_is_not_counted_twice():
    """Captured: 500 Mbit/s offered into a 100 Mbit/s tbf with one second omitted, where the
    client's own sum says 107 802 lost of 89 269 datagrams (esnet/iperf#1489)."""
    output = (DATA / "iperf3-udp-overload-omit.json").read_text()
    data = json.loads(output)
    assert data["end"]["sum_received"]["lost_packets"] > data["end"]["sum_received"]["packets"]
    samples = parse_iperf3(output, "udp", 500)
    server_total = data["server_output_json"]["end"]["sum"]
    assert (samples.extra["packets"], samples.extra["lost_packets"]) == (
        server_total["packets"], server_total["lost_packets"])
    assert samples.lost_pct == pytest.approx(80.58, abs=0.01)
    assert samples.total_mbit == pytest.approx(97, rel=0.02)


def test_a_udp_intervals_rate_is_what_the_path_delivered_not_when_the_receiver_read_it():
    """Captured through Calico on geant under the machine's load (iperf3 3.12, 500 Mbit/s,
    -O 1 -i 0.5 -t 3): no datagram lost after the warm-up, yet the receiver read 466 then 535
    Mbit/s in two half-seconds, as it was kept from its CPU across the boundary. By bytes
    read, the 1 s batches' interval is over 5 % of the rate; by the sequence numbers each
    interval covered, every interval is the sender's rate."""
    output = (DATA / "iperf3-udp-reading-lag.json").read_text()
    measured = measured_intervals([i["sum"] for i in json.loads(output)["server_output_json"]["intervals"]])
    read = [i["bits_per_second"] / 1e6 for i in measured]
    assert min(read) < 470 and max(read) > 530 and sum(i["lost_packets"] for i in measured) == 0
    samples = parse_iperf3(output, "udp", 500)
    assert samples.mbit == pytest.approx([samples.sent_mbit] * len(read))
    assert statistics.fmean(samples.mbit) == pytest.approx(samples.total_mbit, rel=0.01)
    stats = Stats.of(samples.mbit, [samples.total_mbit], batch=BATCH_INTERVALS)
    assert stats.ci95 < 0.01 * samples.total_mbit
    assert Stats.of(read, [samples.total_mbit], batch=BATCH_INTERVALS).ci95 > 0.05 * samples.total_mbit


def test_a_udp_intervals_lost_datagrams_lower_its_rate():
    """Captured through Flannel on geant (iperf3 3.12, 500 Mbit/s): iperf3 counted 6620
    datagrams lost, gaps in the sequence numbers; each interval's rate is the sender's times
    the share that arrived."""
    output = (DATA / "iperf3-udp-receiver-dropped.json").read_text()
    samples = parse_iperf3(output, "udp", 500)
    intervals = measured_intervals([i["sum"] for i in json.loads(output)["server_output_json"]["intervals"]])
    assert samples.extra["lost_packets"] == 6620
    assert samples.mbit == pytest.approx([samples.sent_mbit * (1 - i["lost_packets"] / i["packets"]) for i in intervals])
    assert min(samples.mbit) < 0.95 * samples.sent_mbit
    assert statistics.fmean(samples.mbit) == pytest.approx(samples.total_mbit, rel=0.01)


def test_udp_counters_are_read_from_proc_net_snmp():
    """Captured in a fresh namespace around 200 datagrams sent on loopback to a socket with a
    4 KB buffer that never read them: the kernel kept 3 and dropped 197."""
    before, after = (parse_snmp((DATA / f"proc-net-snmp-{when}.txt").read_text())["Udp"]
                     for when in ("before", "after"))
    assert after["RcvbufErrors"] - before["RcvbufErrors"] == 197
    assert after["OutDatagrams"] - before["OutDatagrams"] == 200
    assert set(parse_snmp((DATA / "proc-net-snmp-after.txt").read_text())) >= {"Ip", "Icmp", "Tcp", "Udp"}


def test_iperf3_error_is_reported_with_iperf3s_words():
    with pytest.raises(ProbeError, match="iperf3 tcp A -> B failed .*unable to connect to server: Connection refused"):
        parse_iperf3((DATA / "iperf3-refused.json").read_text(), "tcp", what="iperf3 tcp A -> B")


# The overlays' daemons, as they answered on this machine: weaver 2.8.1's /report (sleeve, two
# sites), flanneld 0.19.2's subnet file, and BIRD 2's `show protocols` through its control socket
# with the peer up, then a second after the peer's BIRD was stopped.

def test_weaver_report_gives_the_router_and_each_connection():
    from pytest_overlay.overlays.weave import parse_report

    router, connections = parse_report(json.loads((DATA / "weave-report-sleeve.json").read_text()))
    assert router == {"name": "7a:b3:0e:88:00:01", "encryption": False, "interface": "vethwe-pcap (via pcap)",
                      "version": "2.8.1", "routes": {"B": "direct"}}
    assert connections == [{"address": "198.18.0.2:46845", "state": "established",
                            "info": "sleeve 7a:b3:0e:88:00:02(B)", "datapath": "sleeve", "mtu": 1438,
                            "encrypted": None}]
    assert parse_report({}) == ({"name": None, "encryption": None, "interface": None, "version": None,
                                 "routes": {}}, [])
    # Relayed: A's route to C goes through B (weaver's UnicastRoutes name peers; nicknames are sites)
    relayed = {"Router": {"Name": "p:a", "Peers": [{"Name": "p:a", "NickName": "A"}, {"Name": "p:b", "NickName": "B"},
                                                   {"Name": "p:c", "NickName": "C"}],
                          "UnicastRoutes": [{"Dest": "p:a", "Via": "00:00:00:00:00:00"}, {"Dest": "p:b", "Via": "p:b"},
                                            {"Dest": "p:c", "Via": "p:b"}]}}
    assert parse_report(relayed)[0]["routes"] == {"B": "direct", "C": "via B"}


def test_flanneld_subnet_file_gives_the_lease():
    from pytest_overlay.overlays.flannel import parse_subnet_file

    assert parse_subnet_file((DATA / "flannel-subnet.env").read_text()) == {
        "FLANNEL_NETWORK": "10.40.0.0/16", "FLANNEL_SUBNET": "10.40.17.1/24", "FLANNEL_MTU": "1450",
        "FLANNEL_IPMASQ": "false"}


def test_bird_protocols_give_each_bgp_session_by_peer_site():
    from pytest_overlay.overlays.calico import parse_protocols

    assert parse_protocols((DATA / "bird-show-protocols-established.txt").read_text()) == {"B": "Established"}
    assert parse_protocols((DATA / "bird-show-protocols-peer-gone.txt").read_text()) == {
        "B": "start Active Socket: Connection refused"}
    assert parse_protocols("") == {}


class End:
    def __init__(self, name: str, address: str) -> None:
        self.name, self.address = name, address


A, B = End("A", "10.0.0.1"), End("B", "10.0.0.2")


def test_every_metric_made_by_one_run_names_a_registered_probe_and_its_rule_exists():
    made = {m.probe for m in metrics.METRICS.values() if m.probe}
    assert made == set(probes.PROBES)
    for probe in probes.PROBES.values():
        assert not probe.excluded_setting or probe.excluded_setting in thresholds.SETTINGS[thresholds.VALIDITY]
    assert probes.probe_of("stream-udp-25") is probes.STREAM and probes.probe_of("tcp") is probes.TCP


def test_the_probes_commands_are_the_ones_their_parsers_read():
    assert probes.LATENCY.command(A, B, 2000, 10, 3) == [
        "irtt", "client", "-Q", "-o", "-", "-i", "10ms", "-d", "3s", "--tstamp=none", "--local=10.0.0.1:0",
        "10.0.0.2:2000"]
    assert probes.LATENCY.command(A, B, 2000, 10, 3, output="/tmp/x.json")[2:4] == ["-o", "/tmp/x.json"]
    udp = probes.UDP.command(A, B, 2001, 2, 1, udp_rate_mbit=200)
    assert udp[:13] == ["iperf3", "-c", "10.0.0.2", "-B", "10.0.0.1", "-p", "2001", "-J", "--get-server-output",
                        "-t", "2", "-O", "1"] and udp[15:20] == ["-u", "-b", "200M", "-l", "1400"]
    both = probes.TCP.command(A, B, 2002, 5, 1, flows=4, reverse=True)
    assert both[-3:] == ["-P", "4", "-R"] and "-u" not in both
    output = (DATA / "irtt-loopback.json").read_text()
    assert probes.LATENCY.parse(output, 5.0).rtt_ms == parse_irtt(output, 5.0).rtt_ms


def test_a_probe_names_the_package_of_a_missing_tool():
    absent = probes.Probe("x", {"no-such-probe-tool": "some-package"}, both_ways=False, sample="packets")
    assert absent.check() == ["no-such-probe-tool (apt-get install some-package)"]


def test_iperf3_udp_over_a_reordering_link_counts_what_came_late_and_loses_none():
    """50 Mbit/s for 3 s over the pmtu topology's AMS-LJU (reorder 1 %, 1372-byte datagrams):
    the emulator sent 196 datagrams on ahead; iperf3 counted the 4874 they overtook as out of
    order, and one interval's negative loss as 2^64 less it, a float (1.8e19). Nothing was lost."""
    output = (DATA / "iperf3-udp-reordered.json").read_text()
    intervals = json.loads(output)["server_output_json"]["intervals"]
    assert any(i["sum"]["lost_packets"] > 2**63 for i in intervals)
    samples = parse_iperf3(output, "udp", 50)
    assert samples.extra["out_of_order"] == 4874
    assert (samples.extra["packets"], samples.extra["lost_packets"], samples.lost_pct) == (13757, 0, 0.0)
    assert samples.total_mbit == pytest.approx(50, rel=0.01)
