"""The contract every testbed backend keeps and overlays call: the testbed (its sites, its
WAN, its engines and swarm), where an overlay's daemons run at a site (SiteOps), and what an
overlay needs on a real host (HostNeeds). Overlays and both backends depend on this module,
never on each other's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from .. import procs
from ..emulation.emulator import DEFAULT_RATE_MBIT
from ..inputs.model import AddressFamily, Circuit, Direction, Topology
from .hostnet import Footprint

if TYPE_CHECKING:
    from .engines import Engine

DEFAULT_TCP_MEM = (4096, 131072, 6291456)


def tcp_buffer_max(rtt_ms: float, rate_mbit: float | None) -> int:
    """twice the bandwidth-delay product, never below the kernel's default, at most 512 MB."""
    bdp = (rate_mbit or DEFAULT_RATE_MBIT) * 1e6 / 8 * rtt_ms / 1e3
    return int(min(512 << 20, max(DEFAULT_TCP_MEM[2], 2 * bdp)))


@dataclass
class SiteHandle:
    name: str
    netns: str
    address: str  # the underlay's: what overlays and probes use
    sysctls: dict[str, str] = field(default_factory=dict)
    addresses: dict[int, str] = field(default_factory=dict)  # by IP version, where the testbed gives several


def host_port(address: str, port: int | str) -> str:
    """`address:port`, an IPv6 address in brackets (RFC 3986), as every tool here reads it."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class TestbedError(RuntimeError):
    pass


def tcp_sysctls(topology: Topology, site: str) -> dict[str, str]:
    """TCP buffers for a site, sized for the worst bandwidth-delay product of its circuits."""
    size = max(tcp_buffer_max(e["rtt_ms"], e["rate_mbit"]) for e in (topology.expected(c) for c in _pairs(topology, site)))
    return {"net.ipv4.tcp_rmem": f"{DEFAULT_TCP_MEM[0]} {DEFAULT_TCP_MEM[1]} {size}",
            "net.ipv4.tcp_wmem": f"{DEFAULT_TCP_MEM[0]} 16384 {size}"}


def _pairs(topology: Topology, site: str) -> list[Circuit]:
    return [Circuit(site, other) for other in topology.sites if other != site]


class Endpoint(Protocol):
    """Where a probe runs and its traffic ends: a site's namespace (the underlay), a measurement
    container on an overlay's network, a container on a real host. An overlay hands these out
    (Overlay.endpoint); the probes need nothing else of it."""

    name: str
    address: str

    def run(self, command: list[str], timeout: float | None = 60) -> procs.CommandResult: ...

    def netns_inode(self) -> int | None:
        """Its network namespace's inode, where it is on this machine (else None)."""

    def start(self, name: str, command: list[str], ready: str | None = None) -> procs.Daemon: ...

    def agent(self, name: str) -> str:
        """Where one of the package's agents (programs run inside sites) is, at the endpoint."""

    def file(self, path: Path) -> str:
        """Make a file of this machine readable at the endpoint; its path there."""


@dataclass(frozen=True)
class HostNeeds:
    """What an overlay needs on a real host, and what would show another instance of it
    there: the remote backend checks these on every host before anything is created, and
    knows nothing else of the overlay."""

    family: AddressFamily  # its range must be free of the host's routes
    binaries: dict[str, tuple[str, str]]  # on every host: binary -> (what it is, how to install it)
    kv_binaries: dict[str, tuple[str, str]] = field(default_factory=dict)  # on the key-value site's host
    started: tuple[str, ...] = ()  # binaries run once with --version: they must start (libraries)
    devices: dict[str, str] = field(default_factory=dict)  # a device it makes -> whose it is
    rivals: dict[str, str] = field(default_factory=dict)  # a process of another instance -> whose it is
    listens: dict[int, tuple[str, str]] = field(default_factory=dict)  # TCP port -> (who holds it, the fix)
    footprint: Footprint | None = None  # what its daemons add to a host's network (hostnet)


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


