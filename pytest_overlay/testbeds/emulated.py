"""The embedded testbed: one network namespace per site, plus a `wan` namespace that joins them.

Each topology link is a pair of veths from the two sites into the wan namespace, where
policy routing sends whatever enters from one site straight out to the other, and the link
emulator delays, drops and shapes it. Sites hold their address (in 198.18.0.0/15, the
benchmarking range) on loopback, route to every other site over their topology's path and
have no route anywhere else.

Everything carries the run id: namespaces are ``ovl<run>-<site>`` and ``ovl<run>-wan``, the
run's state lives in ``/run/pytest-overlay/<run>/`` with the pids it started, and
`runs.sweep` removes what a killed run left, and nothing else.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..emulation import emulator as emu
from .. import procs
from . import engines
from ..paths import AGENTS, STATE_ROOT, find_binary
from .runs import LOCK, hold_lock, kill_pids, netns_inode, new_run_id, pids_in_netns, remove_netns, remove_run_dir
from ..inputs.topology import Circuit, Direction, Topology

# What the embedded testbed runs itself, beside the probes' tools.
TOOLS = {"nsenter": "util-linux", "tc": "iproute2", "iptables-restore": "iptables", "sysctl": "procps"}

BASE_ADDRESS = ipaddress.IPv4Address("198.18.0.0")
DEFAULT_TCP_MEM = (4096, 131072, 6291456)
WIRE_CHAIN = "OVL-WIRE"


def tcp_buffer_max(rtt_ms: float, rate_mbit: float | None) -> int:
    """twice the bandwidth-delay product, never below the kernel's default, at most 512 MB."""
    bdp = (rate_mbit or emu.DEFAULT_RATE_MBIT) * 1e6 / 8 * rtt_ms / 1e3
    return int(min(512 << 20, max(DEFAULT_TCP_MEM[2], 2 * bdp)))


@dataclass
class SiteHandle:
    name: str
    netns: str
    address: str
    sysctls: dict[str, str] = field(default_factory=dict)


class TestbedError(RuntimeError):
    pass


def tcp_sysctls(topology: Topology, site: str) -> dict[str, str]:
    """TCP buffers for a site, sized for the worst bandwidth-delay product of its circuits."""
    size = max(tcp_buffer_max(e["rtt_ms"], e["rate_mbit"]) for e in (topology.expected(c) for c in _pairs(topology, site)))
    return {"net.ipv4.tcp_rmem": f"{DEFAULT_TCP_MEM[0]} {DEFAULT_TCP_MEM[1]} {size}",
            "net.ipv4.tcp_wmem": f"{DEFAULT_TCP_MEM[0]} 16384 {size}"}


class SiteOps:
    """Where an overlay's daemons run, for one overlay: the contract each backend implements
    (EmulatedTestbed: the site's namespace on this machine; RemoteTestbed: the site's host, as
    root, over ssh). The overlay asks these and never which backend it is on."""

    def run(self, site: str, command: list[str], timeout: float | None = 60,
            input: str | None = None) -> procs.CommandResult:
        """`command` where the site's daemons run."""
        raise NotImplementedError

    def start(self, site: str, name: str, command: list[str], env: dict[str, str] | None = None,
              own_pid_namespace: bool = False):
        """Daemon `name` (NAME-SITE) started for the site, in its own directory; a handle with
        alive(), stop(), log_tail(), log_size() and log_from()."""
        raise NotImplementedError

    def directory(self, name: str) -> Path:
        """Daemon `name`'s own directory (log, pid file, what it keeps) where it runs."""
        raise NotImplementedError

    def files(self, site: str, name: str, files: dict[str, Path]) -> dict[str, str]:
        """Where daemon `name` at `site` finds these files (keys among them: root's only)."""
        raise NotImplementedError

    def binary(self, name: str) -> str:
        """How a daemon's binary is named where it runs."""
        raise NotImplementedError

    def missing(self, binaries: dict[str, str]) -> list[str]:
        """Which of the daemons' binaries (name -> what it is or how to install it) cannot be
        found where they run, each with that said."""
        raise NotImplementedError


