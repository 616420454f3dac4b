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
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import procs
from ..emulation import duplicate
from ..emulation import emulator as emu
from ..inputs.model import AddressFamily, Direction, Topology
from ..paths import AGENTS, STATE_ROOT, find_binary
from . import engines, wanpaths
from .contract import SiteHandle, SiteOps, Testbed, TestbedError, tcp_sysctls
from .runs import LOCK, hold_lock, kill_pids, netns_inode, new_run_id, pids_in_netns, remove_netns, remove_run_dir
from .wanpaths import BASE_ADDRESS6, ICMP_DROP_MARK, IPTABLES_RESTORE

# What the embedded testbed runs itself, beside the probes' tools.
TOOLS = {"nsenter": "util-linux", "tc": "iproute2", "iptables-restore": "iptables", "sysctl": "procps",
         **duplicate.TOOLS}

BASE_ADDRESS = ipaddress.IPv4Address("198.18.0.0")
WIRE_CHAIN = "OVL-WIRE"


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

    def netns_inode(self) -> int | None:
        return netns_inode(self.testbed.netns_of(self.name))

    def file(self, path: Path) -> str:
        return str(path)


class EmulatedTestbed(Testbed):
    """Sites as namespaces, links through an emulated WAN. Use as a context manager."""

    kind = "emulated"
    backend = "embedded"

    def budgets_unavailable(self) -> str:
        from . import budget

        return budget.unavailable() or ""

    def buffers_unavailable(self) -> str:
        if self.emulator is None or self.emulator.kind == "none":
            return "the testbed has no link emulator (--overlay-emulator=none)"
        return ""

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
            name: SiteHandle(name, f"{self.prefix}-{name}", addresses[topology.families[0]], addresses=addresses)
            for name, site in topology.sites.items()
            for addresses in [{4: str(BASE_ADDRESS + site.index + 1), 6: str(BASE_ADDRESS6 + site.index + 1)}]
        }
        self.emulator: emu.Emulator | None = None
        self.tracked: list[procs.Daemon] = []
        self.ports: list[emu.Port] = []
        self.emulator_reason = ""
        self.created: list[str] = []
        self.counted: set[str] = set()
        self.wan_routes: dict[tuple[str, str, int], str] = {}  # (site, peer, IP version) -> its wan route, unlimited
        self.link_ends: dict = {}  # (site, peer) -> (site ifname, its MAC, wan ifname facing site, its MAC)
        self.sizes: dict[tuple[str, str], tuple[int | None, bool]] = {}  # a direction's MTU and ICMP drop, as changed
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
        links = ["link set lo up"]
        # (site, peer) -> (site-side ifname, its MAC, wan-side ifname facing site, its MAC)
        ends: dict[tuple[str, str], tuple[str, str, str, str]] = {}
        marks: list[str] = []  # a direction that drops ICMP marks what enters it; its errors carry the mark
        self.router_of: dict[str, int] = {}  # wan interface -> its address's offset in ROUTER_ADDRESSES
        for link in topo.links:
            # A jumbo link's veths carry its MTU; the limit itself is each direction's route's.
            wire = max(emu.MTU, link.forward.mtu or 0, link.reverse.mtu or 0)
            for n, (site, peer) in enumerate(((link.a, link.b), (link.b, link.a))):
                tag = "ab"[n]
                wan_if, site_if = f"{self.prefix}w{link.index}{tag}", f"{self.prefix}s{link.index}"
                wan_mac, site_mac = self._mac(link.index, 2 * n), self._mac(link.index, 2 * n + 1)
                ends[(site, peer)] = (site_if, site_mac, wan_if, wan_mac)
                self.router_of[wan_if] = 2 * link.index + n + 1
                links += [f"link add {wan_if} address {wan_mac} mtu {wire} type veth peer name {site_if} "
                          f"netns {self.sites[site].netns} address {site_mac} mtu {wire}", f"link set {wan_if} up"]
                if link.direction(site).icmp_drop:
                    marks.append(f"-A PREROUTING -i {wan_if} -j MARK --set-mark {ICMP_DROP_MARK:#x}")
            for n, (src, dst) in enumerate(((link.a, link.b), (link.b, link.a))):
                ports.append(emu.Port(link.direction(src), 2 * link.index + n, ends[(src, dst)][2], ends[(dst, src)][2],
                                      {v: self.sites[dst].addresses[v] for v in topo.families}))
        self._batch(self.wan, links)
        jobs = []
        for version in topo.families:
            wan_cmds, site_cmds = wanpaths.routes(self, version, ends)
            jobs += [(self.wan, wan_cmds, version)] + [(self.sites[n].netns, c, version) for n, c in site_cmds.items()]
        with concurrent.futures.ThreadPoolExecutor(min(len(jobs), 32)) as pool:
            list(pool.map(lambda job: self._batch(*job), jobs))
        # One rule per family drops the errors of whatever is marked: a link direction that drops
        # them marks what enters it (here, or later when an mtu fault says so).
        for version in topo.families:
            drop = ("-p icmp --icmp-type fragmentation-needed" if version == 4 else
                    "-p ipv6-icmp --icmpv6-type packet-too-big")
            rules = ["*mangle", *marks, "COMMIT",
                     "*filter", f"-A OUTPUT -m mark --mark {ICMP_DROP_MARK:#x} {drop} -j DROP", "COMMIT", ""]
            procs.run([IPTABLES_RESTORE[version], "-w", "--noflush"], self.wan, input="\n".join(rules)).check()
        self.link_ends = ends
        return ports

    @staticmethod
    def _batch(netns: str, commands: list[str], version: int = 4) -> None:
        procs.run(["ip", f"-{version}", "-n", netns, "-batch", "-"], input="\n".join(commands) + "\n").check()

    def _set_sysctls(self) -> None:
        six = 6 in self.topology.families
        ip6 = ({"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.all.forwarding": "1"} if six else
               {"net.ipv6.conf.all.disable_ipv6": "1"})
        # A link's ICMP errors: from the interface the packet came in by, carrying the mark of
        # the packet they answer, and never held back by the kernel's rate limit (a router of
        # the path would send each).
        wan = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
               "net.ipv4.icmp_errors_use_inbound_ifaddr": "1", "net.ipv4.icmp_ratelimit": "0",
               "net.ipv4.fwmark_reflect": "1", "net.ipv4.conf.default.rp_filter": "0", **ip6,
               **({"net.ipv6.fwmark_reflect": "1", "net.ipv6.icmp.ratelimit": "0"} if six else {})}
        jobs = {self.wan: wan}
        for name, handle in self.sites.items():
            handle.sysctls = {
                "net.ipv4.ip_forward": "1",
                "net.ipv4.conf.all.rp_filter": "0",
                **ip6,
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

    def site_ops(self, overlay: str, state_dir: Path, family: AddressFamily | None = None) -> SiteOps:
        """Where `overlay`'s daemons run: the sites' namespaces."""
        return LocalSiteOps(self, state_dir)

    def start(self, site: str, name: str, command: list[str], ready: str | None = None,
              timeout: float = 10.0) -> procs.Daemon:
        return procs.start(name, command, self.run_dir / f"{site}-{name}.log", self.netns_of(site), ready, timeout)

    def fault_unsupported(self, changes: dict[str, Direction]) -> str | None:
        if self.emulator is None or self.emulator.kind == "none":
            return "WAN faults need a link emulator: --overlay-emulator=none applies none"
        return None

    def impair(self, changes: dict[str, Direction], routed: dict[str, list[str]] | None = None,
               hold_s: float | None = None) -> int:
        why = self.fault_unsupported(changes)
        if why:
            raise NotImplementedError(why)
        applied = self.emulator.impair(changes)  # on the links themselves; the emulator goes with the run
        return max(applied, wanpaths.resize(self, changes))

    def rebuffer(self, directions: list[Direction]) -> None:
        if self.emulator is None or self.emulator.kind == "none":
            raise NotImplementedError("link buffers need a link emulator: --overlay-emulator=none applies none")
        self.emulator.rebuffer(directions)

    def emulator_counters(self, reset: bool = False, since: int | None = None) -> dict[str, dict]:
        """The emulator's counters; `reset` starts a new window for the maximum release error;
        `since` (wall ns) adds its late and drop windows from then on."""
        return self.emulator.counters(reset, since) if self.emulator else {}

    def probe_cpus(self) -> frozenset[int]:
        if self.emulator is None or not self.emulator.cpus:
            return frozenset()
        return frozenset(os.sched_getaffinity(0)) - self.emulator.cpus

    def count(self, label: str, match: list[str]) -> None:
        """Count forwarded packets that match (iptables match arguments) on every link
        direction, under `label`; counting the same label again changes nothing."""
        if label in self.counted:
            return
        chain = f"{WIRE_CHAIN}-{label}"
        rules = ["*filter", f":{chain} - [0:0]", f"-A FORWARD -j {chain}"]
        rules += [f'-A {chain} -i {p.ingress} {" ".join(match)} -m comment --comment "{p.name}"' for p in self.ports]
        for version in self.topology.families:
            procs.run([IPTABLES_RESTORE[version], "-w", "--noflush"], self.wan,
                      input="\n".join(rules + ["COMMIT", ""])).check()
        self.counted.add(label)

    def packets(self, label: str) -> dict[str, int]:
        """Packets counted under `label` by count(), per link direction."""
        counts: dict[str, int] = {}
        for version in self.topology.families:
            shown = procs.run([IPTABLES_RESTORE[version].replace("-restore", ""), "-w", "-t", "filter", "-n", "-v",
                               "-x", "-L", f"{WIRE_CHAIN}-{label}"], self.wan).check()
            for line in shown.stdout.splitlines():
                match = re.match(r"\s*(\d+)\s+\d+\s.*/\* (\S+) \*/", line)
                if match:
                    counts[match.group(2)] = counts.get(match.group(2), 0) + int(match.group(1))
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
