"""The local lab: a topology's sites as real hosts (sshd with keys only, dockerd demanding a
client certificate) joined by the emulated WAN, and gone after `lab down`, even when its
keeper was killed; and the suites run across it through the remote backend, which only
speaks SSH and the Docker API."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pytest_overlay import overlays, procs
from pytest_overlay.inputs import topology
from pytest_overlay.overlays import weave
from pytest_overlay.paths import STATE_ROOT, find_binary
from pytest_overlay.testbeds import hostnet, runs
from pytest_overlay.testbeds.real import hostlinks, hostlock, hosts, remote
from pytest_overlay.testbeds.real.remote import RemoteTestbed

from ..conftest import PYTEST, QUICK, ROOT, run_suites

pytestmark = pytest.mark.skipif(procs.missing({"dropbear": "dropbear-bin"}) != [],
                                reason="dropbear (dropbear-bin) not installed: the lab's sshd")


def lab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_overlay", "lab", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def ssh(host: topology.RemoteHost, command: str, identity: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-i", identity or host.identity, "-o", f"UserKnownHostsFile={host.known_hosts}",
                           "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                           host.ssh, command], capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def running_lab(tmp_path: Path):
    """A lab of the `local` topology: its file, and its hosts A and B; down at the end."""
    out = tmp_path / "lab.yaml"
    made = lab("up", "local", "--out", str(out))
    assert made.returncode == 0, made.stdout + made.stderr
    try:
        sites = topology.load(out).sites
        yield out, sites["A"].host, sites["B"].host
    finally:
        gone = lab("down", str(out))
        assert gone.returncode == 0, gone.stdout + gone.stderr


@pytest.fixture(scope="module")
def shared_lab(tmp_path_factory):
    """Name: shared_lab. Scope: module. One lab of `local` (its file, hosts A and B) for the
    tests that leave its hosts as they found them, each of which checks so; down after the
    module. Each lab up and down costs about 9 s."""
    with running_lab(tmp_path_factory.mktemp("shared-lab")) as made:
        yield made


@contextlib.contextmanager
def dropping(out: Path, site: str, *match: str, target: tuple[str, ...] = ("DROP",)):
    """An iptables rule on a lab site's INPUT that drops `match` (or whatever `target` does);
    removed afterwards, since the lab outlives the test."""
    netns = f"ovl{json.loads(Path(f'{out}.lab.json').read_text())['run_id']}-{site}"
    rule = ["INPUT", *match, "-j", *target]
    procs.run(["iptables", "-w", "-I", *rule], netns).check()
    try:
        yield
    finally:
        procs.run(["iptables", "-w", "-D", *rule], netns).check()


def docker_on(host: topology.RemoteHost, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "-H", host.docker, "--tlsverify", "--tlscacert", host.tls["ca"], "--tlscert",
                           host.tls["cert"], "--tlskey", host.tls["key"], *args], capture_output=True, text=True,
                          timeout=60)


# Another run's hold on host A: the product's own lock, taken by a process of its own.
HOLDER = """
import sys, time
from pytest_overlay.testbeds.real import hostlock
from pytest_overlay.inputs import topology
lock = hostlock.HostLock(topology.load(sys.argv[1]).sites["A"].host, "f00d01")
refused = lock.acquire()
wait = lock.expired_for(refused or "")  # a killed run's lease: the host frees itself after its delay
if wait is not None:
    time.sleep(wait + 1)
    refused = lock.acquire()
