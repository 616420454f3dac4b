"""Real sites: a topology whose sites name real Docker hosts (`host:`), measured as they are.

RemoteTestbed stands where EmulatedTestbed stands for the overlays, probes and fixtures, but
creates nothing on this machine: it speaks SSH (testinfra, for the prerequisites) and the
Docker API (TCP with TLS and a client certificate). Every prerequisite of every host is
checked before anything is created on any of them. What a run creates there (containers, a
network, a swarm if there was none) carries the run's id and is removed at the end; a swarm
that existed is used and left as it was.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import ipaddress
import io
import json
import os
import re
import select
import shlex
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import docker

from . import hostnet, procs
from .engines import LABEL, Engine, build_image_tar, import_image
from .overlays.base import ContainerEndpoint
from .paths import AGENTS, KNOWN_HOSTS, STATE_ROOT
from .testbed import RUN_ID, SiteHandle, Testbed, hold_lock, may_remove, new_run_id, tcp_sysctls
from .topology import RemoteHost, Topology

MIN_DOCKER = (20, 10)
API_VERSION = "1.41"
MAX_CLOCK_SKEW_S = 1.0
PORT_CHECK_S = 20.0
# Overlays that run only on the embedded testbed, and why.
UNSUPPORTED_OVERLAYS = {"libnetwork-encrypted": "its probe of the kernel's ESP runs in the emulated WAN, not on hosts"}
# Where a run keeps its files on a host, and where binaries installed by hand are found.
HOST_STATE = "/run/pytest-overlay"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_QDISCS = {"noqueue", "pfifo_fast", "fq_codel", "fq", "mq", "pfifo"}  # what a kernel sets up itself
UNSHAPED = "100gbit"
GWBRIDGE = "docker_gwbridge"  # Docker's bridge from a swarm's containers to their host


class RemoteError(RuntimeError):
    pass


def ssh_options(host: RemoteHost) -> list[str]:
    """Keys only (BatchMode), no lingering master connection, and the host's key always
    checked: against the topology's known_hosts, or against KNOWN_HOSTS, which records it on
    first contact (ssh's accept-new) and refuses a changed key after."""
    options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ControlMaster=no"]
    if host.known_hosts:
        options += ["-o", f"UserKnownHostsFile={host.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    else:
        options += ["-o", f"UserKnownHostsFile={KNOWN_HOSTS}", "-o", "StrictHostKeyChecking=accept-new"]
    if host.identity:
        options += ["-o", "IdentitiesOnly=yes"]
    return options


def ssh_key_name(host: RemoteHost) -> str:
    """How known_hosts names the host: its address, with the port when it is not 22."""
    target, _, port = host.ssh.rpartition(":") if host.ssh.count(":") == 1 else (host.ssh, "", "")
    name = target.rpartition("@")[2]
    return f"[{name}]:{port}" if port and port != "22" else name


def recorded_key(host: RemoteHost) -> str | None:
    """The fingerprint KNOWN_HOSTS holds for the host (None before the first contact)."""
    found = procs.run(["ssh-keygen", "-l", "-F", ssh_key_name(host), "-f", str(KNOWN_HOSTS)], timeout=10)
    lines = [line for line in found.stdout.splitlines() if line and not line.startswith("#")]
    return lines[0].split(None, 1)[1] if found.ok and lines else None


def ssh_command(host: RemoteHost, command: str) -> list[str]:
    target, _, port = host.ssh.rpartition(":") if host.ssh.count(":") == 1 else (host.ssh, "", "")
    return ["ssh", *ssh_options(host), *(["-i", host.identity] if host.identity else []),
            *(["-p", port] if port else []), target, command]


def as_root(script: str) -> str:
    """A remote shell command running `script` as root: directly, or through sudo -n."""
    quoted = shlex.quote(script)
    return f'if [ "$(id -u)" -eq 0 ]; then sh -ec {quoted}; else sudo -n sh -ec {quoted}; fi'


def _ssh_run(host: RemoteHost, command: str, timeout: float = 30) -> procs.CommandResult:
    return procs.run(ssh_command(host, command), timeout=timeout)


def host_run(host: RemoteHost, script: str, timeout: float | None = 60, input: str | None = None) -> procs.CommandResult:
    """`script` as root on the host, with binaries installed by hand (/usr/local) on PATH."""
    return procs.run(ssh_command(host, as_root(f"PATH={HOST_PATH}; export PATH\n{script}")), timeout=timeout,
                     input=input)


def _families(wanted: set[str]) -> set[str]:
    """The overlays asked for that run daemons on hosts, by family (flannel-udp is Flannel)."""
    return {name.split("-")[0] for name in wanted} & {"weave", "flannel", "calico"}


class HostLock:
    """The run's hold on a host for as long as this process lives: an flock on a file in the
    host's /run/lock, held by a `cat` at the far end of an ssh session whose stdin is ours.
    When this process ends, even by SIGKILL, the session closes and the lock goes with it; a
    second run is refused with the holder named (the file says which run, where, since when)."""

    def __init__(self, host: RemoteHost, run_id: str) -> None:
        self.host, self.run_id = host, run_id
        self.path = f"/run/lock/pytest-overlay-host-{host.address}.lock"
        self.session: subprocess.Popen | None = None

    def acquire(self, timeout: float = 20) -> str | None:
        """None once held; otherwise why not (the holder, or what went wrong)."""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        holder = f"run {self.run_id} from {socket.gethostname()} (pid {os.getpid()}), since {since} UTC"
        script = (f"exec 9>>{self.path}\nif ! flock -n 9; then echo busy; cat {self.path}; exit 0; fi\n"
                  f"echo {shlex.quote(holder)} > {self.path}\necho locked\nexec cat > /dev/null")
        self.session = subprocess.Popen(ssh_command(self.host, as_root(script)), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.session.stdout], [], [], timeout)
        first = self.session.stdout.readline().strip() if ready else ""
        if first == "locked":
            return None
        session, self.session = self.session, None
        if first == "busy":  # the far end names the holder and exits
            said = session.stdout.read()  # through the buffer readline() filled
            session.wait(timeout=10)
            return f"in use by another pytest-overlay: {said.strip() or 'a run that did not say which'}"
        try:
            _, error = session.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            session.kill()
            _, error = session.communicate()
        why = (error.strip().splitlines() or [first or "no answer"])[-1]  # ssh's own last word
        return f"could not take the run's lock on it over ssh ({why})"

    def release(self) -> None:
        if self.session is None:
            return
        session, self.session = self.session, None
        with contextlib.suppress(OSError):
            session.stdin.close()
        try:
            session.wait(timeout=10)
        except subprocess.TimeoutExpired:
            session.kill()
            session.wait()


@dataclass
class HostDaemon:
    """A daemon this run started on a host over ssh, as `setsid` leaves it: its pid and log
    in the run's directory there. Only that pid is ever signalled, and only while its command
    line still names the run's directory (a pid reused by another process is left alone)."""

    name: str
    host: RemoteHost
    directory: str
    returncode: int | None = None  # not known across ssh

    @classmethod
    def start(cls, name: str, host: RemoteHost, directory: str, command: list[str],
              env: dict[str, str] | None = None) -> HostDaemon:
        """Start `command` in `directory` (created) on the host. `env` goes over ssh's stdin,
        never onto a command line (secrets are among it)."""
        env = env or {}
        read = "".join(f"IFS= read -r {key}; export {key}\n" for key in env)
        script = (f"umask 077 && mkdir -p {shlex.quote(directory)} && cd {shlex.quote(directory)}\n{read}"
                  f"setsid {shlex.join(command)} > log 2>&1 < /dev/null &\necho $! > pid")
        host_run(host, script, 60, input="".join(f"{value}\n" for value in env.values()) if env else None).check()
        return cls(name, host, directory)

    def _signal(self, signal_name: str) -> str:
        d = shlex.quote(self.directory)
        return (f'p=$(cat {d}/pid 2>/dev/null) || exit 1\n'
                f'grep -qaF -- {d}/ /proc/$p/cmdline 2>/dev/null || exit 1\nkill -{signal_name} $p')

    def alive(self) -> bool:
        return host_run(self.host, self._signal("0"), 30).ok

    def log_tail(self, lines: int = 20) -> str:
        return host_run(self.host, f"tail -n {lines} {shlex.quote(self.directory)}/log", 30).stdout

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        script = (f"{self._signal('TERM')} || exit 0\n"
                  f"for i in $(seq {int(timeout * 10)}); do kill -0 $p 2>/dev/null || exit 0; sleep 0.1; done\n"
                  "kill -KILL $p")
        host_run(self.host, script, timeout + 30)


@dataclass
class RemoteEngine(Engine):
    """A real host's own dockerd, reached over TLS; never started or stopped by this run."""

    host: RemoteHost | None = None

    @property
    def url(self) -> str:
        return self.host.docker

    def docker_command(self) -> list[str]:
        tls = self.host.tls
        return ["docker", "-H", self.url, "--tlsverify", "--tlscacert", tls["ca"], "--tlscert", tls["cert"],
                "--tlskey", tls["key"]]

    def connect(self) -> None:
        tls = docker.tls.TLSConfig(client_cert=(self.host.tls["cert"], self.host.tls["key"]),
                                   ca_cert=self.host.tls["ca"], verify=True)
        # The API version of Docker 20.10, the oldest supported: asking the daemon for its own
        # would happen before trust_env can be turned off, and requests would then verify
        # against $REQUESTS_CA_BUNDLE instead of the host's CA.
        self.client = docker.DockerClient(base_url=self.url.replace("tcp://", "https://"), tls=tls, timeout=120,
                                          version=API_VERSION)
        self.client.api.trust_env = False

    def start(self, timeout: float = 60) -> None:
        raise RemoteError("a remote engine is the host's own; it is not started by this run")

    def stop(self) -> list[str]:
        """Remove this run's containers from the host (its engine keeps running), each on its
        own; returns what could not be removed, and why."""
        if self.client is None:
            return []
        try:
            containers = self.client.containers.list(all=True, filters={"label": f"{LABEL}={self.run_id}"})
        except (docker.errors.DockerException, OSError) as e:
            return [f"host {self.site}: listing the run's containers: {_tls_reason(e)}"]
        errors = []
        for container in containers:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except (docker.errors.DockerException, OSError) as e:
                errors.append(f"host {self.site}: container {container.name} not removed: {str(e)[-200:]}")
        return errors


@dataclass
class Check:
    host: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.host}: {self.problem}. Fix: {self.fix}"


