"""Flannel: a real etcd (TLS, client certificates made for the run) at the topology's
key-value site, a real `flanneld` per site leasing it a subnet, and each site's dockerd
started on that subnet (`--bip`, `--mtu` from flanneld's subnet file), as the study
integrated it: Flannel has no libnetwork driver. Containers sit on each site's docker0.

`flannel` is the vxlan backend, named explicitly (Flannel's own default is udp);
`flannel-udp` is the udp backend (TUN and a userspace proxy); `flannel-host-gw` needs every
site on one L2 segment, which a routed WAN is not.

On real hosts the same daemons run on the hosts, started over ssh (installed there by hand,
checked before anything starts), with the run's certificates copied to them. A host's own
dockerd is never restarted: each host gets a Docker bridge network on its lease instead
(no masquerading), and the containers sit on it. At the end the run removes what flanneld
made outside its process there (flannel.1 or flannel0, its iptables chains).
"""

from __future__ import annotations

import ipaddress
import json
import time

from .. import procs
from ..emulation import emulator as emu
from ..inputs.model import AddressFamily
from ..testbeds.contract import HostNeeds, Testbed, host_port
from ..testbeds.engines import LABEL, EngineError
from ..testbeds.hostnet import Footprint
from ..testbeds.pki import PKI, Credentials
from .base import OverlayUnavailable, Setting
from .containers import ContainerOverlay

# Leases a /24 per site; a topology's `ranges:` moves the network.
FAMILY = AddressFamily("flannel", "10.40.0.0/16", 24, "Flannel's network")
NETWORK = FAMILY.default
SUBNET_LEN = 24
PREFIX = "/coreos.com/network"
ETCD_PORT = 2379
BACKENDS = {"vxlan": {"Type": "vxlan", "VNI": 1, "Port": 8472}, "udp": {"Type": "udp", "Port": 8285},
            "host-gw": {"Type": "host-gw"}}
DEVICES = {"vxlan": "flannel.1", "udp": "flannel0"}
RESTARTS = 2  # of a flanneld whose watch missed a lease  # what the backend routes leases through
SITE_TOOLS = {"etcd": "etcd-server", "etcdctl": "etcd-client"}  # run at the sites: etcd, and its client beside it
LOCAL_TOOLS = {"openssl": "openssl"}  # on this machine: the run's certificates
OVERLAYS = ("flannel", "flannel-udp", "flannel-host-gw")
BINARIES = {"flanneld": "Flannel's daemon"}  # on every real host
KV_BINARIES = {"etcd": "etcd's server", "etcdctl": "etcd's client"}  # on the key-value site's host
# What flanneld leaves on a host besides its process.
HOST_FOOTPRINT = Footprint("flannel", links=tuple(DEVICES.values()), marks=("FLANNEL", "flanneld"),
                           chain_prefixes=("FLANNEL",), routes_within=NETWORK)
HOST_NEEDS = HostNeeds(
    FAMILY,
    binaries={binary: (what, "install Flannel 0.19.2's flanneld in /usr/local/bin") for binary, what in BINARIES.items()},
    kv_binaries={binary: (what, "apt-get install etcd-server etcd-client") for binary, what in KV_BINARIES.items()},
    devices={device: "Flannel" for device in DEVICES.values()}, rivals={"flanneld": "Flannel"}, footprint=HOST_FOOTPRINT)


def parse_subnet_file(text: str) -> dict[str, str]:
    """flanneld's subnet file (--subnet-file): its lease as KEY=VALUE lines (FLANNEL_NETWORK,
    FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ)."""
    return dict(line.strip().split("=", 1) for line in text.splitlines() if "=" in line)


