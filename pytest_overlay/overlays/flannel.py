"""Flannel: a real etcd (TLS, client certificates made for the run) at the topology's
key-value site, a real `flanneld` per site leasing it a subnet, and each site's dockerd
started on that subnet (`--bip`, `--mtu` from flanneld's subnet file), as the study
integrated it: Flannel has no libnetwork driver. Containers sit on each site's docker0.

`flannel` is the vxlan backend, named explicitly (Flannel's own default is udp);
`flannel-udp` is the udp backend (TUN and a userspace proxy); `flannel-host-gw` needs every
site on one L2 segment, which a routed WAN is not.
"""

from __future__ import annotations

import json
import time

from .. import emulator as emu
from .. import procs
from ..engines import EngineError
from ..paths import find_binary
from ..pki import PKI, Credentials
from ..testbed import EmulatedTestbed
from .base import OverlayUnavailable
from .containers import ContainerOverlay

NETWORK = "10.40.0.0/16"
SUBNET_LEN = 24
PREFIX = "/coreos.com/network"
ETCD_PORT = 2379
BACKENDS = {"vxlan": {"Type": "vxlan", "VNI": 1, "Port": 8472}, "udp": {"Type": "udp", "Port": 8285},
            "host-gw": {"Type": "host-gw"}}
DEVICES = {"vxlan": "flannel.1", "udp": "flannel0"}
RESTARTS = 2  # of a flanneld whose watch missed a lease  # what the backend routes leases through
TOOLS = {"etcd": "etcd-server", "etcdctl": "etcd-client", "openssl": "openssl"}