class RemoteTestbed(Testbed):
    """Sites on real Docker hosts. Use as a context manager."""

    kind = "remote"
    backend = "remote"

    def __init__(self, topology: Topology, progress: Callable[[str], None] | None = None,
                 state_root: Path | None = None, overlays: list[str] = ()) -> None:
        self.topology = topology
        self.overlays = list(overlays)  # what the run will build: their binaries are checked on every host
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
            lock = HostLock(host, self.run_id)
            refused = lock.acquire()
            if refused:
                problems.append(Check(name, refused, "wait for that run to end, or run against other hosts"))
            else:
                self.host_locks.append(lock)
        return problems

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
                problems.append(Check(name, f"Docker API at {host.docker} did not answer: {_tls_reason(e)}",
                                      "start dockerd with --tlsverify on that address, and give the client "
                                      "certificate signed by its CA"))
                continue
            self.engines[name] = engine
            self.versions[name] = version.get("Version", "?")
            if tuple(int(x) for x in self.versions[name].split(".")[:2] if x.isdigit()) < MIN_DOCKER:
                problems.append(Check(name, f"Docker {self.versions[name]} is older than "
                                            f"{'.'.join(map(str, MIN_DOCKER))}", "upgrade Docker on the host"))
        problems += self._check_over_ssh()
        if not problems:
            problems += self._check_swarm_ports()
        return problems

    def _check_over_ssh(self) -> list[Check]:
        import testinfra

        problems = []
        for name, host in self.hosts.items():
            if not host.ssh:
                problems.append(Check(name, "no ssh: entry, so its kernel and clock cannot be checked",
                                      "give ssh: user@address (key login)"))
                continue
            tested = testinfra.get_host(f"ssh://{host.ssh}", ssh_identity_file=host.identity,
                                        ssh_extra_args=shlex.join(ssh_options(host)))
            try:
                before = time.time()
                clock = tested.run("date +%s.%N")
                after = time.time()
            except Exception as e:  # noqa: BLE001
                problems.append(Check(name, f"ssh {host.ssh} failed: {e}", "allow key login for that user"))
                continue
            if clock.rc != 0:
                problems.append(Check(name, f"ssh {host.ssh} failed (exit {clock.rc}): {clock.stderr.strip()[-200:]}",
                                      "allow key login for that user, with the key given as identity"))
                continue
            skew = float(clock.stdout) - (before + after) / 2
            if abs(skew) > MAX_CLOCK_SKEW_S + (after - before) / 2:
                problems.append(Check(name, f"clock is {skew:+.1f} s off this machine's",
                                      "synchronise both clocks (NTP, e.g. apt-get install chrony)"))
            if tested.run("test -d /sys/module/vxlan || modinfo vxlan").rc != 0:
                problems.append(Check(name, "kernel has no VXLAN (module vxlan): Docker's overlay cannot work",
                                      "a kernel with CONFIG_VXLAN, or load the module (modprobe vxlan)"))
            if tested.run("command -v python3").rc != 0:
                problems.append(Check(name, "no python3, needed to check the swarm ports",
                                      "apt-get install python3"))
            if host.emulate:
                problems += self._check_emulation(name, host, tested)
            problems += self._check_overlay_binaries(name, tested)
        return problems

    def _check_overlay_binaries(self, name: str, tested) -> list[Check]:
        """The daemons of the overlays asked for, installed on the host and able to start
        (weaver needs libpcap), and none of those overlays already up there (someone else's)."""
        from .overlays import calico, flannel, weave

        wanted = set(self.overlays)
        needs: dict[str, tuple[str, str]] = {}  # binary -> (what it is, how to install it)
        devices: dict[str, str] = {}  # a device the overlay makes -> whose it is
        if wanted & {"weave", "weave-encrypted"}:
            needs.update({b: (what, f"install Weave Net 2.8.1's {', '.join(weave.BINARIES)} in /usr/local/bin, "
                                    "and libpcap0.8") for b, what in weave.BINARIES.items()})
            needs["python3"] = ("Python 3, which reads weaver's status API there", "apt-get install python3")
            devices[weave.BRIDGE] = "Weave Net"
        if wanted & set(flannel.OVERLAYS):
            needs.update({b: (what, "install Flannel 0.19.2's flanneld in /usr/local/bin")
                          for b, what in flannel.BINARIES.items()})
            if name == self.topology.kv_site:
                needs.update({b: (what, "apt-get install etcd-server etcd-client")
                              for b, what in flannel.KV_BINARIES.items()})
            devices.update({device: "Flannel" for device in flannel.DEVICES.values()})
        problems = []
        if "calico" in wanted:
            needs.update({b: (what, "apt-get install bird2 (its service need not run)")
                          for b, what in calico.BINARIES.items()})
            if tested.run("ss -Hltn 'sport = :179' | grep -q .").rc == 0:
                problems.append(Check(name, "a BGP speaker already listens on 179/tcp (a BIRD of someone else's?)",
                                      "run on hosts without one, or stop it (systemctl stop bird)"))
        if needs and tested.run("test $(id -u) = 0 || sudo -n true").rc != 0:
            problems.append(Check(name, f"{self.hosts[name].ssh} may not start the overlays' daemons (they run as "
                                        "root: not root, no sudo without a password)", "log in as root, or allow sudo -n"))
        for binary, (what, fix) in needs.items():
            runs = f" && {binary} --version" if binary == "weaver" else ""  # loads libpcap
            found = tested.run(f"PATH={HOST_PATH}; command -v {binary}{runs}")
            if found.rc != 0:
                problems.append(Check(name, f"{binary} ({what}) is not installed or does not start "
                                            f"({(found.stderr or found.stdout).strip()[-120:] or 'not on PATH'})", fix))
        for device, whose in devices.items():
            if tested.run(f"test -e /sys/class/net/{device}").rc == 0:
                problems.append(Check(name, f"{whose}'s {device} is already up: another {whose} runs on this host",
                                      f"run on hosts without {whose}, or stop it"))
        problems += self._check_ranges(name, wanted, tested)
        for process, whose in self._rival_daemons(wanted).items():  # live ones: a killed one lingers as a zombie
            found = tested.run(f"for p in $(pgrep -x {process}); do grep -q '^State:.*Z' /proc/$p/status || "
                               "echo $p; done")
            if found.stdout.split():
                problems.append(Check(name, f"{process} already runs there (pid {', '.join(found.stdout.split())}): "
                                            f"another {whose}, whose chains, routes and devices ours would fight "
                                            "over", f"run on hosts without {whose}, or stop it"))
        return problems

    def _check_ranges(self, name: str, wanted: set[str], tested) -> list[Check]:
        """The overlays' address ranges against the host's routes: a route inside one (a
        Kubernetes pod network, a VPN) would take the overlay's traffic or lose its own.
        Wider routes (a 10.0.0.0/8 towards a corporate network) are left: ours are more specific.
        The ranges are the topology's (`ranges:`), so a host can be met by moving them."""
        what = {"weave": "Weave Net's IPAM range", "flannel": "Flannel's network", "calico": "Calico's pool"}
        ranges = {self.topology.ranges[family]: what[family] for family in _families(wanted)}
        if not ranges:
            return []
        routes = tested.run("ip -4 route show table all").stdout.splitlines()
        problems = []
        for route in routes:
            found = hostnet.route_destination(route.split())
            for cidr, what in ranges.items():
                if found is not None and found.prefixlen and found.subnet_of(ipaddress.ip_network(cidr)):
                    problems.append(Check(name, f"route '{route.strip()}' lies inside {what} {cidr}: the overlay "
                                                "would take its traffic or lose its own",
                                          "remove the route, or move the range (ranges: in the topology)"))
        return problems

    @staticmethod
    def _rival_daemons(wanted: set[str]) -> dict[str, str]:
        """Daemons of another instance of an overlay asked for (a Kubernetes node's own)."""
        rivals = {"weave": {"weaver": "Weave Net"}, "flannel": {"flanneld": "Flannel"},
                  "calico": {"calico-node": "Calico", "bird": "BIRD (Calico's BGP)"}}
        return {process: whose for family in _families(wanted) for process, whose in rivals[family].items()}

    def _check_emulation(self, name: str, host: RemoteHost, tested) -> list[Check]:
        """emulate: true replaces the interface's root qdisc with netem per destination: the
        kernel must have netem, the interface must exist with the kernel's default qdisc (not
        someone's own shaping), and the ssh user must be root or have sudo without a password."""
        problems = []
        if tested.run("test -d /sys/module/sch_netem || modinfo sch_netem").rc != 0:
            problems.append(Check(name, "kernel lacks sch_netem, so emulate: true cannot work",
                                  "install the kernel's netem module (on Debian it is in the kernel image; "
                                  "elsewhere e.g. linux-modules-extra), or remove emulate"))
        shown = tested.run(f"tc -j qdisc show dev {shlex.quote(host.interface)} root")
        if shown.rc != 0:
            problems.append(Check(name, f"no interface {host.interface} (tc: {shown.stderr.strip()[-120:]})",
                                  "name the interface that carries the traffic to the other sites"))
        else:
            kinds = {q.get("kind") for q in json.loads(shown.stdout or "[]")}
            if kinds - DEFAULT_QDISCS:
                problems.append(Check(name, f"{host.interface} has its own root qdisc ({', '.join(sorted(kinds))}), "
                                            "which emulate: true would replace",
                                      f"remove it (tc qdisc del dev {host.interface} root) or remove emulate"))
        if tested.run("test $(id -u) = 0 || sudo -n true").rc != 0:
            problems.append(Check(name, f"{host.ssh} may not change qdiscs (not root, no sudo without a password)",
                                  "log in as root, or allow sudo -n for tc"))
        return problems

    def emulate(self) -> None:
        """Give each emulating host's outgoing traffic its links' delay, jitter, loss and rate,
        per destination (netem under htb, one class per other site)."""
        handle = qdisc_handle(self.run_id)
        for name, host in self.hosts.items():
            if host.emulate:
                self.emulated.append(name)  # recorded first: a kill from here on leaves it to `clean`
                self._save_state()
                script = "\n".join(shlex.join(c) for c in netem_commands(self.topology, name, host, handle))
                applied = _ssh_run(host, as_root(script), 60)
                if not applied.ok:  # down() (from __enter__) removes what was applied, this host's part too
                    raise RemoteError(f"host {name}: netem on {host.interface} failed (exit {applied.rc}): "
                                      f"{(applied.stderr or applied.stdout).strip()[-300:]}")
                self.progress(f"{name}: netem on {host.interface} for the links to "
                              f"{', '.join(o for o in self.hosts if o != name)}")

    def _check_swarm_ports(self) -> list[Check]:
        """2377/tcp, 7946/tcp+udp and 4789/udp, from every site to every other. Skipped when the
        hosts already form a swarm (their daemons hold those ports)."""
        if self._existing_swarm() is not None:
            return []
        script = (AGENTS / "portcheck.py").read_text()
        problems = []
        for dst, dst_host in self.hosts.items():
            listener = subprocess.Popen(
                ssh_command(dst_host, f"python3 -c {shlex.quote(script)} listen {dst_host.address} {PORT_CHECK_S}"),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if listener.stdout.readline().strip() != "ready":
                listener.kill()
                problems.append(Check(dst, f"could not listen on the swarm ports: {listener.communicate()[1][-200:]}",
                                      "check ssh access and python3"))
                continue
            tokens = {}
            for src, src_host in self.hosts.items():
                if src == dst:
                    continue
                tokens[src] = f"{self.run_id}-{src}"
                _ssh_run(src_host, f"python3 -c {shlex.quote(script)} probe {dst_host.address} {tokens[src]}", 60)
            out, _ = listener.communicate("\n", timeout=PORT_CHECK_S + 30)
            report = json.loads(out.strip().splitlines()[-1])
            for port in report["busy"]:
                problems.append(Check(dst, f"port {port} is already in use",
                                      "stop what holds it (a swarm port must be free for Docker)"))
            for src, token in tokens.items():
                closed = [port for port in ("2377/tcp", "7946/tcp", "7946/udp", "4789/udp")
                          if port not in report["busy"] and token not in report["received"].get(port, [])]
                if closed:
                    problems.append(Check(dst, f"swarm port(s) {', '.join(closed)} not reachable from {src} "
                                               f"({self.hosts[src].address} -> {dst_host.address})",
                                          "open them in the firewalls between the sites"))
        return problems

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
    def load_image(self) -> str:
        """The measurement image on every host: there already, or imported over the Docker API."""
        if self.image is None:
            tar_path, tag = build_image_tar(progress=self.progress)
            self.image = import_image(list(self.engines.values()), tar_path, tag)
            self.progress(f"image {self.image} on {', '.join(self.engines)}")
        return self.image

    def swarm(self, manager: str) -> tuple[RemoteEngine, bool]:
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
        return self.engines[manager], True

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
                           "hosts": {n: h.docker for n, h in self.hosts.items()}})

    def host_run(self, site: str, script: str, timeout: float | None = 60,
                 input: str | None = None) -> procs.CommandResult:
        return host_run(self.hosts[site], script, timeout, input)

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

    def host_dir(self, what: str) -> str:
        """This run's directory for `what` (a daemon: NAME-SITE) on its host."""
        return f"{HOST_STATE}/{self.run_id}/host/{what}"

    def host_endpoint(self, site: str) -> ContainerEndpoint:
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

    def track(self, daemon: procs.Daemon) -> None:
        pass

    def untrack(self, daemons: list[procs.Daemon]) -> None:
        pass

    def dead_daemons(self) -> list[str]:
        dead = []
        for name, engine in self.engines.items():
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
        errors = remove_run(self.engines, self.run_id, set(self.engines) if self.swarm_created else set(),
                            set(self.gwbridge_made))
        errors += remove_netem({n: self.hosts[n] for n in self.emulated}, self.run_id, report=lambda m: None)
        self.emulated = []
        for engine in self.engines.values():
            if engine.client is not None:
                engine.client.close()
        self.engines, self.host_endpoints = {}, {}
        for host_lock in getattr(self, "host_locks", []):
            host_lock.release()
        self.host_locks = []
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


