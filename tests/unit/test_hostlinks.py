"""WAN faults across real hosts, without hosts: which pairs of hosts a fault on a link
touches, the rules and netem changes each host gets, and the order a remote testbed applies
and heals them in (its ssh calls recorded instead of made)."""

from __future__ import annotations

import pytest

from pytest_overlay.inputs import topology
from pytest_overlay.testbeds.real import hostfaults, hostlinks, hosts, remote

# A line A - B - C (no A-C link: A and C talk across B's links, as the emulator routes them).
LINE = """\
name: line
sites:
  A: {host: {ssh: root@192.0.2.1, emulate: true, interface: eth0}}
  B: {host: {ssh: root@192.0.2.2}}
  C: {host: {ssh: root@192.0.2.3, emulate: true, interface: ens3}}
links:
  - {between: [A, B], rtt_ms: 20}
  - {between: [B, C], rtt_ms: 10, loss_pct: 1}
faults:
  cut-A-B: {kind: cut, link: [A, B], seconds: 20}
  loss-B-C: {kind: loss, link: [B, C], loss_pct: 5, seconds: 20, probe: [B, C]}
  reroute-A-B: {kind: reroute, link: [A, B], add_rtt_ms: 20, seconds: 20}
  reroute-B-C: {kind: reroute, link: [B, C], add_rtt_ms: 4, seconds: 20, probe: [B, C]}
"""


@pytest.fixture
def line(tmp_path) -> topology.Topology:
    path = tmp_path / "line.yaml"
    path.write_text(LINE)
    return topology.load(path)


def test_a_cut_touches_every_pair_whose_path_crosses_the_link(line):
    pairs = {(p.src, p.dst): p for p in hostlinks.plan(line, line.faults["cut-A-B"].faulty())}
    assert set(pairs) == {("A", "B"), ("B", "A"), ("A", "C"), ("C", "A")}  # B-C is left alone
    assert all(p.drop == 1.0 and not p.delay_changed for p in pairs.values())
    # on the receiving host: what arrives from the far end vanishes, and no sender is told
    assert hostlinks.rules(line, "A", line.faults["cut-A-B"].faulty(), "abc123") == [
        ["-A", "OVL-FAULT-abc123", "-s", "192.0.2.2/32", "-j", "DROP"],
        ["-A", "OVL-FAULT-abc123", "-s", "192.0.2.3/32", "-j", "DROP"]]
    # An unencapsulated overlay's ranges at the far end are dropped as well (Calico's blocks)
    routed = {"B": ["10.48.0.64/26"], "C": ["10.48.0.128/26"]}
    assert hostlinks.rules(line, "A", line.faults["cut-A-B"].faulty(), "abc123", routed) == [
        ["-A", "OVL-FAULT-abc123", "-s", "192.0.2.2/32", "-j", "DROP"],
        ["-A", "OVL-FAULT-abc123", "-s", "10.48.0.64/26", "-j", "DROP"],
        ["-A", "OVL-FAULT-abc123", "-s", "192.0.2.3/32", "-j", "DROP"],
        ["-A", "OVL-FAULT-abc123", "-s", "10.48.0.128/26", "-j", "DROP"]]
    on_c = hostlinks.rules(line, "C", line.faults["cut-A-B"].faulty(), "abc123", routed)
    assert on_c == [["-A", "OVL-FAULT-abc123", "-s", "192.0.2.1/32", "-j", "DROP"]]  # A has no routed range
    assert hostlinks.rules(line, "B", line.faults["loss-B-C"].healthy(), "abc123", routed) == []
    assert hostlinks.receivers(line, line.faults["cut-A-B"].faulty()) == {"A", "B", "C"}


def test_a_loss_burst_drops_only_what_the_path_does_not_lose_already(line):
    """B-C loses 1 % of its own: a 5 % fault adds a drop with the chance that makes 5 % in all."""
    pairs = {(p.src, p.dst): p for p in hostlinks.plan(line, line.faults["loss-B-C"].faulty())}
    assert set(pairs) == {("B", "C"), ("C", "B"), ("A", "C"), ("C", "A")}
    assert pairs[("B", "C")].drop == pytest.approx(1 - 0.95 / 0.99)
    assert pairs[("B", "C")].healthy.loss_pct == pytest.approx(1.0)
    assert hostlinks.rules(line, "B", line.faults["loss-B-C"].faulty(), "abc123") == [
        ["-A", "OVL-FAULT-abc123", "-s", "192.0.2.3/32", "-m", "statistic", "--mode", "random",
         "--probability", "0.040404", "-j", "DROP"]]


