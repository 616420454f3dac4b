"""The underlay: site namespace to site namespace, the baseline every overlay is compared
with (the study's "VM to VM" rows)."""

from __future__ import annotations

from ..kinds import BASELINE
from .base import Overlay


class HostOverlay(Overlay):
    name = BASELINE
    label = "underlay"
    in_all = True
    description = "underlay, no overlay: site namespace to site namespace"
    timers = (("routing", "static: traffic waits for its link to come back", "the testbed's routes"),)

    def up(self) -> None:
        """Nothing to build: the sites' own namespaces and the WAN are the testbed's."""

    def down(self) -> None:
        """Nothing to remove."""

    def endpoint(self, site: str):
        """The site's namespace; on a real host, a measurement container in the host's network."""
        return self.testbed.underlay_endpoint(site)

    def datapath(self, src: str, dst: str) -> dict:
        return {
            "kind": "underlay",
            "path": self.testbed.topology.path_between(src, dst),
            "mtu": 1500,
            "encapsulation": None,
        }