def qdisc_handle(run_id: str) -> str:
    """The major handle of the run's root qdisc on a host: from its id, so that teardown and
    `clean` remove a root qdisc only while it is still the run's own."""
    major = int(run_id[:4], 16)
    return f"{major if 0 < major < 0xFFFF else 1:x}"  # 0 is no handle, ffff: is the ingress qdisc's


def remove_netem_script(dev: str, handle: str) -> str:
    """Shell removing the root qdisc of `dev` if it is the run's (htb with its handle); says
    what it did, or that the root is someone else's now."""
    quoted = shlex.quote(dev)
    return (f"root=$(tc qdisc show dev {quoted} root)\n"
            f'case "$root" in "qdisc htb {handle}: root"*) tc qdisc del dev {quoted} root && echo removed ;;\n'
            '  *) echo "not ours: $root" ;; esac')


def netem_commands(topology: Topology, site: str, host: RemoteHost, handle: str = "1") -> list[list[str]]:
    """tc commands for one emulating host: an htb root (major `handle`, the run's) whose
    default class is unshaped, and per other site a class (the path's rate), a netem (its
    one-way delay, jitter and loss) and a filter on that site's address. Paths over several
    links add up, as on the testbed."""
    dev = host.interface
    commands = [["tc", "qdisc", "replace", "dev", dev, "root", "handle", f"{handle}:", "htb", "default", "1"],
                ["tc", "class", "add", "dev", dev, "parent", f"{handle}:", "classid", f"{handle}:1", "htb", "rate",
                 UNSHAPED]]
    for index, other in enumerate(o for o in topology.sites if o != site):
        hops = topology.path_between(site, other)
        there = [topology.link_between(a, b).direction(a) for a, b in zip(hops, hops[1:])]
        rates = [d.rate_mbit for d in there if d.rate_mbit]
        delivered = 1.0
        for d in there:
            delivered *= 1 - d.loss_pct / 100
        classid, child = f"{handle}:{10 + index}", f"{10 + index}:"
        rate = f"{min(rates):g}mbit" if rates else UNSHAPED
        netem = ["tc", "qdisc", "add", "dev", dev, "parent", classid, "handle", child, "netem", "limit", "100000",
                 "delay", f"{sum(d.delay_ms for d in there):g}ms"]
        jitter = sum(d.jitter_ms for d in there)
        if jitter:
            netem += [f"{jitter:g}ms"]
        if delivered < 1:
            netem += ["loss", f"{(1 - delivered) * 100:g}%"]
        commands += [["tc", "class", "add", "dev", dev, "parent", f"{handle}:", "classid", classid, "htb", "rate", rate],
                     netem,
                     ["tc", "filter", "add", "dev", dev, "parent", f"{handle}:", "protocol", "ip", "prio", "1", "u32",
                      "match", "ip", "dst", f"{topology.sites[other].host.address}/32", "flowid", classid]]
    return commands


