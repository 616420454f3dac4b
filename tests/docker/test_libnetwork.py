"""Docker's own overlay on real engines, one per emulated site: measured against the
underlay, proven to run over VXLAN, and cleaned up whatever happens."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_overlay import paths, procs
from pytest_overlay.inputs import topology
from pytest_overlay.overlays.libnetwork import LibnetworkOverlay, esp_available
from pytest_overlay.testbeds import engines
from pytest_overlay.testbeds.emulated import EmulatedTestbed
from pytest_overlay.testbeds.engines import EngineError

from ..conftest import PYTEST, QUICK, RELAXED, RELAXED_FILE, ROOT, machine_state, run_suites, two_sites


def test_libnetwork_next_to_the_underlay(tmp_path, clean_machine):
    out = tmp_path / "results.json"
    run = run_suites("suites/", *QUICK, "--overlay=host,libnetwork", f"--overlay-json={out}")
    run.passed()
    assert "Δ mean vs host ±95% CI" in run.output
    results = json.loads(out.read_text())["results"]
    overlay = [r for r in results if r["overlay"] == "libnetwork"]
    assert {r["metric"] for r in overlay} == {"latency", "jitter", "tcp_throughput", "udp_throughput", "udp_loss",
                                              "stream_jitter", "stream_bitrate", "stream_loss", "stream_ttff"}
    for record in overlay:
        path = record["datapath"]
        assert (path["kind"], path["udp_port"], path["mtu"]) == ("vxlan", 4789, 1450)
        assert int(path["vni"]) >= 4096
        assert path["encapsulated_packets_on_wan"]["A->B"] > 0
    host_tcp = next(r for r in results if r["overlay"] == "host" and r["metric"] == "tcp_throughput")
    assert "encapsulated_packets_on_wan" not in host_tcp["datapath"]
    run_meta = json.loads(out.read_text())["run"]
    assert run_meta["overlays"]["libnetwork"]["timings"]["up_s"] > 0


def test_encrypted_overlay_is_skipped_where_the_kernel_lacks_esp(clean_machine):
    with EmulatedTestbed(topology.load("local"), emulator="none") as bed:
        has_esp, why = esp_available(bed.wan)
    run = run_suites("suites/", *QUICK, "--overlay=libnetwork-encrypted", "-m", "latency", "-rfs")
    if has_esp:
        run.passed()
    else:
        assert run.rc == 0 and "1 skipped" in run.output, run.output
        assert "kernel lacks ESP/GCM" in run.output and "encrypted overlay unavailable" in run.output


def test_swarm_holds_at_150_ms(tmp_path, clean_machine):
    far = two_sites(tmp_path, 150)
    out = tmp_path / "far.json"
    run = run_suites("suites/", f"--topology={far}", "--overlay=libnetwork", "-m", "latency",
                     "--overlay-samples=50", "--overlay-interval=20", f"--overlay-json={out}", RELAXED)
    assert "swarm did not converge" not in run.output and "ERROR" not in run.output, run.output
    (latency,) = [r for r in json.loads(out.read_text())["results"] if r["metric"] == "latency"]
    assert latency["stats"]["n"] >= 45, run.output  # the containers talked over the swarm's overlay
    assert latency["datapath"]["encapsulated_packets_on_wan"]["A->B"] >= 45
    assert latency["stats"]["mean"] == pytest.approx(150, abs=2), run.output


def test_engine_that_fails_to_start_is_named_with_its_log(clean_machine):
    with EmulatedTestbed(topology.load("local")) as bed:
        # A file where site B's data root must be: its engine (containerd first) cannot start.
        blocker = paths.DATA_ROOT / bed.run_id / "B"
        blocker.parent.mkdir(parents=True)
        blocker.write_text("not a directory")
        overlay = LibnetworkOverlay(bed)
        with pytest.raises(EngineError) as error:
            overlay.up()
    message = str(error.value)
    assert "Docker engine of site B" in message
    assert f"mkdir {paths.DATA_ROOT / bed.run_id / 'B'}: not a directory" in message  # containerd's words, from its log
    assert "site A" not in message


def test_sigkill_mid_run_then_clean_removes_engines_and_containers(clean_machine):
    run = subprocess.Popen([*PYTEST, "suites/", *QUICK,
                            "--overlay=libnetwork", "--overlay-duration=30"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any("pytest-overlay/probe" in line for line in _container_commands()):
            break
        time.sleep(0.2)
    else:
        run.kill()
        pytest.fail(f"the run never started its containers: {run.communicate()[0]}")
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
    assert machine_state()["processes"], "a killed run leaves its engines behind"
    swept = subprocess.run([sys.executable, "-m", "pytest_overlay", "clean"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert swept.returncode == 0, swept.stderr
    assert "dockerd" in swept.stdout


def _container_commands() -> list[str]:
    """Images of the running containers of every engine this tool has started."""
    images = []
    for sock in Path("/run/pytest-overlay").glob("*/docker-*/docker.sock"):
        images += subprocess.run(["docker", "-H", f"unix://{sock}", "ps", "--format", "{{.Image}}"],
                                 capture_output=True, text=True).stdout.splitlines()
    return images


def test_threshold_relative_to_the_underlay_measures_the_underlay_first(tmp_path, clean_machine):
    """Only libnetwork is asked for: the underlay's TCP is measured on the same circuit first,
    since the limit is relative to it; it is never silently skipped."""
    limits = tmp_path / "limits.yaml"
    limits.write_text(RELAXED_FILE.read_text() + "tcp_throughput:\n  min_fraction_of_host: 1.5\n  min_fraction_of_rate: 50\n")
    out = tmp_path / "results.json"
    # The subject is the plumbing of a relative limit, not the emulator: links without delay.
    run = run_suites("suites/", *QUICK, "--overlay=libnetwork", "-m", "tcp", f"--overlay-thresholds={limits}",
                     f"--overlay-json={out}", "--overlay-emulator=none", "-rA")
    run.skip_if_starved("test_tcp_throughput[libnetwork-A-B]")
    assert run.rc == 1, run.output
    assert "measuring the underlay's tcp_throughput on A-B first" in run.output
    assert "FAILED suites/test_throughput.py::test_tcp_throughput[libnetwork-A-B]" in run.output
    assert "is below 1.5 × the underlay's" in run.output
    # The absolute limit's failure says what the overlay carried beside the underlay, and how.
    assert re.search(r"libnetwork \(vxlan, MTU 1450\): it carried \d+ Mbit/s, [\d.]+ × the underlay's \d+ Mbit/s "
                     r"on A-B in this run", run.output), run.output
    records = {r["overlay"]: r for r in json.loads(out.read_text())["results"]}
    assert records["host"]["verdict"] == "measured as the baseline of a relative limit"
    assert records["libnetwork"]["vs_host"]["host"] == records["host"]["total"]


def test_engines_ignore_the_hosts_daemon_json_and_use_cgroupfs(tmp_path, clean_machine):
    """On a stock Debian 12 host, /etc/docker/daemon.json applies to every dockerd started
    without --config-file, and systemd's cgroup driver refuses our cgroup parent."""
    host_config = Path("/etc/docker/daemon.json")
    if host_config.exists():
        pytest.skip("this machine has its own /etc/docker/daemon.json; not touching it")
    host_config.parent.mkdir(parents=True, exist_ok=True)
    host_config.write_text('{"bip": "10.99.0.1/24", "log-level": "debug"}\n')
    try:
        with EmulatedTestbed(topology.load("local"), emulator="none") as bed:
            engine = engines.Engine("A", bed.netns_of("A"), bed.address("A"), bed.run_id, bed.run_dir / "docker-A")
            try:
                engine.start()
                info = engine.client.info()
                bridge = bed.run("A", ["ip", "-4", "-o", "address", "show", "docker0"]).stdout
            finally:
                engine.stop()
                engines.remove_run_files(bed.run_id, bed.run_dir)
    finally:
        host_config.unlink()
    assert info["CgroupDriver"] == "cgroupfs"
    assert "10.99.0.1" not in bridge and "172.17.0.1" in bridge


