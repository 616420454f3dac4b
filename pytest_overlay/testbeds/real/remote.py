"""Real sites: a topology whose sites name real Docker hosts (`host:`), measured as they are.

RemoteTestbed stands where EmulatedTestbed stands for the overlays, probes and fixtures, but
creates nothing on this machine: it speaks SSH (testinfra, for the prerequisites in preflight.py) and the
Docker API (TCP with TLS and a client certificate). Every prerequisite of every host is
checked before anything is created on any of them. What a run creates there (containers, a
network, a swarm if there was none) carries the run's id and is removed at the end; a swarm
that existed is used and left as it was.
"""

from __future__ import annotations

import base64
import contextlib
import io
import shlex
import shutil
import signal
import tarfile
import threading
import time
from pathlib import Path
from typing import Callable

from ... import procs
from ...inputs.model import AddressFamily, Direction, Topology
from ...paths import KNOWN_HOSTS, STATE_ROOT
from ..contract import HostNeeds, SiteHandle, SiteOps, Testbed, tcp_sysctls
from ..endpoints import ContainerEndpoint
from ..engines import LABEL, build_image_tar, import_image
from ..runs import hold_lock, new_run_id
from . import hostlinks, preflight
from .hostengine import GWBRIDGE, MIN_DOCKER, RemoteEngine, RemoteError, remove_run, tls_reason
from .hostfaults import HostFaults
from .hostlock import LEASE_S, LOCK_DELAY_S, HostLock
from .hosts import (
    HOST_STATE,
    HostDaemon,
    host_run,
    record_host_network,
    recorded_key,
)
from .preflight import Check


# The watchdog's stop, as Ctrl-C's: pytest tears down and reports.
STOP_SIGNAL = signal.SIGUSR2


def _stop_for_a_lost_host(signum, frame):
    raise KeyboardInterrupt("pytest-overlay: a host's lease was lost (the watchdog named it above)")


class HostSiteOps(SiteOps):
    """A site's daemons on its host, as root, over ssh, each in the run's directory there;
    binaries from the host's PATH (checked before the run began). The host's network is read
    before the overlay's first daemon starts there (hostnet), for its teardown to undo."""

    def __init__(self, testbed: RemoteTestbed, overlay: str, family: AddressFamily | None) -> None:
        self.testbed, self.overlay, self.family = testbed, overlay, family
        self.read: set[str] = set()  # sites whose network was read for this overlay

    def run(self, site, command, timeout=60, input=None):
        return self.testbed.host_run(site, shlex.join(command), timeout, input)

    def start(self, site, name, command, env=None, own_pid_namespace=False):
        bed = self.testbed
        if self.family is not None and site not in self.read:
            record_host_network(bed.hosts[site], bed.run_id, site, self.overlay, bed.topology.range_of(self.family))
            self.read.add(site)
        command = [*procs.OWN_PID_NAMESPACE, *command] if own_pid_namespace else command
        return HostDaemon.start(name, bed.hosts[site], bed.host_dir(name), command, env, fenced=bed.run_id)

    def directory(self, name):
        return Path(self.testbed.host_dir(name))

    def files(self, site, name, files):
        return self.testbed.put_files(site, self.testbed.host_dir(name), files)

    def binary(self, name):
        return name

    def missing(self, binaries):
        return []  # the preflight asked every host for what the overlays declare, before the run began


