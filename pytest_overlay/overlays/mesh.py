"""What today's encrypted meshes share (WireGuard, tinc, Nebula): a daemon per site holding a
tun device, its peers in a full mesh over the WAN, and the site's containers routed through it.

Each site's containers take a block of the mesh's range, one /24 per site: the site's end of
the mesh device holds the block's first address, its container the second, attached as
Calico's CNI plugin attaches one (a /32 over a veth, proxy ARP), with the MTU the mesh leaves.
The other sites' blocks are routed into the device, and the mesh's own routing (WireGuard's
allowed IPs, Nebula's unsafe routes, tinc's Subnet) takes them to their site. A kind says how
it makes its keys, configuration and daemon, what its records say of its cipher, and what its
control plane says during a fault; everything else is here.
"""

from __future__ import annotations

import ipaddress
import itertools
import time

from .. import procs
from ..inputs.model import AddressFamily
from ..testbeds.contract import HostNeeds, Testbed
from ..testbeds.engines import Engine, EngineError
from .base import OverlayUnavailable
from .containers import ContainerOverlay

def host_needs(family: AddressFamily, tools: dict[str, str], on_hosts: dict[str, str], **more) -> HostNeeds:
    """What a mesh needs on a real host, each fact said once: `tools` (binary -> its Debian
    package) are the kind's; `on_hosts` names those every host must have, with what each is."""
    return HostNeeds(family, binaries={binary: (what, f"apt-get install {tools[binary]}")
                                       for binary, what in on_hosts.items()}, **more)


BLOCK_PREFIX = 24
DEVICE_UP_S = 20.0  # a daemon that has not made its device by then has failed


class MeshOverlay(ContainerOverlay):
    """A mesh of one daemon per site; subclasses make it (`_mesh`) and describe it."""

    group = "meshes"
    port = 0  # its datapath's UDP port on the WAN
    tools: dict[str, str] = {}  # binary -> Debian package, on this machine
    device_prefix = ""  # its tun devices: prefix + run id + site index (at most 15 characters)
    cipher = ""  # what encrypts the data, as its records say it
    runs_in = "userspace"
    wire_what = "mesh packets"
    owns_device = False  # its daemon addresses its device and routes the blocks itself (Nebula)
    set_mtu: int | None = None  # the MTU given to its device (None: the daemon's own)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.packages = tuple(sorted(set(cls.tools.values())))  # what `make` installs: its tools' packages

    def __init__(self, testbed: Testbed, **settings) -> None:
        super().__init__(testbed, **settings)
        self.range = ipaddress.ip_network(testbed.topology.range_of(self.family))
        blocks = self.range.subnets(new_prefix=BLOCK_PREFIX)
        self.blocks = dict(zip(testbed.sites, itertools.islice(blocks, len(testbed.sites))))
        self.devices = {site: f"{self.device_prefix}{testbed.run_id}{i}" for i, site in enumerate(testbed.sites)}
        self.version = ""
        self.device_mtu: int | None = None

    def mesh_address(self, site: str) -> str:
        """The site's own address in the mesh: its block's first."""
        return str(self.blocks[site][1])

    def container_address(self, site: str) -> str:
        return str(self.blocks[site][2])

    def up(self) -> None:
        missing = self.ops.missing(procs.apt(self.tools))
        if missing:
            raise OverlayUnavailable(f"{self.label} cannot run here; missing: " + "; ".join(missing))
        started = time.monotonic()
        try:
            self._mesh()
            self._wait_devices()
            self._route()
            image = self._start_engines()
            self._run_containers(image, self._attach, network_mode="none")
            self.testbed.count_udp(self.port)
        except BaseException:
            self.down()
            raise
        self.timings["up_s"] = time.monotonic() - started
        self._progress(f"up in {self.timings['up_s']:.1f} s: {self.cipher}, device MTU {self.device_mtu}, "
                       f"{len(self.containers)} containers")

    def _mesh(self) -> None:
        """Make the keys and configuration, and start the daemon at every site."""
        raise NotImplementedError

    def _device_commands(self, site: str) -> list[str]:
        """Shell lines giving the daemon's device at a site what the daemon does not give it:
        the site's mesh address, the MTU asked for, and up."""
        if self.owns_device:
            return []
        wanted = self.chosen.get("mtu", self.set_mtu)
        device, mtu = self.devices[site], f" mtu {wanted}" if wanted else ""
        return [f"ip address add {self.mesh_address(site)}/32 dev {device}", f"ip link set {device}{mtu} up"]

    def _wait_devices(self) -> None:
        deadline = time.monotonic() + DEVICE_UP_S
        for site, device in self.devices.items():
            while not self._on_site(site, ["ip", "link", "show", "dev", device], 10).ok:
                self._check_daemons()
                if time.monotonic() > deadline:
                    raise EngineError(f"{self.name}: no device {device} at {site} {DEVICE_UP_S:g} s after its daemon "
                                      f"started; its log:\n{self.site_daemons[site][0].log_tail(10)}")
                time.sleep(0.1)
            commands = self._device_commands(site)
            if commands:
                self._on_site(site, ["sh", "-ec", "\n".join(commands)], 30).check()
        site = next(iter(self.devices))
        shown = self._on_site(site, ["ip", "-o", "link", "show", "dev", self.devices[site]], 10).check().stdout.split()
        self.device_mtu = int(shown[shown.index("mtu") + 1])

    def _route(self) -> None:
        """The other sites' blocks into the device; forwarding between it and the containers'
        veths allowed (a site's Docker engine sets FORWARD's policy to drop)."""
        for site, device in self.devices.items():
            script = [] if self.owns_device else [f"ip route replace {block} dev {device}"
                                                  for other, block in self.blocks.items() if other != site]
            script += [f"iptables -w -I FORWARD -i {device} -j ACCEPT", f"iptables -w -I FORWARD -o {device} -j ACCEPT"]
            self._on_site(site, ["sh", "-ec", "\n".join(script)], 30).check()

    def _wait_reachable(self) -> None:
        """As every container overlay waits, with the mesh's daemons' own words if it fails."""
        try:
            super()._wait_reachable()
        except EngineError as e:
            logs = "\n".join(f"--- {d.name}:\n{d.log_tail(12)}" for d in self.daemons)
            raise EngineError(f"{e}\n{logs}") from None

    def _attach(self, engine: Engine, container) -> str:
        return self._attach_routed(engine, container, self.container_address(engine.site),
                                   f"{self.device_prefix}c{container.id[:10]}", self.device_mtu)

    def _datapath(self, src: str, dst: str) -> dict:
        return {"kind": self.name, "cipher": self.cipher, "runs_in": self.runs_in, "version": self.version,
                "mesh_device_mtu": self.device_mtu, "topology": "full mesh", "udp_port": self.port,
                "blocks": {site: str(self.blocks[site]) for site in (src, dst)},
                "timers": {what: value for what, value, _ in self.timers}}

    def wire_counters(self) -> dict[str, int] | None:
        """The mesh's own UDP packets on the WAN: what it carries is inside them."""
        return self.testbed.udp_packets(self.port)

    def routed(self) -> dict[str, list[str]]:
        return {}  # everything crosses the WAN inside the mesh's packets
