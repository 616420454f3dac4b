"""The topology's model: sites, WAN links and their directions, the circuits to measure,
the WAN faults and the load a run may apply. Made by the parser (topology.py), read by
every layer above."""

from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass, field, replace

SITE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,11}$")
RESERVED_SITE_NAMES = {"wan"}  # the testbed's own namespace is ovl<run>-wan
MAX_LINKS = 2048  # the delay line's queues (two per link); MACs hold 16 384


@dataclass(frozen=True)
class RemoteHost:
    """A real Docker host standing for a site. Docker over TCP only with TLS and a client
    certificate; `emulate` applies the site's link keys with netem on `interface`."""

    address: str  # where other sites reach it: `address`, else ssh's, else docker's
    ssh: str | None = None  # user@address[:port]
    docker: str | None = None  # tcp://address:port
    tls: dict[str, str] | None = None  # ca, cert, key: absolute paths
    interface: str | None = None
    emulate: bool = False
    identity: str | None = None  # ssh private key file, absolute
    known_hosts: str | None = None  # ssh known_hosts file, absolute


@dataclass(frozen=True)
class Site:
    name: str
    index: int
    location: str = ""
    host: RemoteHost | None = None


@dataclass(frozen=True)
class Direction:
    """What one direction of a link does to packets."""

    src: str
    dst: str
    delay_ms: float
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    rate_mbit: float | None = None
    queue_ms: float | None = None  # the buffer in front of the rate limit; None: DEFAULT_QUEUE
    mtu: int | None = None  # the largest packet it forwards (bytes, IP); None: the wire's 1500
    icmp_drop: bool = False  # its "fragmentation needed" never reaches the sender: a path MTU black hole
    reorder_pct: float = 0.0  # packets sent on at once, ahead of those the link still holds
    duplicate_pct: float = 0.0  # packets delivered twice

    @property
    def buffer_ms(self) -> float | None:
        """How long a packet may wait behind the rate limit before the link drops it (None:
        no rate limit, so no queue builds). Default: the link's RTT plus 10 ms, about the
        bandwidth-delay product a router of such a WAN is given."""
        if not self.rate_mbit:
            return None
        return self.queue_ms if self.queue_ms is not None else 2 * self.delay_ms + DEFAULT_QUEUE_EXTRA_MS


DEFAULT_QUEUE_EXTRA_MS = 10.0
# The sites' own address families, by `underlay:`; the first is what overlays and probes use.
UNDERLAYS = {"ipv4": (4,), "ipv6": (6,), "dual-stack": (4, 6)}
WIRE_MTU = 1500  # what every link carries unless the topology gives its `mtu`
MTU_RANGE = (576, 9000)  # IPv4's minimum datagram every host must take, to a jumbo frame


@dataclass(frozen=True)
class Link:
    index: int
    a: str
    b: str
    forward: Direction  # a -> b
    reverse: Direction  # b -> a

    @property
    def rtt_ms(self) -> float:
        return self.forward.delay_ms + self.reverse.delay_ms

    def direction(self, src: str) -> Direction:
        return self.forward if src == self.a else self.reverse


@dataclass(frozen=True)
class Circuit:
    src: str
    dst: str

    @property
    def id(self) -> str:
        return f"{self.src}-{self.dst}"


FAULT_KINDS = {
    "cut": "the link between two sites drops everything for `seconds`, then comes back",
    "partition": "every link of one site drops everything for `seconds`, then heals",
    "flap": "the link goes down for `seconds` and up for `up_s`, `times` times",
    "loss": "the link loses `loss_pct` % of packets each way for `seconds`",
    "reroute": "the link's RTT steps up by `add_rtt_ms` for `seconds`, as when a provider moves a circuit",
    "mtu": "the link's MTU drops to `mtu` for `seconds`, as when a path moves onto a tunnel (`icmp: drop`: and its "
           "\"fragmentation needed\" never reaches the sender)",
}


