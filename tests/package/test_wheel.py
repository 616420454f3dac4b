"""The package as users get it: a wheel installed in a fresh virtualenv, used by a project
that has nothing to do with this one."""

from __future__ import annotations

import subprocess
import textwrap
import zipfile


def test_wheel_ships_topologies_thresholds_and_agents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("pytest_overlay/data/thresholds.yaml", "pytest_overlay/topologies/geant.yaml",
                 "pytest_overlay/topologies/geant-star.yaml", "pytest_overlay/topologies/local.yaml",
                 "pytest_overlay/topologies/geant.dsl", "pytest_overlay/emulation/core/delayline.c",
                 "pytest_overlay/agents/rtsp_server.py", "pytest_overlay/agents/rtsp_client.py",
                 "pytest_overlay/data/reference/hermans-deniet-2016.yaml", "pytest_overlay/overlays/libnetwork.py",
                 "pytest_overlay/overlays/weave.py", "pytest_overlay/overlays/calico.py"):
        assert name in names, name
    assert not [n for n in names if n.startswith(("tests/", "suites/", "topologies/"))]


def test_unrelated_project_runs_untouched(installed, tmp_path):
    (tmp_path / "test_plain.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    run = subprocess.run([installed, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_bundled_topology_resolves_from_the_installed_package(installed, tmp_path):
    (tmp_path / "test_topology.py").write_text(textwrap.dedent("""\
        def test_geant(overlay_topology, overlay_thresholds):
            assert sorted(overlay_topology.sites) == ["AMS", "BRA", "LJU", "MIL"]
            assert "site-packages" in overlay_topology.path
            assert overlay_thresholds.for_("latency", "host", "AMS-MIL")["p99_over_rtt_ms"] == 5.0
    """))
    run = subprocess.run([installed, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--topology=geant"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
