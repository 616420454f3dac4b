"""An overlay kind from another distribution (tests/package/vxlan_static: a module and an
entry point, nothing else): installed beside the wheel in a fresh virtualenv, it is listed,
refused by nothing, and measured like a built-in one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from ..conftest import PYTEST, QUICK, ROOT, Run

PLUGIN = ROOT / "tests" / "package" / "vxlan_static"


@pytest.fixture(scope="module")
def with_plugin(installed, tmp_path_factory) -> str:
    """The fresh virtualenv, with the out-of-tree kind installed from its own wheel."""
    source = tmp_path_factory.mktemp("plugin") / "src"
    shutil.copytree(PLUGIN, source)
    out = source.parent / "wheel"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = out.glob("*.whl")
    done = subprocess.run([installed, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return installed


def test_the_registry_lists_it_and_all_leaves_it_out(with_plugin):
    listed = subprocess.run([with_plugin, "-m", "pytest_overlay", "overlays"], capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "vxlan-static: static VXLAN mesh." in listed.stdout
    assert "range: vxlan-static 10.99.0.0/16, /24 a site" in listed.stdout
    asked = subprocess.run([with_plugin, "-c", "from pytest_overlay import kinds; print(kinds.in_all())"],
                           capture_output=True, text=True, timeout=60)
    assert "vxlan-static" not in asked.stdout and "'calico'" in asked.stdout, asked.stdout + asked.stderr


def test_a_topology_may_move_its_range_and_nothing_else(with_plugin, tmp_path):
    """Its family is known to the topology's `ranges:` as the built-in ones are."""
    check = ("from pytest_overlay.inputs import topology\n"
             "import sys\n"
             "t = topology.load(sys.argv[1])\n"
             "print(t.ranges)\n")
    good = tmp_path / "good.yaml"
    good.write_text((ROOT / "topologies" / "local.yaml").read_text() + "ranges: {vxlan-static: 10.77.0.0/16}\n")
    loaded = subprocess.run([with_plugin, "-c", check, str(good)], capture_output=True, text=True, timeout=60)
    assert "'vxlan-static': '10.77.0.0/16'" in loaded.stdout, loaded.stdout + loaded.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "topologies" / "local.yaml").read_text() + "ranges: {vxlan-static: 10.77.0.0/30}\n")
    refused = subprocess.run([with_plugin, "-c", check, str(bad)], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "ranges.vxlan-static" in refused.stderr and "holds 0 /24 block" in refused.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the testbed's namespaces need root")
def test_it_is_measured_with_overlay_name(with_plugin, tmp_path):
    """`--overlay=host,vxlan-static` on the two-site topology: the suites (copied out of the
    checkout, so only the installed package is imported) measure it, through its own
    devices, and the record names its datapath."""
    suites = tmp_path / "suites"
    suites.mkdir()
    shutil.copy(ROOT / "suites" / "test_latency.py", suites)
    results = tmp_path / "results.json"
    python = [with_plugin, *PYTEST[1:]]
    done = subprocess.run([*python, str(suites), "-m", "latency", "--overlay=host,vxlan-static", *QUICK,
                           f"--overlay-json={results}", "-rfs"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    Run(done.returncode, done.stdout + done.stderr, results).passed()
    records = json.loads(results.read_text())["results"]
    mesh = [r for r in records if r["overlay"] == "vxlan-static"]
    (latency,) = mesh
    assert latency["metric"] == "latency" and latency["valid"], done.stdout
    assert latency["datapath"]["encapsulation"] == "vxlan" and latency["datapath"]["vni"] == 42
    assert latency["datapath"]["encapsulated_packets_on_wan"]["A->B"] >= latency["stats"]["n"]  # through the mesh
    assert 19.5 < latency["stats"]["mean"] < 25, latency["stats"]  # the 20 ms link, plus VXLAN's own cost