def remove_networks(engines: dict, run_id: str, name: str | None = None) -> list[str]:
    """Remove a run's networks (only the one called `name`, if given) from every host, a
    swarm's through a manager; nothing may be attached any more. Returns what failed."""
    errors = []
    for site, engine in engines.items():
        try:
            manager = engine.client.info().get("Swarm", {}).get("ControlAvailable", False)
            for network in engine.client.networks.list(filters={"label": f"{LABEL}={run_id}"}):
                if (name is not None and network.name != name) or (network.attrs.get("Scope") == "swarm" and not manager):
                    continue
                try:
                    network.remove()
                except docker.errors.NotFound:
                    pass
        except Exception as e:  # noqa: BLE001  (best effort: every host is visited)
            errors.append(f"host {site}: {e}")
    return errors


def remove_run(engines: dict[str, RemoteEngine], run_id: str, leave_swarm: set[str],
               gwbridge_made: set[str] = frozenset()) -> list[str]:
    """Remove a run's containers, then its networks (a swarm's only through a manager, once
    nothing is attached), then take the hosts in `leave_swarm` out of the swarm the run made,
    with the docker_gwbridge that swarm made there. Returns what failed."""
    errors = []
    for engine in engines.values():
        engine.run_id = run_id
        errors += engine.stop()
    errors += remove_networks(engines, run_id)
    for name in sorted(leave_swarm & set(engines)):
        try:
            engines[name].client.swarm.leave(force=True)
            if name in gwbridge_made:
                for network in engines[name].client.networks.list(names=[GWBRIDGE]):
                    network.remove()
        except docker.errors.NotFound:
            pass
        except Exception as e:  # noqa: BLE001
            errors.append(f"host {name}: leaving the swarm: {e}")
    return errors


