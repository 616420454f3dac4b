"""WireGuard between the sites: wireguard-go at every site (this kernel has no WireGuard
module, so the datapath runs in userspace, as Weave's sleeve does), in a full mesh of static
peers, each peer's allowed IPs its site's block.

Keys are made for the run (`wg genkey`, `wg pubkey`, the private key through pipes only) and
given to each daemon in a configuration file only root may read, loaded with `wg setconf`:
no key is ever on a command line. WireGuard has no routing of its own: a peer is reached
directly at the endpoint it was given, so a cut path is a black hole until it heals, and
traffic resumes at the next handshake try after the heal.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import procs
from ..inputs.model import AddressFamily
from ..testbeds.contract import host_port
from ..testbeds.hostnet import Footprint
from .base import MTU_SETTING
from .mesh import MeshOverlay, host_needs

FAMILY = AddressFamily("wireguard", "10.64.0.0/16", 24, "WireGuard's range")
PORT = 51820  # wg(8)'s example, and wg-quick's
KEEPALIVE_S = 25  # wg(8): "a sensible interval that works with a wide variety of firewalls is 25 seconds"
MTU = 1420  # wg-quick(8): 1500 less WireGuard's 80 bytes over IPv6, the worst case
TOOLS = {"wireguard-go": "wireguard-go", "wg": "wireguard-tools"}
HOST_NEEDS = host_needs(
    FAMILY, TOOLS, {"wireguard-go": "WireGuard in userspace", "wg": "WireGuard's configuration tool"},
    rivals={"wireguard-go": "another WireGuard in userspace"},
    footprint=Footprint("wireguard", link_prefixes=("wg",), marks=("-i wg", "-o wg"),
                        routes_within=FAMILY.default))
UAPI_DIR = Path("/run/wireguard")  # wireguard-go's control sockets, one per device (ipc/uapi_linux.go)
# Without a handshake within RejectAfterTime a peer's session is gone (device/constants.go).
REJECT_AFTER_S = 180


def configuration(private_key: str, peers: list[tuple[str, str, str]]) -> str:
    """`wg setconf`'s file for one site: its key and port, and per peer (public key, endpoint,
    allowed IPs) a keepalive."""
    lines = ["[Interface]", f"PrivateKey = {private_key}", f"ListenPort = {PORT}"]
    for public_key, endpoint, allowed in peers:
        lines += ["", "[Peer]", f"PublicKey = {public_key}", f"Endpoint = {host_port(endpoint, PORT)}",
                  f"AllowedIPs = {allowed}", f"PersistentKeepalive = {KEEPALIVE_S}"]
    return "\n".join(lines) + "\n"


def parse_handshakes(shown: str, now: float) -> dict[str, str]:
    """`wg show DEV latest-handshakes` (public key, epoch seconds), as a session state per peer
    key: "session" while the last handshake is within RejectAfterTime, else "no session"."""
    states = {}
    for line in shown.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit():
            at = int(fields[1])
            states[fields[0]] = "session" if at and now - at < REJECT_AFTER_S else "no session"
    return states


class WireGuardOverlay(MeshOverlay):
    name = "wireguard"
    label = "WireGuard (wireguard-go)"
    description = "WireGuard in userspace (wireguard-go), full mesh of static peers, UDP 51820"
    family = FAMILY
    host_needs = HOST_NEEDS
    tools = TOOLS
    port = PORT
    device_prefix = "wg"
    set_mtu = MTU
    settings = (MTU_SETTING,)
    cipher = "ChaCha20-Poly1305 (Noise IK handshake, Curve25519, BLAKE2s)"
    timers = (
        ("persistent keepalive", f"{KEEPALIVE_S} s", "chosen here, as wg(8) suggests"),
        ("handshake retry", "5 s (+ up to 0.33 s jitter), given up after 90 s of tries",
         "wireguard-go device/constants.go RekeyTimeout, RekeyAttemptTime"),
        ("rekey", "120 s", "wireguard-go device/constants.go RekeyAfterTime"),
        ("session dropped", f"{REJECT_AFTER_S} s without a handshake", "wireguard-go device/constants.go "
                                                                       "RejectAfterTime"),
        ("routing", "none: static peers, a cut path is a black hole", "WireGuard's cryptokey routing"),
    )

    @classmethod
    def leftovers(cls, run_id: str) -> list[Path]:
        """The control sockets of the run's wireguard-go: it removes its own when it is ended,
        but not when it is killed."""
        return sorted(UAPI_DIR.glob(f"{cls.device_prefix}{run_id}*.sock"))

    def _key_pair(self) -> tuple[str, str]:
        private = procs.run(["wg", "genkey"], timeout=10).check().stdout.strip()
        public = procs.run(["wg", "pubkey"], timeout=10, input=private + "\n").check().stdout.strip()
        return private, public

    def _mesh(self) -> None:
        self.version = procs.run(["wireguard-go", "--version"], timeout=10).stdout.strip().splitlines()[0]
        keys = {site: self._key_pair() for site in self.testbed.sites}
        self.public_keys = {site: public for site, (_, public) in keys.items()}
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.configs: dict[str, str] = {}
        for site, (private, _) in keys.items():
            peers = [(keys[other][1], self.testbed.address(other), str(self.blocks[other]))
                     for other in self.testbed.sites if other != site]
            path = self.state_dir / f"{site}-wg.conf"
            path.touch(mode=0o600)
            path.write_text(configuration(private, peers))
            name = f"wireguard-{site}"
            self.configs[site] = self._site_files(name, site, {"wg.conf": path})["wg.conf"]
            self._start_daemon(name, site, [self._binary("wireguard-go"), "-f", self.devices[site]])

    def _device_commands(self, site: str) -> list[str]:
        return [f"wg setconf {self.devices[site]} {self.configs[site]}", *super()._device_commands(site)]

    def control_state(self) -> dict[str, str]:
        """Each site's session with each peer ("BRA->LJU": "session" or "no session")."""
        site_of = {key: site for site, key in self.public_keys.items()}
        now = time.time()
        return {f"{site}->{site_of.get(key, key[:8])}": state for site, device in self.devices.items()
                for key, state in parse_handshakes(self._on_site(site, ["wg", "show", device, "latest-handshakes"],
                                                                 10).stdout, now).items()}

    def expected_outage_s(self, fault, logs: dict[str, list[str]] | None = None) -> tuple[float, float]:
        """Black-holed while the path is down; after the heal, the next packet's handshake
        try, at most one retry interval (5 s) plus a round trip."""
        low, high = super().expected_outage_s(fault, logs)
        return low, high + 5.5
