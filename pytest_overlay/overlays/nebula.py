"""Nebula between the sites: nebula at every site, one of them its lighthouse (the topology's
hub or manager, else its first site), which also relays for the others; each site's block an
unsafe route via that site's Nebula address, signed into its certificate.

A certificate authority is made for the run (`nebula-cert ca`), and a certificate and key per
site (`nebula-cert sign`), written by nebula-cert into files only root may read: no key is on
a command line, and the CA's key never leaves this machine. The sites find each other through
the lighthouse and talk directly; where a direct tunnel fails, they may go through the relay.
Everything else is Nebula 1.6.1's default (its examples/config.yml): AES-256-GCM, tun MTU 1300.
"""

from __future__ import annotations

import ipaddress
import json
import re

from .. import procs
from ..inputs.model import AddressFamily
from ..testbeds.contract import host_port
from ..testbeds.hostnet import Footprint
from .mesh import MeshOverlay, host_needs

FAMILY = AddressFamily("nebula", "10.66.0.0/16", 24, "Nebula's range")
PORT = 4242  # examples/config.yml: listen.port
LIGHTHOUSE_INTERVAL_S = 60  # examples/config.yml: lighthouse.interval
DEAD_TUNNEL_S = 5 + 10  # examples/config.yml: connection_alive_interval, then pending_deletion_interval
TOOLS = {"nebula": "nebula", "nebula-cert": "nebula"}
HOST_NEEDS = host_needs(
    FAMILY, TOOLS, {"nebula": "Nebula's daemon"},  # its certificates are made where the run is controlled
    rivals={"nebula": "another Nebula"},
    footprint=Footprint("nebula", link_prefixes=("nb",), marks=("-i nb", "-o nb"),
                        routes_within=FAMILY.default))


def configuration(files: dict[str, str], device: str, lighthouse: str | None, lighthouse_at: str,
                  routes: list[tuple[str, str]]) -> str:
    """One site's config.yml (as JSON, which YAML reads): its PKI files, the lighthouse (None at
    the lighthouse itself), and the other sites' blocks as unsafe routes via their Nebula
    addresses; every other setting Nebula's default."""
    relay = {"am_relay": True, "use_relays": True} if lighthouse is None else \
        {"relays": [lighthouse], "use_relays": True}
    config = {
        "pki": {"ca": files["ca.crt"], "cert": files["host.crt"], "key": files["host.key"]},
        "static_host_map": {lighthouse: [host_port(lighthouse_at, PORT)]} if lighthouse else {},
        "lighthouse": {"am_lighthouse": lighthouse is None, "interval": LIGHTHOUSE_INTERVAL_S,
                       "hosts": [lighthouse] if lighthouse else []},
        "listen": {"host": "[::]" if ":" in lighthouse_at else "0.0.0.0", "port": PORT},
        "punchy": {"punch": True},
        "relay": relay,
        "tun": {"dev": device, "unsafe_routes": [{"route": route, "via": via} for route, via in routes]},
        "logging": {"level": "info", "format": "text"},
        "firewall": {"outbound": [{"port": "any", "proto": "any", "host": "any"}],
                     "inbound": [{"port": "any", "proto": "any", "host": "any"}]},
    }
    return json.dumps(config, indent=1) + "\n"


_VPN_IP = re.compile(r"\bvpnIp=(\S+)")
_MSG = re.compile(r'\bmsg="([^"]*)"')


def tunnel_states(lines: list[str], by_address: dict[str, str]) -> dict[str, str]:
    """Each peer's tunnel as Nebula's log last tells it (by_address: Nebula address -> site):
    "dead" once its tunnel check failed, "handshaking" while a direct handshake is tried,
    "relaying" while one goes through a relay, "relayed" once a handshake came back without a
    UDP address of the peer (through the relay) or was sent through one, "direct" once one
    came with the peer's address or the peer roamed back to it, "closed" once torn down."""
    states: dict[str, str] = {}
    for line in lines:
        address, message = _VPN_IP.search(line), _MSG.search(line)
        peer = by_address.get(address.group(1)) if address else None
        if peer is None or message is None:
            continue
        said = message.group(1)
        if said == "Tunnel status" and "state:dead" in line:
            states[peer] = "dead"
        elif said in ("Attempt to relay through hosts", "Send handshake via relay"):
            states[peer] = "relaying"
        elif said == "Handshake message received":
            states[peer] = "relayed" if 'udpAddr="<nil>"' in line else "direct"
        elif said == "Handshake message sent":
            states[peer] = "relayed" if " relay=" in line else "handshaking"
        elif said.startswith("Host roamed to new udp ip/port") and 'newAddr="<nil>"' not in line:
            states[peer] = "direct"
        elif said == "Close tunnel":
            states[peer] = "closed"
    return states


