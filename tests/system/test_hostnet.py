"""What an overlay adds to a real host's network, undone exactly: on a throw-away namespace
that already has "someone else's" Flannel (a Kubernetes node's chains, rule and route), the
rules, chains, device and routes Flannel 0.19 adds are made with the real iptables and ip,
and the undo hostnet computes from the two readings leaves the namespace as it was, the
neighbour's Flannel included; a rule comment holding shell syntax is never run."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from pytest_overlay import procs
from pytest_overlay.overlays.flannel import HOST_FOOTPRINT
from pytest_overlay.testbeds import hostnet

# A Kubernetes node's own Flannel (10.244.0.0/16), there before the run.
NEIGHBOUR = [
    ["iptables", "-w", "-N", "FLANNEL-FWD"],
    ["iptables", "-w", "-A", "FLANNEL-FWD", "-s", "10.244.0.0/16", "-m", "comment", "--comment",
     "flanneld forward", "-j", "ACCEPT"],
    ["iptables", "-w", "-A", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD"],
    ["iptables", "-w", "-t", "nat", "-N", "FLANNEL-POSTRTG"],
    ["iptables", "-w", "-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", "10.244.0.0/16", "-d", "10.244.0.0/16",
     "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN"],
    ["ip", "route", "add", "blackhole", "10.40.9.0/24"],  # inside our range, but not ours
]
# What our flanneld adds (its chains exist already: it appends to them), and one more chain.
OURS = [
    ["iptables", "-w", "-A", "FLANNEL-FWD", "-s", "10.40.0.0/16", "-m", "comment", "--comment",
     "flanneld forward", "-j", "ACCEPT"],
    ["iptables", "-w", "-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", "10.40.0.0/16", "!", "-d", "224.0.0.0/4",
     "-m", "comment", "--comment", "flanneld masq", "-j", "MASQUERADE", "--random-fully"],
    ["iptables", "-w", "-N", "FLANNEL-EXTRA"],
    ["iptables", "-w", "-A", "FLANNEL-EXTRA", "-m", "comment", "--comment", "$(touch /tmp/{witness})", "-j", "RETURN"],
    ["iptables", "-w", "-I", "FORWARD", "1", "-j", "FLANNEL-EXTRA"],
    ["ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dstport", "8472", "nolearning"],
    ["ip", "link", "set", "flannel.1", "up"],
    ["ip", "addr", "add", "10.40.1.0/32", "dev", "flannel.1"],
    ["ip", "route", "add", "10.40.3.0/24", "via", "10.40.3.0", "dev", "flannel.1", "onlink"],
    ["ip", "route", "add", "10.40.4.0/24", "via", "10.40.3.0", "dev", "flannel.1", "onlink", "metric", "7"],
]


@pytest.fixture
def namespace():
    """Name: namespace. Scope: function. A fresh network namespace with nothing in it, for
    iptables and ip to change; deleted afterwards."""
    name = f"ovl{uuid.uuid4().hex[:6]}-hostnet"
    procs.run(["ip", "netns", "add", name]).check()
    try:
        procs.run(["ip", "link", "set", "lo", "up"], name).check()
        yield name
    finally:
        procs.run(["ip", "netns", "del", name])


def reading(netns: str) -> str:
    done = procs.run(["sh", "-c", hostnet.SNAPSHOT_SCRIPT], netns)
    done.check()
    return "\n".join(line for line in done.stdout.splitlines() if not line.startswith("# "))  # iptables-save's dates


def test_only_what_the_run_added_is_removed(namespace, clean_machine):
    witness = f"hostnet-{uuid.uuid4().hex[:8]}"
    for command in NEIGHBOUR:
        procs.run(command, namespace).check()
    before = reading(namespace)
    for command in OURS:
        procs.run([part.format(witness=witness) for part in command], namespace).check()
    after = reading(namespace)
    assert after != before

    commands = hostnet.undo(hostnet.Snapshot.parse(before), hostnet.Snapshot.parse(after), HOST_FOOTPRINT)
    done = procs.run(["sh", "-c", hostnet.script(commands)], namespace)
    assert done.ok and "failed" not in done.stdout, (done.stdout, done.stderr, commands)

    assert reading(namespace) == before  # the neighbour's chains, rules and route exactly as they were
    assert not Path(f"/tmp/{witness}").exists()  # the comment was data, never a command
    again = hostnet.undo(hostnet.Snapshot.parse(before), hostnet.Snapshot.parse(reading(namespace)), HOST_FOOTPRINT)
    assert again == []


def test_what_another_overlay_adds_is_not_ours_to_remove(namespace, clean_machine):
    """A footprint claims only its own: Weave's undo leaves Flannel's additions alone."""
    from pytest_overlay.overlays.weave import HOST_FOOTPRINT as WEAVE

    before = reading(namespace)
    for command in NEIGHBOUR:
        procs.run(command, namespace).check()
    assert hostnet.undo(hostnet.Snapshot.parse(before), hostnet.Snapshot.parse(reading(namespace)), WEAVE) == []


def test_a_veth_pair_is_undone_without_a_failure_for_its_second_end(namespace, clean_machine):
    """Weave's vethwe-bridge and vethwe-pcap are one veth pair: removing one removes both, and
    the other's removal is not a failure (a failure keeps the run's state for `clean`)."""
    from pytest_overlay.overlays.weave import HOST_FOOTPRINT as WEAVE

    before = reading(namespace)
    for command in (["ip", "link", "add", "weave", "type", "bridge"],
                    ["ip", "link", "add", "vethwe-bridge", "type", "veth", "peer", "name", "vethwe-pcap"],
                    ["ip", "link", "set", "vethwe-bridge", "master", "weave"]):
        procs.run(command, namespace).check()
    commands = hostnet.undo(hostnet.Snapshot.parse(before), hostnet.Snapshot.parse(reading(namespace)), WEAVE)
    assert sorted(c[-1] for c in commands) == ["vethwe-bridge", "vethwe-pcap", "weave"]
    done = procs.run(["sh", "-c", hostnet.script(commands)], namespace)
    assert done.ok and done.stdout == "", done.stdout
    assert reading(namespace) == before


def test_each_overlay_of_a_run_keeps_its_own_reading_of_the_host(namespace, tmp_path, monkeypatch, clean_machine):
    """Flannel's teardown left its reading for `clean`; the run's next overlay (Weave) read the
    same host after it. Flannel's reading is still there, and undoing by it leaves the host as
    it was before Flannel; Weave's stays for its own teardown. (The host is the namespace.)"""
    from pytest_overlay.overlays.weave import HOST_FOOTPRINT as WEAVE
    from pytest_overlay.testbeds.real import hosts

    monkeypatch.setattr(hosts, "HOST_STATE", str(tmp_path))
    monkeypatch.setattr(hosts, "host_run", lambda host, script, timeout=60, input=None: procs.run(
        ["sh", "-ec", script], namespace, timeout=timeout, input=input))
    for command in NEIGHBOUR:
        procs.run(command, namespace).check()
    before = reading(namespace)
    hosts.record_host_network(None, "abc123", "A", "flannel", "10.40.0.0/16")
    for command in OURS:
        procs.run([part.format(witness="never") for part in command], namespace).check()
    hosts.record_host_network(None, "abc123", "A", "weave", None)
    readings = tmp_path / "abc123" / "host"
    assert sorted(p.name for p in readings.iterdir()) == ["net-A.flannel.before", "net-A.weave.before"]
    assert hosts.undo_host_network(None, "abc123", "A", {"flannel": HOST_FOOTPRINT, "weave": WEAVE}.get,
                                   "flannel") == []
    assert reading(namespace) == before
    assert [p.name for p in readings.iterdir()] == ["net-A.weave.before"]