HOST_CONTAINERD = Path("/run/containerd/containerd.sock")


@pytest.fixture
def host_containerd(tmp_path):
    """Name: host_containerd. Scope: function. A containerd listening where a host's own
    listens (/run/containerd/containerd.sock), as on a machine that runs one: the machine's,
    if it has one, else one started for the test and ended after it."""
    if HOST_CONTAINERD.is_socket():
        yield HOST_CONTAINERD
        return
    config = tmp_path / "config.toml"
    config.write_text(f'version = 2\nroot = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n'
                      f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{HOST_CONTAINERD}"\n')
    daemon = procs.start("host-containerd", ["containerd", "--config", str(config)], tmp_path / "log")
    try:
        deadline = time.monotonic() + 10
        while not HOST_CONTAINERD.is_socket() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield HOST_CONTAINERD
    finally:
        daemon.stop()
        HOST_CONTAINERD.unlink(missing_ok=True)
        HOST_CONTAINERD.with_name("containerd.sock.ttrpc").unlink(missing_ok=True)


def test_each_engine_has_its_own_containerd_even_beside_the_hosts(host_containerd, clean_machine):
    """With a containerd at the host's usual socket, each site's engine still runs its
    containers through a containerd of its own (a dockerd left to itself would use the
    host's, where a killed run's containers would outlive the sweep)."""
    def tasks(address: Path) -> str:
        return procs.run(["ctr", "-a", str(address), "-n", "moby", "tasks", "ls", "-q"]).check().stdout

    with EmulatedTestbed(topology.load("local")) as bed:
        overlay = LibnetworkOverlay(bed)
        overlay.up()
        try:
            for site, engine in overlay.engines.items():
                assert engine.containerd.alive() and engine.containerd_socket.is_socket()
                ours = engine.client.containers.get(f"ovl{bed.run_id}-{site}").id
                assert ours in tasks(engine.containerd_socket).split()
                assert ours not in tasks(host_containerd).split()
        finally:
            overlay.down()
