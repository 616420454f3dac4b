"""A WAN fault's rules on a real host's iptables, in throw-away namespaces: host A one veth
from host B, with a workload behind A (routed, as Calico's are) and one in B's workload
range. A cut on B stops what arrives from A's address and from A's workload range, whether
for B itself or routed on, without failing any sender's send; a loss burst drops about its
share; and the removal leaves the rules exactly as they were."""

from __future__ import annotations

import re
import time
import uuid

import pytest

from pytest_overlay import procs
from pytest_overlay.inputs import topology
from pytest_overlay.testbeds.real import hostlinks
from pytest_overlay.testbeds.real import hosts as hosts_module

TOPOLOGY = """\
name: pair
sites:
  A: {host: {ssh: root@192.0.2.1}}
  B: {host: {ssh: root@192.0.2.2}}
links:
  - {between: [A, B], rtt_ms: 20}
faults:
  cut-A-B: {kind: cut, link: [A, B], seconds: 20}
  loss-A-B: {kind: loss, link: [A, B], loss_pct: 50, seconds: 20}
"""
B_RANGE = "10.99.0.0/26"  # B's workloads, routed without a tunnel


@pytest.fixture
def hosts(tmp_path):
    """Name: hosts. Scope: function. Namespaces a (host A), b (host B: B_RANGE on its lo, a
    neighbour's raw chain jumped to from PREROUTING) and w (a workload routed through a); the
    topology naming A and B; all deleted afterwards."""
    tag = uuid.uuid4().hex[:6]
    names = {k: f"ovl{tag}-hf{k}" for k in "abw"}
    a, b, w = names["a"], names["b"], names["w"]
    try:
        for name in names.values():
            procs.run(["ip", "netns", "add", name]).check()
            procs.run(["ip", "link", "set", "lo", "up"], name).check()
        for command, netns in (
                (["ip", "link", "add", "hfab", "netns", a, "type", "veth", "peer", "name", "hfba", "netns", b], None),
                (["ip", "link", "add", "hfaw", "netns", a, "type", "veth", "peer", "name", "hfwa", "netns", w], None),
                (["ip", "addr", "add", "192.0.2.1/24", "dev", "hfab"], a),
                (["ip", "addr", "add", "10.98.0.1/24", "dev", "hfaw"], a),
                (["ip", "addr", "add", "192.0.2.2/24", "dev", "hfba"], b),
                (["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"], b),
                (["ip", "addr", "add", "10.98.0.2/24", "dev", "hfwa"], w),
                (["ip", "link", "set", "hfab", "up"], a), (["ip", "link", "set", "hfaw", "up"], a),
                (["ip", "link", "set", "hfba", "up"], b), (["ip", "link", "set", "hfwa", "up"], w),
                (["ip", "route", "add", "default", "via", "10.98.0.1"], w),
                (["ip", "route", "add", B_RANGE, "via", "192.0.2.2"], a),
                (["ip", "route", "add", "10.98.0.0/24", "via", "192.0.2.1"], b),
                (["sysctl", "-qw", "net.ipv4.ip_forward=1"], a),
                # a neighbour's rules on host B, there before the run (as Docker's are)
                (["iptables", "-w", "-t", "raw", "-N", "DOCKER-RAW"], b),
                (["iptables", "-w", "-t", "raw", "-A", "DOCKER-RAW", "-d", "10.99.0.9/32", "-j", "DROP"], b),
                (["iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-j", "DOCKER-RAW"], b),
                (["iptables", "-w", "-A", "FORWARD", "-j", "ACCEPT"], b)):
            procs.run(command, netns).check()
        path = tmp_path / "pair.yaml"
        path.write_text(TOPOLOGY)
        hold(b, "run abc123 from this test")  # the run holds B: its steps are not fenced
        yield topology.load(path), names
    finally:
        procs.run(["sh", "-c", f'rm -f "{hosts_module.lock_file()}"'], b)
        for name in names.values():
            procs.run(["ip", "netns", "del", name])


def hold(netns: str, holder: str) -> None:
    """Write the host's lock file (hostlock.py) as its holder would."""
    procs.run(["sh", "-ec", f'umask 077; mkdir -p {hosts_module.LOCKS}; echo "$0" > "{hosts_module.lock_file()}"',
               holder], netns).check()


def rules_of(netns: str) -> str:
    return "\n".join(line for line in procs.run(["iptables-save"], netns).check().stdout.splitlines()
                     if not line.startswith("#"))


def ping(netns: str, address: str, count: int = 3, interval: str = "0.2") -> tuple[int, str]:
    """Replies received, and what ping said on stderr (a send refused locally shows there)."""
    done = procs.run(["ping", "-n", "-q", "-c", str(count), "-i", interval, "-W", "1", address], netns, timeout=60)
    return int(re.search(r"(\d+) received", done.stdout).group(1)), done.stderr


def replies(netns: str, address: str, count: int = 3, interval: str = "0.2") -> int:
    return ping(netns, address, count, interval)[0]


