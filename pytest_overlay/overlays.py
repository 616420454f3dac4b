"""Overlays: what the probes' traffic runs through between two sites.

`host` is the underlay itself, site namespace to site namespace: the baseline every overlay
is compared with (the study's "VM to VM" rows). Overlays that put containers on a virtual
network (libnetwork, weave, flannel, calico) hand out their containers as endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import procs
from .testbed import EmulatedTestbed

# Overlays the study compared, for messages; only those in IMPLEMENTED can run yet.
KNOWN = ("host", "libnetwork", "weave", "flannel", "calico")


@dataclass
class SiteEndpoint:
    """A site's own network namespace."""

    name: str
    address: str
    testbed: EmulatedTestbed

    def run(self, command: list[str], timeout: float | None = 60) -> procs.CommandResult:
        return self.testbed.run(self.name, command, timeout)

    def start(self, name: str, command: list[str], ready: str | None = None) -> procs.Daemon:
        return self.testbed.start(self.name, name, command, ready)


class Overlay:
    name = ""
    description = ""

    def __init__(self, testbed: EmulatedTestbed) -> None:
        self.testbed = testbed

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


class HostOverlay(Overlay):
    name = "host"
    description = "underlay, no overlay: site namespace to site namespace"

    def endpoint(self, site: str) -> SiteEndpoint:
        return SiteEndpoint(site, self.testbed.address(site), self.testbed)

    def datapath(self, src: str, dst: str) -> dict:
        return {
            "kind": "underlay",
            "path": self.testbed.topology.path_between(src, dst),
            "mtu": 1500,
            "encapsulation": None,
        }


IMPLEMENTED: dict[str, type[Overlay]] = {"host": HostOverlay}
