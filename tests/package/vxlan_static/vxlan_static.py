"""A kernel VXLAN mesh with no control plane: one device per site (VNI 42, UDP 4790), a
static forwarding entry to every other site (head-end replication), and one address per
site in the kind's own range. What a distribution needs to add an overlay kind: this module
and its entry point."""

from __future__ import annotations

import ipaddress

from pytest_overlay.inputs.model import AddressFamily
from pytest_overlay.overlays import Overlay

FAMILY = AddressFamily("vxlan-static", "10.99.0.0/16", 24, "the static VXLAN mesh's range")
VNI, PORT, MTU = 42, 4790, 1450


class StaticVxlan(Overlay):
    name = "vxlan-static"
    label = "static VXLAN mesh"
    description = f"kernel VXLAN (VNI {VNI}, UDP {PORT}), a static FDB entry per peer: no control plane"
    family = FAMILY
    remote_unsupported = "it leaves devices on hosts that it declares no footprint for"

    def up(self) -> None:
        bed = self.testbed
        network = ipaddress.ip_network(bed.topology.range_of(FAMILY))
        blocks = network.subnets(new_prefix=FAMILY.block)
        self.device = f"ovl{bed.run_id}-vx"
        self.addresses = {site: str(next(blocks).network_address + 1) for site in sorted(bed.sites)}
        try:
            for site in self.addresses:
                run = bed.underlay_endpoint(site).run
                commands = [["ip", "link", "add", self.device, "type", "vxlan", "id", str(VNI), "dstport", str(PORT),
                             "local", bed.address(site), "nolearning"]]
                commands += [["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", self.device, "dst",
                              bed.address(peer)] for peer in self.addresses if peer != site]
                commands += [["ip", "link", "set", self.device, "mtu", str(MTU), "up"]]
                commands += [["ip", "address", "add", f"{self.addresses[site]}/{network.prefixlen}", "dev",
                              self.device]]
                for command in commands:
                    done = run(command)
                    if done.rc != 0:
                        raise RuntimeError(f"{site}: {' '.join(command)}: {done.stderr.strip()}")
        except BaseException:
            self.down()
            raise
        bed.count_udp(PORT)

    def wire_counters(self) -> dict[str, int] | None:
        """VXLAN packets on the WAN, per link direction: proof the probes crossed the mesh."""
        return self.testbed.udp_packets(PORT)

    def down(self) -> None:
        for site in getattr(self, "addresses", {}):
            self.testbed.underlay_endpoint(site).run(["ip", "link", "del", self.device])

    def endpoint(self, site: str) -> "Endpoint":
        return Endpoint(self.testbed.underlay_endpoint(site), self.addresses[site])

    def datapath(self, src: str, dst: str) -> dict:
        return {"kind": "vxlan", "vni": VNI, "port": PORT, "mtu": MTU, "encapsulation": "vxlan",
                "path": self.testbed.topology.path_between(src, dst)}


class Endpoint:
    """The site's namespace, reached at the site's address on the mesh."""

    def __init__(self, site, address: str) -> None:
        self.site, self.name, self.address = site, site.name, address

    def run(self, command, timeout=60):
        return self.site.run(command, timeout)

    def start(self, name, command, ready=None, timeout=10.0):
        return self.site.start(name, command, ready, timeout)

    def agent(self, name):
        return self.site.agent(name)

    def file(self, path):
        return self.site.file(path)