def apply(topo, fault: str, netns: str, routed: dict[str, list[str]]) -> None:
    lines = hostlinks.rules(topo, "B", topo.faults[fault].faulty(), "abc123", routed)
    script, restore = hostlinks.apply_script("abc123", lines)
    done = procs.run(["sh", "-ec", script], netns, input=restore)
    assert done.ok and done.stdout.strip().isdigit(), (done.stdout, done.stderr)


def test_a_cut_stops_what_arrives_from_the_far_host_and_goes_without_a_trace(hosts, clean_machine):
    topo, ns = hosts
    routed = {"A": ["10.98.0.0/24"]}  # the workloads behind A
    assert replies(ns["a"], "192.0.2.2") == 3 and replies(ns["w"], "10.99.0.1") == 3
    before = rules_of(ns["b"])
    apply(topo, "cut-A-B", ns["b"], routed)
    apply(topo, "cut-A-B", ns["b"], routed)  # a flap's second fault: the same rules, one jump
    assert procs.run(["iptables", "-w", "-t", "raw", "-S", "PREROUTING"], ns["b"]).stdout.count("-j OVL-FAULT-") == 1
    got, said = ping(ns["a"], "192.0.2.2")
    assert got == 0 and "not permitted" not in said, said  # lost on the way: the sender is not told
    assert replies(ns["w"], "10.99.0.1") == 0  # a routed workload's packets (Calico's model)
    assert replies(ns["b"], "192.0.2.1") == 0  # B's requests reach A, A's replies do not arrive
    assert hostlinks.runs_in(procs.run(["iptables-save", "-t", "raw"], ns["b"]).stdout) == {"abc123"}
    removed = procs.run(["sh", "-ec", hostlinks.remove_script("abc123")], ns["b"])
    assert removed.ok and removed.stdout.strip() == "removed", (removed.stdout, removed.stderr)
    assert rules_of(ns["b"]) == before  # the neighbour's chain and jump as they were
    assert replies(ns["a"], "192.0.2.2") == 3 and replies(ns["w"], "10.99.0.1") == 3
    again = procs.run(["sh", "-ec", hostlinks.remove_script("abc123")], ns["b"])
    assert again.ok and again.stdout == ""  # nothing left to remove, and no failure for it


def test_a_step_that_arrives_after_the_host_let_the_run_go_changes_nothing(hosts, clean_machine):
    """Fencing: once the lock says the run's lease lapsed, a fault step of that run (one in
    flight when the controller vanished) is refused under the fault mutex, exit FENCED, and
    leaves the host's firewall as it was."""
    topo, ns = hosts
    before = rules_of(ns["b"])
    hold(ns["b"], "expired: run abc123 lost its controller (lapsed) at 2026-12-07T23:00:00Z")
    lines = hostlinks.rules(topo, "B", topo.faults["cut-A-B"].faulty(), "abc123", {})
    script, restore = hostlinks.apply_script("abc123", lines)
    done = procs.run(["sh", "-ec", script], ns["b"], input=restore)
    assert done.rc == hosts_module.FENCED and "fenced: run abc123 no longer holds this host" in done.stderr
    assert rules_of(ns["b"]) == before
    procs.run(["sh", "-ec", hostlinks.remove_script("abc123")], ns["b"]).check()  # its mutex file goes too


def test_a_fault_timer_does_not_hold_the_fault_mutex(hosts, clean_machine):
    """A step held 300 s leaves a timer running in the background; removing the chain takes
    the mutex at once all the same (the timer closed it), and ends the timer."""
    topo, ns = hosts
    lines = hostlinks.rules(topo, "B", topo.faults["cut-A-B"].faulty(), "abc123", {})
    script, restore = hostlinks.apply_script("abc123", lines, hold_s=300)
    procs.run(["sh", "-ec", script], ns["b"], input=restore).check()
    removed = procs.run(["sh", "-ec", hostlinks.remove_script("abc123")], ns["b"], timeout=10)
    assert removed.ok and removed.stdout.strip() == "removed", (removed.stdout, removed.stderr)
    assert hostlinks.runs_in(procs.run(["iptables-save", "-t", "raw"], ns["b"]).stdout) == set()


def test_a_loss_burst_drops_about_its_share(hosts, clean_machine):
    topo, ns = hosts
    apply(topo, "loss-A-B", ns["b"], {})
    got = replies(ns["a"], "192.0.2.2", count=400, interval="0.002")
    before = time.time_ns()
    healed = procs.run(["sh", "-ec", hostlinks.heal_script("abc123")], ns["b"]).check()
    assert healed.stdout.split()[0] == "removed" and before <= int(healed.stdout.split()[-1]) <= time.time_ns()
    assert 130 <= got <= 270, got  # 200 expected of 400 at 50 %; the bounds are 7 standard deviations
    assert replies(ns["a"], "192.0.2.2") == 3