assert refused is None, refused
print("held", flush=True)
time.sleep(600)
"""


def test_lab_sites_are_real_hosts_over_the_emulated_wan(tmp_path, clean_machine):
    out = tmp_path / "lab.yaml"
    made = lab("up", "local", "--out", str(out), "--image", "missing")  # imported over the Docker API
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

        docker = docker_on(b, "info", "--format", "{{.ServerVersion}}")
        assert docker.returncode == 0, docker.stderr
        assert docker_on(b, "images", "-q").stdout.strip() == ""  # no image yet: the run imports it
        address, port = b.docker.removeprefix("tcp://").rsplit(":", 1)
        context = ssl.create_default_context(cafile=b.tls["ca"])
        with pytest.raises(ssl.SSLError, match="BAD_CERTIFICATE|CERTIFICATE_REQUIRED"):
            with context.wrap_socket(socket.create_connection((address, int(port)), timeout=5),
                                     server_hostname=address) as tls:
                tls.sendall(b"GET /version HTTP/1.0\r\n\r\n")
                tls.recv(100)

        crossing = ssh(a, f"ping -c 1 -W 1 {b.ssh.split('@')[1]}")
        assert crossing.returncode != 0  # sites reach each other over the WAN only

        remote = run_suites("suites/", *QUICK, f"--topology={out}", "--overlay=host,libnetwork", "-m", "latency",
                            f"--overlay-json={tmp_path / 'remote.json'}", "-rA")
        remote.passed()
        assert docker_on(b, "images", "-q", "pytest-overlay/probe").stdout.strip()  # imported over the API
        assert "using the hosts' swarm" not in remote.output  # none existed: made, then left
        records = json.loads((tmp_path / "remote.json").read_text())["results"]
        assert {(r["overlay"], r["datapath"]["testbed"], tuple(r["datapath"]["hosts"])) for r in records} == {
            ("host", "remote", (a.docker, b.docker)), ("libnetwork", "remote", (a.docker, b.docker))}
        assert all(r["valid"] and 19 < r["stats"]["min"] < 30 for r in records)
        assert a.identity not in (tmp_path / "remote.json").read_text()  # where hosts are, not how to get in
        for host in (a, b):
            state = docker_on(host, "info", "--format", "{{.Swarm.LocalNodeState}} {{.Containers}}")
            assert state.stdout.split() == ["inactive", "0"]  # nothing of the run is left on the hosts

        # Hosts that already form a swarm: it is used, and left as it was.
        init = docker_on(a, "swarm", "init", "--advertise-addr", a.address, "--listen-addr", f"{a.address}:2377")
        assert init.returncode == 0, init.stderr
        token = docker_on(a, "swarm", "join-token", "-q", "worker").stdout.strip()
        joined = docker_on(b, "swarm", "join", "--token", token, "--advertise-addr", b.address,
                           "--listen-addr", f"{b.address}:2377", f"{a.address}:2377")
        assert joined.returncode == 0, joined.stderr
        reused = run_suites("suites/", *QUICK, f"--topology={out}", "--overlay=libnetwork", "-m", "latency")
        reused.passed()
        assert "using the hosts' swarm (manager A); it is left as it was" in reused.output
        for host in (a, b):
            state = docker_on(host, "info", "--format", "{{.Swarm.LocalNodeState}} {{.Containers}}")
            assert state.stdout.split() == ["active", "0"]
        assert docker_on(a, "network", "ls", "--filter", "label=pytest-overlay.run", "-q").stdout.strip() == ""
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


def test_hosts_not_ready_are_named_with_the_fix_before_anything_is_created(shared_lab, tmp_path, clean_machine):
    out, a, b = shared_lab
    other_ca = tmp_path / "other"
    other_ca.mkdir()
    from pytest_overlay.testbeds.pki import PKI

    stranger = PKI(other_ca, "other").create().issue("stranger", client=True)
    text = out.read_text()
    wrong_cert = tmp_path / "wrong-cert.yaml"
    wrong_cert.write_text(text.replace(a.tls["cert"], str(stranger.cert)).replace(a.tls["key"], str(stranger.key)))
    no_docker = tmp_path / "no-docker.yaml"
    no_docker.write_text(text.replace(b.docker, b.docker.replace(":2376", ":2399")))
    for path, expected in ((wrong_cert, "A: Docker API at tcp://"), (no_docker, "B: Docker API at tcp://")):
        refused = run_suites("suites/", *QUICK, f"--topology={path}", "--overlay=libnetwork", "-m", "latency")
        assert refused.rc == pytest.ExitCode.USAGE_ERROR, refused.output
        assert "nothing was created on any of them" in refused.output and expected in refused.output
        if path == wrong_cert:
            assert "rejected our client certificate" in refused.output
    assert "connection refused: nothing listens there" in refused.output
    assert "Fix: start dockerd with --tlsverify" in refused.output

    # Emulation asked of a host whose kernel has no netem, on an interface it does not have.
    emulating = yaml.safe_load(text)
    emulating["sites"]["A"]["host"].update(emulate=True, interface="eth9")
    (tmp_path / "emulate.yaml").write_text(yaml.safe_dump(emulating))
    refused = run_suites("suites/", *QUICK, f"--topology={tmp_path / 'emulate.yaml'}", "--overlay=host", "-m", "latency")
    assert refused.rc == pytest.ExitCode.USAGE_ERROR, refused.output
    assert "A: kernel lacks sch_netem, so emulate: true cannot work" in refused.output
    assert "A: no interface eth9" in refused.output

    # A firewall between the sites: B drops the swarm's gossip over UDP.
    with dropping(out, "B", "-p", "udp", "--dport", "7946"):
        closed = run_suites("suites/", *QUICK, f"--topology={out}", "--overlay=libnetwork", "-m", "latency")
    assert closed.rc == pytest.ExitCode.USAGE_ERROR, closed.output
    assert "B: swarm port(s) 7946/udp not reachable from A" in closed.output
    assert "Fix: open them in the firewalls between the sites" in closed.output
    for host in (a, b):
        assert docker_on(host, "info", "--format", "{{.Swarm.LocalNodeState}} {{.Containers}}").stdout.split() \
            == ["inactive", "0"]


def test_a_bring_up_that_fails_on_the_hosts_is_tried_again_from_scratch(shared_lab, tmp_path, clean_machine):
    """The first attempt's network goes with it: the second one meets the same fault, not a
    name left taken, and the hosts are left as they were."""
    out, a, b = shared_lab
    # B drops VXLAN frames (the swarm-port check's small probe still gets through). 3 s to
    # converge: a VXLAN that drops every frame never will, and the test need not wait the 32 s default.
    with dropping(out, "B", "-p", "udp", "--dport", "4789", "-m", "length", "--length", "80:65535"):
        run = run_suites("suites/", *QUICK, f"--topology={out}", "--overlay=libnetwork", "-m", "latency",
                         "--overlay-converge=3")
    assert run.rc == 1, run.output
    assert "libnetwork: bring-up attempt 1 failed (libnetwork: no answer over the overlay within 3 s" in run.output
    assert "the last one failed with EngineError: libnetwork: no answer over the overlay" in run.output, run.output
    for host in (a, b):
        state = docker_on(host, "info", "--format", "{{.Swarm.LocalNodeState}} {{.Containers}}")
        assert state.stdout.split() == ["inactive", "0"]
        assert docker_on(host, "network", "ls", "--filter", "label=pytest-overlay.run", "-q").stdout.strip() == ""


def kill_mid_run(out: Path, host: topology.RemoteHost, overlay: str) -> str:
    """SIGKILL a run over the lab once its measurement container runs on `host`; its output."""
    run = subprocess.Popen([*PYTEST, "suites/", *QUICK,
                            f"--topology={out}", f"--overlay={overlay}", "-m", "tcp", "--overlay-duration=30"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "ovl" not in docker_on(host, "ps", "--format", "{{.Names}}").stdout:
        time.sleep(0.5)
    run.kill()
    return run.communicate(timeout=30)[0]


def clean_hosts(out: Path) -> subprocess.CompletedProcess:
    swept = subprocess.run([sys.executable, "-m", "pytest_overlay", "clean", "--topology", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=180)
    assert swept.returncode == 0, swept.stderr
    return swept


def test_clean_removes_what_a_killed_run_left_on_the_hosts(shared_lab, tmp_path, clean_machine):
    """A killed run's containers, networks and swarm go, but nothing on a host a live run
    holds (it may be using that swarm): the killed run's state here stays, so that once the
    live run is over a second `clean --topology`, without --force, finishes the job."""
    out, a, b = shared_lab
    output = kill_mid_run(out, b, "libnetwork")
    assert "ovl" in docker_on(b, "ps", "-a", "--format", "{{.Names}}").stdout, output
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # a live run on host A
        swept = clean_hosts(out)
    finally:
        holder.kill()
        holder.wait()
    assert "clean: 1 run(s) cleaned" in swept.stdout and "left the swarm it made on B" in swept.stdout, swept.stdout
    assert re.search(r"host A: skipped, not touched: in use by another pytest-overlay: run f00d01 ", swept.stdout)
    assert re.search(r"run \w{6}: its state here is kept for another `clean --topology` \(hosts skipped: A\)",
                     swept.stdout), swept.stdout
    states = {h.ssh: docker_on(h, "info", "--format", "{{.Swarm.LocalNodeState}}").stdout.split() for h in (a, b)}
    assert states == {a.ssh: ["active"], b.ssh: ["inactive"]}
    again = clean_hosts(out)  # the live run over: A's part, without --force
    assert "clean: 1 run(s) cleaned" in again.stdout and "left the swarm it made on A" in again.stdout, again.stdout
    states = {h.ssh: docker_on(h, "info", "--format", "{{.Swarm.LocalNodeState}} {{.Containers}}").stdout.split()
              for h in (a, b)}
    assert states == {a.ssh: ["inactive", "0"], b.ssh: ["inactive", "0"]}


def test_a_host_whose_docker_api_fails_in_teardown_stops_no_other_step(shared_lab, clean_machine):
    """Calico up across the lab; then host B's Docker API refuses connections. Teardown still
    ends BIRD on both hosts and removes A's container; it names what failed on B and keeps the
    run's state, and `clean --topology` finishes the job once B answers again."""
    out, a, b = shared_lab
    bed = RemoteTestbed(topology.load(out), needs=overlays.host_needs(["calico"]))
    bed.up()
    overlay = overlays.get("calico")(bed)
    try:
        overlay.up()
        with dropping(out, "B", "-p", "tcp", "--dport", b.docker.rsplit(":", 1)[1],
                      target=("REJECT", "--reject-with", "tcp-reset")):
            overlay.down()
            with pytest.raises(remote.RemoteError, match=r"(?s)every other step ran.*host B: "):
                bed.down()
    except BaseException:
        overlay.down()
        bed.down()
        raise
    for host in (a, b):  # BIRD ended and its routes gone on both hosts, B's included
        left = ssh(host, "ip route show proto bird; for p in $(pgrep -x bird); do "
                         "grep -q '^State:.*Z' /proc/$p/status || echo live $p; done")
        assert left.returncode == 0 and left.stdout.strip() == "", left.stdout + left.stderr
    assert docker_on(a, "ps", "-aq").stdout.strip() == ""
    assert docker_on(b, "ps", "-aq").stdout.strip() != ""  # what B's API could not be asked to remove
    assert (bed.run_dir / "state.json").exists()
    swept = clean_hosts(out)
    assert f"removed what run {bed.run_id} left" in swept.stdout, swept.stdout
    assert docker_on(b, "ps", "-aq").stdout.strip() == ""




