"""Past 255 links on this machine's kernel: a generated 24-site mesh (276 links) comes up with
a distinct MAC on every interface, and the links past the old limit carry traffic at their
RTT; the testbed goes with nothing left."""

from __future__ import annotations

import json
import re

from pytest_overlay import generate, procs, topology
from pytest_overlay.testbed import EmulatedTestbed


def test_a_mesh_past_255_links_carries_traffic_on_its_last_link(tmp_path, clean_machine):
    path = tmp_path / "mesh24.yaml"
    generate.write(generate.Spec("mesh", 24, rate_mbit=None), path, "test")
    topo = topology.load(path)
    assert len(topo.links) == 276
    with EmulatedTestbed(topo) as bed:
        shown = json.loads(procs.run(["ip", "-j", "link", "show"], bed.wan).check().stdout)
        macs = [d["address"] for d in shown if d["ifname"].startswith(bed.prefix)]
        assert len(macs) == 2 * 276 and len(set(macs)) == len(macs)
        last = topo.links[-1]
        assert last.index == 275
        ping = procs.run(["ping", "-n", "-q", "-c", "5", "-i", "0.2", bed.address(last.b)], bed.netns_of(last.a)).check()
        rtt_min = float(re.search(r"= ([\d.]+)/", ping.stdout).group(1))
        assert last.rtt_ms <= rtt_min <= last.rtt_ms + 2.0, ping.stdout