def test_a_delay_step_needs_netem_on_every_sending_host_it_touches(line):
    assert hostlinks.unsupported(line, line.faults["cut-A-B"].faulty()) == []
    # A and C emulate; B sends to A across the rerouted link without netem of its own
    assert hostlinks.unsupported(line, line.faults["reroute-A-B"].faulty()) == [
        "the fault changes the delay from B to A (10 -> 20 ms): on real hosts a delay step needs netem there "
        "(emulate: true and an interface on B)"]


def test_scripts_apply_exactly_the_lines_jump_first_and_remove_only_the_runs_chain():
    script, restore = hostlinks.apply_script("abc123", [["-A", "OVL-FAULT-abc123", "-s", "192.0.2.2/32", "-j", "DROP"]])
    assert restore == "*raw\n:OVL-FAULT-abc123 - [0:0]\n-A OVL-FAULT-abc123 -s 192.0.2.2/32 -j DROP\nCOMMIT\n"
    assert script.splitlines()[-3:] == [
        "iptables-restore -w --noflush",
        "iptables -w -t raw -C PREROUTING -j OVL-FAULT-abc123 2>/dev/null || "
        "iptables -w -t raw -I PREROUTING 1 -j OVL-FAULT-abc123",
        "date +%s%N"]
    removal = hostlinks.remove_script("abc123")
    assert "iptables -w -t raw -D PREROUTING -j OVL-FAULT-abc123" in removal and "-X OVL-FAULT-abc123" in removal
    heal = hostlinks.heal_script("abc123").splitlines()  # stamped as the jump goes, printed last
    assert heal[0] == "iptables -w -t raw -D PREROUTING -j OVL-FAULT-abc123 2>/dev/null; healed=$(date +%s%N)"
    assert heal[1:-1] == removal.splitlines() and heal[-1] == "echo $healed"
    # Applying and removing take the run's fault mutex; a step applies only while the run holds the host.
    mutex = 'exec 8>>"/run/pytest-overlay-host/abc123/fault-mutex-$('
    assert mutex in script and mutex in removal and script.index("flock 8") < script.index("fenced: run abc123")
    assert script.index("fenced: run abc123") < script.index("iptables-restore")
    saved = ("*raw\n:PREROUTING ACCEPT [0:0]\n:OVL-FAULT-abc123 - [0:0]\n:OVL-FAULT-0f0f0f - [0:0]\n"
             ":OVL-FAULT-nothex - [0:0]\n:CNI-RAW - [0:0]\n-A PREROUTING -j OVL-FAULT-abc123\nCOMMIT\n")
    assert hostlinks.runs_in(saved) == {"abc123", "0f0f0f"}


