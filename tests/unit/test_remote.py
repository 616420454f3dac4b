"""The remote backend's pieces that need no host: how it reaches hosts and how it words what
went wrong (from errors captured against the lab's real daemons)."""

import docker
import pytest

from pytest_overlay import kinds, procs
from pytest_overlay.inputs import topology
from pytest_overlay.inputs.topology import RemoteHost
from pytest_overlay.paths import KNOWN_HOSTS
from pytest_overlay.testbeds.real import hostengine, hosts, preflight, remote

HOST = RemoteHost("198.18.0.1", ssh="ops@192.0.2.1:2222", docker="tcp://192.0.2.1:2376",
                  tls={"ca": "/k/ca.pem", "cert": "/k/cert.pem", "key": "/k/key.pem"},
                  identity="/k/id_ed25519", known_hosts="/k/known_hosts")


def test_ssh_uses_keys_only_and_the_known_host_key():
    command = hosts.ssh_command(HOST, "true")
    assert command[0] == "ssh" and command[-2:] == ["ops@192.0.2.1", "true"]
    assert ["-p", "2222"] == command[command.index("-p"):command.index("-p") + 2]
    assert ["-i", "/k/id_ed25519"] == command[command.index("-i"):command.index("-i") + 2]
    for option in ("BatchMode=yes", "StrictHostKeyChecking=yes", "UserKnownHostsFile=/k/known_hosts", "ControlMaster=no"):
        assert option in command
    plain = RemoteHost("192.0.2.9", ssh="ops@192.0.2.9")  # no known_hosts: recorded on first contact, then checked
    assert hosts.ssh_command(plain, "true") == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o",
                                                 "ControlMaster=no", "-o", f"UserKnownHostsFile={KNOWN_HOSTS}",
                                                 "-o", "StrictHostKeyChecking=accept-new", "ops@192.0.2.9", "true"]
    assert hosts.ssh_key_name(plain) == "192.0.2.9" and hosts.ssh_key_name(HOST) == "[192.0.2.1]:2222"


def test_docker_command_line_carries_the_client_certificate():
    engine = hostengine.RemoteEngine("A", "", HOST.address, "abc123", None, host=HOST)
    assert engine.docker_command() == ["docker", "-H", "tcp://192.0.2.1:2376", "--tlsverify", "--tlscacert",
                                       "/k/ca.pem", "--tlscert", "/k/cert.pem", "--tlskey", "/k/key.pem"]


def test_tls_failures_are_said_in_a_sentence():
    rejected = ("HTTPSConnectionPool(host='198.19.128.2', port=2376): Max retries exceeded with url: /v1.41/version "
                "(Caused by SSLError(SSLEOFError(8, 'EOF occurred in violation of protocol (_ssl.c:2427)')))")
    assert hostengine.tls_reason(Exception(rejected)).startswith(
        "the daemon closed the TLS handshake: it most likely rejected our client certificate")
    unknown_ca = ("(Caused by SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                  "verify failed: unable to get local issuer certificate (_ssl.c:1006)')))")
    assert hostengine.tls_reason(Exception(unknown_ca)) == (
        "the daemon's certificate is not signed by tls.ca ([SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
        "failed: unable to get local issuer certificate (_ssl.c:1006)")
    refused = "Failed to establish a new connection: [Errno 111] Connection refused"
    assert hostengine.tls_reason(Exception(refused)) == "connection refused: nothing listens there (Connection refused)"


class FakeHost:
    """testinfra's host, answering from a table of what is there: a command whose text holds
    a key gets that key's (exit, stdout); anything else succeeds with no output."""

    def __init__(self, answers: dict[str, tuple[int, str]]) -> None:
        self.answers, self.asked = answers, []

    def run(self, command: str):
        from types import SimpleNamespace

        self.asked.append(command)
        rc, out = next((a for key, a in self.answers.items() if key in command), (0, ""))
        return SimpleNamespace(rc=rc, stdout=out, stderr="")


def test_preflight_asks_each_overlay_what_it_needs_on_a_host(tmp_path):
    """The remote backend knows no overlay: it checks what each one declares (host_needs),
    once per family, and every overlay that leaves traces on hosts declares how to undo them."""
    from pytest_overlay import overlays
    from pytest_overlay.inputs import topology

    for name in overlays.names():
        kind = overlays.get(name)
        if kind.host_needs is not None:  # a family with daemons on hosts: a range of its own, and a footprint
            assert kind.host_needs.family is kind.family and kind.host_needs.footprint.overlay == kind.family.name
            assert overlays.footprint(name) is kind.host_needs.footprint
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nsites:\n  A: {host: {ssh: root@192.0.2.1}}\n  B: {host: {ssh: root@192.0.2.2}}\n"
                    "links:\n  - {between: [A, B], rtt_ms: 20}\n")
    asked = ["host", "libnetwork", "weave", "weave-encrypted", "flannel-udp", "calico"]
    wanted = overlays.host_needs(asked)
    assert [n.family.name for n in wanted] == ["weave", "flannel", "calico"]
    host = FakeHost({"weaver --version": (127, ""), "/sys/class/net/flannel0": (0, ""),
                     "/sys/class/net/": (1, ""), "sport = :179": (0, ""), "pgrep -x bird": (0, "4242\n"),
                     "pgrep": (0, ""), "ip -4 route show table all": (0, "blackhole 10.40.7.0/24\n")})
    said = [str(check) for check in preflight.overlay_needs(topology.load(path), "A", wanted, host, root=True)]
    assert any("weaver (Weave Net's router) is not installed or does not start" in s for s in said), said
    assert any("Flannel's flannel0 is already up" in s for s in said), said
    assert any("a BGP speaker already listens on 179/tcp" in s for s in said), said
    assert any("bird already runs there (pid 4242): another BIRD (Calico's BGP)" in s for s in said), said
    assert any("route 'blackhole 10.40.7.0/24' lies inside Flannel's network 10.40.0.0/16" in s for s in said), said
    assert any("lies inside Weave Net's IPAM range 10.32.0.0/12" in s for s in said), said  # its /12 holds 10.40/16
    assert not any("etcd" in s for s in said)  # A is not the key-value site: etcd is not asked for there
    assert len(said) == 6, said
    assert sum("weaver" in c and "pgrep" in c for c in host.asked) == 1  # weave-encrypted is the same Weave Net


