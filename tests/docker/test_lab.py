"""The local lab: a topology's sites as real hosts (sshd with keys only, dockerd demanding a
client certificate) joined by the emulated WAN, and gone after `lab down`, even when its
keeper was killed."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_overlay import procs, topology

from ..conftest import ROOT, run_suites

pytestmark = pytest.mark.skipif(procs.missing({"dropbear": "dropbear-bin"}) != [],
                                reason="dropbear (dropbear-bin) not installed: the lab's sshd")


def lab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_overlay", "lab", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def ssh(host: topology.RemoteHost, command: str, identity: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-i", identity or host.identity, "-o", f"UserKnownHostsFile={host.known_hosts}",
                           "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                           host.ssh, command], capture_output=True, text=True, timeout=60)


def test_lab_sites_are_real_hosts_over_the_emulated_wan(tmp_path, clean_machine):
    out = tmp_path / "lab.yaml"
    made = lab("up", "local", "--out", str(out))
    assert made.returncode == 0, made.stdout + made.stderr
    assert re.search(r"lab \w+ up in [\d.]+ s: 2 sites", made.stdout)
    try:
        sites = topology.load(out).sites  # the file is a valid topology of real hosts
        a, b = sites["A"].host, sites["B"].host
        assert a.docker.startswith("tcp://") and a.docker.endswith(":2376") and a.tls

        session = ssh(a, f"ping -n -q -c 5 -i 0.2 {b.address}; docker version --format '{{{{.Server.Version}}}}'")
        assert session.returncode == 0, session.stderr
        rtt_min = float(re.search(r"= ([\d.]+)/", session.stdout).group(1))
        assert 19 < rtt_min < 30  # local.yaml: 20 ms RTT, over the emulated WAN
        assert re.search(r"^\d+\.\d+", session.stdout.splitlines()[-1])  # the site's own engine

        stranger = tmp_path / "stranger"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
        refused = ssh(a, "true", identity=str(stranger))
        assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr

        docker = subprocess.run(["docker", "-H", b.docker, "--tlsverify", "--tlscacert", b.tls["ca"], "--tlscert",
                                 b.tls["cert"], "--tlskey", b.tls["key"], "info", "--format", "{{.ServerVersion}}"],
                                capture_output=True, text=True, timeout=60)
        assert docker.returncode == 0, docker.stderr
        address, port = b.docker.removeprefix("tcp://").rsplit(":", 1)
        context = ssl.create_default_context(cafile=b.tls["ca"])
        with pytest.raises(ssl.SSLError, match="BAD_CERTIFICATE|CERTIFICATE_REQUIRED"):
            with context.wrap_socket(socket.create_connection((address, int(port)), timeout=5),
                                     server_hostname=address) as tls:
                tls.sendall(b"GET /version HTTP/1.0\r\n\r\n")
                tls.recv(100)

        crossing = ssh(a, f"ping -c 1 -W 1 {b.ssh.split('@')[1]}")
        assert crossing.returncode != 0  # sites reach each other over the WAN only

        refused_run = run_suites("suites/", f"--topology={out}", "-m", "latency")
        assert refused_run.rc == pytest.ExitCode.USAGE_ERROR and "name real hosts (host:)" in refused_run.output
    finally:
        gone = lab("down", str(out))
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert not out.exists() and not Path(f"{out}.lab.json").exists()


def test_lab_down_after_its_keeper_was_killed(tmp_path, clean_machine):
    out = tmp_path / "lab.yaml"
    assert lab("up", "local", "--out", str(out)).returncode == 0
    keeper = json.loads(Path(f"{out}.lab.json").read_text())["keeper_pid"]
    assert procs.kill_recorded(keeper, procs.start_time(keeper))
    deadline = time.monotonic() + 10
    while procs.start_time(keeper) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    gone = lab("down", str(out))
    assert gone.returncode == 0, gone.stdout + gone.stderr


def test_lab_refuses_bad_input_before_anything_exists(tmp_path, clean_machine):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nsites: {A: {}, B: {}}\nlinks:\n  - {between: [A, B], rtt_ms: -1}\n")
    refused = lab("up", str(bad), "--out", str(tmp_path / "lab.yaml"))
    assert refused.returncode == 2 and f"{bad}:4: links[0].rtt_ms: must be >= 0" in refused.stderr
    refused = lab("down", str(tmp_path / "nothing.yaml"))
    assert refused.returncode == 2 and "not a lab's file" in refused.stderr
