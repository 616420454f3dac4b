"""tinc 1.0 between the sites: tincd at every site in router mode, in a full mesh of meta
connections (each pair's made by the later site of the pair: when both ends of a pair connect
at once, tinc 1.0 closes both and can keep doing so), each announcing its block as its Subnet.

An RSA key pair per site is made for the run (`tincd -K`, written by tincd itself into a
directory only root may read); the host files carry the public keys. tinc forwards through
other nodes when a direct path fails: once a cut meta connection times out, the graph it
keeps sends the traffic by a node that still reaches both ends. Everything but the device's
MTU (see MTU) is tinc 1.0.36's default, as tinc.conf(5) gives it: Blowfish in CBC mode,
HMAC-SHA1 cut to 4 bytes, a ping every 60 s and 5 s to answer it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .. import procs
from ..inputs.model import AddressFamily
from ..testbeds.hostnet import Footprint
from .base import MTU_SETTING
from .mesh import MeshOverlay, host_needs

FAMILY = AddressFamily("tinc", "10.65.0.0/16", 24, "tinc's range")
PORT = 655  # tinc.conf(5): Port, for the meta connections (TCP) and the data (UDP)
# tinc 1.0 leaves its device at 1500 and learns the path's MTU by probing over seconds; until
# then a full-size packet, grown by tinc's 58 bytes at most (IP and UDP 28, sequence number 4,
# the Ethernet header it carries 14, CBC padding up to 8, MAC 4), overflows the WAN's 1500 and
# is dropped: a TCP flow begun then stalled (0 Mbit/s over a 1 s test, once). A device MTU
# that fits from the start measures tinc's steady state, not its start-up. A flow still stalled
# once in seven CI runs with it, begun while tinc's UDP path had not settled, so its bring-up
# also waits for a full-size packet between every two containers (full_size_first).
MTU = 1400
KEY_BITS = 2048
TOOLS = {"tincd": "tinc"}
HOST_NEEDS = host_needs(
    FAMILY, TOOLS, {"tincd": "tinc's daemon"},
    rivals={"tincd": "another tinc"},
    listens={PORT: ("something listens on tinc's 655/tcp (another tincd?)", "run on hosts without one")},
    footprint=Footprint("tinc", link_prefixes=("tc",), marks=("-i tc", "-o tc"),
                        routes_within=FAMILY.default))


def node_name(site: str) -> str:
    """A tinc node's name: letters, digits and '_' only (tinc.conf(5), Name)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", site)


def tinc_conf(site: str, device: str, peers: list[str], family: str = "ipv4") -> str:
    return "\n".join([f"Name = {node_name(site)}", "Mode = router", f"Interface = {device}",
                      "Device = /dev/net/tun", f"AddressFamily = {family}",
                      *(f"ConnectTo = {node_name(peer)}" for peer in peers)]) + "\n"


def host_file(address: str, block: str, public_key: str) -> str:
    return f"Address = {address}\nPort = {PORT}\nSubnet = {block}\n{public_key}"


