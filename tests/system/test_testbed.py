"""The emulated testbed on this machine's real kernel: namespaces, routes, the link
emulator's delay, loss, rate and counters, and a teardown that leaves nothing."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

from pytest_overlay import procs
from pytest_overlay.emulation import emulator
from pytest_overlay.inputs import topology
from pytest_overlay.measure import probes, runqueue, validity
from pytest_overlay.overlays.host import HostOverlay
from pytest_overlay.results import Stats
from pytest_overlay.results.thresholds import load
from pytest_overlay.testbeds.emulated import EmulatedTestbed

from ..conftest import STARVED_SKIP, on_the_machines_time, wait_for


def two_sites(**link) -> topology.Topology:
    return topology.parse({"name": "pair", "sites": {"A": {}, "B": {}},
                           "links": [{"between": ["A", "B"], **link}]}, "<test>")


def ping_min(bed: EmulatedTestbed, src: str, dst: str, count: int = 5) -> float:
    """The least of a few round trips: the path's delay, whatever this VM's scheduling adds
    to the others (the delay line can release late, never early)."""
    out = bed.run(src, ["ping", "-q", "-n", "-c", str(count), "-i", "0.05", bed.address(dst)]).check().stdout
    return float(re.search(r"= ([\d.]+)/[\d.]+/", out).group(1))


def test_geant_comes_up_sealed_and_goes_away(clean_machine):
    geant = topology.load("geant")
    bed = EmulatedTestbed(geant)
    with bed:
        assert sorted(bed.created) == sorted([f"ovl{bed.run_id}-{s}" for s in geant.sites] + [f"ovl{bed.run_id}-wan"])
        for circuit in geant.circuits:
            rtt = geant.expected(circuit)["rtt_ms"]
            assert ping_min(bed, circuit.src, circuit.dst) == pytest.approx(rtt, abs=1.0), circuit
        for site in geant.sites:
            # No route out: the testbed can only reach itself.
            assert not bed.run(site, ["ip", "route", "get", "192.0.2.1"]).ok
            sysctls = bed.sites[site].sysctls
            worst_rtt_s = max(geant.expected(topology.Circuit(site, o))["rtt_ms"] for o in geant.sites if o != site) / 1e3
            assert int(sysctls["net.ipv4.tcp_rmem"].split()[2]) >= 2 * 1000e6 / 8 * worst_rtt_s  # 2 × BDP
            shown = bed.run(site, ["sysctl", "-n", "net.ipv4.tcp_rmem"]).check().stdout.split()
            assert shown == sysctls["net.ipv4.tcp_rmem"].split()
    bed.down()  # twice is safe


def test_unlinked_sites_route_through_the_hub(clean_machine):
    star = topology.load("geant-star")
    with EmulatedTestbed(star) as bed:
        assert ping_min(bed, "AMS", "MIL") == pytest.approx(17.7 + 13.0, abs=1.0)


def test_loss_is_emulated_counted_and_not_a_fault(clean_machine):
    with EmulatedTestbed(two_sites(rtt_ms=2, loss_pct=20)) as bed:
        a, b = HostOverlay(bed).endpoints(["A", "B"])
        before = bed.emulator_counters(reset=True)
        samples = probes.LATENCY.run(a, b, 300, 2)
        accrued = emulator.delta(before, bed.emulator_counters())
    # Each round trip crosses two lossy directions: 1 - 0.8 ** 2 = 36 % lost.
    assert 0.25 < samples.lost / samples.sent < 0.47
    assert accrued["A->B"]["lost"] > 0 and accrued["B->A"]["lost"] > 0
    assert not [f for f in emulator.faults(accrued) if "dropped" in f]  # emulated loss is no fault


def test_rate_is_shaped(clean_machine):
    with on_the_machines_time():
        with EmulatedTestbed(two_sites(rtt_ms=4, rate_mbit=50)) as bed:
            a, b = HostOverlay(bed).endpoints(["A", "B"])
            tcp = probes.TCP.run(a, b, 2)
        assert 35 < tcp.total_mbit < 52


def test_jitter_spreads_rtt_without_reordering(clean_machine):
    """±2 ms each way on a 10 ms RTT: the round trips spread, and their median stays at the
    RTT (the rule that never reorders holds a packet behind an earlier one due later: with a
    request every 2 ms that lifts the median by about 0.2 ms, by simulation of the rule).
    Round trips the emulator released late (this VM's steal), or whose probe waited for a
    CPU, are left out, as the product does: the subject is the jitter, not the machine; too
    many left out and it skips as starved."""
    with EmulatedTestbed(two_sites(rtt_ms=10, jitter_ms=2)) as bed:
        a, b = HostOverlay(bed).endpoints(["A", "B"])
        before = bed.emulator_counters(reset=True)
        started = time.time_ns()
        samples = probes.LATENCY.run(a, b, 300, 2)
        accrued = emulator.delta(before, bed.emulator_counters(since=started))
    accounting = validity.account("latency", accrued, [validity.Hop("A->B", 5.0, 2.0)],
                                  [validity.Hop("B->A", 5.0, 2.0)], samples, load().for_("validity", "host", "A-B"))
    kept = [rtt for rtt, keep in zip(samples.rtt_ms, accounting.kept) if keep]
    if len(kept) < 200 and validity.load_related(accounting.faults):
        pytest.skip(f"{STARVED_SKIP}{accounting.faults[0]}")
    assert len(kept) >= 200, accounting.to_json()
    stats = Stats.of(kept)
    assert stats.stdev > 0.5
    assert stats.p50 == pytest.approx(10.2, abs=1.0)


def test_overflow_is_counted_and_makes_the_measurement_invalid(clean_machine, monkeypatch):
    monkeypatch.setattr(emulator, "queue_packets", lambda direction: 32)
    with EmulatedTestbed(two_sites(rtt_ms=40), emulator="delayline") as bed:
        a, b = HostOverlay(bed).endpoints(["A", "B"])
        before = bed.emulator_counters(reset=True)
        started = time.time_ns()
        samples = probes.UDP.run(a, b, 1, udp_rate_mbit=200)
        accrued = emulator.delta(before, bed.emulator_counters(since=started))
    assert accrued["A->B"]["dropped"] > 0
    assert any("queue overflow" in fault for fault in emulator.faults(accrued))
    # The drops are on the timeline too, so the intervals they fell in are left out, and the
    # loss figure, which they would swell, is INVALID.
    assert sum(w[3] for w in accrued["A->B"]["windows"]) > 0
    accounting = validity.account("udp", accrued, [validity.Hop("A->B", 20.0)], [validity.Hop("B->A", 20.0)],
                                  samples, load().for_("validity", "host", "A-B"))
    assert accounting.excluded >= 1 and accounting.loss_faults and "queue overflow" in accounting.loss_faults[0]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: the delay line cannot have one of its own")
def test_a_udp_receiver_is_kept_off_the_delay_lines_cpu_and_its_own_drops_are_not_the_paths(clean_machine):
    """The delay line holds a CPU of its own and the UDP receiver is kept to the others. A
    receiver that stops reading (stopped by signal for 1 s of a 200 Mbit/s flow) makes its
    socket drop datagrams: counted in its namespace, and the loss figure says they are its."""
    with EmulatedTestbed(two_sites(rtt_ms=10), emulator="delayline") as bed:
        a, b = HostOverlay(bed).endpoints(["A", "B"])
        delay_line = bed.emulator.daemons[0].popen.pid
        assert os.sched_getaffinity(delay_line) == bed.emulator.cpus and len(bed.emulator.cpus) == 1
        cpus = bed.probe_cpus()
        assert cpus and not cpus & bed.emulator.cpus
        quiet = probes.UDP.run(a, b, 1, udp_rate_mbit=100, receiver_cpus=cpus)
        assert quiet.extra["receiver_cpus"] == sorted(cpus) and quiet.extra["receiver_socket_dropped"] >= 0

        def stop_the_receiver() -> None:
            client = runqueue.Side("client", "iperf3", "-c", a.netns_inode())
            wait_for(lambda: runqueue.find(client), "the iperf3 client started", timeout=20, every=0.01)
            time.sleep(1.5)  # from the client's start: its warm-up second, and into the measured part
            server = runqueue.Side("server", "iperf3", "-s", b.netns_inode())
            pids = runqueue.find(server)
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(1.0)
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

        stopper = threading.Thread(target=stop_the_receiver)
        stopper.start()
        samples = probes.UDP.run(a, b, 3, udp_rate_mbit=200, receiver_cpus=cpus)
        stopper.join()
    assert samples.extra["receiver_socket_dropped"] > 1000 and samples.extra["lost_packets"] > 1000
    accounting = validity.account("udp", {"A->B": {"windows": []}, "B->A": {"windows": []}},
                                  [validity.Hop("A->B", 5.0)], [validity.Hop("B->A", 5.0)], samples,
                                  load().for_("validity", "host", "A-B"))
    assert accounting.loss_faults and "receiver's socket dropped" in accounting.loss_faults[0]
    assert accounting.faults and validity.load_related(accounting.faults + accounting.loss_faults)


def test_netem_where_the_kernel_has_it(clean_machine):
    with EmulatedTestbed(two_sites(rtt_ms=10), emulator="none") as bed:
        has_netem, why = emulator.netem_available(bed.wan)
    if has_netem:
        with EmulatedTestbed(two_sites(rtt_ms=10), emulator="netem") as bed:
            assert bed.emulator.kind == "netem"
            assert ping_min(bed, "A", "B") == pytest.approx(10, abs=1.0)
    else:
        assert why.startswith("kernel lacks sch_netem")
        with pytest.raises(RuntimeError, match="--overlay-emulator=netem, but the kernel lacks sch_netem"):
            EmulatedTestbed(two_sites(rtt_ms=10), emulator="netem").__enter__()
        with EmulatedTestbed(two_sites(rtt_ms=10)) as bed:
            assert bed.emulator.kind == "delayline"


def test_no_emulation_is_plain_forwarding(clean_machine):
    with EmulatedTestbed(two_sites(rtt_ms=50), emulator="none") as bed:
        assert ping_min(bed, "A", "B") < 5


def test_failed_command_shows_command_exit_code_and_output():
    result = procs.run(["ip", "link", "show", "no-such-device-here"])
    with pytest.raises(procs.CommandError) as error:
        result.check()
    message = str(error.value)
    assert "exit 1" in message and "ip link show no-such-device-here" in message and "does not exist" in message


def test_every_site_has_its_loopback_up_for_the_daemons_that_listen_there(clean_machine):
    """etcd's peer URL and Weave's HTTP control listen on 127.0.0.1 in the site's namespace."""
    from pytest_overlay.inputs import topology as topologies
    from pytest_overlay.testbeds.emulated import EmulatedTestbed

    with EmulatedTestbed(topologies.load("local"), emulator="none") as bed:
        shown = bed.run("A", ["ip", "-o", "-4", "address", "show", "dev", "lo"]).check().stdout
    assert "inet 127.0.0.1/8" in shown and f"inet {bed.address('A')}/32" in shown, shown