@dataclass(frozen=True)
class Fault:
    """A WAN fault scenario: what happens to which links, and when, from its start."""

    name: str
    kind: str
    links: tuple["Link", ...]  # the links it touches
    seconds: float  # how long the fault (each down time, for a flap) lasts
    probe: Circuit  # the circuit it affects, probed throughout
    watch: Circuit | None = None  # a circuit it leaves alone, probed beside it
    site: str | None = None  # the partitioned site
    up_s: float = 0.0
    times: int = 1
    loss_pct: float = 100.0
    add_rtt_ms: float = 0.0
    mtu: int | None = None  # an mtu fault: the link's MTU while it is on
    icmp_drop: bool = False  # ... and whether the link's "fragmentation needed" is dropped meanwhile

    @property
    def duration_s(self) -> float:
        """From the fault's start to its last heal."""
        return self.times * self.seconds + (self.times - 1) * self.up_s

    def faulty(self) -> dict[str, Direction]:
        """The touched link directions ("A->B") while the fault is on."""
        out = {}
        for link in self.links:
            for d in (link.forward, link.reverse):
                if self.kind == "reroute":
                    out[f"{d.src}->{d.dst}"] = replace(d, delay_ms=d.delay_ms + self.add_rtt_ms / 2)
                elif self.kind == "mtu":
                    out[f"{d.src}->{d.dst}"] = replace(d, mtu=self.mtu, icmp_drop=self.icmp_drop)
                else:
                    out[f"{d.src}->{d.dst}"] = replace(d, loss_pct=self.loss_pct)
        return out

    def healthy(self) -> dict[str, Direction]:
        """The touched link directions as the topology gives them."""
        return {f"{d.src}->{d.dst}": d for link in self.links for d in (link.forward, link.reverse)}

    def steps(self) -> list[tuple[float, str, dict[str, Direction]]]:
        """(seconds from the fault's start, "fault" or "heal", the directions' new values)."""
        out = []
        for i in range(self.times):
            start = i * (self.seconds + self.up_s)
            out += [(start, "fault", self.faulty()), (start + self.seconds, "heal", self.healthy())]
        return out


@dataclass(frozen=True)
class Load:
    """The latency-under-load experiment (`-m load`): the circuits it runs on, and the link
    buffers (ms) it runs each at besides the links' own."""

    circuits: list[Circuit]
    queues_ms: tuple[float, ...]

    def levels(self) -> list[tuple[Circuit, float | None]]:
        """(circuit, buffer) pairs; None: the links' own buffer."""
        return [(c, q) for c in self.circuits for q in (None, *self.queues_ms)]