def test_every_backend_keeps_the_whole_site_contract():
    from pytest_overlay.testbeds.emulated import LocalSiteOps, SiteOps

    contract = [name for name in vars(SiteOps) if not name.startswith("_")]
    assert contract == ["run", "start", "directory", "files", "binary", "missing"]
    for backend in (LocalSiteOps, remote.HostSiteOps):
        assert all(vars(backend).get(name) is not None for name in contract), backend


def test_every_backend_implements_what_the_testbed_leaves_to_it():
    """What the Testbed base leaves to its backends (a bare NotImplementedError), both have;
    what it may refuse (a WAN fault's delay step, a buffer change) says why instead."""
    import inspect

    from pytest_overlay.testbeds.emulated import EmulatedTestbed, Testbed

    required = [name for name, f in vars(Testbed).items()
                if inspect.isfunction(f) and inspect.getsource(f).rstrip().endswith("raise NotImplementedError")]
    assert {"up", "down", "site_engines", "start_engines"} <= set(required), required
    for backend in (EmulatedTestbed, remote.RemoteTestbed):
        assert [name for name in required if name not in vars(backend)] == [], backend


def test_a_hosts_network_is_read_before_the_overlays_first_daemon_there(tmp_path, monkeypatch):
    """Once per site and overlay, before its daemon starts: what the daemons then add is what
    teardown undoes."""
    from pytest_overlay.inputs import topology

    path = tmp_path / "t.yaml"
    path.write_text("name: t\nsites:\n  A: {host: {ssh: root@192.0.2.1}}\n  B: {host: {ssh: root@192.0.2.2}}\n"
                    "links:\n  - {between: [A, B], rtt_ms: 20}\nranges: {flannel: 10.200.0.0/16}\n")
    bed = remote.RemoteTestbed(topology.load(path), state_root=tmp_path)
    done = []
    monkeypatch.setattr(remote, "record_host_network",
                        lambda host, run_id, site, overlay, addresses: done.append(("read", site, overlay, addresses)))
    monkeypatch.setattr(remote.HostDaemon, "start", classmethod(
        lambda cls, name, host, directory, command, env=None, fenced=None: done.append(
            ("start", name, command[0], directory, fenced))))
    ops = bed.site_ops("flannel-udp", tmp_path, kinds.families()["flannel"])
    ops.start("A", "etcd-A", ["etcd"])
    ops.start("A", "flanneld-A", ["flanneld"], own_pid_namespace=True)
    ops.start("B", "flanneld-B", ["flanneld"])
    run = f"/run/pytest-overlay-host/{bed.run_id}/host"
    fenced = bed.run_id  # a daemon starts only while the run holds the host
    assert done == [("read", "A", "flannel-udp", "10.200.0.0/16"), ("start", "etcd-A", "etcd", f"{run}/etcd-A", fenced),
                    ("start", "flanneld-A", "unshare", f"{run}/flanneld-A", fenced),
                    ("read", "B", "flannel-udp", "10.200.0.0/16"),
                    ("start", "flanneld-B", "flanneld", f"{run}/flanneld-B", fenced)]
    done.clear()
    bed.site_ops("libnetwork", tmp_path).start("A", "x-A", ["x"])  # an overlay with nothing of its own on hosts
    assert [d[0] for d in done] == ["start"]