class TincOverlay(MeshOverlay):
    name = "tinc"
    label = "tinc 1.0"
    description = "tinc 1.0 in router mode, full mesh of meta connections, forwarding via other nodes, UDP/TCP 655"
    family = FAMILY
    host_needs = HOST_NEEDS
    tools = TOOLS
    port = PORT
    device_prefix = "tc"
    set_mtu = MTU
    settings = (MTU_SETTING,)
    full_size_first = True
    cipher = "Blowfish-CBC with HMAC-SHA1 (4-byte MAC), RSA-2048 meta connections (tinc 1.0 defaults)"
    timers = (
        ("ping", "every 60 s, 5 s to answer, or the meta connection is closed",
         "tinc.conf(5) 1.0.36: PingInterval, PingTimeout"),
        ("reconnect", "5 s, growing by 5 s per failed try up to 900 s", "tinc 1.0.36 src/net_setup.c, "
                                                                        "tinc.conf(5) MaxTimeout"),
        ("routing", "through other nodes once the direct meta connection is gone (the graph of edges)",
         "tinc 1.0.36 src/graph.c"),
    )

    def _mesh(self) -> None:
        self.version = procs.run(["tincd", "--version"], timeout=10).stdout.splitlines()[0].strip()
        sites = list(self.testbed.sites)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        public = {}
        for site in sites:
            keys = self.state_dir / f"keys-{site}"
            (keys / "hosts").mkdir(parents=True, mode=0o700)
            (keys / "tinc.conf").write_text(f"Name = {node_name(site)}\n")
            procs.run(["tincd", "-c", str(keys), "-K", str(KEY_BITS)], timeout=60, input="").check()
            public[site] = (keys / "hosts" / node_name(site)).read_text()
        for site in sites:
            name = f"tincd-{site}"
            made = self.state_dir / f"config-{site}"
            (made / "hosts").mkdir(parents=True, mode=0o700)
            earlier = sites[:sites.index(site)]  # one meta connection a pair, made by its later site
            family = "ipv6" if self.testbed.topology.families[0] == 6 else "ipv4"
            (made / "tinc.conf").write_text(tinc_conf(site, self.devices[site], earlier, family))
            shutil.copy(self.state_dir / f"keys-{site}" / "rsa_key.priv", made / "rsa_key.priv")
            for other in sites:
                (made / "hosts" / node_name(other)).write_text(
                    host_file(self.testbed.address(other), str(self.blocks[other]), public[other]))
            files = {str(path.relative_to(made)): path for path in sorted(made.rglob("*")) if path.is_file()}
            placed = self._site_files(name, site, files)
            directory = str(Path(placed["tinc.conf"]).parent)
            self._start_daemon(name, site, [self._binary("tincd"), "-c", directory, "-D", "-d", "1",
                                            f"--pidfile={self._daemon_dir(name)}/tinc.pid"])
            shutil.rmtree(self.state_dir / f"keys-{site}")

    def control_state(self) -> dict[str, str]:
        """Which nodes each site's tincd has a meta connection with, from its log ("BRA->LJU":
        "connected" or "closed"), the last word its log has on each peer."""
        state = {}
        for site, daemons in self.site_daemons.items():
            for line in daemons[0].log_tail(400).splitlines():
                for peer in self.testbed.sites:
                    if f"Connection with {node_name(peer)} " in line and "activated" in line:
                        state[f"{site}->{peer}"] = "connected"
                    elif f"Closing connection with {node_name(peer)} " in line:
                        state[f"{site}->{peer}"] = "closed"
        return state

    control_log_noise = ("Got PING", "Got PONG", "Sending PING", "Sending PONG")

    def up(self) -> None:
        super().up()
        for way in ("dport", "sport"):
            self.testbed.count(f"tcp-{way}-{PORT}", ["-p", "tcp", f"--{way}", str(PORT)])

    def wire_counters(self) -> dict[str, int] | None:
        """tinc's packets on the WAN, UDP and TCP alike: until UDP works between two nodes, and
        for what it relays, data rides a meta connection (TCP, either way of it)."""
        counted = [self.testbed.udp_packets(PORT), *(self.testbed.packets(f"tcp-{way}-{PORT}")
                                                     for way in ("dport", "sport"))]
        if any(c is None for c in counted):
            return None
        return {link: sum(c.get(link, 0) for c in counted) for link in set().union(*counted)}

    def expected_outage_s(self, fault, logs: dict[str, list[str]] | None = None) -> tuple[float, float]:
        """A cut link: traffic goes round it once the meta connection across it has missed a
        ping's answer, 5 s after a ping sent up to 60 s after the cut began, unless the cut
        ends first; a partition leaves no way round."""
        low, high = super().expected_outage_s(fault, logs)
        if fault.kind == "cut":
            return min(5.0, low), high
        return low, high