def test_a_second_run_against_the_same_hosts_is_refused_naming_the_first(shared_lab, clean_machine):
    """Host A held by another run (a process holding the run's lock there): the run is refused
    before anything is made, with the holder named; once the holder is killed, the lock is free."""
    out, a, b = shared_lab
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = run_suites("suites/", *QUICK, f"--topology={out}", "--overlay=host", "-m", "latency")
        assert refused.rc == pytest.ExitCode.USAGE_ERROR, refused.output
        assert re.search(r"A: in use by another pytest-overlay: run f00d01 from \S+ \(pid \d+\), since ", refused.output)
        assert "B: in use" not in refused.output
    finally:
        holder.kill()  # SIGKILL: no teardown of its own
        holder.wait()
    lock = hostlock.HostLock(a, "f00d02")
    deadline = time.monotonic() + 15
    while (why := lock.acquire()) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    lock.release()
    assert why is None, why


def test_clean_removes_a_killed_runs_netem_and_nothing_else(shared_lab, clean_machine):
    """A run killed with its shaping on the hosts: `clean --topology` takes the run's root
    qdisc off A, and leaves B's, which someone replaced since. (This kernel has no netem, so
    the run's qdisc is its htb root alone, put there as the run would, and the run is a
    killed one whose state names both hosts as shaped.)"""
    out, a, b = shared_lab
    kill_mid_run(out, b, "host")
    (state_file,) = [f for f in STATE_ROOT.glob("*/state.json") if json.loads(f.read_text()).get("backend") == "remote"
                     and not (f.parent / "lab").exists()]
    run_id = state_file.parent.name
    devices = {}
    for host, handle in ((a, hostlinks.qdisc_handle(run_id)), (b, "7e57")):
        devices[host.ssh] = ssh(host, f"ip -o -4 addr show to {host.address}/32 | cut -d' ' -f2").stdout.strip()
        assert ssh(host, f"tc qdisc replace dev {devices[host.ssh]} root handle {handle}: htb default 1").returncode == 0
    state = json.loads(state_file.read_text())
    state["emulated"] = {"A": devices[a.ssh], "B": devices[b.ssh]}
    state_file.write_text(json.dumps(state))
    topo = yaml.safe_load(out.read_text())
    for site, host in (("A", a), ("B", b)):
        topo["sites"][site]["host"]["interface"] = devices[host.ssh]
    shaped = out.with_name("lab-shaped.yaml")
    shaped.write_text(yaml.safe_dump(topo))
    try:
        swept = subprocess.run([sys.executable, "-m", "pytest_overlay", "clean", "--topology", str(shaped)], cwd=ROOT,
                               capture_output=True, text=True, timeout=180)
        assert f"host A: removed run {run_id}'s netem from {devices[a.ssh]}" in swept.stdout, swept.stdout + swept.stderr
        assert f"host B: the root qdisc of {devices[b.ssh]} is not run {run_id}'s any more" in swept.stdout
        assert "htb" not in ssh(a, f"tc qdisc show dev {devices[a.ssh]} root").stdout
        assert "htb 7e57:" in ssh(b, f"tc qdisc show dev {devices[b.ssh]} root").stdout
    finally:
        ssh(b, f"tc qdisc del dev {devices[b.ssh]} root")
        ssh(a, f"tc qdisc del dev {devices[a.ssh]} root 2>/dev/null || true")