class SlowSwarm:
    """A Docker client whose swarm leave times out as raft's does ("context deadline
    exceeded") `timeouts` times; the node stays `active` until a leave gets through."""

    def __init__(self, timeouts: int, completes_anyway: bool = False) -> None:
        self.timeouts, self.completes_anyway, self.leaves, self.state = timeouts, completes_anyway, 0, "active"
        self.swarm = self

    def leave(self, force: bool = False) -> None:
        self.leaves += 1
        if self.leaves <= self.timeouts:
            if self.completes_anyway:
                self.state = "inactive"
            raise docker.errors.APIError('500 Server Error: Internal Server Error ("context deadline exceeded")')
        self.state = "inactive"

    def info(self) -> dict:
        return {"Swarm": {"LocalNodeState": self.state, "NodeID": "k2hz1b5g7sq3x0v"}}


def engine_with(client) -> hostengine.RemoteEngine:
    engine = hostengine.RemoteEngine("ZED", "", "192.0.2.9", "abc123", None)
    engine.client = client
    return engine


def test_a_swarm_leave_that_times_out_is_tried_again_before_it_is_an_error():
    """As over the lab: ZED's first leave timed out. Tried again (or seen to have completed),
    it is no error; a host that never leaves is named with what is left and how to remove it."""
    again = SlowSwarm(timeouts=1)
    assert hostengine.leave_swarm_of(engine_with(again), wait_s=5, poll_s=0.01) is None and again.leaves == 2
    anyway = SlowSwarm(timeouts=1, completes_anyway=True)
    assert hostengine.leave_swarm_of(engine_with(anyway), wait_s=5, poll_s=0.01) is None and anyway.leaves == 1
    stuck = SlowSwarm(timeouts=10**6)
    said = hostengine.leave_swarm_of(engine_with(stuck), wait_s=0.2, poll_s=0.01)
    assert said.startswith("host ZED: still in the swarm the run made (node k2hz1b5g7sq3, state active) after ")
    assert "context deadline exceeded" in said and "docker swarm leave --force" in said and stuck.leaves > 1


def test_the_preflight_refuses_a_host_that_still_carries_another_runs_fault():
    """A killed run's cut, as `iptables-save -t raw` shows it on the host: named, with the
    run, the chain and both ways to remove it; a host with only others' raw chains passes."""
    saved = ("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:OVL-FAULT-3f09aa - [0:0]\n:CNI-RAW - [0:0]\n"
             "-A PREROUTING -j OVL-FAULT-3f09aa\n-A OVL-FAULT-3f09aa -s 198.18.0.2/32 -j DROP\nCOMMIT\n")
    (check,) = preflight.other_runs_faults("B", saved)
    assert str(check).startswith("B: still carries run 3f09aa's WAN fault (OVL-FAULT-3f09aa in the raw table")
    assert "clean --topology FILE" in check.fix and "iptables -t raw -X OVL-FAULT-3f09aa" in check.fix
    assert preflight.other_runs_faults("B", saved.replace("OVL-FAULT-3f09aa", "CNI-XYZ")) == []


def test_a_teardown_that_could_not_undo_an_overlays_footprint_keeps_the_runs_state(tmp_path):
    """An overlay's undo failed on a host: the testbed's teardown fails naming it, and keeps
    the run's state here, so that `clean --topology` finds the run without --force."""
    topo = topology.parse({"name": "t", "sites": {"A": {"host": {"ssh": "root@192.0.2.1"}},
                                                  "B": {"host": {"ssh": "root@192.0.2.2"}}},
                           "links": [{"between": ["A", "B"], "rtt_ms": 10}]}, "t.yaml")
    bed = remote.RemoteTestbed(topo, state_root=tmp_path)
    bed.run_dir.mkdir()
    (bed.run_dir / "state.json").write_text("{}")
    bed.left_behind("teardown on the hosts: host B: failed: ip link del weave")
    with pytest.raises(remote.RemoteError, match=r"(?s)state is kept in .*host B: failed: ip link del weave"):
        bed.down()
    assert (bed.run_dir / "state.json").exists()


