"""Real hosts over ssh, below the overlays and the remote backend alike: commands run as root
there, the daemons a run starts there (kept by pid file, ended by pid), what those daemons add
to a host's network (read before, undone after: hostnet), and a run's Docker networks.

An overlay that runs daemons on hosts uses this module; the remote backend uses it and asks
the overlays what they need. Neither imports the other's internals.
"""

from __future__ import annotations

import dataclasses
import shlex
import socket
import time
from dataclasses import dataclass
from typing import Callable

import docker

from ... import procs
from ...inputs.model import RemoteHost
from ...paths import KNOWN_HOSTS
from .. import hostnet
from ..engines import LABEL

# A host's own record of the runs on it (daemons, readings, fault timers, the lock), apart from
# a controller's STATE_ROOT: where one machine is both (the lab), neither's clean takes the other's.
HOST_STATE = "/run/pytest-overlay-host"
# Shell printing which machine a command runs on, whatever name reached it: its machine id and
# the network namespace the ssh server runs in (the lab's hosts share a machine, not a namespace).
HOST_IDENTITY = ("echo $(cat /etc/machine-id 2>/dev/null || cat /proc/sys/kernel/random/boot_id)-"
                 "$(stat -L -c %i /proc/self/ns/net)")
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOCKS = f"{HOST_STATE}/locks"
FENCED = 97  # the exit status of a host command refused because the run no longer holds the host


def lock_file() -> str:
    """Shell naming the host's lock file (hostlock.py): one per machine, whatever name reached it."""
    return f"{LOCKS}/$({HOST_IDENTITY}).lock"


def fence(run_id: str) -> str:
    """Shell that lets a run's change go ahead only while the run holds the host's lock: after
    its lease lapsed, or once another run took the host, the command is refused (exit FENCED)."""
    return (f'case "$(head -c 80 "{lock_file()}" 2>/dev/null)" in "run {run_id} "*) ;; '
            f'*) echo "fenced: run {run_id} no longer holds this host" >&2; exit {FENCED} ;; esac')


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


def ssh_run(host: RemoteHost, command: str, timeout: float = 30) -> procs.CommandResult:
    return procs.run(ssh_command(host, command), timeout=timeout)


def host_run(host: RemoteHost, script: str, timeout: float | None = 60, input: str | None = None,
             fenced: str | None = None) -> procs.CommandResult:
    """`script` as root on the host, with binaries installed by hand (/usr/local) on PATH;
    `fenced`: a run id, and the script runs only while that run holds the host."""
    guard = f"{fence(fenced)}\n" if fenced else ""
    return procs.run(ssh_command(host, as_root(f"PATH={HOST_PATH}; export PATH\n{guard}{script}")), timeout=timeout,
                     input=input)


def controller_path(host: RemoteHost) -> tuple[str | None, str | None]:
    """How this machine reaches the host: the address the host's ssh server sees it at, and
    the gateway of this machine's route to the host's ssh address (None: directly, or not
    known)."""
    seen = ssh_run(host, 'echo "$SSH_CONNECTION"', 30)
    seen_as = seen.stdout.split()[0] if seen.ok and seen.stdout.split() else None
    target = ssh_key_name(host).strip("[").split("]")[0]
    try:
        address = socket.getaddrinfo(target, None, proto=socket.IPPROTO_TCP)[0][4][0]
    except OSError:
        return seen_as, None
    route = procs.run(["ip", "route", "get", address], timeout=10).stdout.split()
    return seen_as, route[route.index("via") + 1] if "via" in route[:-1] else None


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
              env: dict[str, str] | None = None, fenced: str | None = None) -> HostDaemon:
        """Start `command` in `directory` (created) on the host, only while the run `fenced`
        holds it. `env` goes over ssh's stdin, never onto a command line (secrets are among it)."""
        env = env or {}
        read = "".join(f"IFS= read -r {key}; export {key}\n" for key in env)
        script = (f"umask 077 && mkdir -p {shlex.quote(directory)} && cd {shlex.quote(directory)}\n{read}"
                  f"setsid {shlex.join(command)} > log 2>&1 < /dev/null &\necho $! > pid")
        host_run(host, script, 60, input="".join(f"{value}\n" for value in env.values()) if env else None,
                 fenced=fenced).check()
        return cls(name, host, directory)

    def _signal(self, signal_name: str) -> str:
        d = shlex.quote(self.directory)
        return (f'p=$(cat {d}/pid 2>/dev/null) || exit 1\n'
                f'grep -qaF -- {d}/ /proc/$p/cmdline 2>/dev/null || exit 1\nkill -{signal_name} $p')

    def alive(self) -> bool:
        return host_run(self.host, self._signal("0"), 30).ok

    def log_tail(self, lines: int = 20) -> str:
        return host_run(self.host, f"tail -n {lines} {shlex.quote(self.directory)}/log", 30).stdout

    def log_size(self) -> int:
        done = host_run(self.host, f"stat -c %s {shlex.quote(self.directory)}/log", 30)
        return int(done.stdout.split()[-1]) if done.ok and done.stdout.split() else 0

    def log_from(self, offset: int) -> str:
        """What the daemon logged after the first `offset` bytes."""
        return host_run(self.host, f"tail -c +{offset + 1} {shlex.quote(self.directory)}/log", 30).stdout

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        script = (f"{self._signal('TERM')} || exit 0\n"
                  f"for i in $(seq {int(timeout * 10)}); do kill -0 $p 2>/dev/null || exit 0; sleep 0.1; done\n"
                  "kill -KILL $p")
        host_run(self.host, script, timeout + 30)


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


