"""What a real host must have before a run creates anything on it, asked over ssh: every
finding at once, each with its fix (as flent checks every binary before starting traffic).

The remote backend (remote.py) asks these after the hosts' Docker APIs have answered; the
overlays say what they need on a host (`HostNeeds`), so nothing here knows one by name.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
import time
from dataclasses import dataclass

from ...inputs.model import RemoteHost, Topology
from ...paths import AGENTS
from .. import hostnet
from ..contract import HostNeeds
from . import hostlinks
from .hosts import HOST_PATH, as_root, ssh_command, ssh_options, ssh_run

MAX_CLOCK_SKEW_S = 1.0
PORT_CHECK_S = 20.0
SWARM_PORTS = ("2377/tcp", "7946/tcp", "7946/udp", "4789/udp")


@dataclass
class Check:
    host: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.host}: {self.problem}. Fix: {self.fix}"


def over_ssh(topology: Topology, wanted: list[HostNeeds]) -> list[Check]:
    """Each host's login, clock, kernel and python3; its netem where it emulates; and the
    daemons, devices, ports and ranges of the overlays asked for."""
    import testinfra

    problems = []
    for name, site in topology.sites.items():
        host = site.host
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
            problems.append(Check(name, "no python3, needed to check the swarm ports", "apt-get install python3"))
        root = tested.run("test $(id -u) = 0 || sudo -n true").rc == 0
        if root:
            problems += other_runs_faults(name, tested.run(as_root("iptables-save -t raw 2>/dev/null || true")).stdout)
        if host.emulate:
            problems += emulation(name, host, tested, root)
        problems += overlay_needs(topology, name, wanted, tested, root)
    return problems


def overlay_needs(topology: Topology, name: str, wanted: list[HostNeeds], tested, root: bool) -> list[Check]:
    """The daemons of the overlays asked for, installed on the host and able to start (as
    root: `root` says whether the ssh user is, or has sudo without a password), none of those
    overlays already up there (someone else's), and their ranges free: all as each overlay
    declares."""
    needs: dict[str, tuple[str, str]] = {}  # binary -> (what it is, how to install it)
    problems = []
    for declared in wanted:
        needs.update(declared.binaries)
        if name == topology.kv_site:
            needs.update(declared.kv_binaries)
        for port, (holder, fix) in declared.listens.items():
            if tested.run(f"ss -Hltn 'sport = :{port}' | grep -q .").rc == 0:
                problems.append(Check(name, holder, fix))
    if needs and not root:
        problems.append(Check(name, f"{topology.sites[name].host.ssh} may not start the overlays' daemons (they run "
                                    "as root: not root, no sudo without a password)", "log in as root, or allow sudo -n"))
    started = {binary for declared in wanted for binary in declared.started}
    for binary, (what, fix) in needs.items():
        runs = f" && {binary} --version" if binary in started else ""  # loads its libraries
        found = tested.run(f"PATH={HOST_PATH}; command -v {binary}{runs}")
        if found.rc != 0:
            problems.append(Check(name, f"{binary} ({what}) is not installed or does not start "
                                        f"({(found.stderr or found.stdout).strip()[-120:] or 'not on PATH'})", fix))
    for declared in wanted:
        for device, whose in declared.devices.items():
            if tested.run(f"test -e /sys/class/net/{device}").rc == 0:
                problems.append(Check(name, f"{whose}'s {device} is already up: another {whose} runs on this host",
                                      f"run on hosts without {whose}, or stop it"))
    problems += ranges(topology, name, wanted, tested)
    for declared in wanted:
        for process, whose in declared.rivals.items():  # live ones: a killed one lingers as a zombie
            found = tested.run(f"for p in $(pgrep -x {process}); do grep -q '^State:.*Z' /proc/$p/status || "
                               "echo $p; done")
            if found.stdout.split():
                problems.append(Check(name, f"{process} already runs there (pid {', '.join(found.stdout.split())}): "
                                            f"another {whose}, whose chains, routes and devices ours would fight "
                                            "over", f"run on hosts without {whose}, or stop it"))
    return problems


def ranges(topology: Topology, name: str, wanted: list[HostNeeds], tested) -> list[Check]:
    """The overlays' address ranges against the host's routes: a route inside one (a
    Kubernetes pod network, a VPN) would take the overlay's traffic or lose its own.
    Wider routes (a 10.0.0.0/8 towards a corporate network) are left: ours are more specific.
    The ranges are the topology's (`ranges:`), so a host can be met by moving them."""
    wanted_ranges = {topology.range_of(declared.family): declared.family.what for declared in wanted}
    if not wanted_ranges:
        return []
    problems = []
    for route in tested.run("ip -4 route show table all").stdout.splitlines():
        found = hostnet.route_destination(route.split())
        for cidr, what in wanted_ranges.items():
            if found is not None and found.prefixlen and found.subnet_of(ipaddress.ip_network(cidr)):
                problems.append(Check(name, f"route '{route.strip()}' lies inside {what} {cidr}: the overlay "
                                            "would take its traffic or lose its own",
                                      "remove the route, or move the range (ranges: in the topology)"))
    return problems


def other_runs_faults(name: str, iptables_save: str) -> list[Check]:
    """A WAN fault another run left on the host (its chain in the raw table): the host still
    drops what the sites it cut off send, so a run there would measure a broken WAN. (This
    run holds the host's lock already: the fault's run is not live there.)"""
    return [Check(name, f"still carries run {run_id}'s WAN fault ({hostlinks.chain(run_id)} in the raw table, "
                        "dropping what arrives from the sites that fault cut off)",
                  f"if run {run_id} is over, `python -m pytest_overlay clean --topology FILE` from the machine "
                  f"that ran it (with --force from any other), or on the host: iptables -t raw -D PREROUTING -j "
                  f"{hostlinks.chain(run_id)}; iptables -t raw -F {hostlinks.chain(run_id)}; "
                  f"iptables -t raw -X {hostlinks.chain(run_id)}")
            for run_id in sorted(hostlinks.runs_in(iptables_save))]


def emulation(name: str, host: RemoteHost, tested, root: bool) -> list[Check]:
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
        if kinds - hostlinks.DEFAULT_QDISCS:
            problems.append(Check(name, f"{host.interface} has its own root qdisc ({', '.join(sorted(kinds))}), "
                                        "which emulate: true would replace",
                                  f"remove it (tc qdisc del dev {host.interface} root) or remove emulate"))
    if not root:
        problems.append(Check(name, f"{host.ssh} may not change qdiscs (not root, no sudo without a password)",
                              "log in as root, or allow sudo -n for tc"))
    return problems


# A port found taken is looked at again this many times, this far apart, before it is called
# in use: Docker lets go of a swarm's ports a moment after `swarm leave` returns, and a run
# that follows one (a test after a test, a run after a run) may look in that moment.
BUSY_TRIES, BUSY_WAIT_S = 5, 2.0


def swarm_ports(hosts: dict[str, RemoteHost], run_id: str) -> list[Check]:
    """2377/tcp, 7946/tcp+udp and 4789/udp, from every site to every other: each host listens
    in turn while every other sends it a token of the run's."""
    problems = []
    for dst, dst_host in hosts.items():
        for attempt in range(BUSY_TRIES):
            found = _swarm_ports_of(hosts, dst, dst_host, run_id)
            busy = [check for check in found if "already in use" in check.problem]
            if not busy or attempt == BUSY_TRIES - 1:
                break
            time.sleep(BUSY_WAIT_S)
        problems += found
    return problems


def _swarm_ports_of(hosts: dict[str, RemoteHost], dst: str, dst_host: RemoteHost, run_id: str) -> list[Check]:
    """One host's swarm ports: free, and reached from every other host."""
    script = (AGENTS / "portcheck.py").read_text()
    listener = subprocess.Popen(
        ssh_command(dst_host, f"python3 -c {shlex.quote(script)} listen {dst_host.address} {PORT_CHECK_S}"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if listener.stdout.readline().strip() != "ready":
        listener.kill()
        return [Check(dst, f"could not listen on the swarm ports: {listener.communicate()[1][-200:]}",
                      "check ssh access and python3")]
    tokens = {}
    for src, src_host in hosts.items():
        if src == dst:
            continue
        tokens[src] = f"{run_id}-{src}"
        ssh_run(src_host, f"python3 -c {shlex.quote(script)} probe {dst_host.address} {tokens[src]}", 60)
    out, _ = listener.communicate("\n", timeout=PORT_CHECK_S + 30)
    report = json.loads(out.strip().splitlines()[-1])
    problems = [Check(dst, f"port {port} is already in use",
                      "stop what holds it (a swarm port must be free for Docker)") for port in report["busy"]]
    for src, token in tokens.items():
        closed = [port for port in SWARM_PORTS
                  if port not in report["busy"] and token not in report["received"].get(port, [])]
        if closed:
            problems.append(Check(dst, f"swarm port(s) {', '.join(closed)} not reachable from {src} "
                                       f"({hosts[src].address} -> {dst_host.address})",
                                  "open them in the firewalls between the sites"))
    return problems