@dataclass
class Topology:
    name: str
    path: str
    sites: dict[str, Site]
    links: list[Link]
    circuits: list[Circuit]
    hub: str | None = None
    manager: str | None = None
    kv: str | None = None  # where an overlay's key-value store runs (Flannel's etcd)
    faults: dict[str, Fault] = field(default_factory=dict)
    load: "Load" = field(default_factory=lambda: Load([], ()))
    ranges: dict[str, str] = field(default_factory=dict)  # `ranges:`: family -> CIDR, where the file moves one
    rtt_sources: dict[str, str] = field(default_factory=dict)  # "A-B" -> where its RTT came from (a GTS file's)
    underlay: str = "ipv4"  # the sites' own addresses: a key of UNDERLAYS
    _routes: dict = field(default_factory=dict, repr=False)

    def stream_circuit(self) -> "Circuit":
        """The streaming experiment's path: the server at the hub (else the first circuit's
        source), the clients at the far end of the first circuit from it."""
        hub = self.hub or self.circuits[0].src
        for c in self.circuits:
            if hub in (c.src, c.dst):
                return Circuit(hub, c.dst if c.src == hub else c.src)
        return Circuit(hub, next(s for s in self.sites if s != hub))

    @property
    def families(self) -> tuple[int, ...]:
        """The IP versions the sites hold addresses of; the first is the one overlays use."""
        return UNDERLAYS[self.underlay]

    @property
    def kv_site(self) -> str:
        """The key-value store's site: `kv`, else the swarm manager, else the first site."""
        return self.kv or self.manager or next(iter(self.sites))

    def _index(self) -> dict[str, dict[str, Link]]:
        """Each site's links by peer, built once (again if links were added since)."""
        if self._routes.get("links") != len(self.links):
            self._routes.clear()
            self._routes["links"] = len(self.links)
            adjacent: dict[str, dict[str, Link]] = {}
            for link in self.links:
                adjacent.setdefault(link.a, {})[link.b] = link
                adjacent.setdefault(link.b, {})[link.a] = link
            self._routes["adjacent"] = adjacent
        return self._routes["adjacent"]

    def link_between(self, a: str, b: str) -> Link | None:
        return self._index().get(a, {}).get(b)

    def path_between(self, src: str, dst: str) -> list[str]:
        """Sites from src to dst (both included) on the fewest hops, then the lowest delay.

        As on a real WAN, linked sites talk over their own link even where a detour is faster.
        One search from each source finds its paths to every site: all pairs cost
        O(sites x links x log sites), not a search per pair.
        """
        self._index()
        trees = self._routes.setdefault("trees", {})
        if src not in trees:
            trees[src] = self._tree(src)
        previous = trees[src]
        if dst != src and dst not in previous:
            return []
        hops = [dst]
        while hops[-1] != src:
            hops.append(previous[hops[-1]])
        return hops[::-1]

    def _tree(self, src: str) -> dict[str, str]:
        """Dijkstra from src on (hops, delay): each reached site's predecessor."""
        adjacent = self._index()
        best: dict[str, tuple[int, float]] = {src: (0, 0.0)}
        previous: dict[str, str] = {}
        heap = [((0, 0.0), src)]
        while heap:
            cost, site = heapq.heappop(heap)
            if cost > best[site]:
                continue
            for peer, link in adjacent.get(site, {}).items():
                new = (cost[0] + 1, cost[1] + link.direction(site).delay_ms)
                if new < best.get(peer, (math.inf, math.inf)):
                    best[peer], previous[peer] = new, site
                    heapq.heappush(heap, (new, peer))
        return previous

    def directions(self, src: str, dst: str) -> list[Direction]:
        """The link directions a packet from src to dst crosses, in order."""
        hops = self.path_between(src, dst)
        return [self.link_between(a, b).direction(a) for a, b in zip(hops, hops[1:])]

    def expected(self, circuit: Circuit) -> dict[str, float | None]:
        """What the emulated WAN should show on a circuit: RTT, jitter, loss and rate, the
        path's MTU each way, where it drops ICMP "fragmentation needed", and its reordering."""
        there, back = self.directions(circuit.src, circuit.dst), self.directions(circuit.dst, circuit.src)
        rates = [d.rate_mbit for d in there if d.rate_mbit]
        delivered = 1.0
        for d in there:
            delivered *= 1 - d.loss_pct / 100
        return {
            "rtt_ms": sum(d.delay_ms for d in there + back),
            "jitter_ms": sum(d.jitter_ms for d in there + back),
            "loss_pct": (1 - delivered) * 100,
            "rate_mbit": min(rates) if rates else None,
            "queue_ms": {f"{d.src}->{d.dst}": d.buffer_ms for d in there + back if d.buffer_ms is not None},
            "mtu": min(d.mtu or WIRE_MTU for d in there),
            "mtu_back": min(d.mtu or WIRE_MTU for d in back),
            "icmp_dropped": [f"{d.src}->{d.dst}" for d in there + back if d.icmp_drop],
            "reorder_pct": round((1 - math.prod(1 - d.reorder_pct / 100 for d in there)) * 100, 6),
            "duplicate_pct": round((math.prod(1 + d.duplicate_pct / 100 for d in there) - 1) * 100, 6),
            "underlay": self.underlay,
        } | ({"rtt_source": {f"{d.src}-{d.dst}": self.rtt_sources.get(f"{d.src}-{d.dst}") or
                             self.rtt_sources.get(f"{d.dst}-{d.src}", "") for d in there}} if self.rtt_sources else {})

    def range_of(self, family: AddressFamily) -> str:
        """The range an overlay's containers take here: the topology's, else the family's own."""
        return self.ranges.get(family.name, family.default)

    def with_queue(self, circuit: Circuit, queue_ms: float | None) -> list[Direction]:
        """The rate-limited directions of the circuit's path, both ways, with their buffer set
        to queue_ms (None: the topology's own)."""
        directions = self.directions(circuit.src, circuit.dst) + self.directions(circuit.dst, circuit.src)
        return [d if queue_ms is None else replace(d, queue_ms=queue_ms) for d in directions if d.rate_mbit]


@dataclass(frozen=True)
class AddressFamily:
    """The address range an overlay gives its containers, carved into one block per site. An
    overlay kind declares it; a topology's `ranges:` moves it (say, off a range the hosts
    already route)."""

    name: str  # the `ranges:` key
    default: str  # the range when the topology names none
    block: int  # the prefix length of each site's block
    what: str  # how an error names it: "Weave Net's IPAM range"