def record_host_network(host: RemoteHost, run_id: str, site: str, overlay: str, addresses: str | None) -> None:
    """Read the host's network before `overlay`'s first daemon starts there (its containers'
    addresses in `addresses`), and keep the reading on the host, where teardown and `clean`
    (from any later run) find it."""
    header = f"{_FOOTPRINT}{overlay} {addresses or '-'}"
    host_run(host, f"umask 077; mkdir -p {HOST_STATE}/{run_id}/host && {{\necho {shlex.quote(header)}\n"
                   f"{hostnet.SNAPSHOT_SCRIPT}}} > {shlex.quote(_reading(run_id, site, overlay))}", 60).check()


def _reading(run_id: str, site: str, overlay: str = "*") -> str:
    """Where a host keeps its network as read before an overlay's first daemon: one file per
    site and overlay, so that a second overlay of the run never overwrites the first's."""
    return f"{HOST_STATE}/{run_id}/host/net-{site}.{overlay}.before"


_FOOTPRINT = "### footprint "
_NOW = "### now"


# The footprint of the overlay named in a host's reading (None: unknown): the overlays' own
# declaration, handed down by whoever ends the daemons.
FootprintOf = Callable[[str], hostnet.Footprint | None]


def undo_host_network(host: RemoteHost, run_id: str, site: str, footprint_of: FootprintOf,
                      overlay: str = "*") -> list[str]:
    """Remove from the host what each overlay's footprint claims and was not there when
    record_host_network read it (every overlay of the run, or only `overlay`); nothing else.
    Returns the removals that failed."""
    listed = host_run(host, f"ls {_reading(run_id, site, overlay)} 2>/dev/null || true", 60)
    failed = []
    for path in listed.stdout.split():
        failed += _undo_reading(host, path, footprint_of)
    return failed


def _undo_reading(host: RemoteHost, path: str, footprint_of: FootprintOf) -> list[str]:
    read = host_run(host, f"f={shlex.quote(path)}; [ -f $f ] || exit 0; cat $f; echo '{_NOW}'\n"
                          f"{hostnet.SNAPSHOT_SCRIPT}", 60)
    if not read.ok:
        return [f"reading the network: {(read.stderr or read.stdout).strip()[-200:]}"]
    if _NOW not in read.stdout:
        return []
    before, now = read.stdout.split(f"{_NOW}\n", 1)
    header = before.splitlines()[0] if before else ""
    overlay, _, addresses = (header[len(_FOOTPRINT):] if header.startswith(_FOOTPRINT) else "").partition(" ")
    footprint = footprint_of(overlay)
    if footprint is None:
        return [f"no footprint known for {overlay!r}: the host's network was left as it is"]
    if footprint.routes_within and addresses not in ("", "-"):  # the run's own range (a topology's `ranges:`)
        footprint = dataclasses.replace(footprint, routes_within=addresses)
    commands = hostnet.undo(hostnet.Snapshot.parse(before), hostnet.Snapshot.parse(now), footprint)
    failed = []
    if commands:
        done = host_run(host, hostnet.script(commands), 120)
        failed = [line for line in done.stdout.splitlines() if line.startswith("failed: ")] + (
            [] if done.ok else [f"exit {done.rc}: {done.stderr.strip()[-200:]}"])
    if not failed:
        host_run(host, f"rm -f {shlex.quote(path)}", 60)
    return failed


def end_daemons_script(run_id: str, site: str) -> str:
    """Shell killing a site's daemons of a run (the lab's hosts share one file system), each by
    its pid file and only while that pid still runs from the run's directory, naming each one;
    it returns once each has exited (gone, or a zombie its parent has not reaped), at most
    10 s: a SIGKILLed weaver on a busy host still ran a second later. A subshell: its
    variables never touch the caller's (the lease's far end keeps its lock file in $f)."""
    return (f"(\nd={HOST_STATE}/{run_id}\nkilled=\n"
            f'for f in "$d"/host/*-{site}/pid; do [ -f "$f" ] || continue\n'
            '  p=$(cat "$f"); n=$(basename "$(dirname "$f")")\n'
            '  if grep -qaF -- "$d/" /proc/$p/cmdline 2>/dev/null; then kill -KILL $p; killed="$killed $p"; '
            'echo "$n"; fi\n'
            'done\n'
            'for i in $(seq 100); do running=\n'
            '  for p in $killed; do [ -d /proc/$p ] && ! grep -q "^State:.*Z" /proc/$p/status 2>/dev/null && '
            'running=1; done\n'
            '  [ -z "$running" ] && break; sleep 0.1\n'
            'done\n)')


def end_host_daemons(hosts: dict[str, RemoteHost], run_id: str, footprint_of: FootprintOf,
                     overlay: str = "*") -> tuple[dict[str, list[str]], list[str]]:
    """Kill the daemons a run started on the hosts (each by its pid file, and only while that
    pid still runs from the run's directory), then remove from each host's network what they
    added there outside their process (hostnet, by the footprint of each overlay, or of
    `overlay` only). A site's files go only once that succeeded, so `clean --topology` can
    finish the job. Returns the daemons ended and what failed."""
    directory = f"{HOST_STATE}/{run_id}"

    ended = {name: host_run(host, end_daemons_script(run_id, name), 120).stdout.split() for name, host in hosts.items()}
    if any(ended.values()):
        time.sleep(0.5)  # the killed daemons' own devices and sockets go with them first
    failed = []
    for name, host in hosts.items():
        errors = undo_host_network(host, run_id, name, footprint_of, overlay)
        failed += [f"host {name}: {error}" for error in errors]
        if not errors:  # per site: on one machine (the lab) the hosts share this directory
            host_run(host, f'rm -rf {directory}/host/*-{name}; rmdir {directory}/host {directory} 2>/dev/null '
                           '|| true', 60)
    return ended, failed