def remove_netem(hosts: dict[str, RemoteHost], run_id: str, report: Callable[[str], None]) -> list[str]:
    """Take the run's root qdisc off each host's interface, where it is still the run's."""
    errors = []
    for name, host in hosts.items():
        if not host.ssh or not host.interface:
            continue
        done = _ssh_run(host, as_root(remove_netem_script(host.interface, qdisc_handle(run_id))), 60)
        if not done.ok:
            errors.append(f"host {name}: netem on {host.interface} not removed: "
                          f"{(done.stderr or done.stdout).strip()[-200:]}")
        elif done.stdout.startswith("removed"):
            report(f"host {name}: removed run {run_id}'s netem from {host.interface}")
        elif not any(f"qdisc {kind} " in done.stdout for kind in DEFAULT_QDISCS):  # never applied: nothing to say
            report(f"host {name}: the root qdisc of {host.interface} is not run {run_id}'s any more "
                   f"({done.stdout.strip()[9:][:120]}); left as it is")
    return errors


def swarm_to_leave(engines: dict[str, RemoteEngine], state: dict, held: dict[str, str],
                   report: Callable[[str], None]) -> set[str]:
    """The hosts a killed run's swarm may be left on: those still the very node the run made
    them (their node id as recorded), and not held by a live run (which may use the swarm);
    `held` says why each held host is."""
    if not state.get("swarm_created"):
        return set()
    nodes = (state.get("swarm") or {}).get("nodes", {})
    leave = set()
    for name, engine in engines.items():
        if name in held:
            report(f"host {name}: {held[name]}; its swarm is left as it is")
            continue
        try:
            node = engine.client.info().get("Swarm", {}).get("NodeID") or ""
        except Exception as e:  # noqa: BLE001
            report(f"host {name}: swarm state unknown ({_tls_reason(e)}); left as it is")
            continue
        if not node:
            continue
        if nodes.get(name) == node:
            leave.add(name)
        else:
            report(f"host {name}: its swarm node {node[:12]} is not the one run {state.get('run_id')} made "
                   f"({(nodes.get(name) or 'none recorded')[:12]}); left as it is")
    return leave