class Calls:
    """A remote testbed's ssh calls, answered as a host would: its clock, after the step."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str, str | None]] = []
        self.fences: list[tuple[str, str | None]] = []  # each script, and the run id fencing it
        self.clock = 1_000

    def __call__(self, host, script, timeout=60, input=None, fenced=None):
        self.clock += 1
        self.made.append((host.address, script, input))
        self.fences.append((script, fenced))
        return remote.procs.CommandResult(["ssh"], 0, f"{self.clock}\n", "")


def test_a_remote_testbed_applies_a_fault_and_heals_it_host_by_host(line, tmp_path, monkeypatch):
    calls = Calls()
    monkeypatch.setattr(remote, "host_run", calls)
    monkeypatch.setattr(hostfaults, "host_run", calls)
    monkeypatch.setattr(hostfaults, "controller_path", lambda host: ("198.51.100.7", None))
    bed = remote.RemoteTestbed(line, state_root=tmp_path)
    bed.run_dir.mkdir()
    fault = line.faults["cut-A-B"]
    assert bed.fault_unsupported(fault.faulty()) is None and bed.fault_unsupported(fault.faulty()) is None
    assert sorted(a for a, s, _ in calls.made if s.startswith("iptables -w -t raw -S PREROUTING")) == [
        "192.0.2.1", "192.0.2.2", "192.0.2.3"]  # each receiver asked once
    calls.made.clear()
    probed = len(calls.fences)
    at = bed.impair(fault.faulty())
    assert at == calls.clock - 2 and sorted(a for a, _, _ in calls.made) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    on_b = next(i for a, _, i in calls.made if a == "192.0.2.2")
    assert on_b.splitlines()[2:4] == ["-A OVL-FAULT-%s -s 192.0.2.1/32 -j DROP" % bed.run_id, "COMMIT"]
    assert sorted(bed.faulted) == ["A", "B", "C"] and '"faulted"' in (bed.run_dir / "state.json").read_text()
    changes = [fenced for _, fenced in calls.fences[probed:]]
    assert changes and set(changes) == {bed.run_id}  # every change the run makes on a host is fenced
    calls.made.clear()
    assert bed.impair(fault.healthy()) == calls.clock  # a cut begins at the first host, heals at the last
    assert all(f"-X OVL-FAULT-{bed.run_id}" in s for _, s, _ in calls.made) and len(calls.made) == 3
    assert bed.faulted == [] and bed.impaired == {}
    calls.made.clear()
    bed.impair(fault.healthy())  # healed already: nothing to do on any host
    assert calls.made == []


def test_a_delay_step_changes_the_netem_of_the_emulating_hosts(line, tmp_path, monkeypatch):
    calls = Calls()
    monkeypatch.setattr(remote, "host_run", calls)
    monkeypatch.setattr(hostfaults, "host_run", calls)
    monkeypatch.setattr(hostfaults, "controller_path", lambda host: ("198.51.100.7", None))
    bed = remote.RemoteTestbed(line, state_root=tmp_path)
    bed.run_dir.mkdir()
    with pytest.raises(remote.RemoteError, match="from B to A"):  # B does not emulate
        bed.impair(line.faults["reroute-A-B"].faulty())
    assert calls.made == [] and bed.impaired == {}
    reroute = line.faults["reroute-B-C"]
    assert "from B to C" in bed.fault_unsupported(reroute.faulty())
    assert calls.made == []  # no drop: no host is asked about its iptables
    # C's side of the step alone: C sends to B (its second destination) and to A across it
    bed.impair({"C->B": reroute.faulty()["C->B"]})
    handle = hostlinks.qdisc_handle(bed.run_id)
    assert sorted((a, s.splitlines()[0]) for a, s, _ in calls.made) == [
        ("192.0.2.3", f"tc qdisc change dev ens3 parent {handle}:10 handle 10: netem limit 100000 delay 17ms loss 1%"),
        ("192.0.2.3", f"tc qdisc change dev ens3 parent {handle}:11 handle 11: netem limit 100000 delay 7ms loss 1%")]
    assert bed.faulted == []  # no loss: no chain
    calls.made.clear()
    bed.impair(reroute.healthy())
    assert sorted((a, s.splitlines()[0]) for a, s, _ in calls.made) == [
        ("192.0.2.3", f"tc qdisc change dev ens3 parent {handle}:10 handle 10: netem limit 100000 delay 15ms loss 1%"),
        ("192.0.2.3", f"tc qdisc change dev ens3 parent {handle}:11 handle 11: netem limit 100000 delay 5ms loss 1%")]


def test_emulation_gives_each_destination_its_path(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nsites:\n  A: {host: {ssh: root@192.0.2.1, emulate: true, interface: eth0}}\n"
                    "  B: {host: {ssh: root@192.0.2.2}}\n  C: {host: {ssh: root@192.0.2.3}}\nlinks:\n"
                    "  - {between: [A, B], rtt_ms: 20, jitter_ms: 0.5, loss_pct: 1, rate_mbit: 100}\n"
                    "  - {between: [B, C], rtt_ms: 10, loss_pct: 1}\n")
    topo = topology.load(path)
    commands = [" ".join(c) for c in hostlinks.netem_commands(topo, "A", topo.sites["A"].host)]
    assert commands[:2] == ["tc qdisc replace dev eth0 root handle 1: htb default 1",
                            "tc class add dev eth0 parent 1: classid 1:1 htb rate 100gbit"]
    assert "tc qdisc add dev eth0 parent 1:10 handle 10: netem limit 100000 delay 10ms 0.5ms loss 1%" in commands
    assert "tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst 192.0.2.2/32 flowid 1:10" in commands
    # A to C crosses both links: the delays add up, the losses compound, the slowest rate holds
    assert "tc class add dev eth0 parent 1: classid 1:11 htb rate 100mbit" in commands
    assert "tc qdisc add dev eth0 parent 1:11 handle 11: netem limit 100000 delay 15ms 0.5ms loss 1.99%" in commands
    marked = [" ".join(c) for c in hostlinks.netem_commands(topo, "A", topo.sites["A"].host, hostlinks.qdisc_handle("3714ed"))]
    assert marked[0] == "tc qdisc replace dev eth0 root handle 1371: htb default 1"  # the run's, as clean checks
    assert all(" parent 1:" not in c for c in marked) and all(" parent 1371:" in c for c in marked[1:])


def test_the_runs_root_handle_is_never_one_of_its_netem_handles():
    """The root's major comes from the run id; the netem under its classes take 10: and up,
    one per other site (at most 199): run 0010ab once got root 10:, the netem's own handle."""
    children = {int(hostlinks.netem_class(_star(200), "S0", other, "1").split(":")[1], 16)
                for other in [f"S{i}" for i in range(1, 200)]}
    roots = {int(hostlinks.qdisc_handle(f"{prefix:03x}abc"), 16) for prefix in range(0x1000)}
    assert not roots & children and min(roots) > 0 and max(roots) < 0xFFFF
    assert hostlinks.qdisc_handle("0010ab") != "10"


