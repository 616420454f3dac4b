"""hostnet on captured readings of a real namespace (tests/unit/data/hostnet-*.txt, made by the
system test's commands): a Kubernetes node's Flannel there before, ours added after."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pytest_overlay.overlays.calico import HOST_FOOTPRINT as CALICO
from pytest_overlay.overlays.flannel import HOST_FOOTPRINT as FLANNEL
from pytest_overlay.overlays.weave import HOST_FOOTPRINT as WEAVE
from pytest_overlay.testbeds import hostnet

DATA = Path(__file__).parent / "data"
BEFORE = hostnet.Snapshot.parse((DATA / "hostnet-before.txt").read_text())
AFTER = hostnet.Snapshot.parse((DATA / "hostnet-after.txt").read_text())


def test_a_reading_holds_chains_rules_links_and_routes():
    assert AFTER.chains["filter"] == ["INPUT", "FORWARD", "OUTPUT", "FLANNEL-EXTRA", "FLANNEL-FWD"]
    assert '-A FLANNEL-EXTRA -m comment --comment "$(touch /tmp/witness)" -j RETURN' in AFTER.rules["filter"]
    assert AFTER.links == ["lo", "flannel.1"] and BEFORE.links == ["lo"]
    assert "blackhole 10.40.9.0/24" in BEFORE.routes


def test_only_flannels_additions_are_undone_in_order():
    commands = hostnet.undo(BEFORE, AFTER, FLANNEL)
    assert commands == [
        ["iptables", "-w", "-t", "filter", "-D", "FORWARD", "-j", "FLANNEL-EXTRA"],
        ["iptables", "-w", "-t", "filter", "-D", "FLANNEL-FWD", "-s", "10.40.0.0/16", "-m", "comment", "--comment",
         "flanneld forward", "-j", "ACCEPT"],
        ["iptables", "-w", "-t", "nat", "-D", "FLANNEL-POSTRTG", "-s", "10.40.0.0/16", "!", "-d", "224.0.0.0/4", "-m",
         "comment", "--comment", "flanneld masq", "-j", "MASQUERADE", "--random-fully"],
        ["iptables", "-w", "-t", "filter", "-F", "FLANNEL-EXTRA"],
        ["iptables", "-w", "-t", "filter", "-X", "FLANNEL-EXTRA"],
        ["ip", "route", "del", "10.40.3.0/24", "via", "10.40.3.0", "dev", "flannel.1"],
        ["ip", "route", "del", "10.40.4.0/24", "via", "10.40.3.0", "dev", "flannel.1", "metric", "7"],
        ["ip", "link", "del", "flannel.1"],
    ]  # the neighbour's FLANNEL-FWD, FLANNEL-POSTRTG, their rules and its blackhole route stay


def test_the_script_never_runs_what_it_read(tmp_path):
    """A rule whose comment holds shell syntax is removed with that comment as one argument;
    the shell never evaluates it (iptables here is a stand-in that writes its arguments)."""
    witness, argv = tmp_path / "witness", tmp_path / "argv"
    rule = f'-A FORWARD -m comment --comment "$(touch {witness})" -j ACCEPT'
    before = hostnet.Snapshot({"filter": ["FORWARD"], "nat": []}, {"filter": [], "nat": []})
    after = hostnet.Snapshot({"filter": ["FORWARD"], "nat": []}, {"filter": [rule], "nat": []})
    commands = hostnet.undo(before, after, hostnet.Footprint("x", marks=("touch",)))
    assert commands == [["iptables", "-w", "-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment",
                         f"$(touch {witness})", "-j", "ACCEPT"]]
    stand_in = tmp_path / "bin" / "iptables"
    stand_in.parent.mkdir()
    stand_in.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv}\n')
    stand_in.chmod(0o755)
    subprocess.run(["sh", "-c", hostnet.script(commands)], env={"PATH": f"{stand_in.parent}:/usr/bin:/bin"}, check=True)
    assert not witness.exists()
    assert argv.read_text().splitlines() == commands[0][1:]


def test_other_overlays_claim_nothing_of_flannels():
    assert hostnet.undo(BEFORE, AFTER, WEAVE) == []
    assert hostnet.undo(BEFORE, AFTER, CALICO) == []


def test_nothing_added_nothing_undone():
    assert hostnet.undo(AFTER, AFTER, FLANNEL) == []


def test_weave_claims_its_containers_veths_that_outlive_them():
    """Seen in a CI run: a container's vethwepl<id> was still on the lab host when the next
    test's run began, and went during it."""
    after = hostnet.Snapshot.parse((DATA / "hostnet-before.txt").read_text().replace(
        "### pytest-overlay links\n", "### pytest-overlay links\n vethwepla619594\n"))
    assert hostnet.undo(BEFORE, after, WEAVE) == [["ip", "link", "del", "vethwepla619594"]]
    assert hostnet.undo(BEFORE, after, FLANNEL) == []