def test_host_keys_are_recorded_on_first_contact_and_checked_after(shared_lab, tmp_path, clean_machine):
    """A topology naming no known_hosts: the first run records each host's key and says so,
    the next one says nothing, and once A's key is not the one recorded, A is refused."""
    out, a, b = shared_lab
    data = yaml.safe_load(out.read_text())
    for site in data["sites"].values():
        del site["host"]["known_hosts"]
    bare = tmp_path / "no-known-hosts.yaml"
    bare.write_text(yaml.safe_dump(data))
    known = tmp_path / "known_hosts"
    env = {"PYTEST_OVERLAY_KNOWN_HOSTS": str(known)}
    first = run_suites("suites/", *QUICK, f"--topology={bare}", "--overlay=host", "-m", "latency", env=env)
    first.passed()
    for site in ("A", "B"):
        assert re.search(rf"host {site}: first contact over ssh; its key \(ED25519 SHA256:\S+\) is now recorded in "
                         rf"{re.escape(str(known))}", first.output), first.output
    again = run_suites("suites/", *QUICK, f"--topology={bare}", "--overlay=host", "-m", "latency", env=env)
    again.passed()
    assert "first contact" not in again.output

    impostor = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    address = a.ssh.rpartition("@")[2]
    subprocess.run(["ssh-keygen", "-q", "-R", address, "-f", str(known)], check=True, capture_output=True)
    with known.open("a") as file:  # A's entry now holds another key
        file.write(f"{address} {' '.join(impostor.with_suffix('.pub').read_text().split()[:2])}\n")
    refused = run_suites("suites/", *QUICK, f"--topology={bare}", "--overlay=host", "-m", "latency", env=env)
    assert refused.rc == pytest.ExitCode.USAGE_ERROR, refused.output
    assert "A: could not take the run's lock on it over ssh (Host key verification failed.)" in refused.output
    assert "B: could not" not in refused.output


# "Someone else's" network on a host: a Kubernetes node's Flannel (chains, a rule commented
# as flanneld's), its service range's route and a Docker network of its own.
NEIGHBOUR = "\n".join([
    "iptables -w -N FLANNEL-FWD",
    "iptables -w -A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment 'flanneld forward' -j ACCEPT",
    "iptables -w -A FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD",
    "iptables -w -t nat -N FLANNEL-POSTRTG",
    "iptables -w -t nat -A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment 'flanneld masq' -j RETURN",
    "ip route add blackhole 10.96.0.0/12",
])
NEIGHBOUR_GONE = "\n".join([
    "iptables -w -D FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD",
    "iptables -w -F FLANNEL-FWD", "iptables -w -X FLANNEL-FWD",
    "iptables -w -t nat -F FLANNEL-POSTRTG", "iptables -w -t nat -X FLANNEL-POSTRTG",
    "ip route del blackhole 10.96.0.0/12",
])


@contextlib.contextmanager
def neighbour_on(host: topology.RemoteHost):
    """The neighbour's network planted on `host` for the test, and taken away after it;
    yields a reading of the host's network (iptables, links, routes, Docker networks)."""
    planted = ssh(host, NEIGHBOUR)
    assert planted.returncode == 0, planted.stderr
    assert docker_on(host, "network", "create", "someones-net").returncode == 0
    try:
        yield lambda: [line for line in ssh(host, hostnet.SNAPSHOT_SCRIPT).stdout.splitlines()
                       if not line.startswith("# ")] + docker_on(host, "network", "ls", "--format", "{{.Name}}").stdout.split()
    finally:
        docker_on(host, "network", "rm", "someones-net")
        ssh(host, NEIGHBOUR_GONE)


@pytest.mark.skipif(weave.missing_binaries() != [], reason="Weave Net's weaver/weaveutil not found on this machine")
def test_weave_refused_or_killed_across_the_lab_hosts(shared_lab, tmp_path, clean_machine):
    """A host without weaver, or with a route inside Weave's range, is named before anything
    starts. A run killed mid-way leaves its weavers running until `clean --topology` ends them
    and resets the hosts. (Weave measured across the hosts: the test below.)"""
    out, a, b = shared_lab
    weaver = STATE_ROOT / json.loads(Path(f"{out}.lab.json").read_text())["run_id"] / "lab" / "B" / "bin" / "weaver"
    target = weaver.readlink()
    weaver.unlink()
    try:
        refused = run_suites("suites/", *QUICK, f"--topology={out}", "--overlay=weave", "-m", "latency")
    finally:
        weaver.symlink_to(target)
    assert refused.rc == pytest.ExitCode.USAGE_ERROR, refused.output
    assert "B: weaver (Weave Net's router) is not installed or does not start" in refused.output
    assert "A: weaver" not in refused.output
    assert ssh(a, "ip route add blackhole 10.32.9.0/24").returncode == 0  # a route inside Weave's range
    try:
        refused = run_suites("suites/", *QUICK, f"--topology={out}", "--overlay=weave", "-m", "latency")
    finally:
        ssh(a, "ip route del blackhole 10.32.9.0/24")
    assert refused.rc == pytest.ExitCode.USAGE_ERROR, refused.output
    assert "A: route 'blackhole 10.32.9.0/24' lies inside Weave Net's IPAM range 10.32.0.0/12" in refused.output

    # Killed mid-run: the hosts end the weavers themselves; `clean --topology` resets the hosts.
    output = kill_mid_run(out, b, "weave")
    assert ssh(a, "ip link show weave").returncode == 0, output  # its devices outlive the daemon
    deadline = time.monotonic() + 30
    while ssh(a, "pgrep -x weaver").returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ssh(a, "pgrep -x weaver").returncode != 0 and ssh(b, "pgrep -x weaver").returncode != 0
    swept = clean_hosts(out)
    assert re.search(r"run \w{6}: its lease on the hosts lapsed, so it is over", swept.stdout), swept.stdout
    assert_no_weave_on(a, b)


def assert_no_weave_on(*hosts: topology.RemoteHost) -> None:
    for host in hosts:
        # A killed weaver lingers as a zombie until this VM's init reaps it: only live ones count.
        left = ssh(host, "ip -o link show; iptables -S; iptables -t nat -S; for p in $(pgrep -x weaver); do "
                         "grep -q '^State:.*Z' /proc/$p/status || echo weaver $p; done")
        assert left.returncode == 0, left.stderr
        assert "weave" not in left.stdout.lower(), left.stdout
        assert docker_on(host, "ps", "-aq").stdout.strip() == ""


LAB_FAULTS = {"cut-A-B": {"kind": "cut", "link": ["A", "B"], "seconds": 3},
              "reroute-A-B": {"kind": "reroute", "link": ["A", "B"], "add_rtt_ms": 20, "seconds": 3}}