def _star(n: int) -> topology.Topology:
    sites = {f"S{i}": {"host": {"ssh": f"root@10.0.{i // 250}.{i % 250 + 1}"}} for i in range(n)}
    links = [{"between": ["S0", f"S{i}"], "rtt_ms": 10} for i in range(1, n)]
    return topology.parse({"name": "star", "sites": sites, "links": links}, "star.yaml")
    assert hosts.as_root("tc qdisc del dev eth0 root") == (
        "if [ \"$(id -u)\" -eq 0 ]; then sh -ec 'tc qdisc del dev eth0 root'; "
        "else sudo -n sh -ec 'tc qdisc del dev eth0 root'; fi")


def test_a_fault_that_would_cut_this_machines_own_path_to_a_host_is_refused(line, tmp_path, monkeypatch):
    """The controller seen by B at A's address (it is site A, or NATed through it), or reaching
    A through B: a cut of A-B would have B drop the heal, or A's answers; refused before any
    host is touched, naming the address or the route. A cut elsewhere goes ahead."""
    calls = Calls()
    monkeypatch.setattr(remote, "host_run", calls)
    monkeypatch.setattr(hostfaults, "host_run", calls)
    paths = {"192.0.2.1": ("192.0.2.1", None), "192.0.2.2": ("192.0.2.1", None), "192.0.2.3": ("192.0.2.1", None)}
    monkeypatch.setattr(hostfaults, "controller_path", lambda host: paths[host.address])
    bed = remote.RemoteTestbed(line, state_root=tmp_path)
    bed.run_dir.mkdir()
    cut = line.faults["cut-A-B"].faulty()
    why = bed.fault_unsupported(cut)
    assert "B sees this machine at 192.0.2.1, the address of A, whose packets the fault has B drop" in why
    with pytest.raises(remote.RemoteError, match="the heal could not reach B"):
        bed.impair(cut)
    assert not [s for _, s, _ in calls.made if s.startswith("iptables-restore")] and bed.faulted == []
    bed2 = remote.RemoteTestbed(line, state_root=tmp_path)
    paths.update({"192.0.2.1": ("198.51.100.7", "192.0.2.2"), "192.0.2.2": ("198.51.100.7", None),
                  "192.0.2.3": ("198.51.100.7", None)})
    assert "this machine reaches A through B (its route via 192.0.2.2)" in bed2.fault_unsupported(cut)
    loss = line.faults["loss-B-C"].faulty()  # neither B nor C is on this machine's way to the other
    assert bed2.fault_unsupported(loss) is None


def test_a_host_that_fails_a_fault_step_still_gets_the_heals_netem(line, tmp_path, monkeypatch):
    """C's ssh fails as the reroute goes on: the step fails, but the heal still sets C's netem
    back (it may have taken the step before failing to answer)."""
    calls = Calls()
    failing = {"192.0.2.3"}

    def flaky(host, script, timeout=60, input=None, fenced=None):
        done = calls(host, script, timeout, input, fenced)
        return remote.procs.CommandResult(["ssh"], 255, "", "Connection reset") if host.address in failing else done

    monkeypatch.setattr(remote, "host_run", flaky)
    monkeypatch.setattr(hostfaults, "host_run", flaky)
    bed = remote.RemoteTestbed(line, state_root=tmp_path)
    bed.run_dir.mkdir()
    reroute = line.faults["reroute-B-C"]
    with pytest.raises(remote.RemoteError, match="host C: the fault's step failed"):
        bed.impair({"C->B": reroute.faulty()["C->B"]})
    failing.clear()
    calls.made.clear()
    bed.impair(reroute.healthy())
    handle = hostlinks.qdisc_handle(bed.run_id)
    assert sorted((a, s.splitlines()[0]) for a, s, _ in calls.made) == [
        ("192.0.2.3", f"tc qdisc change dev ens3 parent {handle}:10 handle 10: netem limit 100000 delay 15ms loss 1%"),
        ("192.0.2.3", f"tc qdisc change dev ens3 parent {handle}:11 handle 11: netem limit 100000 delay 5ms loss 1%")]


def test_a_fault_step_asks_the_host_to_remove_it_by_itself_after_its_hold():
    """The chain's timer: started in its own session with the run's marker, replacing the
    last step's, its pid kept where the heal and the lock's far end find it."""
    script, _ = hostlinks.apply_script("abc123", [["-A", "OVL-FAULT-abc123", "-j", "DROP"]], hold_s=42.4)
    assert "setsid sh -c 'sleep 42; while iptables -w -t raw -D PREROUTING -j OVL-FAULT-abc123" in script
    assert "ovl-fault-timer-abc123 >/dev/null 2>&1 </dev/null 8>&- &" in script
    assert script.index("kill -- -$p") < script.index("setsid")  # the last step's timer goes first
    assert "kill -- -$p" in hostlinks.remove_script("abc123") and "kill" not in hostlinks.apply_script("abc123", [])[0]