class RemoteTestbed(HostFaults, Testbed):
    """Sites on real Docker hosts. Use as a context manager."""

    kind = "remote"
    backend = "remote"
    shared_network = True
    heals_itself = True
    own_engines = False
    own_sites = False
    bringup_failure_is_input = True

    def __init__(self, topology: Topology, progress: Callable[[str], None] | None = None,
                 state_root: Path | None = None, needs: list[HostNeeds] = (), lease_s: float = LEASE_S,
                 lock_delay_s: float = LOCK_DELAY_S) -> None:
        """`lease_s`, `lock_delay_s`: the hosts' hold on the run (hostlock.py), shorter only in
        the lab's tests."""
        self.topology = topology
        self.lease_s, self.lock_delay_s = lease_s, lock_delay_s
        self.needs = list(needs)  # what the run's overlays need on a host: checked on every host
        self.run_id = new_run_id()
        self.run_dir = (state_root or STATE_ROOT) / self.run_id  # this machine's logs of the run
        self.progress = progress or (lambda message: None)
        self.hosts = {name: site.host for name, site in topology.sites.items()}
        # The containers' TCP buffers, as on the embedded testbed; the hosts' own are left alone.
        self.sites = {name: SiteHandle(name, "", host.address, tcp_sysctls(topology, name))
                      for name, host in self.hosts.items()}
        self.engines: dict[str, RemoteEngine] = {}
        self.host_endpoints: dict[str, ContainerEndpoint] = {}
        self.image: str | None = None
        self.swarm_created = False
        self.swarm_ids: dict = {}  # the swarm this run made: {"cluster": id, "nodes": {site: node id}}
        self.gwbridge_made: list[str] = []  # hosts that had no docker_gwbridge before the run's swarm
        self._state_lock = threading.Lock()
        self.created: list[str] = []  # namespaces: none, ever
        self.wan = None
        self.emulator = None
        self.timings: dict[str, float] = {}
        self.versions: dict[str, str] = {}
        self.emulated: list[str] = []  # hosts whose interface got netem: restored at the end
        self.impaired: dict[str, Direction] = {}  # link directions a WAN fault holds now ("A->B")
        self.faulted: list[str] = []  # hosts that may hold the run's fault chain: it goes at the end
        self._iptables: dict[str, str | None] = {}  # per host: why it cannot take a fault's rules
        self._paths: dict[str, tuple[str | None, str | None]] = {}  # per host: how this machine reaches it
        self.left_on_hosts: list[str] = []  # what the overlays' teardown could not undo there
        self.lost: dict[str, str] = {}  # hosts whose lease the run lost, and why: never acted on again
        self._stopper = None  # STOP_SIGNAL's handler before ours, while ours is set

    # --- bring-up -------------------------------------------------------------------------
    def up(self) -> None:
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, mode=0o700)
        self._lock = hold_lock(self.run_dir / "lock")
        self._save_state()
        first = [name for name, host in self.hosts.items() if host.ssh and not host.known_hosts
                 and recorded_key(host) is None]
        if first:
            KNOWN_HOSTS.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        problems = self._lock_hosts()
        for name in first:
            key = recorded_key(self.hosts[name])
            if key:
                self.progress(f"host {name}: first contact over ssh; its key ({key}) is now recorded in "
                              f"{KNOWN_HOSTS} and checked from now on")
        problems = problems or self.check()
        if problems:
            raise RemoteError("the hosts are not ready; nothing was created on any of them:\n"
                              + "\n".join(f"  {p}" for p in problems))
        self.emulate()
        self.timings["up_s"] = time.monotonic() - started
        ready = ", ".join(f"{n} ({h.address}, Docker {self.versions[n]})" for n, h in self.hosts.items())
        self.progress(f"remote hosts ready: {ready}")

    def _lock_hosts(self) -> list[Check]:
        """Each host held by this run for its life; a host another run holds is named with it."""
        self.host_locks: list[HostLock] = []
        problems = []
        for name, host in self.hosts.items():
            if not host.ssh:
                continue  # check() names it
            lock = HostLock(host, self.run_id, name, self.lease_s, self.lock_delay_s)
            refused = lock.acquire()
            if refused:
                problems.append(Check(name, refused, "wait for that run to end, or run against other hosts"))
            else:
                self.host_locks.append(lock)
        if self.host_locks and not problems:
            with contextlib.suppress(ValueError):  # a testbed run from another thread has no signal: it flags only
                self._stopper = signal.signal(STOP_SIGNAL, _stop_for_a_lost_host)
            threading.Thread(target=self._watch_leases, daemon=True, name=f"leases-{self.run_id}").start()
        return problems

    def _watch_leases(self) -> None:
        """The watchdog: a host whose lease is lost is named, once, and at the first such host
        the run is stopped as by Ctrl-C (teardown runs, and leaves the lost hosts alone). The
        stop is a signal of its own: a run started in the background ignores SIGINT."""
        while self.host_locks:
            for lock in list(self.host_locks):
                site, why = lock.site, lock.lost()
                if why and site not in self.lost:
                    first = not self.lost  # one stop: a second loss must not break the teardown under way
                    self.lost[site] = why
                    self.progress(f"host {site} lost: {why}" + ("; stopping the run" if first else ""))
                    if first and self._stopper is not None:
                        # To the main thread itself: a signal another thread takes would not wake
                        # the main thread from a blocking call until that call returns.
                        signal.pthread_kill(threading.main_thread().ident, STOP_SIGNAL)
            time.sleep(1.0)

    def check(self) -> list[Check]:
        """Every host's prerequisites, all of them, before anything is created."""
        problems: list[Check] = []
        for name, host in self.hosts.items():
            if not host.docker:
                problems.append(Check(name, "no docker: endpoint; the run drives Docker over TCP with TLS",
                                      "give docker: tcp://ADDRESS:2376 and tls: {ca, cert, key}"))
                continue
            engine = RemoteEngine(name, "", host.address, self.run_id, self.run_dir / f"docker-{name}", host=host)
            try:
                engine.connect()
                version = engine.client.version()
            except Exception as e:  # noqa: BLE001  (every failure to reach the API is a finding)
                problems.append(Check(name, f"Docker API at {host.docker} did not answer: {tls_reason(e)}",
                                      "start dockerd with --tlsverify on that address, and give the client "
                                      "certificate signed by its CA"))
                continue
            self.engines[name] = engine
            self.versions[name] = version.get("Version", "?")
            if tuple(int(x) for x in self.versions[name].split(".")[:2] if x.isdigit()) < MIN_DOCKER:
                problems.append(Check(name, f"Docker {self.versions[name]} is older than "
                                            f"{'.'.join(map(str, MIN_DOCKER))}", "upgrade Docker on the host"))
        problems += preflight.over_ssh(self.topology, self.needs)
        if not problems and self._existing_swarm() is None:  # a swarm's daemons hold its ports
            problems += preflight.swarm_ports(self.hosts, self.run_id)
        return problems

    def emulate(self) -> None:
        """Give each emulating host's outgoing traffic its links' delay, jitter, loss and rate,
        per destination (netem under htb, one class per other site)."""
        handle = hostlinks.qdisc_handle(self.run_id)
        for name, host in self.hosts.items():
            if host.emulate:
                self.emulated.append(name)  # recorded first: a kill from here on leaves it to `clean`
                self._save_state()
                commands = hostlinks.netem_commands(self.topology, name, host, handle)
                script = "\n".join([hostlinks.record_emulation_script(self.run_id, host.interface),
                                    *(shlex.join(c) for c in commands)])
                applied = self.host_run(name, script, 60)
                if not applied.ok:  # down() (from __enter__) removes what was applied, this host's part too
                    raise RemoteError(f"host {name}: netem on {host.interface} failed (exit {applied.rc}): "
                                      f"{(applied.stderr or applied.stdout).strip()[-300:]}")
                self.progress(f"{name}: netem on {host.interface} for the links to "
                              f"{', '.join(o for o in self.hosts if o != name)}")

    def _existing_swarm(self) -> RemoteEngine | None:
        """A manager of the swarm every host is in; None if none is in one. (A worker does not
        know its cluster's id: membership is asked of a manager.)"""
        states = {n: e.client.info().get("Swarm", {}) for n, e in self.engines.items()}
        active = {n for n, st in states.items() if st.get("LocalNodeState") == "active"}
        if not active:
            return None
        managers = [n for n in active if states[n].get("ControlAvailable")]
        members = {node.id for node in self.engines[managers[0]].client.nodes.list()} if managers else set()
        outside = [n for n in states if states[n].get("NodeID") not in members]
        if outside:
            raise RemoteError(f"the hosts do not form one swarm ({', '.join(outside)} "
                              f"{'is' if len(outside) == 1 else 'are'} outside "
                              f"{'the swarm of ' + managers[0] if managers else 'any swarm with a manager here'}); "
                              "make them all join one swarm, or all leave")
        return self.engines[managers[0]]

    # --- what the overlays use --------------------------------------------------------------
    def site_engines(self, extra_args):
        """The hosts' own engines: never started or stopped by the run."""
        return dict(self.engines)

    def start_engines(self, made, progress):
        """Up already; the image is loaded once per run."""
        started = time.monotonic()
        return self.load_image(), time.monotonic() - started

    def load_image(self) -> str:
        """The measurement image on every host: there already, or imported over the Docker API."""
        if self.image is None:
            tar_path, tag = build_image_tar(progress=self.progress)
            self.image = import_image(list(self.engines.values()), tar_path, tag)
            self.progress(f"image {self.image} on {', '.join(self.engines)}")
        return self.image

    def swarm(self, manager: RemoteEngine) -> tuple[RemoteEngine, bool]:
        """The swarm's manager engine and whether this run made the swarm. An existing swarm
        is used as it is; otherwise one is made with `manager` and left at the end."""
        existing = self._existing_swarm()
        if existing is not None:
            return existing, False
        self.swarm_created = True
        # Docker makes docker_gwbridge on a host's first swarm attachment and keeps it after
        # the swarm is left: where it was not there before, it is the run's to remove.
        self.gwbridge_made = sorted(n for n, e in self.engines.items() if not e.client.networks.list(names=[GWBRIDGE]))
        self._save_state()
        return manager, True

    def swarm_member(self, site: str, node_id: str, cluster_id: str | None = None) -> None:
        """A host joined the swarm this run made, as which node (and, from the manager, which
        cluster): `clean` leaves a swarm on a host only while the host is still that node."""
        with self._state_lock:
            if cluster_id:
                self.swarm_ids["cluster"] = cluster_id
            self.swarm_ids.setdefault("nodes", {})[site] = node_id
            self._save_state()

    def _save_state(self) -> None:
        """What `clean --topology` needs after this run is killed: whether it made the swarm,
        and its cluster's and nodes' ids."""
        self._write_state({"run_id": self.run_id, "backend": self.backend, "swarm_created": self.swarm_created,
                           "swarm": self.swarm_ids, "gwbridge_made": self.gwbridge_made,
                           "emulated": {n: self.hosts[n].interface for n in self.emulated},
                           "faulted": self.faulted,
                           "hosts": {n: h.docker for n, h in self.hosts.items()}})

    def host_run(self, site: str, script: str, timeout: float | None = 60,
                 input: str | None = None) -> procs.CommandResult:
        """`script` as root on the site's host, only while this run holds it (fenced)."""
        return host_run(self.hosts[site], script, timeout, input, fenced=self.run_id)

    def put_files(self, site: str, directory: str, files: dict[str, Path]) -> dict[str, str]:
        """Copy files (keys among them) into `directory` on the site's host, readable by root
        only, through ssh's stdin (never a command line); returns where each one is."""
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            for name, path in files.items():
                tar.add(str(path), arcname=name)
        quoted = shlex.quote(directory)
        names = " ".join(shlex.quote(name) for name in files)
        # As root, tar restores the archive's modes whatever the umask: they are set after it.
        self.host_run(site, f"umask 077 && mkdir -p {quoted} && cd {quoted} && base64 -d | tar -x --no-same-owner "
                            f"--no-same-permissions && chmod 0700 . && chmod 0600 -- {names}",
                      60, input=base64.b64encode(data.getvalue()).decode()).check()
        return {name: f"{directory}/{name}" for name in files}

    def site_ops(self, overlay: str, state_dir: Path, family: AddressFamily | None = None) -> SiteOps:
        """Where `overlay`'s daemons run: the sites' hosts (`family`: what its daemons add to
        a host's network is read first, and undone by its footprint)."""
        return HostSiteOps(self, overlay, family)

    def host_dir(self, what: str) -> str:
        """This run's directory for `what` (a daemon: NAME-SITE) on its host."""
        return f"{HOST_STATE}/{self.run_id}/host/{what}"

    def underlay_endpoint(self, site: str) -> ContainerEndpoint:
        """The underlay on a real host: a measurement container in the host's network."""
        if site not in self.host_endpoints:
            engine = self.engines[site]
            name = f"ovl{self.run_id}-{site}-host"
            engine.client.containers.run(self.load_image(), name=name, detach=True, network_mode="host",
                                         labels={LABEL: self.run_id})
            self.host_endpoints[site] = ContainerEndpoint(site, self.address(site), engine, name)
        return self.host_endpoints[site]

    def address(self, site: str) -> str:
        return self.sites[site].address

    def host_of(self, site: str) -> str:
        return self.hosts[site].docker or self.hosts[site].ssh

    def emulator_counters(self, reset: bool = False, since: int | None = None) -> dict[str, dict]:
        return {}  # real links: nothing emulated, nothing to vouch for

    def count(self, label: str, match: list[str]) -> None:
        pass

    def packets(self, label: str) -> None:
        return None  # the WAN between real hosts is not ours to count on

    def left_behind(self, what: str) -> None:
        """Kept to fail teardown with: the run's state stays for `clean --topology`."""
        self.left_on_hosts.append(what)
        self.progress(f"{what} (`python -m pytest_overlay clean --topology FILE` tries again)")

    def track(self, daemon: procs.Daemon) -> None:
        pass

    def untrack(self, daemons: list[procs.Daemon]) -> None:
        pass

    def dead_daemons(self) -> list[str]:
        dead = [f"host {name} lost: {why}" for name, why in self.lost.items()]
        for name, engine in self.engines.items():
            if name in self.lost:
                continue
            try:
                engine.client.ping()
            except Exception as e:  # noqa: BLE001
                dead.append(f"Docker engine of host {name} ({engine.url}) stopped answering: {e}")
        return dead

    def describe(self) -> dict:
        """No key material: where each host is, not how to get in."""
        return {"kind": self.kind, "backend": "remote", "run_id": self.run_id,
                "emulator": {"kind": "none", "reason": "real hosts: links measured as they are"},
                "sites": {n: {"address": h.address, "docker": h.docker, "ssh": h.ssh,
                              "docker_version": self.versions.get(n), "sysctls": self.sites[n].sysctls}
                          for n, h in self.hosts.items()},
                "timings": self.timings}

    # --- teardown ---------------------------------------------------------------------------
    def down(self) -> None:
        """Remove what the run made on every host (containers, networks, a swarm it made);
        best effort: every host is visited even when one fails."""
        started = time.monotonic()
        for lock in getattr(self, "host_locks", []):
            lock.lost()  # a lease lost since the watchdog last looked counts now
        for site, why in self.lost.items():
            self.progress(f"host {site}: not touched in teardown, its lease was lost ({why}); once it is "
                          "reachable, `python -m pytest_overlay clean --topology FILE` removes the run's containers")
        engines = {n: e for n, e in self.engines.items() if n not in self.lost}
        errors = remove_run(engines, self.run_id, set(engines) if self.swarm_created else set(),
                            set(self.gwbridge_made) - set(self.lost))
        errors += self.left_on_hosts + self._remove_fault_rules()
        errors += hostlinks.remove_netem({n: self.hosts[n] for n in self.emulated if n not in self.lost}, self.run_id,
                                         report=lambda m: None)
        self.emulated = []
        for engine in self.engines.values():
            if engine.client is not None:
                engine.client.close()
        self.engines, self.host_endpoints = {}, {}
        for host_lock in getattr(self, "host_locks", []):
            host_lock.release()
        self.host_locks = []
        if self._stopper is not None:
            signal.signal(STOP_SIGNAL, self._stopper)
            self._stopper = None
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()
            self._lock = None
        self.timings["down_s"] = time.monotonic() - started
        if errors:  # the run's state stays: `clean --topology` proves the run over by it, and finishes
            raise RemoteError("teardown on the hosts finished with errors (every other step ran; the run's state "
                              f"is kept in {self.run_dir}: `python -m pytest_overlay clean --topology FILE` "
                              "finishes the job):\n" + "\n".join(errors))
        shutil.rmtree(self.run_dir, ignore_errors=True)