def test_a_lease_is_lost_when_its_renewals_go_unanswered_or_its_session_ends(monkeypatch):
    """The controller's side of the lease (hostlock.py), with a stand-in for the ssh session:
    held while acknowledged, lost once silent past the lease (the cause named even after the
    session ended), or once the session ends; the first answer is kept."""
    import subprocess

    from pytest_overlay.inputs.model import RemoteHost
    from pytest_overlay.testbeds.real import hostlock

    lock = hostlock.HostLock(RemoteHost(address="192.0.2.1", ssh="root@192.0.2.1"), "abc123", "A", lease_s=20)
    lock.session = subprocess.Popen(["sleep", "30"])
    try:
        lock.acknowledged = hostlock.time.monotonic() - 5
        assert lock.lost() is None
        lock.acknowledged = hostlock.time.monotonic() - 25
        lock.session.kill()
        lock.session.wait()
        said = lock.lost()
        assert said.startswith("no renewal of its lease acknowledged for 25 s, at ") and said == lock.lost()
        other = hostlock.HostLock(RemoteHost(address="192.0.2.2", ssh="root@192.0.2.2"), "abc123", "B")
        other.session, other.acknowledged = lock.session, hostlock.time.monotonic()
        assert other.lost().startswith("its lock session ended (ssh exit -9)")
    finally:
        lock.session.kill()


def test_the_watchdog_names_a_lost_host_once_stops_the_run_and_never_acts_on_it_again(tmp_path, monkeypatch):
    from pytest_overlay.inputs import topology

    path = tmp_path / "t.yaml"
    path.write_text("name: t\nsites:\n  A: {host: {ssh: root@192.0.2.1}}\n  B: {host: {ssh: root@192.0.2.2}}\n"
                    "links:\n  - {between: [A, B], rtt_ms: 20}\n")
    said, signals = [], []
    bed = remote.RemoteTestbed(topology.load(path), state_root=tmp_path, progress=said.append)

    class Lock:
        def __init__(self, site: str, lost: str | None) -> None:
            self.site, self.why = site, lost

        def lost(self) -> str | None:
            return self.why

    bed.host_locks = [Lock("A", None), Lock("B", "no renewal of its lease acknowledged for 21 s")]
    bed._stopper = remote.signal.SIG_DFL  # ours is set (by _lock_hosts, in the main thread)
    monkeypatch.setattr(remote.signal, "pthread_kill", lambda thread, sig: (signals.append((thread, sig)),
                                                                             bed.host_locks.clear()))
    bed._watch_leases()
    assert bed.lost == {"B": "no renewal of its lease acknowledged for 21 s"}
    assert signals == [(remote.threading.main_thread().ident, remote.STOP_SIGNAL)]  # to the main thread itself
    assert said == ["host B lost: no renewal of its lease acknowledged for 21 s; stopping the run"]
    assert bed.dead_daemons() == ["host B lost: no renewal of its lease acknowledged for 21 s"]


def test_the_watchdogs_stop_raises_as_ctrl_c_does_even_where_sigint_is_ignored():
    """A run started in the background (`cmd &` in a script) ignores SIGINT; the watchdog's
    own signal still ends the run as Ctrl-C would."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    before = signal.signal(remote.STOP_SIGNAL, remote._stop_for_a_lost_host)
    try:
        with pytest.raises(KeyboardInterrupt, match="a host's lease was lost"):
            signal.raise_signal(remote.STOP_SIGNAL)
    finally:
        signal.signal(remote.STOP_SIGNAL, before)
        signal.signal(signal.SIGINT, previous)


def test_the_watchdog_wakes_a_main_thread_blocked_in_a_call(tmp_path):
    """The stop is sent to the main thread itself: taken by another thread, it would wait for
    the main thread's blocking call (here a 30 s sleep) to return."""
    import signal
    import threading
    import time

    from pytest_overlay.inputs import topology

    path = tmp_path / "t.yaml"
    path.write_text("name: t\nsites:\n  A: {host: {ssh: root@192.0.2.1}}\n  B: {host: {ssh: root@192.0.2.2}}\n"
                    "links:\n  - {between: [A, B], rtt_ms: 20}\n")
    bed = remote.RemoteTestbed(topology.load(path), state_root=tmp_path)

    class Lost:
        site = "A"

        def lost(self) -> str:
            bed.host_locks = []  # the watchdog's last look
            return "its lock session ended (ssh exit 255)"

    bed.host_locks = [Lost()]
    bed._stopper = signal.signal(remote.STOP_SIGNAL, remote._stop_for_a_lost_host)
    try:
        threading.Timer(0.2, bed._watch_leases).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt, match="a host's lease was lost"):
            time.sleep(30)
        assert time.monotonic() - started < 5
    finally:
        signal.signal(remote.STOP_SIGNAL, bed._stopper)