class Testbed:
    """What both backends share: a context manager that tears down what a failed bring-up
    made, and the run's state on disk (atomically) for `clean` after a kill. Overlays and
    probes use only what is declared here."""

    kind: str  # "emulated" or "remote": recorded with every result
    backend: str  # how the report names it
    topology: Topology
    run_id: str
    run_dir: Path
    sites: dict[str, SiteHandle]
    progress: Callable[[str], None]
    heals_itself = False  # a fault's step goes by itself on the hosts once held past its hold_s
    # The sites' addresses are on a network others share (real hosts): an overlay's peers must
    # prove they belong to the run. Here only the testbed's namespaces reach them.
    shared_network = False
    # The run starts every site's Docker engine, with the daemon options an overlay asks for
    # (Flannel's --bip), and stops it with the overlay. Real hosts' engines are theirs: used
    # as they are and left running.
    own_engines = True
    # The sites are network namespaces this run made: an overlay may read a site's whole
    # network and put it back as it was, and the probes' processes can be watched. Real hosts'
    # networks are their owners': an overlay undoes only what it did there.
    own_sites = True
    # A bring-up that fails is a host that is not ready (the preflight's findings): the run
    # stops as bad input, saying what to fix, rather than failing each test.
    bringup_failure_is_input = False

    def budgets_unavailable(self) -> str:
        """Why CPU budgets and noisy neighbours cannot be placed at the sites ("" where they can)."""
        return f"not built on the {getattr(self, 'backend', '?')} testbed in this version"

    def buffers_unavailable(self) -> str:
        """Why a link's buffer cannot be set for a test ("" where it can)."""
        return f"the {getattr(self, 'backend', '?')} testbed's buffers are the hosts' own"

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

    def left_behind(self, what: str) -> None:
        """Something of the run an overlay's teardown could not undo: said now; a testbed that
        keeps its state for `clean` keeps it until `clean` has undone it."""
        self.progress(f"{what} (`python -m pytest_overlay clean` tries again)")

    def address(self, site: str) -> str:
        """The site's address on the WAN."""
        raise NotImplementedError

    def host_of(self, site: str) -> str:
        """What runs the site: a namespace here, a host's name on real hosts."""
        raise NotImplementedError

    def site_ops(self, overlay: str, state_dir: Path, family: AddressFamily | None = None) -> SiteOps:
        """Where `overlay`'s daemons run at each site (`family`: its address range's key, whose
        host network a real host records before the first daemon)."""
        raise NotImplementedError

    def track(self, daemon: procs.Daemon) -> None:
        """A daemon an overlay started: watched for an early death, ended at teardown."""
        raise NotImplementedError

    def untrack(self, daemons: list[procs.Daemon]) -> None:
        raise NotImplementedError

    def dead_daemons(self) -> list[str]:
        """The tracked daemons that died, each with the tail of its log."""
        raise NotImplementedError

    def emulator_counters(self, reset: bool = False, since: int | None = None) -> dict[str, dict]:
        """What the link emulator did per link direction (late releases, drops), since
        `since` (ns) or the last reset: {} where the WAN is not emulated."""
        raise NotImplementedError

    def probe_cpus(self) -> frozenset[int]:
        """The CPUs a probe's receiver is kept to on this machine, away from the emulator's;
        empty where it may run anywhere (real hosts: their probes are theirs)."""
        return frozenset()

    def count(self, label: str, match: list[str]) -> None:
        raise NotImplementedError

    def packets(self, label: str) -> dict[str, int] | None:
        raise NotImplementedError

    def fault_unsupported(self, changes: dict[str, Direction]) -> str | None:
        """Why a WAN fault's changes (impair()'s argument) cannot be applied here; None when
        they can."""
        return f"the {getattr(self, 'backend', '?')} testbed applies no WAN faults"

    def impair(self, changes: dict[str, Direction], routed: dict[str, list[str]] | None = None,
               hold_s: float | None = None) -> int:
        """Give link directions ("A->B") new delay, jitter and loss at one moment: a WAN fault
        starting or healing. `routed` holds, per site, the addresses an overlay carries across
        the WAN without a tunnel (a fault between hosts must stop those too); `hold_s`, how long
        the step may last at most (where the fault is held outside this process, it goes by
        itself then). Returns the wall clock (ns) at which it took effect."""
        raise NotImplementedError(self.fault_unsupported(changes))

    def rebuffer(self, directions: list[Direction]) -> None:
        """Give rate-limited link directions a new buffer (queue_ms) while the testbed runs."""
        raise NotImplementedError(f"link buffers on the {getattr(self, 'backend', '?')} testbed are the hosts' own: "
                                  "this version does not change them")

    def underlay_endpoint(self, site: str):
        """Where the underlay's probes run at a site: no overlay between them and the WAN."""
        raise NotImplementedError

    def site_engines(self, extra_args: Callable[[str], list[str]]) -> dict[str, Engine]:
        """A Docker engine at every site for one overlay (`extra_args`: dockerd's, per site),
        not yet started: the overlay holds them from here on, so its teardown finds them
        whatever happens next."""
        raise NotImplementedError

    def start_engines(self, made: dict[str, Engine], progress: Callable[[str], None]) -> tuple[str, float]:
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