class LocalSiteOps(SiteOps):
    """A site's daemons in its namespace on this machine, each in a directory of the overlay's
    state folder; binaries from $PYTEST_OVERLAY_BIN or PATH."""

    def __init__(self, testbed: EmulatedTestbed, state_dir: Path) -> None:
        self.testbed, self.state_dir = testbed, state_dir

    def run(self, site, command, timeout=60, input=None):
        return procs.run(command, self.testbed.netns_of(site), timeout=timeout, input=input)

    def start(self, site, name, command, env=None, own_pid_namespace=False):
        directory = self.directory(name)
        return procs.start(name, command, directory / "log", self.testbed.netns_of(site), cwd=directory, env=env,
                           own_pid_namespace=own_pid_namespace)

    def directory(self, name):
        directory = self.state_dir / name
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory

    def files(self, site, name, files):
        return {key: str(path) for key, path in files.items()}

    def binary(self, name):
        return find_binary(name)

    def missing(self, binaries):
        return [f"{name} ({said})" for name, said in binaries.items() if find_binary(name) is None]


@dataclass
class SiteEndpoint:
    """A site's own network namespace."""

    name: str
    address: str
    testbed: EmulatedTestbed

    def run(self, command: list[str], timeout: float | None = 60) -> procs.CommandResult:
        return self.testbed.run(self.name, command, timeout)

    def start(self, name: str, command: list[str], ready: str | None = None, timeout: float = 10.0) -> procs.Daemon:
        return self.testbed.start(self.name, name, command, ready, timeout)

    def agent(self, name: str) -> str:
        return str(AGENTS / name)

    def file(self, path: Path) -> str:
        return str(path)


class Testbed:
    """What both backends share: a context manager that tears down what a failed bring-up
    made, and the run's state on disk (atomically) for `clean` after a kill."""

    run_dir: Path
    # The sites' addresses are on a network others share (real hosts): an overlay's peers must
    # prove they belong to the run. Here only the testbed's namespaces reach them.
    shared_network = False
    # The run starts every site's Docker engine, with the daemon options an overlay asks for
    # (Flannel's --bip), and stops it with the overlay. Real hosts' engines are theirs: used
    # as they are and left running.
    own_engines = True

    def up(self) -> None:
        raise NotImplementedError

    def down(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def count(self, label: str, match: list[str]) -> None:
        raise NotImplementedError

    def packets(self, label: str) -> dict[str, int] | None:
        raise NotImplementedError

    def fault_unsupported(self, changes: dict[str, Direction]) -> str | None:
        """Why a WAN fault's changes (impair()'s argument) cannot be applied here; None when
        they can."""
        return f"the {getattr(self, 'backend', '?')} testbed applies no WAN faults"

    def impair(self, changes: dict[str, Direction], routed: dict[str, list[str]] | None = None) -> int:
        """Give link directions ("A->B") new delay, jitter and loss at one moment: a WAN fault
        starting or healing. `routed` holds, per site, the addresses an overlay carries across
        the WAN without a tunnel (a fault between hosts must stop those too). Returns the wall
        clock (ns) at which it took effect."""
        raise NotImplementedError(self.fault_unsupported(changes))

    def rebuffer(self, directions: list[Direction]) -> None:
        """Give rate-limited link directions a new buffer (queue_ms) while the testbed runs."""
        raise NotImplementedError(f"link buffers on the {getattr(self, 'backend', '?')} testbed are the hosts' own: "
                                  "this version does not change them")

    def underlay_endpoint(self, site: str):
        """Where the underlay's probes run at a site: no overlay between them and the WAN."""
        raise NotImplementedError

    def site_engines(self, extra_args: Callable[[str], list[str]]) -> dict[str, engines.Engine]:
        """A Docker engine at every site for one overlay (`extra_args`: dockerd's, per site),
        not yet started: the overlay holds them from here on, so its teardown finds them
        whatever happens next."""
        raise NotImplementedError

    def start_engines(self, made: dict[str, engines.Engine], progress: Callable[[str], None]) -> tuple[str, float]:
        """The engines up with the measurement image in each: its reference and the seconds
        it took."""
        raise NotImplementedError

    def swarm(self, manager):
        """The swarm an overlay that needs one (libnetwork) joins: its manager's engine, and
        whether the run makes it, with `manager` (an Engine). Here every run makes its own."""
        return manager, True

    def swarm_member(self, site: str, node_id: str, cluster_id: str | None = None) -> None:
        """A site's engine joined the swarm this run made, as which node. Only where the
        engines outlive the run (real hosts) does `clean` need it; here the swarm goes with
        its engines."""

    def count_udp(self, port: int) -> None:
        """Count packets to a UDP port on every link direction (e.g. 4789, VXLAN)."""
        self.count(str(port), ["-p", "udp", "--dport", str(port)])

    def udp_packets(self, port: int) -> dict[str, int] | None:
        return self.packets(str(port))

    def _write_state(self, state: dict) -> None:
        tmp = self.run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.run_dir / "state.json")