def test_a_fault_step_applied_with_no_planned_end_still_goes_by_itself(tmp_path, monkeypatch):
    """impair() without hold_s: the hosts' chain gets the unplanned hold's timer, never none."""
    from pytest_overlay.inputs.model import Direction
    from pytest_overlay.testbeds.real import hostfaults

    topo = topology.parse({"name": "t", "sites": {"A": {"host": {"ssh": "root@192.0.2.1"}},
                                                  "B": {"host": {"ssh": "root@192.0.2.2"}}},
                           "links": [{"between": ["A", "B"], "rtt_ms": 10}]}, "t.yaml")
    bed = remote.RemoteTestbed(topo, state_root=tmp_path)
    bed.run_dir.mkdir()
    sent = []
    monkeypatch.setattr(hostfaults, "host_run", lambda host, script, timeout, input=None, fenced=None: (
        sent.append(script), procs.CommandResult([], 0, "1700000000000000000\n", ""))[1])
    monkeypatch.setattr(bed, "_controller_cut", lambda changes: [])
    bed.impair({"A->B": Direction("A", "B", 5.0, loss_pct=100.0)})
    assert sent and all(f"sleep {round(hostfaults.UNPLANNED_HOLD_S)};" in script for script in sent)


def test_a_step_sent_after_the_hosts_own_timer_makes_the_fault_invalid():
    from pytest_overlay.measure.faultpath import timer_healed

    on_time = [("apply", 0.0, 0.02, 50.0), ("heal", 20.0, 20.03, None)]
    assert timer_healed(on_time) == []
    late = [("apply", 0.0, 0.02, 50.0), ("heal", 20.0, 71.4, None)]
    (said,) = timer_healed(late)
    assert said.startswith("the heal planned at +20 s was sent at +71.4 s, after the hosts' own timer had removed")
    assert timer_healed([("apply", 0.0, 0.0, None), ("heal", 20.0, 500.0, None)]) == []  # the WAN here: no timer


class _SwarmEngine:
    """A host's engine as `clean` reads it: `docker info`'s Swarm part, and `docker swarm
    inspect` where it is a manager."""

    def __init__(self, swarm: dict, spec_labels: dict | None = None) -> None:
        engine = self

        class Swarm:
            attrs: dict = {}

            def reload(self) -> None:
                if spec_labels is None:
                    raise docker.errors.APIError("This node is not a swarm manager.")
                self.attrs = {"Spec": {"Labels": spec_labels}}

        class Client:
            swarm = Swarm()

            def info(self) -> dict:
                return {"Swarm": engine.state}

        self.state, self.client = swarm, Client()


def test_a_swarm_made_by_a_run_killed_before_it_recorded_its_nodes_is_still_found_as_its_own():
    """Killed between `swarm init`/`join` and recording the node ids: the manager's swarm carries
    the run's id in its labels, and a worker's managers are that swarm's; another swarm stays."""
    from pytest_overlay.testbeds.real.hostclean import swarm_to_leave

    state = {"run_id": "c0ffee", "swarm_created": True, "swarm": {}}
    manager = {"NodeID": "m1", "ControlAvailable": True, "RemoteManagers": [{"NodeID": "m1"}]}
    worker = {"NodeID": "w1", "ControlAvailable": False, "RemoteManagers": [{"NodeID": "m1"}]}
    stranger = {"NodeID": "x1", "ControlAvailable": False, "RemoteManagers": [{"NodeID": "x0"}]}
    said = []
    engines = {"A": _SwarmEngine(manager, {"pytest-overlay.run": "c0ffee"}), "B": _SwarmEngine(worker),
               "C": _SwarmEngine(stranger)}
    assert swarm_to_leave(engines, state, said.append) == {"A", "B"}
    assert said == ["host C: its swarm node x1 is not the one run c0ffee made (none recorded); left as it is"]
    engines["A"] = _SwarmEngine(manager, {"pytest-overlay.run": "another"})  # a swarm some other run made
    assert swarm_to_leave(engines, state, said.append) == set()
