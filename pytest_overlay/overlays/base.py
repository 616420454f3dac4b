"""What every overlay is: a network across the sites, with one endpoint per site where the
probes run, and the datapath it records with every result.

An endpoint is a site's own namespace (the underlay) or a measurement container on the
overlay's network; probes only need it to run a command and start a server.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import procs

if TYPE_CHECKING:
    from ..inputs.model import AddressFamily
    from ..testbeds.contract import Endpoint, HostNeeds, Testbed


@dataclass(frozen=True)
class Setting:
    """One setting a kind takes as a variant (`--overlay-ab=wireguard[mtu=1380],wireguard`):
    its name, what it sets, and the values it allows. `binary` names the daemon a path
    setting replaces."""

    name: str
    what: str
    low: int | None = None  # an integer from low to high
    high: int | None = None
    binary: str | None = None  # an absolute path to run instead of this binary

    def allowed(self) -> str:
        return (f"an integer from {self.low} to {self.high}" if self.low is not None else
                f"the absolute path of an executable {self.binary}")

    def parse(self, text: str) -> int | str:
        """The value of `text`; ValueError saying the allowed values."""
        if self.low is not None:
            if not re.fullmatch(r"\d+", text) or not self.low <= int(text) <= self.high:
                raise ValueError(f"{self.name}={text!r}; allowed: {self.allowed()}")
            return int(text)
        if not text.startswith("/") or "," in text:
            raise ValueError(f"{self.name}={text!r}; allowed: {self.allowed()}")
        return text


MTU_SETTING = Setting("mtu", "the MTU of its device at every site", 576, 9000)


class Overlay(ABC):
    """One overlay kind. Its class attributes declare everything other layers know of it:
    the registry (kinds.py), the topology's `ranges:`, the Makefile's packages, the lab's
    binaries, the real-host preflight and clean, and the reports read them here. `up`,
    `down`, `endpoint` and `datapath` are its contract: the registry refuses a kind that
    leaves one out, naming it, before anything is made."""

    REQUIRED = ("name", "label", "description")  # declared, not empty: the registry checks them

    name = ""  # what --overlay calls it; the registry's key
    label = ""  # how reports name it: "Weave Net"
    description = ""  # its datapath in one line
    in_all = False  # whether --overlay=all measures it (the study's three, host and Calico)
    group: str | None = None  # a name --overlay also takes for it and its kin ("meshes"); reports group by it
    family: AddressFamily | None = None  # the range its containers take (None: Docker's own IPAM)
    packages: tuple[str, ...] = ()  # Debian packages its daemons need here
    shipped: tuple[str, ...] = ()  # binaries no Debian package carries: found on PATH, copied to lab hosts
    # On real hosts: None when it runs no daemon there; `remote_unsupported` says why it cannot run there.
    host_needs: HostNeeds | None = None
    remote_unsupported: str | None = None
    # Over an IPv6 underlay (a topology's `underlay: ipv6`): None where it runs, else why not, as
    # a trial of it here showed.
    ipv6_unsupported: str | None = None
    settings: tuple[Setting, ...] = ()  # what a variant of it may set (kinds.Variant)
    # What wire_counters() counts, as the records name it and as an INVALID reason says it.
    wire_key = "encapsulated_packets_on_wan"
    wire_what = "encapsulated packets"

    # The timers that decide what a WAN fault does to it: (what, default, where it is set).
    timers: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def leftovers(cls, run_id: str) -> list[Path]:
        """Files its daemons keep outside the run's own directories, which a killed daemon leaves
        behind; `clean` removes them once the run is over."""
        return []

    def __init__(self, testbed: Testbed, container_buffers: str = "tuned", converge_s: float | None = None,
                 chosen: dict[str, int | str] | None = None) -> None:
        """`container_buffers`: "tuned" (the site's TCP buffers, sized for the path) or "docker"
        (Docker's defaults, as the study ran); `converge_s`: how long every container has to
        answer every other once up (None: from the topology's RTT); `chosen`: values of its
        declared `settings`, already parsed (kinds.Variant). A kind's own __init__ takes
        `**settings` and passes them on."""
        self.testbed = testbed
        self.container_buffers, self.converge_s = container_buffers, converge_s
        declared = {s.name for s in self.settings}
        unknown = sorted(set(chosen or {}) - declared)
        if unknown:
            raise ValueError(f"{self.name} takes no setting {', '.join(unknown)}; it takes: "
                             f"{', '.join(sorted(declared)) or 'none'}")
        self.chosen = dict(chosen or {})
        self.timings: dict[str, float] = {}

    def expected_outage_s(self, fault, logs: dict[str, list[str]] | None = None) -> tuple[float, float]:
        """The longest outage its timers predict for a fault, as a range in seconds (`logs`:
        what its daemons logged meanwhile, where a timer's start shows). An overlay that
        follows the underlay is out for as long as the path is down, plus a few RTTs."""
        down = fault.seconds if fault.kind in ("cut", "partition", "flap") else 0.0
        return down, down + 1.0

    @abstractmethod
    def up(self) -> None:
        """Build the overlay network and its endpoints."""

    @abstractmethod
    def down(self) -> None:
        """Remove what up() made; safe to call twice."""

    @abstractmethod
    def endpoint(self, site: str) -> Endpoint:
        """Where the probes run at a site."""

    def endpoints(self, sites: list[str]) -> list[Endpoint]:
        return [self.endpoint(s) for s in sites]

    @abstractmethod
    def datapath(self, src: str, dst: str) -> dict:
        """How traffic from src to dst travels: recorded with every result."""

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