class FlannelOverlay(ContainerOverlay):
    name = "flannel"
    ipv6_unsupported = ("its etcd, listening on the site's IPv6 address, did not answer a client within 30 s (tried "
                        "here), and flannel 0.19.2 takes one --public-ip, of the IPv4 network it carries")
    label = "Flannel (vxlan)"
    in_all = True
    family = FAMILY
    packages = ("etcd-server", "etcd-client")
    shipped = tuple(BINARIES)
    description = "Flannel 0.19 with the vxlan backend (VNI 1, UDP 8472), subnets leased in etcd"
    host_needs = HOST_NEEDS
    backend = "vxlan"
    settings = (Setting("bin", "the flanneld binary every site runs (a build to compare)", binary="flanneld"),)

    timers = (
        ("subnet lease", "24 h, renewed 60 min before it ends", "flanneld -subnet-lease-renew-margin default"),
        ("VXLAN forwarding", "static per lease: a cut changes no route, ARP or FDB entry", "flannel backend/vxlan"),
    )

    def __init__(self, testbed: Testbed, **settings) -> None:
        super().__init__(testbed, **settings)
        self.kv = testbed.topology.kv_site
        self.leases: dict[str, dict[str, str]] = {}  # site -> FLANNEL_SUBNET, FLANNEL_MTU, ...
        self.routes: dict[str, dict[str, str]] = {}  # site -> lease -> the route to it
        self.client: Credentials | None = None
        self.etcd_client: dict[str, str] = {}  # where etcdctl finds the client's files at the kv site

    def _check(self) -> None:
        if self.backend == "host-gw":
            raise OverlayUnavailable("flannel host-gw needs every site on one L2 segment; the emulated WAN routes "
                                     "between sites (each link is its own segment through the wan namespace)")
        missing = self.ops.missing({
            **({} if "bin" in self.chosen else {
                "flanneld": "Flannel's daemon, not in $PYTEST_OVERLAY_BIN or on PATH: install Flannel 0.19.2, see "
                            "the README, 'Overlays'"}),
            **procs.apt(SITE_TOOLS)})
        missing += procs.missing(LOCAL_TOOLS)  # the certificates are made on this machine
        if missing:
            raise OverlayUnavailable("Flannel cannot run here; missing: " + "; ".join(missing))

    def up(self) -> None:
        self._check()
        started = time.monotonic()
        try:
            self._etcd()
            self._flannelds()
            self._check_routes()
            if not self.testbed.own_engines:  # a bridge network per lease on the hosts' engines
                image = self._start_engines()
                self._lease_networks()
                self._run_containers(image, lambda engine, c: c.attrs["NetworkSettings"]["Networks"][self.network][
                    "IPAddress"], network=self.network)
            else:
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

    @property
    def network(self) -> str:
        """The Docker network on each real host's lease."""
        return f"ovl{self.testbed.run_id}-flannel"

    def _lease_networks(self) -> None:
        """On each real host, a bridge network on the host's lease, as Flannel's docs integrate
        Docker without restarting it: the lease's first address is the gateway, the MTU is
        flanneld's, and nothing is masqueraded (containers keep their own addresses)."""
        import docker

        for site, engine in self.testbed.engines.items():
            lease = self.leases[site]
            gateway = lease["FLANNEL_SUBNET"].split("/")[0]
            subnet = str(ipaddress.ip_network(lease["FLANNEL_SUBNET"], strict=False))
            engine.client.networks.create(
                self.network, driver="bridge", labels={LABEL: self.testbed.run_id},
                ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet, gateway=gateway)]),
                options={"com.docker.network.bridge.name": f"ovl{self.testbed.run_id}fl",
                         "com.docker.network.driver.mtu": lease["FLANNEL_MTU"],
                         "com.docker.network.bridge.enable_ip_masquerade": "false"})
            self._progress(f"{site}: Docker network {self.network} on {subnet} (gateway {gateway}, "
                           f"MTU {lease['FLANNEL_MTU']})")

    # --- etcd ---------------------------------------------------------------------------------
    def _endpoint(self) -> str:
        return f"https://{host_port(self.testbed.address(self.kv), ETCD_PORT)}"

    def _etcdctl(self, *args: str, input: str | None = None) -> procs.CommandResult:
        c = self.etcd_client
        return self._on_site(self.kv, ["etcdctl", f"--endpoints={self._endpoint()}", f"--cacert={c['ca.pem']}",
                                       f"--cert={c['flannel.pem']}", f"--key={c['flannel-key.pem']}", *args],
                             30, input=input)

    def _etcd(self) -> None:
        address = self.testbed.address(self.kv)
        pki = PKI(self.state_dir / "pki", self.testbed.run_id).create()
        server = pki.issue("etcd", [address, "127.0.0.1"])
        self.client = pki.issue("flannel", client=True)
        name = f"etcd-{self.kv}"
        files = self._site_files(name, self.kv, {"ca.pem": server.ca, "etcd.pem": server.cert,
                                                 "etcd-key.pem": server.key, "flannel.pem": self.client.cert,
                                                 "flannel-key.pem": self.client.key})
        self.etcd_client = files
        data = self._daemon_dir(name) / "data"
        peer = "https://127.0.0.1:2380"
        tls = [f"--cert-file={files['etcd.pem']}", f"--key-file={files['etcd-key.pem']}",
               f"--trusted-ca-file={files['ca.pem']}", "--client-cert-auth", f"--peer-cert-file={files['etcd.pem']}",
               f"--peer-key-file={files['etcd-key.pem']}", f"--peer-trusted-ca-file={files['ca.pem']}",
               "--peer-client-cert-auth"]
        self._progress(f"etcd at {self.kv} ({self._endpoint()}, client certificates required)")
        daemon = self._start_daemon(name, self.kv, ["etcd", "--name", "kv", "--data-dir", str(data),
                                             f"--listen-client-urls={self._endpoint()}",
                                             f"--advertise-client-urls={self._endpoint()}",
                                             f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                                             f"--initial-cluster=kv={peer}", "--log-level=warn", *tls])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not daemon.alive():
                raise EngineError(f"etcd at {self.kv} exited (exit {daemon.returncode}); its log:\n"
                                  f"{daemon.log_tail(15)}")
            if self._etcdctl("endpoint", "health").ok:
                break
            time.sleep(0.2)
        else:
            raise EngineError(f"etcd at {self.kv} not healthy within 30 s; its log:\n{daemon.log_tail(15)}")
        config = {"Network": self.testbed.topology.range_of(FAMILY), "SubnetLen": SUBNET_LEN,
                  "Backend": BACKENDS[self.backend]}
        self._etcdctl("put", f"{PREFIX}/config", json.dumps(config)).check()

    # --- flanneld -----------------------------------------------------------------------------
    def _flannelds(self) -> None:
        """One after another: a flanneld started together with another can miss its lease.

        flanneld takes its MTU from the interface that holds the site's address: that is the
        site's loopback here, so loopback gets the WAN links' MTU first (else 65486).
        """
        for site, handle in self.testbed.sites.items():
            if not self.remote:  # a real host's address sits on its real interface
                procs.run(["ip", "link", "set", "lo", "mtu", str(emu.MTU)], handle.netns).check()
            self._start_flanneld(site)
            lease = self.leases[site]
            self._progress(f"flanneld at {site}: lease {lease['FLANNEL_SUBNET']}, MTU {lease['FLANNEL_MTU']}")

    def _start_flanneld(self, site: str) -> None:
        """Start the site's flanneld and wait for its lease (kept across a restart)."""
        name, handle = f"flanneld-{site}", self.testbed.sites[site]
        c = self._site_files(name, site, {"ca.pem": self.client.ca, "flannel.pem": self.client.cert,
                                          "flannel-key.pem": self.client.key})
        subnet_file = self._daemon_dir(name) / "subnet.env"
        self._on_site(site, ["rm", "-f", str(subnet_file)], 30)
        daemon = self._start_daemon(name, site, [
            self._binary("flanneld"), f"--etcd-endpoints={self._endpoint()}",
            f"--etcd-cafile={c['ca.pem']}", f"--etcd-certfile={c['flannel.pem']}",
            f"--etcd-keyfile={c['flannel-key.pem']}", f"--etcd-prefix={PREFIX}", f"--iface={handle.address}",
            f"--public-ip={handle.address}", f"--subnet-file={subnet_file}", "--ip-masq=false"])
        deadline = time.monotonic() + 30 + self._worst_rtt_s() * 50
        while not (lease := self._on_site(site, ["cat", str(subnet_file)], 30)).ok:
            if not daemon.alive() or time.monotonic() > deadline:
                raise EngineError(f"flanneld at {site} wrote no subnet lease (exit {daemon.returncode}); "
                                  f"its log:\n{daemon.log_tail(15)}")
            time.sleep(0.1 if not self.remote else 0.3)
        self.leases[site] = parse_subnet_file(lease.stdout)

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
                route = self._on_site(site, ["ip", "-4", "-o", "route", "get", gateway], 30)
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
    label = "Flannel (udp)"
    in_all = False
    description = "Flannel 0.19 with the udp backend (TUN flannel0, userspace proxy, UDP 8285)"
    backend = "udp"


class FlannelHostGwOverlay(FlannelOverlay):
    name = "flannel-host-gw"
    label = "Flannel (host-gw)"
    in_all = False
    description = "Flannel 0.19 with the host-gw backend (a route per lease via the peer; one L2 segment)"
    backend = "host-gw"
