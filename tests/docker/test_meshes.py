"""Today's encrypted meshes, each a real daemon per site: the sites' containers reach each
other through them, their packets cross the WAN, each record names its cipher and the MTU the
containers get, no key reaches a record, and a run killed mid-mesh leaves nothing after
`clean`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from pytest_overlay import kinds, procs
from pytest_overlay.overlays import wireguard

from ..conftest import PYTEST, QUICK, ROOT, run_suites

MESHES = kinds.groups()["meshes"]
DAEMON_MTU = {"nebula": 1300}  # a mesh that leaves its device's MTU to its daemon: the daemon's default
TOOLS = {binary: package for name in MESHES for binary, package in kinds.get(name).tools.items()}
pytestmark = pytest.mark.skipif(procs.missing(TOOLS) != [], reason=f"the meshes' daemons are not installed: "
                                                                     f"{', '.join(procs.missing(TOOLS))}")
# Each forwards in userspace: on two shared cores it carries a few hundred Mbit/s, not the
# link's 1000. These tests check the meshes' plumbing; the suites' own limits judge speed.
MESH_LIMITS = "overrides:\n" + "".join(
    f"  - {{metric: tcp_throughput, overlay: {name}, min_fraction_of_rate: 0.01}}\n"
    f"  - {{metric: latency, overlay: {name}, mean_tolerance_ms: 5}}\n" for name in MESHES)


def test_each_mesh_carries_the_containers_between_the_sites(tmp_path, clean_machine):
    limits = tmp_path / "limits.yaml"
    limits.write_text((ROOT / "tests" / "relaxed-thresholds.yaml").read_text() + MESH_LIMITS)
    out = tmp_path / "results.json"
    run = run_suites("suites/", *QUICK, "--overlay=meshes", "-m", "latency or tcp", f"--overlay-thresholds={limits}",
                     f"--overlay-json={out}")
    run.passed()
    results = json.loads(out.read_text())["results"]
    assert {(r["overlay"], r["metric"]) for r in results} == {(m, k) for m in MESHES
                                                              for k in ("latency", "tcp_throughput")}
    for record in results:
        path, kind = record["datapath"], kinds.get(record["overlay"])
        mtu = {record["overlay"]: kind.set_mtu or DAEMON_MTU[record["overlay"]]}
        assert path["cipher"] == kind.cipher and path["runs_in"] == "userspace" and path["version"]
        assert path["mtu"] == path["mesh_device_mtu"] == mtu[record["overlay"]]
        assert path[kind.wire_key]["A->B"] > 0  # inside the mesh's packets
    text = out.read_text()
    assert "PrivateKey" not in text and "PRIVATE KEY" not in text


def test_a_run_killed_with_its_meshes_up_leaves_nothing_after_clean(clean_machine):
    """SIGKILL once every mesh's daemons run: `clean` ends them (their devices go with them)
    and removes wireguard-go's control sockets, which it removes itself only when ended."""
    run = subprocess.Popen([*PYTEST, "suites/", *QUICK, "--overlay=wireguard", "-m", "latency",
                            "--overlay-samples=6000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    seen = []
    deadline = time.monotonic() + 120
    for line in run.stdout:
        seen.append(line)
        if "wireguard: up in" in line or time.monotonic() > deadline:
            break
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
    assert any("wireguard: up in" in line for line in seen), "".join(seen[-20:])
    run_id = next(line.split()[2].rstrip(":") for line in seen if line.startswith("[overlay] testbed "))
    sockets = sorted(p.name for p in wireguard.UAPI_DIR.glob(f"wg{run_id}*.sock"))
    swept = subprocess.run([sys.executable, "-m", "pytest_overlay", "clean"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert swept.returncode == 0, swept.stderr
    assert sockets == [f"wg{run_id}0.sock", f"wg{run_id}1.sock"]
    assert "killed wireguard-A" in swept.stdout, swept.stdout
    assert f"removed {wireguard.UAPI_DIR}/wg{run_id}0.sock of run {run_id}" in swept.stdout, swept.stdout
    assert list(wireguard.UAPI_DIR.glob(f"wg{run_id}*.sock")) == []