class NebulaOverlay(MeshOverlay):
    name = "nebula"
    label = "Nebula"
    description = "Nebula 1.6 with a lighthouse that relays, unsafe routes to the sites' blocks, UDP 4242"
    family = FAMILY
    host_needs = HOST_NEEDS
    tools = TOOLS
    port = PORT
    device_prefix = "nb"
    owns_device = True
    cipher = "AES-256-GCM (Noise IX handshake, Curve25519; Nebula's default cipher)"
    timers = (
        ("tunnel test", "after 5 s without traffic back, tested; closed 10 s later without an answer",
         "nebula 1.6.1 examples/config.yml timers.connection_alive_interval, pending_deletion_interval"),
        ("handshake", "tried every 100 ms, backing off, 10 tries", "examples/config.yml handshakes.try_interval, "
                                                                    "retries"),
        ("lighthouse update", f"{LIGHTHOUSE_INTERVAL_S} s", "examples/config.yml lighthouse.interval"),
        ("relay", "through the lighthouse where a direct handshake fails", "examples/config.yml relay"),
    )

    def __init__(self, testbed, **settings) -> None:
        super().__init__(testbed, **settings)
        network = ipaddress.ip_network(self.range)
        self.nebula_net = list(network.subnets(new_prefix=24))[-1]  # the nodes' own addresses: the last /24
        self.nodes = {site: str(self.nebula_net[i + 1]) for i, site in enumerate(testbed.sites)}
        topo = testbed.topology
        self.lighthouse = topo.hub or topo.manager or next(iter(testbed.sites))

    def mesh_address(self, site: str) -> str:
        return self.nodes[site]

    def expected_outage_s(self, fault, logs: dict[str, list[str]] | None = None) -> tuple[float, float]:
        """A cut link: the quiet tunnel is tested after 5 s and dropped 10 s later; then a new
        handshake, tried directly for up to about 6.5 s (10 tries, backing off from 100 ms),
        goes through the relay. A partition leaves no relay to go through."""
        low, high = super().expected_outage_s(fault, logs)
        if fault.kind == "cut" and low > DEAD_TUNNEL_S:
            return DEAD_TUNNEL_S, min(high, DEAD_TUNNEL_S + 6.5 + 1.0)
        return low, high

    def _mesh(self) -> None:
        self.version = "nebula " + procs.run(["nebula", "-version"], timeout=10).stdout.strip().removeprefix("Version: ")
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pki = self.state_dir / "pki"
        pki.mkdir(mode=0o700)
        procs.run(["nebula-cert", "ca", "-name", f"pytest-overlay run {self.testbed.run_id}", "-out-crt",
                   str(pki / "ca.crt"), "-out-key", str(pki / "ca.key")], timeout=30).check()
        for site in self.testbed.sites:
            procs.run(["nebula-cert", "sign", "-ca-crt", str(pki / "ca.crt"), "-ca-key", str(pki / "ca.key"),
                       "-name", site, "-ip", f"{self.nodes[site]}/{self.nebula_net.prefixlen}",
                       "-subnets", str(self.blocks[site]), "-out-crt", str(pki / f"{site}.crt"),
                       "-out-key", str(pki / f"{site}.key")], timeout=30).check()
        lighthouse_at = self.testbed.address(self.lighthouse)
        for site in self.testbed.sites:
            name = f"nebula-{site}"
            files = self._site_files(name, site, {"ca.crt": pki / "ca.crt", "host.crt": pki / f"{site}.crt",
                                                  "host.key": pki / f"{site}.key"})
            routes = [(str(self.blocks[o]), self.nodes[o]) for o in self.testbed.sites if o != site]
            config = pki / f"{site}.yml"
            config.write_text(configuration(files, self.devices[site], None if site == self.lighthouse else
                                            self.nodes[self.lighthouse], lighthouse_at, routes))
            placed = self._site_files(name, site, {"config.yml": config})
            self._start_daemon(name, site, [self._binary("nebula"), "-config", placed["config.yml"]])

    def _datapath(self, src: str, dst: str) -> dict:
        return {**super()._datapath(src, dst), "lighthouse": self.lighthouse, "relay": self.lighthouse,
                "nebula_addresses": {site: self.nodes[site] for site in (src, dst)}}

    def control_state(self) -> dict[str, str]:
        """Each site's tunnel to each peer as its log last said ("BRA->LJU": "dead", "relaying",
        "relayed", "direct", ...; see tunnel_states)."""
        by_address = {address: site for site, address in self.nodes.items()}
        return {f"{site}->{peer}": state for site, daemons in self.site_daemons.items()
                for peer, state in tunnel_states(daemons[0].log_tail(400).splitlines(), by_address).items()}