def clean_hosts(topology: Topology, report: Callable[[str], None] = print, force: bool = False,
                state_root: Path | None = None) -> int:
    """Remove, on the topology's hosts, the containers and networks of runs that are over (their
    lock on this machine is free), and leave a swarm such a run made. A run with no state
    here cannot be proven over and is left alone unless `force`. Returns how many runs."""
    root = state_root or STATE_ROOT
    engines = {}
    for name, site in topology.sites.items():
        if site.host is None or not site.host.docker:
            continue
        engine = RemoteEngine(name, "", site.host.address, "", None, host=site.host)
        try:
            engine.connect()
            engine.client.ping()
            engines[name] = engine
        except Exception as e:  # noqa: BLE001
            report(f"host {name}: Docker API at {site.host.docker} did not answer ({_tls_reason(e)}); skipped")
    found: set[str] = set()
    for engine in engines.values():
        found |= {c.labels.get(LABEL) for c in engine.client.containers.list(all=True, filters={"label": LABEL})}
        found |= {n.attrs.get("Labels", {}).get(LABEL) for n in engine.client.networks.list(filters={"label": LABEL})}
    ssh_hosts = {name: site.host for name, site in topology.sites.items() if site.host is not None and site.host.ssh}
    for name, host in ssh_hosts.items():  # runs that started daemons there
        listed = host_run(host, f"ls -d {HOST_STATE}/*/host/*/pid 2>/dev/null || true", 60)
        found |= {line.split("/")[-4] for line in listed.stdout.split() if RUN_ID.match(line.split("/")[-4])}
    locks, held = [], {}  # hosts a live run holds (or whose lock could not be asked): their swarm stays
    for name, host in ssh_hosts.items():
        lock = HostLock(host, "clean")
        refused = lock.acquire()
        if refused is None:
            locks.append(lock)
        else:
            held[name] = refused
    endpoints = {h.docker for h in ssh_hosts.values()}
    for state_file in root.glob("*/state.json"):  # runs killed once netem was on, before any container
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if state.get("emulated") and endpoints & set((state.get("hosts") or {}).values()):
            found.add(state_file.parent.name)
    cleaned = 0
    for run_id in sorted(r for r in found if r):
        if not may_remove(run_id, root / run_id, force, report, "on the hosts"):
            continue
        try:
            state = json.loads((root / run_id / "state.json").read_text())
        except (OSError, ValueError):
            state = {}
        leave = swarm_to_leave(engines, state, held, report)
        for error in remove_run(engines, run_id, leave, set(state.get("gwbridge_made") or [])):
            report(error)
        emulated = {n: ssh_hosts[n] for n in (state.get("emulated") or {}) if n in ssh_hosts}
        for error in remove_netem(emulated, run_id, report):
            report(error)
        ended, failed = end_host_daemons(ssh_hosts, run_id)
        for name, daemons in ended.items():
            for daemon in daemons:
                report(f"host {name}: ended {daemon} of run {run_id}")
        for failure in failed:
            report(f"{failure} (run {run_id}; its state on the host is kept for another clean)")
        report(f"removed what run {run_id} left on {', '.join(engines)}"
               + (f"; left the swarm it made on {', '.join(sorted(leave))}" if leave else ""))
        cleaned += 1
    for engine in engines.values():
        engine.client.close()
    for lock in locks:
        lock.release()
    return cleaned