def fault_rules(host: topology.RemoteHost) -> str:
    shown = ssh(host, "iptables-save -t raw")
    assert shown.returncode == 0, shown.stderr
    return "\n".join(line for line in shown.stdout.splitlines() if "OVL-FAULT" in line)


LAB_OVERLAYS = {"weave": ["weaver"], "flannel": ["etcd", "flanneld"], "calico": ["bird"]}


def test_overlays_and_faults_across_the_lab_hosts(shared_lab, tmp_path, clean_machine):
    """Weave, Flannel and Calico beside the underlay in one run over the lab: their daemons
    on every host, started over ssh (Flannel's certificates copied there, Weave joined by a
    password made for the run, its containers attached by its CNI plugin); the hosts' dockerd
    untouched, a neighbour's network on the host as it was; and afterwards nothing of any of
    them left. In the same run, a 3 s cut between the hosts through the underlay (its probe
    runs in the hosts' own network: a send the rules refused would kill it) and Calico's model
    (its blocks cross the WAN unencapsulated: the rules drop them too), timed by the hosts'
    own clocks; a reroute skips, since these hosts have no netem; no rule is left afterwards."""
    out, a, b = shared_lab
    # Those whose binaries this machine has (Weave's and Flannel's come from ../shared/bin).
    here = {name: daemons for name, daemons in LAB_OVERLAYS.items()
            if all(find_binary(binary) for binary in overlays.get(name).shipped)}
    if set(here) != set(LAB_OVERLAYS):
        # Never dropped without a word: without Weave's or Flannel's binaries this run is not the one asked for.
        absent = sorted(set(LAB_OVERLAYS) - set(here))
        binaries = ", ".join(b for name in absent for b in overlays.get(name).shipped)
        pytest.skip(f"{', '.join(absent)}: binaries not on PATH ({binaries}); see docs/overlays.md for how to get them")
    before = {host.ssh: docker_on(host, "info", "--format", "{{.ServerVersion}} {{.Swarm.LocalNodeState}}").stdout
              for host in (a, b)}
    faulted = tmp_path / "faults.yaml"
    faulted.write_text(yaml.safe_dump({**yaml.safe_load(out.read_text()), "faults": LAB_FAULTS}, sort_keys=False))
    results = tmp_path / "overlays.json"
    with neighbour_on(a) as reading:
        network_before = reading()
        # Weave's sleeve is judged on latency here (its TCP is the embedded tests' subject);
        # the faults go through the underlay and Calico.
        run = run_suites("suites/", *QUICK, f"--topology={faulted}", f"--overlay=host,{','.join(here)}",
                         "-m", "latency or tcp or faults", "-k", "not (weave and tcp) and not (test_fault and "
                         "(weave or flannel))", f"--overlay-json={results}", timeout=900)
        run.passed()
        assert reading() == network_before  # the neighbour's chains, rules, route and network as they were
    assert ("skipped: fault reroute-A-B cannot be applied on the remote testbed: the fault changes the delay from A "
            "to B (10 -> 20 ms): on real hosts a delay step needs netem there") in run.output, run.output
    assert "applied at t = 0 by firewall rules between the hosts (by their clocks)" in run.output
    assert "| not counted (real hosts) |" in run.output  # the replies during the fault: no wire counts to say how
    everything = json.loads(results.read_text())["results"]
    faults = {(r["overlay"], r["metric"]): r for r in everything if r["fault"]}
    for overlay in ("host", "calico"):
        outage = faults[(overlay, "outage_ms")]
        e = outage["extra"]
        applied = (e["steps"][1]["at_ns"] - e["steps"][0]["at_ns"]) / 1e6
        assert 2900 <= applied <= 3500 and outage["datapath"]["testbed"] == "remote", e["steps"]
        # stamped by two hosts' clocks right after the rule's jump came and went: the cut's start by
        # the first, its heal by the last; a stamp is late by one `date` run on a host whose CPU the
        # hypervisor may be taking
        assert applied - 100 <= outage["stats"]["max"] <= applied + 1000, e["outcome"]
        assert faults[(overlay, "fault_lost")]["stats"]["max"] > 250, e["outcome"]  # 3 s, one request per 10 ms
        assert not faults[(overlay, "recovery_ms")]["extra"]["censored"] and outage["verdict"] == "pass"
    assert faults[("calico", "outage_ms")]["extra"]["control_before"] == {"A->B": "Established",
                                                                         "B->A": "Established"}
    assert fault_rules(a) == fault_rules(b) == ""
    records = [r for r in everything if not r["fault"] and r["overlay"] != "host"]
    assert {(r["overlay"], r["metric"]) for r in records} == {
        (name, metric) for name in here for metric in ("latency", "tcp_throughput")
        if (name, metric) != ("weave", "tcp_throughput")}
    for record in records:
        path = record["datapath"]
        assert record["valid"] and path["testbed"] == "remote", record
        if record["overlay"] == "weave":
            assert path["kind"] in ("weave-sleeve", "weave-fastdp")
            assert all(c["state"] == "established" for conns in path["peer_connections"].values() for c in conns)
            # Joined by a password made for the run, the data between the run's own hosts not encrypted.
            assert path["encryption_reported"] and not path["encrypted"]
            assert not any(c["encrypted"] for conns in path["peer_connections"].values() for c in conns)
        elif record["overlay"] == "flannel":
            assert path["kind"] == "flannel-vxlan" and len(set(path["leases"].values())) == 2
            assert all(route for route in path["routes"].values())  # each site routes the other's lease
            assert path["mtu"] == 1450  # flanneld's: the WAN's 1500 less VXLAN's 50
        else:
            assert path["kind"] == "calico-model" and path["mtu"] == 1500
            assert all(set(peers.values()) == {"Established"} for peers in path["bgp_sessions"].values())
            assert path["blocks"][record["dst"]] in path["routes_learned"][record["src"]]
        if record["metric"] == "latency":
            assert 19 < record["stats"]["min"] < 35, record  # local.yaml: 20 ms, plus the overlay's own path
    live = " ".join(f"$(pgrep -x {d})" for daemons in here.values() for d in daemons)
    for host in (a, b):
        left = ssh(host, f"ip -o link show; iptables -S; iptables -t nat -S; ip route show proto bird; "
                         f"for p in {live}; do grep -q '^State:.*Z' /proc/$p/status || echo live $p; done")
        assert left.returncode == 0, left.stderr
        assert not re.search(r"weave|flannel|cali|10\.4[08]\.|live", left.stdout, re.I), left.stdout
        assert docker_on(host, "ps", "-aq").stdout.strip() == ""
        assert docker_on(host, "network", "ls", "--filter", "label=pytest-overlay.run", "-q").stdout.strip() == ""
        after = docker_on(host, "info", "--format", "{{.ServerVersion}} {{.Swarm.LocalNodeState}}").stdout
        assert after == before[host.ssh]


