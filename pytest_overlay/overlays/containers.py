"""What every container overlay shares: a real Docker engine per site, the measurement image
loaded into each, and one measurement container per site, with the site's TCP buffers."""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from pathlib import Path
from typing import Callable

import docker

from .. import procs
from ..testbeds import budget, engines, hostnet
from ..testbeds.contract import Testbed
from ..testbeds.endpoints import ContainerEndpoint
from ..testbeds.engines import LABEL, Engine, EngineError
from ..testbeds.real.hosts import end_host_daemons, remove_networks
from .base import Overlay

CONTAINER_ATTEMPTS = 3
# A swarm manager allocates every attachment to its network: twenty at once ran past Docker's
# deadline ("context deadline exceeded") on a 20-site mesh; in waves of eight none did.
CONTAINERS_AT_ONCE = 8
ROUTED_GATEWAY = "169.254.1.1"  # a routed container's next hop: its site's end of the veth answers for it
PINGS_AT_ONCE = 32  # reachability checks, each a `docker exec` (a 20-site mesh has 380 pairs)


class ContainerOverlay(Overlay):
    """Engines and containers; subclasses make the network and say how a container joins it."""

    # Docker's answers that mean "timed out, try again", not a wrong configuration.
    transient: tuple[str, ...] = ()
    # The Docker network the overlay makes for its containers, if any: on real hosts it goes
    # with the overlay, so that a bring-up tried again can make it anew.
    network: str | None = None

    def __init__(self, testbed: Testbed, **settings) -> None:
        super().__init__(testbed, **settings)
        self.engines: dict[str, Engine] = {}
        self.containers: dict[str, ContainerEndpoint] = {}
        self.daemons: list[procs.Daemon] = []  # the overlay's own daemons, besides the engines
        self.site_daemons: dict[str, list[procs.Daemon]] = {}  # the same, by the site they serve
        self.budgets_placed = False  # the daemons moved into their site's budget cgroup
        self.mtu: int | None = None
        # Interfaces each site had before this overlay: what it adds (docker0, weave's bridge,
        # flannel.1, ...) goes when it goes, so the next overlay of the run starts clean.
        self.network_before = {site: self._site_network(site) for site in testbed.sites} \
            if testbed.own_sites else {}
        self.state_dir = testbed.run_dir / self.name  # the overlay's own files (configs, keys, logs)
        self.ops = testbed.site_ops(self.name, self.state_dir, self.family)

    def _site_network(self, site: str) -> hostnet.Snapshot:
        read = procs.run(["sh", "-c", hostnet.SNAPSHOT_SCRIPT], self.testbed.netns_of(site))
        return hostnet.Snapshot.parse(read.stdout)

    def _restore_sites(self) -> None:
        """Each site's namespace as it was before this overlay: its links (docker0, Weave's
        bridge, flannel.1, ...), iptables chains and rules (Docker's, Weave's, ...) and routes
        go, so the next overlay of the run starts clean."""
        def restore(site: str) -> None:
            commands = hostnet.undo(self.network_before[site], self._site_network(site), hostnet.EVERYTHING)
            if commands:
                procs.run(["sh", "-c", hostnet.script(commands)], self.testbed.netns_of(site))

        with concurrent.futures.ThreadPoolExecutor(max(1, min(8, len(self.network_before)))) as pool:
            list(pool.map(restore, self.network_before))

    def _progress(self, message: str) -> None:
        self.testbed.progress(f"{self.name}: {message}")

    @property
    def remote(self) -> bool:
        """Its daemons run on hosts the run does not own (over ssh), not in sites it made."""
        return not self.testbed.own_sites

    def _daemon_dir(self, name: str) -> Path:
        """A daemon's own directory (log, pid file, what it keeps), where it runs."""
        return self.ops.directory(name)

    def _start_daemon(self, name: str, site: str, command: list[str], env: dict[str, str] | None = None,
                      own_pid_namespace: bool = False):
        """Start one of the overlay's daemons where the site is, in its own directory, and
        track it so a death stops the session."""
        daemon = self.ops.start(site, name, command, env, own_pid_namespace)
        self.daemons.append(daemon)
        self.site_daemons.setdefault(site, []).append(daemon)
        self.testbed.track(daemon)
        return daemon

    def cap(self, cores: float | None) -> None:
        """Every site's overlay (its engine's containers and its daemons, not the kernel's
        datapath) held to `cores` of CPU; None lifts the limit."""
        if self.remote:
            raise NotImplementedError("CPU budgets on real hosts are not built in this version")
        for site, engine in self.engines.items():
            pids = [pid for d in self.site_daemons.get(site, []) if d.alive() for pid in procs.process_tree(d.pid)]
            budget.SiteBudget(engine.cgroup_parent).apply(cores, pids)
        self.budgets_placed = True

    def cpu_usage(self) -> dict[str, budget.Usage]:
        if self.remote or not budget.roots():
            return {}
        if not self.budgets_placed:  # the daemons counted from the first measurement on, budget or none
            self.cap(None)
        used = {site: budget.SiteBudget(engine.cgroup_parent).usage() for site, engine in self.engines.items()}
        return {site: u for site, u in used.items() if u is not None}

    def _site_files(self, name: str, site: str, files: dict[str, Path]) -> dict[str, str]:
        """Where daemon `name` at `site` finds these files."""
        return self.ops.files(site, name, files)

    def _binary(self, name: str) -> str:
        """How a daemon's binary is named where it runs: the path a variant chose for it
        (`flannel[bin=/opt/next/flanneld]`), else the one the sites have."""
        chosen = next((self.chosen[s.name] for s in self.settings if s.binary == name and s.name in self.chosen), None)
        return str(chosen) if chosen else self.ops.binary(name)

    def _on_site(self, site: str, command: list[str], timeout: float, input: str | None = None) -> procs.CommandResult:
        """`command` where the site's daemons run."""
        return self.ops.run(site, command, timeout, input)

    def _start_engines(self, extra_args: Callable[[str], list[str]] = lambda site: []) -> str:
        """Start every site's engine and load the image; returns the image reference."""
        self.engines = self.testbed.site_engines(extra_args)
        image, self.timings["engines_s"] = self.testbed.start_engines(self.engines, self._progress)
        return image

    def _tcp_buffers(self, site: str) -> dict[str, str]:
        """The site's TCP buffer sizes, for its container's own namespace: with Docker's
        defaults (4 MB to send) one stream over 60 ms cannot pass 550 Mbit/s. With
        --overlay-container-buffers=docker, none: the container keeps Docker's defaults."""
        if self.container_buffers == "docker":
            return {}
        sysctls = self.testbed.sites[site].sysctls
        return {k: sysctls[k] for k in ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem")}

    def _run_containers(self, image: str, address: Callable[[Engine, object], str], **options) -> None:
        """One measurement container per site, in parallel; `address` says where it is reached."""

        def run(engine: Engine) -> ContainerEndpoint:
            name = f"ovl{self.testbed.run_id}-{engine.site}"
            for attempt in range(1, CONTAINER_ATTEMPTS + 1):
                try:
                    container = engine.client.containers.run(image, name=name, hostname=engine.site, detach=True,
                                                             labels={LABEL: self.testbed.run_id},
                                                             sysctls=self._tcp_buffers(engine.site), **options)
                    break
                except docker.errors.APIError as e:
                    why = str(e.explanation or e)
                    if attempt < CONTAINER_ATTEMPTS and any(t in why for t in self.transient):
                        self._progress(f"container at {engine.site} did not start ({why}); Docker timed out, "
                                       f"removing it and trying again ({attempt}/{CONTAINER_ATTEMPTS - 1})")
                        self._remove_container(engine, name)
                        continue
                    raise EngineError(f"measurement container {name} at site {engine.site} did not start: "
                                      f"{why}\ndockerd of {engine.site}:\n{engine.log_tail(8)}") from None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                container.reload()
                if container.status == "running":
                    return ContainerEndpoint(engine.site, address(engine, container), engine, name)
                if container.status in ("exited", "dead"):
                    break
                time.sleep(0.05)
            raise EngineError(f"measurement container {name} at site {engine.site} is {container.status}; "
                              f"its log:\n{container.logs(tail=20).decode(errors='replace')}\n"
                              f"dockerd of {engine.site}:\n{engine.log_tail(8)}")

        self._progress("starting a measurement container at every site")
        with concurrent.futures.ThreadPoolExecutor(min(CONTAINERS_AT_ONCE, len(self.engines))) as pool:
            self.containers = {c.name: c for c in pool.map(run, self.engines.values())}
        first = next(iter(self.containers.values()))
        self.mtu = int(first.run(["cat", "/sys/class/net/eth0/mtu"]).check().stdout.strip())
        self._wait_reachable()

    # A datapath that learns the path's MTU after it first answers (tinc 1.0) has to carry a
    # full-size packet, DF set, between every two containers before anything is measured, or
    # say it cannot ("Frag needed", where the path's own MTU is smaller): only silence is a
    # datapath not yet settled.
    full_size_first = False

    def _wait_reachable(self) -> None:
        """Every container answers every other over the overlay before anything is measured:
        a datapath that has only just come up (Weave learning where a container is, a VXLAN
        peer not yet known) drops its first packets, and no probe may start in that window."""
        started = time.monotonic()
        timeout = self.converge_s or 30 + self._worst_rtt_s() * 100
        pairs = [(a, b) for a in self.containers.values() for b in self.containers.values() if a is not b]

        sizes = [[], ["-M", "do", "-s", str(self.mtu - 28)]] if self.full_size_first else [[]]
        for size in sizes:
            def answered(pair: tuple[ContainerEndpoint, ContainerEndpoint]) -> bool:
                result = pair[0].run(["ping", "-n", "-c", "1", "-W", "1", *size, pair[1].address], timeout=15)
                return result.ok or bool(size and "mtu" in (result.stdout + result.stderr).lower())

            left = list(pairs)
            with concurrent.futures.ThreadPoolExecutor(max(1, min(PINGS_AT_ONCE, len(left)))) as pool:
                while left and time.monotonic() - started < timeout:
                    left = [pair for pair, ok in zip(left, pool.map(answered, left)) if not ok]
            if left:
                what = f"full-size packet ({self.mtu} bytes, DF)" if size else "answer"
                raise EngineError(f"{self.name}: no {what} over the overlay within {timeout:.0f} s from "
                                  + ", ".join(f"{a.name} to {b.name} ({b.address})" for a, b in left))
        self._progress(f"every container answers every other over the overlay"
                       f"{' with full-size packets' if self.full_size_first else ''} "
                       f"({time.monotonic() - started:.1f} s)")

    def _attach_routed(self, engine: Engine, container, address: str, host_end: str, mtu: int | None = None) -> str:
        """A container routed by its site, as Calico's CNI plugin attaches one: a veth, the
        container's end eth0 with a /32 (and `mtu`) and a default route via 169.254.1.1; the
        site's end answers ARP for everything (proxy ARP) and holds the /32. The gateway is
        nobody's address: the site's end answers for it (the plugin also writes this neighbour
        entry, since the site has no route that proxy ARP could use)."""
        site, pid = engine.site, container.attrs["State"]["Pid"]
        inside = f"nsenter --net=/proc/{pid}/ns/net"
        script = "\n".join([
            f"ip link add {host_end} type veth peer name eth0 netns {pid}",
            *([f"ip link set {host_end} mtu {mtu}", f"{inside} ip link set eth0 mtu {mtu}"] if mtu else []),
            f"ip link set {host_end} up",
            f"sysctl -q -w net.ipv4.conf.{host_end}.proxy_arp=1 net.ipv4.neigh.{host_end}.proxy_delay=0",
            f"ip route add {address}/32 dev {host_end} scope link",
            f"mac=$(ip -br link show dev {host_end} | awk '{{print $3}}')",
            f"{inside} ip address add {address}/32 dev eth0",
            f"{inside} ip link set eth0 up",
            f"{inside} ip route add {ROUTED_GATEWAY} dev eth0 scope link",
            f"{inside} ip neigh add {ROUTED_GATEWAY} lladdr $mac dev eth0 nud permanent",
            f"{inside} ip route add default via {ROUTED_GATEWAY} dev eth0"])
        self._on_site(site, ["sh", "-ec", script], 60).check()
        return address

    @staticmethod
    def _remove_container(engine: Engine, name: str) -> None:
        try:
            engine.client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass

    def datapath(self, src: str, dst: str) -> dict:
        """What every container overlay records, then what the overlay itself says."""
        return {**self._datapath(src, dst), "mtu": self.mtu, "path": self.testbed.topology.path_between(src, dst),
                "container_buffers": self.container_buffers,
                "container_sysctls": {site: self._tcp_buffers(site) for site in (src, dst)}}

    def _datapath(self, src: str, dst: str) -> dict:
        raise NotImplementedError

    def control_logs(self) -> list[procs.Daemon]:
        return list(self.daemons)

    def _check_daemons(self) -> None:
        """An overlay daemon that exited while the overlay came up: its log says why."""
        for daemon in self.daemons:
            if not daemon.alive():
                raise EngineError(f"{daemon.name} exited during bring-up (exit {daemon.returncode}); "
                                  f"its log:\n{daemon.log_tail(15)}")

    def _worst_rtt_s(self) -> float:
        return max(self.testbed.topology.expected(c)["rtt_ms"] for c in self.testbed.topology.circuits) / 1000

    def down(self) -> None:
        started = time.monotonic()
        self.testbed.untrack(self.daemons + [d for e in self.engines.values() for d in (e.daemon, e.containerd) if d])
        if not self.testbed.own_engines:  # the engines stay; this overlay's containers and network go
            for site, engine in self.engines.items():  # one host failing stops none of the rest
                try:
                    self._remove_container(engine, f"ovl{self.testbed.run_id}-{site}")
                except (docker.errors.DockerException, OSError) as e:
                    self._progress(f"container at {site} not removed ({str(e)[-160:]}); the testbed's teardown "
                                   "tries again, then `clean --topology`")
            if self.network and self.engines:
                for error in remove_networks(self.testbed.engines, self.testbed.run_id, self.network):
                    self._progress(f"removing network {self.network}: {error}")
            self.engines = {}
        with concurrent.futures.ThreadPoolExecutor(max(1, len(self.engines))) as pool:
            list(pool.map(lambda e: e.stop(), self.engines.values()))
        for daemon in self.daemons:
            daemon.stop()
        # The site's cgroups go once the daemons in its budget's child have ended too.
        left = [why for engine in self.engines.values() for why in procs.remove_cgroups(engine.cgroup_parent)]
        if left:
            self._progress(f"cgroups left (`clean` removes them once empty): {'; '.join(left[:3])}")
        if self.remote and self.daemons:  # what the daemons made on the hosts outside their process
            footprint = self.host_needs.footprint if self.host_needs else None
            _, failed = end_host_daemons(self.testbed.hosts, self.testbed.run_id,
                                         lambda name: footprint if name == self.name else None, self.name)
            for failure in failed:
                self.testbed.left_behind(f"teardown on the hosts: {failure}")
        if self.testbed.created:  # the sites still exist
            self._restore_sites()
        if self.engines:
            engines.remove_run_files(self.testbed.run_id, self.testbed.run_dir)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.engines, self.containers, self.daemons, self.site_daemons = {}, {}, [], {}
        self.budgets_placed = False
        self.timings["down_s"] = time.monotonic() - started

    def endpoint(self, site: str) -> ContainerEndpoint:
        return self.containers[site]