def record_host_network(host: RemoteHost, run_id: str, site: str, overlay: str, addresses: str | None) -> None:
    """Read the host's network before `overlay`'s first daemon starts there (its containers'
    addresses in `addresses`), and keep the reading on the host, where teardown and `clean`
    (from any later run) find it."""
    directory = f"{HOST_STATE}/{run_id}/host"
    header = f"{_FOOTPRINT}{overlay} {addresses or '-'}"
    host_run(host, f"umask 077; mkdir -p {directory} && {{\necho {shlex.quote(header)}\n"
                   f"{hostnet.SNAPSHOT_SCRIPT}}} > {directory}/net-{site}.before", 60).check()


_FOOTPRINT = "### footprint "
_NOW = "### now"


def undo_host_network(host: RemoteHost, run_id: str, site: str) -> list[str]:
    """Remove from the host what the overlay's footprint claims and was not there when
    record_host_network read it; nothing else. Returns the removals that failed."""
    from . import overlays

    read = host_run(host, f"f={HOST_STATE}/{run_id}/host/net-{site}.before; [ -f $f ] || exit 0; cat $f; "
                          f"echo '{_NOW}'\n{hostnet.SNAPSHOT_SCRIPT}", 60)
    if not read.ok:
        return [f"reading the network: {(read.stderr or read.stdout).strip()[-200:]}"]
    if _NOW not in read.stdout:
        return []
    before, now = read.stdout.split(f"{_NOW}\n", 1)
    header = before.splitlines()[0] if before else ""
    overlay, _, addresses = (header[len(_FOOTPRINT):] if header.startswith(_FOOTPRINT) else "").partition(" ")
    footprint = getattr(overlays.get(overlay), "footprint", None) if overlay in overlays.IMPLEMENTED else None
    if footprint is None:
        return [f"no footprint known for {overlay!r}: the host's network was left as it is"]
    if footprint.routes_within and addresses not in ("", "-"):  # the run's own range (a topology's `ranges:`)
        footprint = dataclasses.replace(footprint, routes_within=addresses)
    commands = hostnet.undo(hostnet.Snapshot.parse(before), hostnet.Snapshot.parse(now), footprint)
    if not commands:
        return []
    done = host_run(host, hostnet.script(commands), 120)
    return [line for line in done.stdout.splitlines() if line.startswith("failed: ")] + (
        [] if done.ok else [f"exit {done.rc}: {done.stderr.strip()[-200:]}"])