class FlannelOverlay(ContainerOverlay):
    name = "flannel"
    description = "Flannel 0.19 with the vxlan backend (VNI 1, UDP 8472), subnets leased in etcd"
    backend = "vxlan"

    def __init__(self, testbed: EmulatedTestbed) -> None:
        super().__init__(testbed)
        self.kv = testbed.topology.kv_site
        self.leases: dict[str, dict[str, str]] = {}  # site -> FLANNEL_SUBNET, FLANNEL_MTU, ...
        self.routes: dict[str, dict[str, str]] = {}  # site -> lease -> the route to it
        self.client: Credentials | None = None

    def _check(self) -> None:
        if self.backend == "host-gw":
            raise OverlayUnavailable("flannel host-gw needs every site on one L2 segment; the emulated WAN routes "
                                     "between sites (each link is its own segment through the wan namespace)")
        missing = ([] if find_binary("flanneld") else
                   ["flanneld (Flannel's daemon, not in $PYTEST_OVERLAY_BIN or on PATH: install Flannel 0.19.2, "
                    "see the README, 'Overlays')"]) + procs.missing(TOOLS)
        if missing:
            raise OverlayUnavailable("Flannel cannot run here; missing: " + "; ".join(missing))

    def up(self) -> None:
        self._check()
        started = time.monotonic()
        try:
            self._etcd()
            self._flannelds()
            self._check_routes()
            image = self._start_engines(lambda site: [
                f"--bip={self.leases[site]['FLANNEL_SUBNET']}", f"--mtu={self.leases[site]['FLANNEL_MTU']}",
                "--ip-masq=false"])
            self._run_containers(image, lambda engine, c: c.attrs["NetworkSettings"]["IPAddress"])
        except BaseException:
            self.down()
            raise
        if self.port:
            self.testbed.count_udp(self.port)
        self.timings["up_s"] = time.monotonic() - started
        leases = ", ".join(f"{site} {lease['FLANNEL_SUBNET']}" for site, lease in self.leases.items())
        self._progress(f"up in {self.timings['up_s']:.1f} s: backend {self.backend}, etcd at {self.kv}, leases {leases}")

    @property
    def port(self) -> int | None:
        return BACKENDS[self.backend].get("Port")

    # --- etcd ---------------------------------------------------------------------------------
    def _endpoint(self) -> str:
        return f"https://{self.testbed.address(self.kv)}:{ETCD_PORT}"

    def _etcdctl(self, *args: str, input: str | None = None) -> procs.CommandResult:
        c = self.client
        return procs.run(["etcdctl", f"--endpoints={self._endpoint()}", f"--cacert={c.ca}", f"--cert={c.cert}",
                          f"--key={c.key}", *args], self.testbed.netns_of(self.kv), timeout=30, input=input)

    def _etcd(self) -> None:
        address = self.testbed.address(self.kv)
        pki = PKI(self.state_dir / "pki", self.testbed.run_id).create()
        server = pki.issue("etcd", [address, "127.0.0.1"])
        self.client = pki.issue("flannel", client=True)
        data = self.state_dir / "etcd"
        data.mkdir(parents=True, mode=0o700)
        peer = "https://127.0.0.1:2380"
        tls = [f"--cert-file={server.cert}", f"--key-file={server.key}", f"--trusted-ca-file={server.ca}",
               "--client-cert-auth", f"--peer-cert-file={server.cert}", f"--peer-key-file={server.key}",
               f"--peer-trusted-ca-file={server.ca}", "--peer-client-cert-auth"]
        self._progress(f"etcd at {self.kv} ({self._endpoint()}, client certificates required)")
        daemon = procs.start("etcd", ["etcd", "--name", "kv", "--data-dir", str(data),
                                      f"--listen-client-urls={self._endpoint()}",
                                      f"--advertise-client-urls={self._endpoint()}", f"--listen-peer-urls={peer}",
                                      f"--initial-advertise-peer-urls={peer}", f"--initial-cluster=kv={peer}",
                                      "--log-level=warn", *tls],
                             self.state_dir / "etcd.log", self.testbed.netns_of(self.kv))
        self.daemons.append(daemon)
        self.testbed.track(daemon)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not daemon.alive():
                raise EngineError(f"etcd at {self.kv} exited (exit {daemon.popen.returncode}); its log:\n"
                                  f"{daemon.log_tail(15)}")
            if self._etcdctl("endpoint", "health").ok:
                break
            time.sleep(0.2)
        else:
            raise EngineError(f"etcd at {self.kv} not healthy within 30 s; its log:\n{daemon.log_tail(15)}")
        config = {"Network": NETWORK, "SubnetLen": SUBNET_LEN, "Backend": BACKENDS[self.backend]}
        self._etcdctl("put", f"{PREFIX}/config", json.dumps(config)).check()

    # --- flanneld -----------------------------------------------------------------------------
    def _flannelds(self) -> None:
        """One after another: a flanneld started together with another can miss its lease.

        flanneld takes its MTU from the interface that holds the site's address: that is the
        site's loopback here, so loopback gets the WAN links' MTU first (else 65486).
        """
        for site, handle in self.testbed.sites.items():
            procs.run(["ip", "link", "set", "lo", "mtu", str(emu.MTU)], handle.netns).check()
            self._start_flanneld(site)
            lease = self.leases[site]
            self._progress(f"flanneld at {site}: lease {lease['FLANNEL_SUBNET']}, MTU {lease['FLANNEL_MTU']}")

    def _start_flanneld(self, site: str) -> None:
        """Start the site's flanneld and wait for its lease (kept across a restart)."""
        c, handle = self.client, self.testbed.sites[site]
        subnet_file = self.state_dir / f"{site}-subnet.env"
        command = [find_binary("flanneld"), f"--etcd-endpoints={self._endpoint()}", f"--etcd-cafile={c.ca}",
                   f"--etcd-certfile={c.cert}", f"--etcd-keyfile={c.key}", f"--etcd-prefix={PREFIX}",
                   f"--iface={handle.address}", f"--public-ip={handle.address}", f"--subnet-file={subnet_file}",
                   "--ip-masq=false"]
        subnet_file.unlink(missing_ok=True)
        daemon = procs.start(f"flanneld-{site}", command, self.state_dir / f"{site}-flanneld.log", handle.netns)
        self.daemons.append(daemon)
        self.testbed.track(daemon)
        deadline = time.monotonic() + 30 + self._worst_rtt_s() * 50
        while not subnet_file.exists():
            if not daemon.alive() or time.monotonic() > deadline:
                raise EngineError(f"flanneld at {site} wrote no subnet lease (exit {daemon.popen.poll()}); "
                                  f"its log:\n{daemon.log_tail(15)}")
            time.sleep(0.1)
        self.leases[site] = dict(line.split("=", 1) for line in subnet_file.read_text().split() if "=" in line)

    def _restart_flanneld(self, site: str) -> None:
        daemon = next(d for d in self.daemons if d.name == f"flanneld-{site}")
        daemon.stop()
        self.daemons.remove(daemon)
        self.testbed.untrack([daemon])
        self._start_flanneld(site)

    def _missing_routes(self) -> dict[str, list[str]]:
        """Per site, the other sites' leases it does not route through the backend's device."""
        device = DEVICES[self.backend]
        missing: dict[str, list[str]] = {}
        for site in self.testbed.sites:
            self.routes[site] = {}
            for other, lease in self.leases.items():
                if other == site:
                    continue
                gateway = lease["FLANNEL_SUBNET"].split("/")[0]
                route = procs.run(["ip", "-4", "-o", "route", "get", gateway], self.testbed.netns_of(site))
                if f" dev {device} " in route.stdout:
                    self.routes[site][lease["FLANNEL_SUBNET"]] = " ".join(route.stdout.split()[:5])
                else:
                    missing.setdefault(site, []).append(
                        f"{site} does not route {other}'s lease {lease['FLANNEL_SUBNET']} through {device} "
                        f"({route.stdout.strip() or route.stderr.strip()})")
        return missing

    def _check_routes(self) -> None:
        """Before measuring: every site routes every other site's lease through the backend's
        device. flanneld's watch can miss a lease written while it starts; a site still
        missing one after a wait that scales with the WAN gets its flanneld restarted (it
        then lists every lease), up to twice."""
        for restart in range(RESTARTS + 1):
            deadline = time.monotonic() + 5 + self._worst_rtt_s() * 100
            while (missing := self._missing_routes()) and time.monotonic() < deadline:
                time.sleep(0.3)
            if not missing:
                return
            if restart < RESTARTS:
                for site, what in missing.items():
                    self._progress(f"{what[0]}: restarting flanneld at {site} ({restart + 1}/{RESTARTS})")
                    self._restart_flanneld(site)
        logs = "\n".join(f"--- {d.name}:\n{d.log_tail(6)}" for d in self.daemons)
        raise EngineError("Flannel's routes are incomplete: " + "; ".join(sum(missing.values(), [])) + f"\n{logs}")

    # --- what the records say -----------------------------------------------------------------
    def _datapath(self, src: str, dst: str) -> dict:
        backend = BACKENDS[self.backend]
        return {
            "kind": f"flannel-{self.backend}",
            "backend": self.backend,
            "vni": backend.get("VNI"),
            "udp_port": self.port,
            "leases": {site: self.leases[site]["FLANNEL_SUBNET"] for site in (src, dst)},
            "routes": {site: self.routes.get(site, {}) for site in (src, dst)},
            "kv_site": self.kv,
        }

    def wire_counters(self) -> dict[str, int] | None:
        return self.testbed.udp_packets(self.port) if self.port else None


class FlannelUdpOverlay(FlannelOverlay):
    name = "flannel-udp"
    description = "Flannel 0.19 with the udp backend (TUN flannel0, userspace proxy, UDP 8285)"
    backend = "udp"


class FlannelHostGwOverlay(FlannelOverlay):
    name = "flannel-host-gw"
    description = "Flannel 0.19 with the host-gw backend (a route per lease via the peer; one L2 segment)"
    backend = "host-gw"
