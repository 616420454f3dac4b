"""Weave Net: a real `weaver` router in every site, peered with every other site over the
emulated WAN, and each site's measurement container attached to Weave's bridge by Weave's
own CNI plugin (`weaveutil cni-net`), with an address from Weave's IPAM.

weaver picks its datapath itself: fastdp (kernel VXLAN through openvswitch, UDP 6784) where
the kernel has openvswitch, else sleeve (userspace capture, frames batched into UDP 6783).
Every record carries what Weave reports for each peer connection.

On real hosts the same binaries run on each host, started over ssh (installed there by
hand, checked before anything starts); at the end the run removes what weaver made outside
its process there (bridge, veths, datapath, iptables chains), as `weave reset` does.
"""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import time

from .. import procs
from ..inputs.model import AddressFamily
from ..paths import find_binary
from ..testbeds.contract import HostNeeds, Testbed
from ..testbeds.engines import Engine, EngineError
from ..testbeds.hostnet import Footprint
from .base import OverlayUnavailable
from .containers import ContainerOverlay
from .libnetwork import esp_available

CONTROL_PORT = 6783  # TCP: the mesh; UDP: sleeve
FASTDP_PORT = 6784  # UDP: fastdp's VXLAN
HTTP_ADDR = "127.0.0.1:6784"  # weaver's API, inside each site only
BRIDGE = "weave"
BINARIES = {"weaver": "Weave Net's router", "weaveutil": "Weave Net's helper and CNI plugin"}
GET = """\
import sys, urllib.request
request = urllib.request.Request("http://%s" + sys.argv[1], headers={"Accept": "application/json"})
print(urllib.request.urlopen(request, timeout=5).read().decode())
""" % HTTP_ADDR


def missing_binaries() -> list[str]:
    return [f"{name} ({what})" for name, what in BINARIES.items() if find_binary(name) is None]


# What weaver leaves on a host besides its process (its fastdp datapath is an openvswitch
# device, removed by weaveutil): removed at teardown where the run added it. The CNI plugin's
# host ends of the containers' veths (vethwepl<id>) go with their containers' namespaces, but
# the kernel may take its time: seen still there when the next run on the host began.
HOST_FOOTPRINT = Footprint("weave", links=(BRIDGE, "vethwe-bridge", "vethwe-pcap", f"vxlan-{FASTDP_PORT}",
                                          "datapath"), link_prefixes=("vethwepl",),
                           marks=("WEAVE", f" {BRIDGE} ", "Weave Net"), chain_prefixes=("WEAVE",),
                           link_removers={"datapath": ("weaveutil", "delete-datapath", "datapath")})
FAMILY = AddressFamily("weave", "10.32.0.0/12", 24, "Weave Net's IPAM range")  # weaver's --ipalloc-range default
HOST_NEEDS = HostNeeds(
    FAMILY,
    binaries={**{binary: (what, f"install Weave Net 2.8.1's {', '.join(BINARIES)} in /usr/local/bin, and libpcap0.8")
                 for binary, what in BINARIES.items()},
              "python3": ("Python 3, which reads weaver's status API there", "apt-get install python3")},
    started=("weaver",), devices={BRIDGE: "Weave Net"}, rivals={"weaver": "Weave Net"}, footprint=HOST_FOOTPRINT)


def parse_report(report: dict) -> tuple[dict, list[dict]]:
    """weaver's status (GET /report, JSON): the router (name, encryption, the interface its
    datapath uses, version, and its route to each peer by nickname: "direct" or "via" the
    peer it relays through) and each connection to a peer (address, state, info, the
    datapath it runs, its MTU, whether it is encrypted)."""
    router = report.get("Router") or {}
    nick = {p.get("Name"): p.get("NickName") or p.get("Name") for p in router.get("Peers") or []}
    routes = {}
    for route in router.get("UnicastRoutes") or []:
        dest, via = route.get("Dest"), route.get("Via")
        if dest == router.get("Name"):
            continue
        routes[nick.get(dest, dest)] = ("direct" if via == dest else "unreachable" if not via or set(via) <= {"0", ":"}
                                        else f"via {nick.get(via, via)}")
    about = {"name": router.get("Name"), "encryption": router.get("Encryption"),
             "interface": router.get("Interface"), "version": report.get("Version"), "routes": routes}
    connections = [
        {"address": c.get("Address"), "state": c.get("State"), "info": c.get("Info"),
         "datapath": (c.get("Attrs") or {}).get("name") or (c.get("Info") or "").split(" ")[0],
         "mtu": (c.get("Attrs") or {}).get("mtu"), "encrypted": (c.get("Attrs") or {}).get("encrypted")}
        for c in router.get("Connections") or []]
    return about, connections