def test_what_a_run_puts_on_a_host_is_for_root_only(shared_lab, tmp_path, clean_machine):
    """Files copied to a host (keys among them) and a daemon's folder, log and pid file: root's
    alone, whatever the copied file's own mode was."""
    out, a, b = shared_lab
    bed = RemoteTestbed(topology.load(out))
    held = hostlock.HostLock(a, bed.run_id, "A")  # what a run changes on a host, it changes holding it
    assert held.acquire() is None
    key = tmp_path / "key.pem"
    key.write_text("not a real key")
    key.chmod(0o644)
    files = f"{hosts.HOST_STATE}/{bed.run_id}/host/files-A"
    try:
        bed.put_files("A", files, {"key.pem": key})
        # A daemon's command line names its folder (so only it is ever signalled): this one too.
        daemon = hosts.HostDaemon.start("sleeper-A", a, bed.host_dir("sleeper-A"), [
            "python3", "-c", "import time; time.sleep(30)", bed.host_dir("sleeper-A") + "/"], fenced=bed.run_id)
    except BaseException:
        held.release()
        raise
    try:
        paths = [files, f"{files}/key.pem", daemon.directory, f"{daemon.directory}/log", f"{daemon.directory}/pid"]
        modes = ssh(a, "stat -c %a " + " ".join(paths)).stdout.split()
        assert modes == ["700", "600", "700", "600", "600"], dict(zip(paths, modes))
    finally:
        daemon.stop()
        held.release()
        ssh(a, f"rm -rf {hosts.HOST_STATE}/{bed.run_id}")


def test_clean_removes_a_killed_runs_fault_rules(shared_lab, clean_machine):
    """A cut whose run died with nobody left to remove it (a controller that vanished before its
    timer was due, or a version before faults removed themselves): `clean --topology` finds
    its chain by the run id in its name, and removes it, its jumps and its timer, nothing else."""
    out, a, b = shared_lab
    topo = topology.load(out)
    before = {h.ssh: ssh(h, "iptables-save -t raw | grep -v '^#'").stdout for h in (a, b)}
    run_id = runs.new_run_id()
    (STATE_ROOT / run_id).mkdir(parents=True)
    (STATE_ROOT / run_id / "lock").touch()  # nobody holds it: the run is over
    (STATE_ROOT / run_id / "state.json").write_text(json.dumps({"run_id": run_id, "backend": "remote",
                                                                "hosts": {"A": a.docker, "B": b.docker}}))
    cut = topo.links[0]
    changes = {f"{d.src}->{d.dst}": dataclasses.replace(d, loss_pct=100) for d in (cut.forward, cut.reverse)}
    for site, host in (("A", a), ("B", b)):  # held by the run, whose lock then vanishes without a word
        hosts.host_run(host, f'mkdir -p {hosts.LOCKS}; echo "run {run_id} from nowhere" > "{hosts.lock_file()}"',
                       60).check()
        script, restore = hostlinks.apply_script(run_id, hostlinks.rules(topo, site, changes, run_id), hold_s=300)
        hosts.host_run(host, script, 60, input=restore).check()
        hosts.host_run(host, f'rm -f "{hosts.lock_file()}"', 60).check()
    assert ssh(a, f"ping -c 1 -W 1 {b.address}").returncode != 0
    assert f"-A PREROUTING -j OVL-FAULT-{run_id}" in fault_rules(a) and fault_rules(b)
    swept = clean_hosts(out)
    assert f"host A: removed run {run_id}'s WAN fault rules (OVL-FAULT-{run_id})" in swept.stdout, swept.stdout
    assert {h.ssh: ssh(h, "iptables-save -t raw | grep -v '^#'").stdout for h in (a, b)} == before
    assert ssh(a, f"ping -c 1 -W 1 {b.address}").returncode == 0
    assert ssh(a, f"ls {hosts.HOST_STATE}/{run_id}").returncode != 0  # the timers and their files gone


# A run that cuts A-B for 300 s (its drops held by the hosts' firewalls) and waits to be killed.
CUTTER = """
import dataclasses, sys, time
from pathlib import Path
from pytest_overlay.inputs import topology
from pytest_overlay.testbeds.real.remote import RemoteTestbed
topo = topology.load(sys.argv[1])
lease = {"lease_s": float(sys.argv[3]), "lock_delay_s": float(sys.argv[4])} if len(sys.argv) > 3 else {}
bed = RemoteTestbed(topo, state_root=Path(sys.argv[2]), progress=lambda m: print(m, flush=True) if " lost" in m else 0,
                    **lease)
bed.up()
cut = topo.links[0]
bed.impair({f"{d.src}->{d.dst}": dataclasses.replace(d, loss_pct=100) for d in (cut.forward, cut.reverse)},
           hold_s=330)
print("cut", bed.run_id, flush=True)
time.sleep(600)
"""


def firewall(host: topology.RemoteHost) -> dict[str, list[str]]:
    """The host's iptables: per table with a rule or chain of its own, its lines without
    counters (a table the kernel made empty on first use is no change)."""
    shown = ssh(host, "iptables-save")
    assert shown.returncode == 0, shown.stderr
    tables = {}
    for block in shown.stdout.split("*")[1:]:
        name, *lines = [re.sub(r" \[\d+:\d+\]$", "", line) for line in block.splitlines()
                        if line and not line.startswith("#") and line != "COMMIT"]
        if any(not re.fullmatch(r":[A-Z]+ ACCEPT", line) for line in lines):
            tables[name] = lines
    return tables


