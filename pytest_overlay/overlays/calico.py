"""Calico's data plane, rebuilt from real parts: calico-node (felix, confd, its BIRD) cannot
be had here, so this is a model, and every record says so.

What is real: BIRD (Debian's bird2) at every site, in an iBGP full mesh (AS 64512) over the
WAN, each site announcing its own /26 block of the pool; the kernel routes BIRD installs;
containers attached as Calico attaches them, a veth whose host end (`cali...`) has a /32
route and proxy ARP, and whose container end routes everything via 169.254.1.1. No
encapsulation: packets cross the WAN with the containers' own addresses, and the records
count them.

On real hosts the same BIRD runs on each host, started over ssh (bird2 installed there,
checked before anything starts); at the end the run removes its FORWARD rules for the
cali veths and any route into the pool that a killed BIRD left behind.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import time

from .. import procs
from ..inputs.model import AddressFamily
from ..testbeds.contract import HostNeeds, Testbed
from ..testbeds.engines import Engine, EngineError
from ..testbeds.hostnet import Footprint
from .base import OverlayUnavailable
from .containers import ContainerOverlay

# BIRD announces a /26 block per site; a topology's `ranges:` moves the pool.
FAMILY = AddressFamily("calico", "10.48.0.0/16", 26, "Calico's pool")
POOL = ipaddress.ip_network(FAMILY.default)
BLOCK_PREFIX = 26
AS_NUMBER = 64512
TOOLS = {"bird": "bird2", "birdc": "bird2"}
BINARIES = {"bird": "BIRD, the BGP daemon", "birdc": "BIRD's client"}  # on every real host
FORWARD_RULES = (["-i", "cali+"], ["-o", "cali+"])  # what felix would allow: workload traffic
# What BIRD leaves on a host besides its process: the FORWARD rules, and, if it was killed,
# its routes into the pool.
HOST_FOOTPRINT = Footprint("calico", marks=("cali+",), chain_prefixes=("cali-",), routes_within=str(POOL))
HOST_NEEDS = HostNeeds(
    FAMILY,
    binaries={binary: (what, "apt-get install bird2 (its service need not run)") for binary, what in BINARIES.items()},
    rivals={"calico-node": "Calico", "bird": "BIRD (Calico's BGP)"},
    listens={179: ("a BGP speaker already listens on 179/tcp (a BIRD of someone else's?)",
                   "run on hosts without one, or stop it (systemctl stop bird)")},
    footprint=HOST_FOOTPRINT)
MODEL = ("model of Calico's data plane: real BIRD iBGP full mesh, /26 blocks, cali veths with /32 routes and "
         "proxy ARP; calico-node (felix, confd) not run")


def block(index: int, pool: ipaddress.IPv4Network = POOL) -> ipaddress.IPv4Network:
    """The index-th /26 block of the pool, one per site (Calico's default block size)."""
    return next(itertools.islice(pool.subnets(new_prefix=BLOCK_PREFIX), index, None))


def bird_config(router_id: str, own_block: str, peers: dict[str, str], pool: ipaddress.IPv4Network = POOL) -> str:
    """BIRD 2 configuration for one site: announce the site's block to every peer (iBGP,
    multihop: peers are sites, not neighbours on a segment) and install what it learns of
    the pool's blocks, and nothing else (a peer's default route never reaches the kernel)."""
    sessions = "\n".join(f"protocol bgp peer_{name} from mesh {{ neighbor {address} as {AS_NUMBER}; }}"
                         for name, address in peers.items())
    return f"""\
router id {router_id};
protocol device {{ scan time 10; }}
protocol kernel {{
  learn;                 # the testbed's routes to the other sites resolve BGP next hops
  ipv4 {{ import all; export where source = RTS_BGP; }};
}}
protocol static blocks {{
  ipv4;
  route {own_block} blackhole;
}}
template bgp mesh {{
  local {router_id} as {AS_NUMBER};
  multihop;
  connect retry time 1;
  ipv4 {{
    import where net ~ [ {pool}{{{BLOCK_PREFIX},{BLOCK_PREFIX}}} ];
    export where proto = "blocks";
    gateway recursive;
  }};
}}
{sessions}
"""


def parse_protocols(shown: str) -> dict[str, str]:
    """The BGP sessions in BIRD's `show protocols` (as birdc prints it, and bird_query),
    by peer site (bird_config names each protocol peer_SITE): the session's state,
    "Established", when the protocol is up; else the protocol's state and BIRD's reason,
    without the time it entered that state (a state polled twice reads the same)."""
    sessions = {}
    for line in shown.splitlines():
        fields = line.split()  # Name Proto Table State Since Info...
        if len(fields) > 3 and fields[0].startswith("peer_"):
            sessions[fields[0][5:]] = fields[-1] if fields[3] == "up" else " ".join([fields[3], *fields[5:]])
    return sessions


def bird_query(control: str, command: str, timeout: float = 5.0) -> str:
    """A BIRD command over its control socket, without starting birdc (this is polled during a
    WAN fault, beside a 10 ms probe); the reply as birdc prints it ("" if BIRD is not there).
    BIRD's replies are lines of a 4-digit code, '-' (more follows) or ' ' (last), and text; a
    line starting with a space continues the previous one."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(control)
            buffer = b""
            while b"\n" not in buffer:  # the greeting: "0001 BIRD 2.x ready."
                chunk = conn.recv(4096)
                if not chunk:
                    return ""
                buffer += chunk
            conn.sendall(command.encode() + b"\n")
            buffer, lines = buffer.partition(b"\n")[2], []
            while True:
                while b"\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return "\n".join(lines)
                    buffer += chunk
                raw, _, buffer = buffer.partition(b"\n")
                line = raw.decode(errors="replace")
                if line[:4].isdigit():
                    if line[4:5] == " " and line[0] in "089":  # 0000 done; 8xxx/9xxx errors end it too
                        return "\n".join(lines + ([line[5:]] if line[0] != "0" else []))
                    lines.append(line[5:])
                elif line.startswith(" "):
                    lines.append(line[1:])
    except OSError:
        return ""


class CalicoOverlay(ContainerOverlay):
    name = "calico"
    ipv6_unsupported = ("the BIRD configuration it writes names an IPv4 router id and IPv4 peers: given IPv6 ones BIRD "
                        "stops with \"syntax error, unexpected IP6\" (tried here); an IPv4 pool over IPv6 peers needs "
                        "BGP's extended next hop, not built")
    label = "Calico (model)"
    in_all = True
    family = FAMILY
    packages = ("bird2",)
    description = "Calico's data plane (model): BIRD iBGP full mesh AS 64512, /26 blocks, no encapsulation"
    host_needs = HOST_NEEDS
    wire_key = "workload_packets_on_wan"
    wire_what = "unencapsulated packets from workload addresses"

    def __init__(self, testbed: Testbed, **settings) -> None:
        super().__init__(testbed, **settings)
        self.pool = ipaddress.ip_network(testbed.topology.range_of(FAMILY))
        self.blocks = {site: block(i, self.pool) for i, site in enumerate(testbed.sites)}
        self.sessions: dict[str, dict[str, str]] = {}  # site -> peer -> BGP state
        self.learned: dict[str, dict[str, str]] = {}  # site -> block -> the kernel route BIRD installed

    def up(self) -> None:
        missing = self.ops.missing(procs.apt(TOOLS))
        if missing:
            raise OverlayUnavailable("Calico's model cannot run here; missing: " + "; ".join(missing))
        started = time.monotonic()
        try:
            self._birds()
            self._wait_for_routes()
            image = self._start_engines()
            self._run_containers(image, self._attach, network_mode="none")
        except BaseException:
            self.down()
            raise
        self.testbed.count("calico", ["-s", str(self.pool)])  # on real hosts: not ours to count
        self.timings["up_s"] = time.monotonic() - started
        self._progress(f"up in {self.timings['up_s']:.1f} s: {len(self.blocks)} blocks learned everywhere, "
                       f"MTU {self.mtu}, {len(self.containers)} containers")

    # --- BGP --------------------------------------------------------------------------------
    def _socket(self, site: str) -> str:
        return str(self._daemon_dir(f"bird-{site}") / "bird.ctl")

    def _birdc(self, site: str, *command: str) -> procs.CommandResult:
        return self._on_site(site, ["birdc", "-s", self._socket(site), *command], 10)

    def _birds(self) -> None:
        sites = self.testbed.sites
        self._progress(f"BIRD at {', '.join(sites)}: iBGP full mesh, AS {AS_NUMBER}")
        for site, handle in sites.items():
            name = f"bird-{site}"
            peers = {other: h.address for other, h in sites.items() if other != site}
            config = self.state_dir / f"{site}-bird.conf"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(bird_config(handle.address, str(self.blocks[site]), peers, self.pool))
            (config_path,) = self._site_files(name, site, {"bird.conf": config}).values()
            self._start_daemon(name, site, ["bird", "-f", "-c", config_path, "-s", self._socket(site),
                                            "-P", str(self._daemon_dir(name) / "bird.pid")])
            # Calico's felix lets workload traffic through; dockerd's FORWARD policy would drop it.
            for rule in FORWARD_RULES:
                self._on_site(site, ["iptables", "-w", "-I", "FORWARD", *rule, "-j", "ACCEPT"], 30).check()

    timers = (
        ("BGP hold", "240 s (a session survives shorter cuts; its routes stay)", "BIRD 2 default hold time"),
        ("BGP keepalive", "80 s (hold / 3)", "BIRD 2 default keepalive time"),
        ("BGP connect retry", "1 s in this model (BIRD's default 120 s)", "bird_config() here"),
    )

    def _sessions(self, site: str) -> dict[str, str]:
        """BIRD's BGP sessions at a site, by peer site: "Established", else BIRD's state and why."""
        shown = self._birdc(site, "show", "protocols").stdout if self.remote else \
            bird_query(self._socket(site), "show protocols")
        return parse_protocols(shown)

    def control_state(self) -> dict[str, str]:
        """Every BGP session, as BIRD at each end says it ("BRA->LJU": "Established")."""
        return {f"{site}->{peer}": state for site in self.testbed.sites
                for peer, state in self._sessions(site).items()}

    def _refresh(self) -> list[str]:
        """Every BGP session's state and every block's kernel route; what is still missing."""
        missing = []
        for site in self.testbed.sites:
            self.sessions[site] = self._sessions(site)
            self.learned[site] = {}
            for other, network in self.blocks.items():
                if other == site:
                    continue
                route = self._on_site(site, ["ip", "-4", "-o", "route", "show", str(network)], 30).stdout
                if "proto bird" in route:
                    self.learned[site][str(network)] = " ".join(route.split())
                else:
                    missing.append(f"{site} has not learned {other}'s block {network}")
            missing += [f"BGP {site}->{peer}: {state}" for peer, state in self.sessions[site].items()
                        if state != "Established"]
        return missing

    def _wait_for_routes(self) -> None:
        timeout = 30 + self._worst_rtt_s() * 100
        deadline = time.monotonic() + timeout
        while True:
            self._check_daemons()
            missing = self._refresh()
            if not missing:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {d.name}:\n{d.log_tail(6)}" for d in self.daemons)
                raise EngineError(f"Calico's BGP mesh did not converge within {timeout:.0f} s: "
                                  + "; ".join(missing) + f"\n{logs}")
            time.sleep(0.3)

    # --- workloads --------------------------------------------------------------------------
    def _attach(self, engine: Engine, container) -> str:
        """Calico's way: a veth with a /32 on each workload, proxy ARP at the host's end."""
        address = str(next(self.blocks[engine.site].hosts()))
        return self._attach_routed(engine, container, address, f"cali{container.id[:11]}")

    # --- what the records say ---------------------------------------------------------------
    def _datapath(self, src: str, dst: str) -> dict:
        return {
            "kind": "calico-model",
            "model": MODEL,
            "encapsulation": None,
            "as": AS_NUMBER,
            "blocks": {site: str(self.blocks[site]) for site in (src, dst)},
            "bgp_sessions": {site: self.sessions.get(site, {}) for site in (src, dst)},
            "routes_learned": {site: self.learned.get(site, {}) for site in (src, dst)},
        }

    def wire_counters(self) -> dict[str, int] | None:
        """Packets with a workload's own source address on the WAN: unencapsulated traffic."""
        return self.testbed.packets("calico")

    def routed(self) -> dict[str, list[str]]:
        return {site: [str(network)] for site, network in self.blocks.items()}