class WeaveOverlay(ContainerOverlay):
    name = "weave"
    ipv6_unsupported = ("Weave Net 2.8.1 takes its peers over IPv4 only: given a site's IPv6 address it stops with "
                        "\"too many colons in address\", and given it in brackets with \"no suitable address found\" "
                        "(tried here)")
    label = "Weave Net"
    in_all = True
    family = FAMILY
    packages = ("libpcap0.8",)
    shipped = tuple(BINARIES)
    description = "Weave Net 2.8 routers, one per site, full mesh; containers on Weave's bridge (sleeve or fastdp)"
    host_needs = HOST_NEEDS
    encrypted = False

    def __init__(self, testbed: Testbed, **settings) -> None:
        super().__init__(testbed, **settings)
        self.ipalloc_range = testbed.topology.range_of(FAMILY)
        self.connections: dict[str, list[dict]] = {}
        self.router: dict[str, dict] = {}

    def up(self) -> None:
        missing = self.ops.missing(BINARIES)
        if missing:
            raise OverlayUnavailable(
                "Weave Net is not installed: " + ", ".join(missing) + " not found in $PYTEST_OVERLAY_BIN or on PATH; "
                "install weaver and weaveutil from Weave Net 2.8.1 (see the README, 'Overlays')")
        started = time.monotonic()
        try:
            image = self._start_engines()
            self._routers()
            self._run_containers(image, self._attach, network_mode="none")
        except BaseException:
            self.down()
            raise
        self.testbed.count_udp(CONTROL_PORT)
        self.testbed.count_udp(FASTDP_PORT)
        self._refresh_status()
        if self.encrypted and "fastdp" in self._kinds() and not self.remote:
            ok, why = esp_available(self.testbed.wan)
            if not ok:
                self.down()
                raise OverlayUnavailable(f"Weave's fastdp encrypts with IPsec: {why}")
        self.timings["up_s"] = time.monotonic() - started
        self._progress(f"up in {self.timings['up_s']:.1f} s: datapath {', '.join(sorted(self._kinds()))}, MTU {self.mtu}, "
                       f"{len(self.containers)} containers")

    # --- the routers ------------------------------------------------------------------------
    def _peer_name(self, index: int) -> str:
        """A MAC-style peer name that carries the run id (weaver's default, from the machine
        id, is the same for every site on one machine)."""
        run = self.testbed.run_id
        return f"7a:{run[0:2]}:{run[2:4]}:{run[4:6]}:{index >> 8:02x}:{index & 0xFF:02x}"

    def _routers(self) -> None:
        bed = self.testbed
        sites = list(bed.sites.values())
        env = {"CHECKPOINT_DISABLE": "1"}  # no call home for a version check
        if self.encrypted or bed.shared_network:
            env["WEAVE_PASSWORD"] = secrets.token_hex(16)  # made for the run, never recorded
        trusted = []
        if bed.shared_network and not self.encrypted:
            # Weavers listening on a shared network: only a peer knowing the run's password may
            # join. The run's own sites are trusted subnets, so the data between them is not
            # encrypted and the datapath measured is the one asked for.
            trusted = ["--trusted-subnets", ",".join(f"{site.address}/32" for site in sites)]
        self._progress(f"starting weaver at {', '.join(h.name for h in sites)}"
                       + (" (encrypted)" if self.encrypted else ""))
        for index, site in enumerate(sites):
            arguments = ["--name", self._peer_name(index + 1), "--nickname", site.name,
                         "--host", site.address, "--port", str(CONTROL_PORT), "--http-addr", HTTP_ADDR,
                         "--status-addr", "", "--metrics-addr", "", "--docker-api", "", "--no-dns", "--no-discovery",
                         "--ipalloc-range", self.ipalloc_range, "--ipalloc-init", f"consensus={len(sites)}",
                         *trusted]
            peers = [other.address for other in sites if other is not site]  # after every flag: Go stops there
            name = f"weaver-{site.name}"
            self._start_daemon(name, site.name, [
                self._binary("weaver"), *arguments, "--db-prefix",
                str(self._daemon_dir(name) / "weave"), *peers], env=env, own_pid_namespace=True)
        self._wait_for_mesh()

    def _http(self, site: str, path: str) -> dict:
        if self.remote:
            result = self._on_site(site, ["python3", "-c", GET, path], 20)
            return json.loads(result.stdout) if result.ok else {}
        # In the site's namespace from this process: no interpreter started per request, which
        # matters when the state is polled during a WAN fault beside a 10 ms probe.
        host, port = HTTP_ADDR.rsplit(":", 1)
        try:
            with procs.connect_in_netns(self.testbed.netns_of(site), host, int(port), timeout=5) as conn:
                conn.sendall(f"GET {path} HTTP/1.0\r\nAccept: application/json\r\n\r\n".encode())
                reply = b"".join(iter(lambda: conn.recv(65536), b""))
        except OSError:
            return {}
        head, _, body = reply.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
            return {}
        try:
            return json.loads(body)
        except ValueError:
            return {}

    def _wait_for_mesh(self) -> None:
        """Every router has an established connection to every other: the mesh gossips over
        the WAN, so the wait scales with its worst RTT, and with the sites (each router
        handshakes with every other: 190 connections on a 20-site mesh did not all form in
        35 s on two cores)."""
        timeout = 30 + self._worst_rtt_s() * 200 + 3 * len(self.testbed.sites)
        started = time.monotonic()
        deadline = started + timeout
        others = len(self.testbed.sites) - 1
        while time.monotonic() < deadline:
            self._check_daemons()
            self._refresh_status()
            established = {site: sum(c["state"] == "established" for c in conns)
                           for site, conns in self.connections.items()}
            if len(established) == len(self.testbed.sites) and all(n == others for n in established.values()):
                self._progress(f"mesh established in {time.monotonic() - started:.1f} s")
                return
            time.sleep(0.3)
        logs = "\n".join(f"--- {d.name}:\n{d.log_tail(8)}" for d in self.daemons)
        raise EngineError(f"Weave mesh did not form within {timeout:.0f} s (established connections per site: "
                          f"{ {s: [c['state'] for c in conns] for s, conns in self.connections.items()} }); "
                          f"this is the environment failing, not a measurement\n{logs}")

    def _refresh_status(self) -> None:
        with concurrent.futures.ThreadPoolExecutor(len(self.testbed.sites)) as pool:
            reports = dict(zip(self.testbed.sites, pool.map(lambda s: self._http(s, "/report"),
                                                             self.testbed.sites)))
        for site, report in reports.items():
            self.router[site], self.connections[site] = parse_report(report)

    timers = (
        ("sleeve heartbeat", "0.5 s until confirmed, then 10 s", "weave router/network_router.go FastHeartbeat, "
                                                                  "SlowHeartbeat"),
        ("dead connection", "60 s without a heartbeat (6 missed)", "weave router/network_router.go HeartbeatTimeout"),
        ("reconnect", "after 2 s, then x1.5 per try, at most 6 min", "weaveworks/mesh connection_maker.go"),
        ("relay", "through a third peer once the direct connection is dead and gossip says so",
         "weaveworks/mesh routes.go"),
    )

    def expected_outage_s(self, fault, logs: dict[str, list[str]] | None = None) -> tuple[float, float]:
        """Under 50 s down, the connection outlives the cut and traffic waits for it; beyond,
        it is declared dead 60 s after the last heartbeat it had (one came up to 10 s before
        the cut) and traffic is relayed by a third peer soon after."""
        low, high = super().expected_outage_s(fault, logs)
        return (50.0, 62.0) if low > 50.0 else (low, high + 2.0)

    def control_state(self) -> dict[str, str]:
        """Every router's connection to every peer, as weaver reports it ("BRA->LJU":
        "established", "failed", "retrying", ...), and its route to every peer ("route
        BRA->LJU": "direct", "via AMS"): the path a relay takes, from Weave's own table."""
        self._refresh_status()
        site_of = {self.testbed.address(site): site for site in self.testbed.sites}
        state = {f"{site}->{site_of.get(str(c['address']).rsplit(':', 1)[0], c['address'])}":
                 f"{c['state']}" + (f" ({c['info']})" if c['state'] != "established" and c.get("info") else "")
                 for site, conns in self.connections.items() for c in conns}
        state.update({f"route {site}->{peer}": way for site, about in self.router.items()
                      for peer, way in (about.get("routes") or {}).items()})
        return state

    # --- containers -------------------------------------------------------------------------
    def _attach(self, engine: Engine, container) -> str:
        """Weave's CNI plugin, run in the site (where its weaver listens), puts the container's
        namespace on the weave bridge with an address from Weave's IPAM."""
        config = json.dumps({"cniVersion": "0.3.0", "name": "weave", "type": "weave-net"})
        pid = container.attrs["State"]["Pid"]
        weaveutil = self._binary("weaveutil")
        result = self._on_site(engine.site, [
            "env", "CNI_COMMAND=ADD", f"CNI_CONTAINERID={container.id}", f"CNI_NETNS=/proc/{pid}/ns/net",
            "CNI_IFNAME=eth0", f"CNI_PATH={'/usr/local/bin' if self.remote else weaveutil.rsplit('/', 1)[0]}",
            f"WEAVE_HTTP_ADDR={HTTP_ADDR}", weaveutil, "cni-net"], 60 + self._worst_rtt_s() * 100, input=config)
        try:
            answer = json.loads(result.stdout)
            return answer["ips"][0]["address"].split("/")[0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise EngineError(f"Weave's CNI plugin could not attach the container at site {engine.site} "
                              f"(exit {result.rc}): {(result.stdout + result.stderr).strip()[-500:]}\n"
                              f"weaver of {engine.site}:\n{self._daemon_of(engine.site).log_tail(8)}") from None

    def _daemon_of(self, site: str) -> procs.Daemon:
        return next(d for d in self.daemons if d.name == f"weaver-{site}")

    # --- what the records say ---------------------------------------------------------------
    def _datapath_kind(self, src: str) -> str:
        kinds = {c["datapath"] for c in self.connections.get(src, []) if c["state"] == "established"}
        return kinds.pop() if len(kinds) == 1 else ",".join(sorted(kinds)) or "unknown"

    def _datapath(self, src: str, dst: str) -> dict:
        kind = self._datapath_kind(src)
        return {
            "kind": f"weave-{kind}",
            "weave_datapath": kind,
            "udp_port": FASTDP_PORT if kind == "fastdp" else CONTROL_PORT,
            "encrypted": self.encrypted,
            **({"cipher": "NaCl secretbox (XSalsa20-Poly1305)" if kind == "sleeve" else "IPsec ESP (AES-GCM)"}
               if self.encrypted else {}),
            "encryption_reported": self.router.get(src, {}).get("encryption"),
            "peers_authenticated": self.encrypted or self.testbed.shared_network,  # by a password made for the run
            "peer_connections": {site: [{k: c[k] for k in ("address", "state", "info", "mtu", "encrypted")}
                                        for c in conns]
                                 for site, conns in self.connections.items() if site in (src, dst)},
            "ipam_range": self.ipalloc_range,
        }

    def _kinds(self) -> set[str]:
        return {c["datapath"] for conns in self.connections.values() for c in conns if c["state"] == "established"}

    def wire_counters(self) -> dict[str, int]:
        """Packets of the datapath Weave reports (sleeve: UDP 6783, fastdp: UDP 6784) on the WAN."""
        return self.testbed.udp_packets(FASTDP_PORT if self._kinds() == {"fastdp"} else CONTROL_PORT)


class EncryptedWeaveOverlay(WeaveOverlay):
    """The same with a network password: sleeve encrypts with NaCl (works anywhere); fastdp
    would use IPsec ESP, which some kernels lack."""

    name = "weave-encrypted"
    label = "Weave Net, encrypted"
    in_all = False
    description = "Weave Net with --password (sleeve: NaCl; fastdp: IPsec ESP)"
    encrypted = True