def start_cut(out: Path, state_root: Path, *lease: float) -> tuple[subprocess.Popen, str]:
    """A run holding a cut between the lab's hosts (`lease`: its lease and lock delay, in
    seconds, if not the product's): its process and its run id."""
    run = subprocess.Popen([sys.executable, "-c", CUTTER, str(out), str(state_root), *map(str, lease)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = run.stdout.readline().split()
    if said[:1] != ["cut"]:
        run.kill()
        pytest.fail(f"the cutting run did not cut: {said} {run.communicate(timeout=60)[1][-2000:]}")
    return run, said[1]


def cut_the_link(bed: RemoteTestbed, hold_s: float) -> None:
    """The lab's one link cut both ways, as a cut's first step is applied, held `hold_s` at most."""
    cut = bed.topology.links[0]
    bed.impair({f"{d.src}->{d.dst}": dataclasses.replace(d, loss_pct=100) for d in (cut.forward, cut.reverse)},
               hold_s=hold_s)


def test_a_fault_whose_run_is_killed_removes_itself_from_the_hosts(shared_lab, tmp_path, clean_machine):
    """SIGKILL in the middle of a 300 s cut, with no teardown and no `clean`: the lock sessions'
    far ends see their input close and remove the run's chain and its timer, so that A and B
    reach each other again within 60 s. The `clean --topology` that follows leaves both
    hosts' firewalls exactly as they were before the run."""
    out, a, b = shared_lab
    before = {h.ssh: firewall(h) for h in (a, b)}
    run, run_id = start_cut(out, STATE_ROOT)
    try:
        assert ssh(a, f"ping -c 1 -W 1 {b.address}").returncode != 0
        timers = ssh(a, f"cat {hosts.HOST_STATE}/{run_id}/fault-timer-*").stdout.split()
        assert len(timers) == 2, timers  # one per host: the lab's hosts share a file system
    finally:
        run.kill()
        run.wait()
    killed = time.monotonic()
    while ssh(a, f"ping -c 1 -W 1 {b.address}").returncode != 0 and time.monotonic() - killed < 60:
        time.sleep(0.2)
    took = time.monotonic() - killed
    assert took < 60 and ssh(b, f"ping -c 1 -W 1 {a.address}").returncode == 0
    assert fault_rules(a) == fault_rules(b) == ""
    assert all(ssh(a, f"test -d /proc/{pid} && ! grep -q '^State:.*Z' /proc/{pid}/status").returncode != 0
               for pid in timers), "a fault timer outlived its fault"
    clean_hosts(out)
    assert {h.ssh: firewall(h) for h in (a, b)} == before
    print(f"reached each other again {took:.1f} s after SIGKILL")


def test_a_controller_that_vanishes_mid_cut_loses_its_hosts_which_heal_themselves(shared_lab, tmp_path,
                                                                                   clean_machine):
    """SIGSTOP in the middle of a 330 s cut (a suspended laptop; its ssh sessions stay up): the
    renewals stop, and one lease later (4 s here, the product's is hostlock.LEASE_S) each host
    removes the run's chain, so A and B reach each other, and marks the lock expired: another run
    is refused for the lock delay (10 s here), then free. Resumed, the controller finds both
    hosts lost and names them. One `clean --topology`, without --force, then leaves both hosts'
    firewalls as they were."""
    out, a, b = shared_lab
    before = {h.ssh: firewall(h) for h in (a, b)}
    run, run_id = start_cut(out, tmp_path, 4, 10)
    try:
        assert ssh(a, f"ping -c 1 -W 1 {b.address}").returncode != 0
        run.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        while ssh(a, f"ping -c 1 -W 1 {b.address}").returncode != 0 and time.monotonic() - stopped < 60:
            time.sleep(0.2)
        healed = time.monotonic() - stopped
        assert healed < 30 and fault_rules(a) == fault_rules(b) == ""
        refused = hostlock.HostLock(a, "f00d05").acquire() or ""
        assert f"expired: run {run_id} lost its controller (lapsed)" in refused, refused
        run.send_signal(signal.SIGCONT)
        said, _ = run.communicate(timeout=60)
        assert re.search(r"host [AB] lost: no renewal of its lease acknowledged for \d+ s", said), said
    finally:
        run.kill()
        run.wait()
    swept = clean_hosts(out)
    assert f"run {run_id}: its lease on the hosts lapsed, so it is over" in swept.stdout, swept.stdout
    assert {h.ssh: firewall(h) for h in (a, b)} == before
    assert ssh(a, f"ls -d {hosts.HOST_STATE}/{run_id}").returncode != 0
    print(f"the hosts healed {healed:.1f} s after the controller stopped")


def test_a_fault_timer_removes_a_fault_whose_controller_vanished(shared_lab, tmp_path, clean_machine):
    """A controller gone without closing its sessions (a crash, a cut cable) leaves nothing to
    close the lock's input: the step's own timer removes the chain at its hold."""
    out, a, b = shared_lab
    bed = RemoteTestbed(topology.load(out), state_root=tmp_path)
    bed.up()
    try:
        cut_the_link(bed, hold_s=2)
        assert ssh(a, f"ping -c 1 -W 1 {b.address}").returncode != 0
        deadline = time.monotonic() + 30
        while fault_rules(a) + fault_rules(b) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert fault_rules(a) == fault_rules(b) == "" and ssh(a, f"ping -c 1 -W 1 {b.address}").returncode == 0
    finally:
        bed.down()


def test_one_machine_is_one_lock_whatever_name_reaches_it(shared_lab, clean_machine):
    """Host A named as two hosts (another address): a second run on it is refused, naming the
    first; the same run naming it twice is told a machine is one site only."""
    out, a, b = shared_lab
    other_name = dataclasses.replace(a, address="198.18.77.77")
    first = hostlock.HostLock(a, "f00d03")
    assert first.acquire() is None
    try:
        assert re.match(r"in use by another pytest-overlay: run f00d03 from ", hostlock.HostLock(other_name, "f00d04")
                        .acquire() or "")
        assert "is the machine another site of this run holds already" in (
            hostlock.HostLock(other_name, "f00d03").acquire() or "")
        free = hostlock.HostLock(b, "f00d04")
        assert free.acquire() is None  # B is another machine (its own namespace)
        free.release()
    finally:
        first.release()


def test_clean_with_force_leaves_a_live_runs_hosts_alone(shared_lab, tmp_path, clean_machine):
    """A live run from another controller (its state out of this machine's sight) holds both
    hosts with a cut on and a container: `clean --topology --force` skips both hosts, naming
    the holder; the run's chain and container stay, and its own teardown then removes them."""
    out, a, b = shared_lab
    bed = RemoteTestbed(topology.load(out), state_root=tmp_path)
    bed.up()
    try:
        cut_the_link(bed, hold_s=300)
        bed.underlay_endpoint("A")
        rules = {h.ssh: fault_rules(h) for h in (a, b)}
        swept = subprocess.run([sys.executable, "-m", "pytest_overlay", "clean", "--topology", str(out), "--force"],
                               cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert swept.returncode == 0, swept.stderr
        for site in "AB":
            assert re.search(rf"host {site}: skipped, not touched: in use by another pytest-overlay: run "
                             rf"{bed.run_id} ", swept.stdout), swept.stdout
        assert {h.ssh: fault_rules(h) for h in (a, b)} == rules and rules[a.ssh]
        assert f"ovl{bed.run_id}-A-host" in docker_on(a, "ps", "--format", "{{.Names}}").stdout
    finally:
        bed.down()
    assert fault_rules(a) == fault_rules(b) == ""


def test_the_preflight_refuses_a_host_that_carries_another_runs_fault(shared_lab, tmp_path, clean_machine):
    """A chain a dead run left on B (as one killed before this version removed its own): the
    next run is refused before anything is made, naming the run and how to remove it."""
    out, a, b = shared_lab
    chain = hostlinks.chain("0badc0")
    assert ssh(b, f"iptables -t raw -N {chain} && iptables -t raw -I PREROUTING -j {chain}").returncode == 0
    try:
        bed = RemoteTestbed(topology.load(out), state_root=tmp_path)
        with pytest.raises(remote.RemoteError, match=r"B: still carries run 0badc0's WAN fault \(OVL-FAULT-0badc0 "):
            with bed:
                pass
        assert "ovl" not in docker_on(b, "ps", "-a", "--format", "{{.Names}}").stdout
    finally:
        ssh(b, f"iptables -t raw -D PREROUTING -j {chain}; iptables -t raw -X {chain}")


# A run holding host A that, on Ctrl-C, takes 5 s over its teardown before it lets go.
INTERRUPTED = """
import signal, sys, time
from pytest_overlay.testbeds.real import hostlock
from pytest_overlay.inputs import topology
lock = hostlock.HostLock(topology.load(sys.argv[1]).sites["A"].host, "f00d05")
assert lock.acquire() is None
def teardown(*_):
    print("tearing down", flush=True)
    time.sleep(5)
    lock.release()
    sys.exit(0)
signal.signal(signal.SIGINT, teardown)
print("held", flush=True)
time.sleep(600)
"""


def test_a_ctrl_c_leaves_the_hosts_held_until_teardown_is_done(shared_lab, clean_machine):
    """Ctrl-C sends SIGINT to the whole foreground process group: the run's ssh sessions must
    not be in it, or the hosts are free (and a fault's chain gone) while teardown still runs."""
    out, a, b = shared_lab
    run = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        assert run.stdout.readline().strip() == "held"
        os.killpg(run.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
        assert run.stdout.readline().strip() == "tearing down"
        time.sleep(1)
        assert "run f00d05" in (hostlock.HostLock(a, "f00d06").acquire() or "")
        assert run.wait(timeout=30) == 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    free = hostlock.HostLock(a, "f00d06")
    assert free.acquire() is None
    free.release()


@pytest.mark.skipif(procs.missing({"wireguard-go": "wireguard-go", "wg": "wireguard-tools", "nebula": "nebula",
                                   "tincd": "tinc"}) != [], reason="the meshes' daemons (wireguard-go, wg, nebula, "
                                                                   "tincd) are not installed")
def test_the_meshes_across_the_lab_hosts(shared_lab, tmp_path, clean_machine):
    """WireGuard, Nebula and tinc measured over the lab as every other overlay is: their daemons
    started over ssh, their keys copied through ssh's stdin, each record naming its cipher; and
    afterwards nothing of theirs on the hosts, a neighbour's network as it was."""
    out, a, b = shared_lab
    limits = tmp_path / "limits.yaml"
    limits.write_text((ROOT / "tests" / "relaxed-thresholds.yaml").read_text() + "overrides:\n" + "".join(
        f"  - {{metric: latency, overlay: {name}, mean_tolerance_ms: 5}}\n" for name in ("wireguard", "nebula", "tinc")))
    results = tmp_path / "meshes.json"
    with neighbour_on(a) as reading:
        network_before = reading()
        run = run_suites("suites/", *QUICK, f"--topology={out}", "--overlay=meshes", "-m", "latency",
                         f"--overlay-thresholds={limits}", f"--overlay-json={results}", timeout=600)
        run.passed()
        assert reading() == network_before
    records = json.loads(results.read_text())["results"]
    assert {r["overlay"] for r in records} == {"wireguard", "nebula", "tinc"}
    for record in records:
        assert record["datapath"]["testbed"] == "remote" and record["datapath"]["cipher"], record["datapath"]
    for host in (a, b):
        left = ssh(host, "ip -o link; ip route; iptables -S FORWARD").stdout
        assert not re.search(r"\b(wg|nb|tc)[0-9a-f]{6}\d|10\.6[456]\.", left), left


def test_a_lock_directory_others_may_write_is_refused(shared_lab, clean_machine):
    """A local user who could write the lock directory could hold every host or stand in for a
    run: a host whose directory is not root's alone is refused, saying which and how to fix it."""
    out, a, b = shared_lab
    assert ssh(a, f"mkdir -p {hostlock.LOCKS} && chmod o+w {hostlock.LOCKS}").returncode == 0
    try:
        refused = hostlock.HostLock(a, "f00d07").acquire() or ""
    finally:
        ssh(a, f"chmod go-w {hostlock.LOCKS}")
    assert refused.startswith(f"its lock directory is not root's alone ({hostlock.LOCKS} belongs to root with "
                              "mode 70"), refused
    assert "chmod go-w" in refused
    held = hostlock.HostLock(a, "f00d07")
    assert held.acquire() is None
    held.release()
