"""What every overlay is: a network across the sites, with one endpoint per site where the
probes run, and the datapath it records with every result.

An endpoint is a site's own namespace (the underlay) or a measurement container on the
overlay's network; probes only need it to run a command and start a server.
"""

from __future__ import annotations

import io
import shlex
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import procs
from ..testbeds.hostnet import Footprint
from ..paths import IMAGE_AGENTS

if TYPE_CHECKING:
    from ..testbeds.engines import Engine
    from ..testbeds.emulated import EmulatedTestbed


@dataclass(frozen=True)
class HostNeeds:
    """What an overlay needs on a real host, and what would show another instance of it
    there: the remote backend checks these on every host before anything is created, and
    knows nothing else of the overlay."""

    family: str  # the topology's `ranges:` key, and what `ranges` names
    range_what: str  # "Weave Net's IPAM range"
    binaries: dict[str, tuple[str, str]]  # on every host: binary -> (what it is, how to install it)
    kv_binaries: dict[str, tuple[str, str]] = field(default_factory=dict)  # on the key-value site's host
    started: tuple[str, ...] = ()  # binaries run once with --version: they must start (libraries)
    devices: dict[str, str] = field(default_factory=dict)  # a device it makes -> whose it is
    rivals: dict[str, str] = field(default_factory=dict)  # a process of another instance -> whose it is
    listens: dict[int, tuple[str, str]] = field(default_factory=dict)  # TCP port -> (who holds it, the fix)
    footprint: Footprint | None = None  # what its daemons add to a host's network (hostnet)


class Overlay:
    name = ""
    description = ""
    # On real hosts: None when it runs no daemon there; `remote_unsupported` says why it cannot run there.
    host_needs: HostNeeds | None = None
    remote_unsupported: str | None = None
    # What wire_counters() counts, as the records name it and as an INVALID reason says it.
    wire_key = "encapsulated_packets_on_wan"
    wire_what = "encapsulated packets"
    container_buffers = "tuned"  # or "docker": containers keep Docker's default TCP buffers
    converge_s: float | None = None  # how long every container has to answer every other (None: from the RTT)

    # The timers that decide what a WAN fault does to it: (what, default, where it is set).
    timers: tuple[tuple[str, str, str], ...] = ()

    def __init__(self, testbed: EmulatedTestbed) -> None:
        self.testbed = testbed
        self.timings: dict[str, float] = {}

    def expected_outage_s(self, fault, logs: dict[str, list[str]] | None = None) -> tuple[float, float]:
        """The longest outage its timers predict for a fault, as a range in seconds (`logs`:
        what its daemons logged meanwhile, where a timer's start shows). An overlay that
        follows the underlay is out for as long as the path is down, plus a few RTTs."""
        down = fault.seconds if fault.kind in ("cut", "partition", "flap") else 0.0
        return down, down + 1.0

    def up(self) -> None:
        """Build the overlay network and its endpoints."""

    def down(self) -> None:
        """Remove what up() made; safe to call twice."""

    def endpoint(self, site: str):
        raise NotImplementedError

    def endpoints(self, sites: list[str]) -> list:
        return [self.endpoint(s) for s in sites]

    def datapath(self, src: str, dst: str) -> dict:
        """How traffic from src to dst travels: recorded with every result."""
        raise NotImplementedError

    def control_state(self) -> dict[str, str]:
        """What the overlay's control plane says now, one state per peering ("BRA->LJU":
        "established"): polled during a WAN fault, its changes are the control plane's events."""
        return {}

    def control_logs(self) -> list[procs.Daemon]:
        """The overlay's own daemons, whose log lines during a WAN fault are recorded."""
        return []

    # Log lines of those daemons that say nothing about the fault (left out of the record).
    control_log_noise: tuple[str, ...] = ()

    def wire_counters(self) -> dict[str, int] | None:
        """Packets of the overlay's encapsulation on the WAN, per link direction (None: none)."""
        return None

    def routed(self) -> dict[str, list[str]]:
        """Per site, the ranges its containers' packets keep as their addresses on the WAN (no
        tunnel hides them): a fault between real hosts drops those as well as the host's."""
        return {}

    def cap(self, cores: float | None) -> None:
        """Hold what the overlay runs in userspace at every site to `cores` of CPU (None: no
        limit). The underlay runs nothing of its own to cap."""
        raise NotImplementedError(f"{self.name} runs no overlay process: a CPU budget would cap nothing")

    def cpu_usage(self) -> dict:
        """CPU used so far by each site's overlay cgroup (budget.Usage by site); {} where none."""
        return {}


class OverlayUnavailable(Exception):
    """The overlay cannot run on this machine; the message says what it lacks."""


@dataclass
class ContainerEndpoint:
    """A measurement container: commands run in it with `docker exec`."""

    name: str
    address: str
    engine: Engine
    container: str

    def run(self, command: list[str], timeout: float | None = 60) -> procs.CommandResult:
        return self.engine.cli("exec", self.container, *command, timeout=timeout)

    def start(self, name: str, command: list[str], ready: str | None = None, timeout: float = 10.0) -> procs.Daemon:
        # The server writes its pid inside the container, so stop() can end it there.
        script = f"echo $$ > /tmp/{name}.pid; exec {shlex.join(command)}"
        daemon = procs.start(name, [*self.engine.docker_command(), "exec", self.container, "sh", "-c", script],
                             self.engine.state_dir / f"{name}.log", ready=ready, timeout=timeout)
        return ContainerDaemon(daemon.name, daemon.command, daemon.log, daemon.popen, daemon.started, self)

    def agent(self, name: str) -> str:
        return f"{IMAGE_AGENTS}/{name}"

    def file(self, path: Path) -> str:
        """Copy the file into the container's /tmp (over the Docker API: works on remote hosts too)."""
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            tar.add(str(path), arcname=path.name)
        self.engine.client.containers.get(self.container).put_archive("/tmp", data.getvalue())
        return f"/tmp/{path.name}"


class ContainerDaemon(procs.Daemon):
    def __init__(self, name, command, log, popen, started, endpoint: ContainerEndpoint) -> None:
        super().__init__(name, command, log, popen, started)
        self.endpoint = endpoint

    def _signal_inside(self, signal_name: str, timeout: float) -> None:
        """Signal the process inside the container (its pid is there) and wait for it."""
        if self.alive():
            self.endpoint.run(["sh", "-c", f"kill -{signal_name} $(cat /tmp/{self.name}.pid)"], timeout=timeout)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

    def interrupt(self, timeout: float = 5.0) -> int | None:
        self._signal_inside("INT", timeout)
        return self.stop(timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        self._signal_inside("TERM", timeout)
        return super().stop(timeout)