def end_host_daemons(hosts: dict[str, RemoteHost], run_id: str) -> tuple[dict[str, list[str]], list[str]]:
    """Kill the daemons a run started on the hosts (each by its pid file, and only while that
    pid still runs from the run's directory), then remove from each host's network what they
    added there outside their process (hostnet). A site's files go only once that succeeded,
    so `clean --topology` can finish the job. Returns the daemons ended and what failed."""
    directory = f"{HOST_STATE}/{run_id}"

    def end(site: str) -> str:  # a site's own daemons only: the lab's hosts share one file system
        return (f"d={directory}\n"
                f'for f in "$d"/host/*-{site}/pid; do [ -f "$f" ] || continue\n'
                '  p=$(cat "$f"); n=$(basename "$(dirname "$f")")\n'
                '  if grep -qaF -- "$d/" /proc/$p/cmdline 2>/dev/null; then kill -KILL $p; echo "$n"; fi\n'
                'done\n')

    ended = {name: host_run(host, end(name), 120).stdout.split() for name, host in hosts.items()}
    if any(ended.values()):
        time.sleep(0.5)  # the killed daemons' own devices and sockets go with them first
    failed = []
    for name, host in hosts.items():
        errors = undo_host_network(host, run_id, name)
        failed += [f"host {name}: {error}" for error in errors]
        if not errors:  # per site: on one machine (the lab) the hosts share this directory
            host_run(host, f'rm -rf {directory}/host/*-{name} {directory}/host/net-{name}.before; '
                           f'rmdir {directory}/host {directory} 2>/dev/null || true', 60)
    return ended, failed


def _tls_reason(error: Exception) -> str:
    """What went wrong reaching a Docker API, in a sentence, with the library's own words."""
    text = str(error)
    detail = re.search(r"\[SSL: [^]]*\][^')]*|EOF occurred in violation of protocol|Connection refused|timed out|"
                       r"Name or service not known", text)
    for marker, reason in (("BAD_CERTIFICATE", "the daemon rejected our client certificate (tls.cert/tls.key)"),
                           ("UNKNOWN_CA", "the daemon does not know the CA of our client certificate"),
                           ("EOF occurred in violation of protocol", "the daemon closed the TLS handshake: it most "
                            "likely rejected our client certificate (tls.cert/tls.key not signed by its CA)"),
                           ("CERTIFICATE_VERIFY_FAILED", "the daemon's certificate is not signed by tls.ca"),
                           ("CERTIFICATE_REQUIRED", "the daemon demands a client certificate"),
                           ("Connection refused", "connection refused: nothing listens there"),
                           ("timed out", "timed out")):
        if marker in text:
            return f"{reason} ({detail.group(0).strip() if detail else marker})"
    return text[-300:]