class EmulatedTestbed(Testbed):
    """Sites as namespaces, links through an emulated WAN. Use as a context manager."""

    kind = "emulated"
    backend = "embedded"

    def __init__(self, topology: Topology, emulator: str = "auto", run_id: str | None = None,
                 progress: Callable[[str], None] | None = None, state_root: Path | None = None) -> None:
        self.topology = topology
        self.emulator_choice = emulator
        self.run_id = run_id or new_run_id()
        self.prefix = f"ovl{self.run_id}"
        self.run_dir = (state_root or STATE_ROOT) / self.run_id
        self.progress = progress or (lambda message: None)
        self.wan = f"{self.prefix}-wan"
        self.sites = {
            name: SiteHandle(name, f"{self.prefix}-{name}", str(BASE_ADDRESS + site.index + 1))
            for name, site in topology.sites.items()
        }
        self.emulator: emu.Emulator | None = None
        self.tracked: list[procs.Daemon] = []
        self.ports: list[emu.Port] = []
        self.emulator_reason = ""
        self.created: list[str] = []
        self.counted: set[str] = set()
        self.owner = os.getpid()
        self.timings: dict[str, float] = {}

    # --- state on disk, for the sweep of a killed run -------------------------------------
    def _save_state(self) -> None:
        state = {
            "run_id": self.run_id,
            "owner": {"pid": os.getpid(), "start_time": procs.start_time(os.getpid())},
            "namespaces": self.created,
            "daemons": [d.record() for d in self.daemons()],
        }
        self._write_state(state)

    # --- bring-up -------------------------------------------------------------------------
    def up(self) -> None:
        started = time.monotonic()
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700)
        self._lock = hold_lock(self.run_dir / LOCK)  # held for the run's whole life: see sweep()
        self._save_state()
        self.progress(f"testbed {self.run_id}: {len(self.sites)} site namespaces and the WAN")
        for name in [self.wan] + [s.netns for s in self.sites.values()]:
            procs.run(["ip", "netns", "add", name]).check()
            self.created.append(name)  # once it exists: a name taken by another run is never ours to remove
        self._save_state()
        kind, self.emulator_reason = emu.choose(self.emulator_choice, self.wan)
        ports = self.ports = self._wire()
        self._set_sysctls()
        self.progress(f"testbed {self.run_id}: link emulator {kind.kind} ({self.emulator_reason})")
        self.emulator = kind(self.wan, ports, self.run_dir)
        self.emulator.start()
        self._save_state()
        self.timings["up_s"] = time.monotonic() - started

    def _mac(self, link: int, end: int) -> str:
        """A locally administered MAC that names the run, the link and the end (of four: two
        veth pairs per link), in its last 16 bits."""
        value = 4 * link + end
        return "02:{}:{}:{}:{:02x}:{:02x}".format(self.run_id[0:2], self.run_id[2:4], self.run_id[4:6],
                                                  value >> 8, value & 0xFF)

    def _wire(self) -> list[emu.Port]:
        """Links, addresses, static neighbours and routes, one `ip -batch` per namespace.

        iproute2 rather than a netlink library in this process: creating devices in other
        namespaces from here would need setns or forked helpers, and a forked helper that
        unwinds the parent's stack would run this testbed's teardown.
        """
        topo = self.topology
        ports: list[emu.Port] = []
        wan_cmds = ["link set lo up"]
        site_cmds = {name: ["link set lo up", f"address add {h.address}/32 dev lo"] for name, h in self.sites.items()}
        # (site, peer) -> (site-side ifname, its MAC, wan-side ifname facing site, its MAC)
        ends: dict[tuple[str, str], tuple[str, str, str, str]] = {}
        for link in topo.links:
            for n, (site, peer) in enumerate(((link.a, link.b), (link.b, link.a))):
                tag = "ab"[n]
                wan_if, site_if = f"{self.prefix}w{link.index}{tag}", f"{self.prefix}s{link.index}"
                wan_mac, site_mac = self._mac(link.index, 2 * n), self._mac(link.index, 2 * n + 1)
                ends[(site, peer)] = (site_if, site_mac, wan_if, wan_mac)
                wan_cmds += [f"link add {wan_if} address {wan_mac} type veth peer name {site_if} "
                             f"netns {self.sites[site].netns} address {site_mac}",
                             f"link set {wan_if} up"]
            for n, (src, dst) in enumerate(((link.a, link.b), (link.b, link.a))):
                ports.append(emu.Port(link.direction(src), 2 * link.index + n, ends[(src, dst)][2], ends[(dst, src)][2]))
        for (site, peer), (site_if, _, wan_if, wan_mac) in ends.items():
            peer_address = self.sites[peer].address
            # The wan end answers for the peer: no ARP on emulated links.
            site_cmds[site] += [f"link set {site_if} up",
                                f"neigh add {peer_address} lladdr {wan_mac} dev {site_if} nud permanent"]
            # Whatever enters the wan from `site` on this link leaves toward `peer`.
            out_if, out_mac = ends[(peer, site)][2], ends[(peer, site)][1]
            table = 1000 + len(wan_cmds)
            wan_cmds += [f"route add default via {peer_address} dev {out_if} onlink table {table}",
                         f"neigh replace {peer_address} lladdr {out_mac} dev {out_if} nud permanent",
                         f"rule add iif {wan_if} table {table} pref 100"]
        for name, handle in self.sites.items():
            for other, other_handle in self.sites.items():
                if other != name:
                    hop = topo.path_between(name, other)[1]
                    site_cmds[name].append(f"route add {other_handle.address}/32 via {self.sites[hop].address} "
                                           f"dev {ends[(name, hop)][0]} onlink src {handle.address}")
        self._batch(self.wan, wan_cmds[:1] + [c for c in wan_cmds if c.startswith("link")])
        with concurrent.futures.ThreadPoolExecutor(len(self.sites) + 1) as pool:
            jobs = [(self.wan, [c for c in wan_cmds if not c.startswith("link")])]
            jobs += [(self.sites[n].netns, cmds) for n, cmds in site_cmds.items()]
            list(pool.map(lambda job: self._batch(*job), jobs))
        return ports

    @staticmethod
    def _batch(netns: str, commands: list[str]) -> None:
        procs.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(commands) + "\n").check()

    def _set_sysctls(self) -> None:
        wan = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
               "net.ipv4.conf.default.rp_filter": "0", "net.ipv6.conf.all.disable_ipv6": "1"}
        jobs = {self.wan: wan}
        for name, handle in self.sites.items():
            handle.sysctls = {
                "net.ipv4.ip_forward": "1",
                "net.ipv4.conf.all.rp_filter": "0",
                "net.ipv6.conf.all.disable_ipv6": "1",
                **tcp_sysctls(self.topology, name),
            }
            jobs[handle.netns] = handle.sysctls
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            for result in pool.map(
                lambda item: procs.run(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in item[1].items())], item[0]),
                jobs.items(),
            ):
                result.check()

    def daemons(self) -> list[procs.Daemon]:
        return (self.emulator.daemons if self.emulator else []) + self.tracked

    def track(self, daemon: procs.Daemon) -> None:
        """Record a daemon an upper layer started, so the sweep of a killed run finds it."""
        self.tracked.append(daemon)
        self._save_state()

    def untrack(self, daemons: list[procs.Daemon]) -> None:
        """Daemons an upper layer has stopped on purpose."""
        self.tracked = [d for d in self.tracked if d not in daemons]
        self._save_state()

    def dead_daemons(self) -> list[str]:
        """The run's daemons that exited on their own (the emulator, engines, overlay daemons),
        each with its exit status and last log lines."""
        return [f"{d.name} (pid {d.pid}) exited with status {d.popen.returncode}; its last lines:\n{d.log_tail(6)}"
                for d in self.daemons() if not d.alive()]

    # --- use --------------------------------------------------------------------------------
    def address(self, site: str) -> str:
        return self.sites[site].address

    def netns_of(self, site: str) -> str:
        return self.sites[site].netns

    def host_of(self, site: str) -> str:
        return f"namespace {self.sites[site].netns}"

    def run(self, site: str, command: list[str], timeout: float | None = 60) -> procs.CommandResult:
        return procs.run(command, self.netns_of(site), timeout)

    def underlay_endpoint(self, site):
        """The site's namespace itself."""
        return SiteEndpoint(site, self.address(site), self)

    def site_engines(self, extra_args):
        """An engine for the overlay in every site's namespace; they go with the overlay."""
        return {site: engines.Engine(site, h.netns, h.address, self.run_id, self.run_dir / f"docker-{site}",
                                     extra_args=extra_args(site)) for site, h in self.sites.items()}

    def start_engines(self, made, progress):
        """Started in parallel, each tracked so that a death stops the session."""
        image, seconds = engines.start_all(list(made.values()), progress)
        for engine in made.values():
            self.track(engine.daemon)
            self.track(engine.containerd)
        return image, seconds

    def site_ops(self, overlay: str, state_dir: Path, family: str | None = None) -> SiteOps:
        """Where `overlay`'s daemons run: the sites' namespaces."""
        return LocalSiteOps(self, state_dir)

    def start(self, site: str, name: str, command: list[str], ready: str | None = None,
              timeout: float = 10.0) -> procs.Daemon:
        return procs.start(name, command, self.run_dir / f"{site}-{name}.log", self.netns_of(site), ready, timeout)

    def fault_unsupported(self, changes: dict[str, Direction]) -> str | None:
        if self.emulator is None or self.emulator.kind == "none":
            return "WAN faults need a link emulator: --overlay-emulator=none applies none"
        return None

    def impair(self, changes: dict[str, Direction], routed: dict[str, list[str]] | None = None) -> int:
        why = self.fault_unsupported(changes)
        if why:
            raise NotImplementedError(why)
        return self.emulator.impair(changes)  # on the links themselves, whatever the addresses

    def rebuffer(self, directions: list[Direction]) -> None:
        if self.emulator is None or self.emulator.kind == "none":
            raise NotImplementedError("link buffers need a link emulator: --overlay-emulator=none applies none")
        self.emulator.rebuffer(directions)

    def emulator_counters(self, reset: bool = False, since: int | None = None) -> dict[str, dict]:
        """The emulator's counters; `reset` starts a new window for the maximum release error;
        `since` (wall ns) adds its late and drop windows from then on."""
        return self.emulator.counters(reset, since) if self.emulator else {}

    def count(self, label: str, match: list[str]) -> None:
        """Count forwarded packets that match (iptables match arguments) on every link
        direction, under `label`; counting the same label again changes nothing."""
        if label in self.counted:
            return
        chain = f"{WIRE_CHAIN}-{label}"
        rules = ["*filter", f":{chain} - [0:0]", f"-A FORWARD -j {chain}"]
        rules += [f'-A {chain} -i {p.ingress} {" ".join(match)} -m comment --comment "{p.name}"' for p in self.ports]
        procs.run(["iptables-restore", "-w", "--noflush"], self.wan, input="\n".join(rules + ["COMMIT", ""])).check()
        self.counted.add(label)

    def packets(self, label: str) -> dict[str, int]:
        """Packets counted under `label` by count(), per link direction."""
        shown = procs.run(["iptables", "-w", "-t", "filter", "-n", "-v", "-x", "-L", f"{WIRE_CHAIN}-{label}"],
                          self.wan).check()
        counts = {}
        for line in shown.stdout.splitlines():
            match = re.match(r"\s*(\d+)\s+\d+\s.*/\* (\S+) \*/", line)
            if match:
                counts[match.group(2)] = int(match.group(1))
        return counts

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "run_id": self.run_id,
            "emulator": {**(self.emulator.describe() if self.emulator else {}), "reason": self.emulator_reason},
            "sites": {n: {"address": h.address, "netns": h.netns, "sysctls": h.sysctls} for n, h in self.sites.items()},
            "timings": self.timings,
        }

    # --- teardown ---------------------------------------------------------------------------
    def down(self) -> None:
        """Remove everything this run made. Safe to call twice, and after a partial bring-up.

        Only the process that built the testbed tears it down: a forked child unwinding a
        copy of the stack must not.
        """
        if os.getpid() != self.owner:
            return
        started = time.monotonic()
        errors: list[str] = []

        def attempt(what: str, step: Callable[[], object]) -> None:
            try:
                step()
            except Exception as e:  # noqa: BLE001  (best effort: every step runs, the errors are reported)
                errors.append(f"{what}: {type(e).__name__}: {e}")

        for daemon in self.tracked:
            attempt(f"stopping {daemon.name}", daemon.stop)
        if self.emulator:
            attempt("stopping the link emulator", self.emulator.stop)
        for name in reversed(self.created):
            inode = netns_inode(name)
            # Whatever still runs in the namespace is this run's, handle or not: end it.
            attempt(f"ending processes in {name}", lambda: kill_pids(pids_in_netns(inode) if inode else [], "", None))
            attempt(f"removing namespace {name}", lambda: remove_netns(name))
        self.created.clear()
        remove_run_dir(self.run_dir, errors.append)
        if getattr(self, "_lock", None) is not None:
            self._lock.close()
            self._lock = None
        self.timings["down_s"] = time.monotonic() - started
        if errors:
            raise TestbedError("teardown finished with errors (everything else was removed):\n" + "\n".join(errors))


def _pairs(topology: Topology, site: str) -> list[Circuit]:
    return [Circuit(site, other) for other in topology.sites if other != site]
