"""Topology files: sites, WAN links and the circuits to measure, validated before anything runs.

A topology is YAML::

    name: geant
    sites:
      AMS: {location: Amsterdam}
      MIL: {location: Milan}
    links:
      - {between: [AMS, MIL], rtt_ms: 36.5, jitter_ms: 0.1, loss_pct: 0, rate_mbit: 1000}
    circuits: [[AMS, MIL]]          # optional; default: every linked pair

A site may name a real host (``host: {ssh: user@address[:port]}``, or ``{docker:
tcp://address:2376, tls: {ca, cert, key}}``, optionally ``emulate: true`` with
``interface``): see RemoteHost.

A ``between`` link is symmetric: ``rtt_ms`` is split evenly (or give ``delay_ms``, one way),
and jitter, loss, rate, ``mtu`` (576..9000 bytes), ``icmp: drop`` (its "fragmentation needed"
never reaches the sender), ``reorder_pct`` and ``duplicate_pct`` apply to each direction. A link given as
``{from: A, to: B, delay_ms: ...}`` is one direction; its reverse must be given the same way.
Every error names the file, the line and the field.

``underlay: ipv6`` gives the sites IPv6 addresses only (in 2001:2::/48, the benchmarking
range's IPv6 twin), ``dual-stack`` both (overlays then use IPv4); ``ipv4`` is the default.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from ..kinds import families as overlay_families
from ..paths import TOPOLOGY_DIR
from . import gts, scenarios
from .hostspec import parse_host
from .model import (
    FAULT_KINDS,
    MAX_LINKS,
    MTU_RANGE,
    RESERVED_SITE_NAMES,
    SITE_NAME,
    UNDERLAYS,
    AddressFamily,
    Circuit,
    Direction,
    Fault,
    Link,
    Load,
    RemoteHost,
    Site,
    Topology,
)
from .yamlfile import Checker, InputError, LineDict, kind_of, line_of, load_yaml

TOP_KEYS = {"name", "sites", "links", "circuits", "hub", "manager", "kv", "description", "faults", "load", "ranges",
            "gts", "rtts", "underlay"}
TESTBED_ADDRESSES = ipaddress.ip_network("198.18.0.0/15")  # the sites' and the lab's own (RFC 2544)
# Bounds a topology cannot pass: beyond them it would only exhaust a host, never describe a WAN.
MAX_RATE_MBIT = 400_000  # the fastest Ethernet there is
SITE_KEYS = {"location", "host"}
LINK_KEYS = {"between", "from", "to", "rtt_ms", "delay_ms", "jitter_ms", "loss_pct", "rate_mbit", "queue_ms", "mtu",
             "icmp", "reorder_pct", "duplicate_pct"}
ICMP_POLICIES = {"pass": "the link's routers send \"fragmentation needed\" back to the sender (the default)",
                 "drop": "they are dropped on the way: a path MTU black hole"}
EMBEDDED_ONLY = ("mtu", "icmp", "reorder_pct", "duplicate_pct")  # what the embedded WAN's router does; a real host's path is its own


def resolve_path(spec: str) -> Path:
    """A topology given by path, or by the name of a file in topologies/."""
    path = Path(spec)
    if path.exists() or "/" in spec:
        return path
    if path.suffix in (".yaml", ".yml", ".dsl"):
        return TOPOLOGY_DIR / spec if (TOPOLOGY_DIR / spec).exists() else path
    return TOPOLOGY_DIR / f"{spec}.yaml"


def available() -> list[str]:
    return sorted([p.stem for p in TOPOLOGY_DIR.glob("*.yaml")] + [p.name for p in TOPOLOGY_DIR.glob("*.dsl")])


def load(spec: str | Path) -> Topology:
    """A topology file: our YAML (which may name a GTS file, `gts:`), or a GTS testbed (.dsl)."""
    path = resolve_path(str(spec))
    if not path.exists():
        raise InputError(path, None, "", f"no such topology file; bundled topologies: {', '.join(available())}")
    if path.suffix == ".dsl":
        data, sources = gts.load(path)
        topo = parse(data, path)
        topo.rtt_sources = sources
        return topo
    return parse(load_yaml(path), path)


def parse(data: Any, path: str | Path) -> Topology:
    check = Checker(path)
    if not isinstance(data, dict):
        raise InputError(path, line_of(data), "", f"a topology must be a mapping, got {kind_of(data)}")
    check.keys(data, TOP_KEYS, "")
    sources: dict[str, str] = {}
    if "gts" in data:
        data, sources = gts.companion(check, data, path)
    elif "rtts" in data:
        raise check.fail(data, "rtts", "rtts", "rtts: gives a GTS testbed's RTTs: name its file with gts: FILE.dsl")
    name = data.get("name", Path(path).stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise check.fail(data, "name", "name", f"must be a word of letters, digits, '_', '.', '-', got {name!r}")

    raw_sites = check.mapping(data.get("sites"), "sites", data, "sites")
    if len(raw_sites) < 2:
        raise check.fail(data, "sites", "sites", "a topology needs at least two sites")
    if len(raw_sites) > 200:
        raise check.fail(data, "sites", "sites", "at most 200 sites")
    sites: dict[str, Site] = {}
    for index, (site_name, spec) in enumerate(raw_sites.items()):
        if not isinstance(site_name, str) or not SITE_NAME.fullmatch(site_name):
            raise check.fail(raw_sites, site_name, f"sites.{site_name!r}" if not isinstance(site_name, str) else
                             f"sites.{site_name.encode('unicode_escape').decode()}",
                             "a site name is a letter then up to 11 letters, digits or '_'")
        if site_name in RESERVED_SITE_NAMES:
            raise check.fail(raw_sites, site_name, f"sites.{site_name}",
                             f"{site_name!r} is the name of the testbed's own namespace; choose another")
        spec = spec if spec is not None else LineDict()
        check.mapping(spec, f"sites.{site_name}", raw_sites, site_name)
        check.keys(spec, SITE_KEYS, f"sites.{site_name}")
        host = parse_host(check, spec, f"sites.{site_name}.host", Path(path).parent) if "host" in spec else None
        sites[site_name] = Site(site_name, index, str(spec.get("location", "")), host)
    remote = [s.name for s in sites.values() if s.host]
    if remote and len(remote) != len(sites):
        local = next(n for n, s in sites.items() if not s.host)
        raise check.fail(raw_sites, local, f"sites.{local}.host",
                         f"missing: sites {', '.join(remote)} name real hosts, so every site must "
                         "(a run is either embedded or across real hosts)")

    raw_links = data.get("links")
    if not isinstance(raw_links, list) or not raw_links:
        raise check.fail(data, "links", "links", "must be a non-empty list of links")
    directions: dict[tuple[str, str], tuple[Direction, int]] = {}
    pairs_seen: dict[frozenset, int] = {}
    for i, item in enumerate(raw_links):
        where = f"links[{i}]"
        check.mapping(item, where, raw_links)
        check.keys(item, LINK_KEYS, where)
        parsed = _parse_link(check, item, where, sites)
        for d, line in parsed:
            pair = frozenset((d.src, d.dst))
            if (d.src, d.dst) in directions or ("between" in item and pair in pairs_seen):
                first = directions[(d.src, d.dst)][1] if (d.src, d.dst) in directions else pairs_seen[pair]
                raise check.fail(item, None, where, f"duplicate link {d.src}->{d.dst} (first given on line {first})")
        for d, line in parsed:
            directions[(d.src, d.dst)] = (d, line)
            pairs_seen.setdefault(frozenset((d.src, d.dst)), line)

    shaped = next(((d, line) for d, line in directions.values()
                   if d.mtu or d.icmp_drop or d.reorder_pct or d.duplicate_pct), None)
    if remote and shaped:
        raise InputError(path, shaped[1], "links", f"{'/'.join(EMBEDDED_ONLY)} on {shaped[0].src}->{shaped[0].dst}: "
                                                    "across real hosts the path between them is the hosts' own; "
                                                    "remove them")
    buffered = next(((d, line) for d, line in directions.values() if d.queue_ms is not None), None)
    if remote and buffered:
        raise InputError(path, buffered[1], "links", f"queue_ms on {buffered[0].src}->{buffered[0].dst}: across real "
                                                     "hosts the links' buffers are the hosts' own; remove queue_ms")

    links: list[Link] = []
    linked: set[frozenset] = set()
    for (src, dst), (d, line) in directions.items():
        if (dst, src) not in directions:
            raise InputError(path, line, "links", f"link {src}->{dst} has no reverse direction: add {{from: {dst}, to: {src}, ...}}")
        if frozenset((src, dst)) not in linked:
            linked.add(frozenset((src, dst)))
            links.append(Link(len(links), src, dst, d, directions[(dst, src)][0]))

    if len(links) > MAX_LINKS:
        raise check.fail(data, "links", "links", f"{len(links)} links; at most {MAX_LINKS} (the delay line "
                                                  "has two queues per link, 4 096 in all)")
    reached = {site for link in links for site in (link.a, link.b)}
    for site_name in sites:
        if site_name not in reached:
            raise check.fail(raw_sites, site_name, f"sites.{site_name}", "no link reaches this site; link it or remove it")
    unreachable = _unreachable(sites, links)
    if unreachable:
        raise check.fail(data, "links", "links", f"sites {', '.join(unreachable)} cannot be reached from "
                                                  f"{next(iter(sites))}: the links form separate networks")
    underlay = data.get("underlay", "ipv4")
    if not isinstance(underlay, str) or underlay not in UNDERLAYS:
        raise check.fail(data, "underlay", "underlay", f"must be one of {', '.join(UNDERLAYS)}, got {underlay!r}")
    if remote and underlay != "ipv4":
        raise check.fail(data, "underlay", "underlay", "across real hosts the underlay is the hosts' own addresses: "
                                                       "remove underlay")
    topo = Topology(name=name, path=str(path), sites=sites, links=links, circuits=[], underlay=underlay)
    for key in ("hub", "manager", "kv"):
        if key in data:
            if not isinstance(data[key], str) or data[key] not in sites:
                raise check.fail(data, key, key, f"unknown site {data[key]!r}; sites: {', '.join(sites)}")
            setattr(topo, key, data[key])
    topo.circuits = _parse_circuits(check, data, topo)
    topo.faults = scenarios.parse_faults(check, data, topo)
    topo.load = scenarios.parse_load(check, data, topo)
    topo.ranges = _parse_ranges(check, data, len(sites))
    topo.rtt_sources = sources
    return topo


def _parse_ranges(check: Checker, data: LineDict, sites: int) -> dict[str, str]:
    """The `ranges:` section, {family: CIDR}, over the defaults of every overlay kind's
    address family; each must hold a block per site and keep clear of the testbed's own
    addresses."""
    families: dict[str, AddressFamily] = overlay_families()
    ranges: dict[str, str] = {}
    if "ranges" not in data:
        return ranges
    raw = check.mapping(data["ranges"], "ranges", data, "ranges")
    check.keys(raw, set(families), "ranges")
    for name, value in raw.items():
        where, family = f"ranges.{name}", families[name]
        try:
            network = ipaddress.IPv4Network(value) if isinstance(value, str) else None
        except ValueError as e:
            raise check.fail(raw, name, where, f"must be an IPv4 network such as {family.default}: {e}")
        if network is None:
            raise check.fail(raw, name, where, f"must be an IPv4 network such as {family.default}, got {value!r}")
        blocks = 2 ** (family.block - network.prefixlen) if network.prefixlen <= family.block else 0
        if blocks < sites:
            raise check.fail(raw, name, where, f"{network} holds {blocks} /{family.block} block(s); {sites} sites "
                                               "need one each")
        if network.overlaps(TESTBED_ADDRESSES):
            raise check.fail(raw, name, where, f"{network} overlaps the testbed's own {TESTBED_ADDRESSES}")
        ranges[name] = str(network)
    return ranges


def _unreachable(sites: dict[str, "Site"], links: list["Link"]) -> list[str]:
    """Sites that no path of links joins to the first site."""
    neighbours: dict[str, set[str]] = {s: set() for s in sites}
    for link in links:
        neighbours[link.a].add(link.b)
        neighbours[link.b].add(link.a)
    seen, todo = set(), [next(iter(sites))]
    while todo:
        site = todo.pop()
        if site not in seen:
            seen.add(site)
            todo.extend(neighbours[site] - seen)
    return [s for s in sites if s not in seen]


def _parse_link(check: Checker, item: LineDict, where: str, sites: dict[str, Site]) -> list[tuple[Direction, int]]:
    def site(value: Any, key: str) -> str:
        if not isinstance(value, str) or value not in sites:
            raise check.fail(item, key, f"{where}.{key}", f"unknown site {value!r}; sites: {', '.join(sites)}")
        return value

    common = dict(
        jitter_ms=check.number(item, "jitter_ms", f"{where}.jitter_ms", 0.0, maximum=10_000),
        loss_pct=check.number(item, "loss_pct", f"{where}.loss_pct", 0.0, maximum=100),
        rate_mbit=check.number(item, "rate_mbit", f"{where}.rate_mbit", None, positive=True, maximum=MAX_RATE_MBIT),
        queue_ms=check.number(item, "queue_ms", f"{where}.queue_ms", None, positive=True, maximum=10_000),
    )
    mtu = check.number(item, "mtu", f"{where}.mtu", None, minimum=MTU_RANGE[0], maximum=MTU_RANGE[1])
    if mtu is not None and mtu != int(mtu):
        raise check.fail(item, "mtu", f"{where}.mtu", f"must be a whole number of bytes, got {item['mtu']!r}")
    icmp = item.get("icmp", "pass")
    if not isinstance(icmp, str) or icmp not in ICMP_POLICIES:
        raise check.fail(item, "icmp", f"{where}.icmp", f"must be one of {', '.join(ICMP_POLICIES)}, got {icmp!r}")
    if icmp == "drop" and mtu is None:
        raise check.fail(item, "icmp", f"{where}.icmp", "a link drops \"fragmentation needed\" only where a packet "
                                                         "can be too big for it: give mtu too")
    common.update(mtu=None if mtu is None else int(mtu), icmp_drop=icmp == "drop",
                  reorder_pct=check.number(item, "reorder_pct", f"{where}.reorder_pct", 0.0, maximum=100),
                  duplicate_pct=check.number(item, "duplicate_pct", f"{where}.duplicate_pct", 0.0, maximum=100))
    if common["queue_ms"] is not None and common["rate_mbit"] is None:
        raise check.fail(item, "queue_ms", f"{where}.queue_ms", "a buffer fills only behind a rate limit: give "
                                                                  "rate_mbit too, or drop queue_ms")
    line = line_of(item)
    if "between" in item:
        if "from" in item or "to" in item:
            raise check.fail(item, "between", f"{where}.between", "give either between or from/to, not both")
        ends = item["between"]
        if not isinstance(ends, list) or len(ends) != 2:
            raise check.fail(item, "between", f"{where}.between", f"must be a list of two sites, got {ends!r}")
        a, b = site(ends[0], "between"), site(ends[1], "between")
        if a == b:
            raise check.fail(item, "between", f"{where}.between", f"a link joins two different sites, got {a} twice")
        if ("rtt_ms" in item) == ("delay_ms" in item):
            raise check.fail(item, None, where, "give exactly one of rtt_ms (round trip) or delay_ms (one way)")
        if "rtt_ms" in item:
            one_way = check.number(item, "rtt_ms", f"{where}.rtt_ms", maximum=60_000) / 2
        else:
            one_way = check.number(item, "delay_ms", f"{where}.delay_ms", maximum=30_000)
        return [(Direction(a, b, one_way, **common), line), (Direction(b, a, one_way, **common), line)]
    if "from" not in item or "to" not in item:
        raise check.fail(item, None, where, "a link needs between: [A, B], or from: A and to: B")
    if "rtt_ms" in item:
        raise check.fail(item, "rtt_ms", f"{where}.rtt_ms", "a from/to link is one direction: give delay_ms")
    a, b = site(item["from"], "from"), site(item["to"], "to")
    if a == b:
        raise check.fail(item, "to", f"{where}.to", f"a link joins two different sites, got {a} twice")
    if "delay_ms" not in item:
        raise check.fail(item, None, where, "a from/to link needs delay_ms (one way)")
    delay = check.number(item, "delay_ms", f"{where}.delay_ms", maximum=30_000)
    return [(Direction(a, b, delay, **common), line)]


def _parse_circuits(check: Checker, data: LineDict, topo: Topology) -> list[Circuit]:
    if "circuits" not in data:
        return [Circuit(link.a, link.b) for link in topo.links]
    raw = data["circuits"]
    if not isinstance(raw, list) or not raw:
        raise check.fail(data, "circuits", "circuits", "must be a non-empty list of [SRC, DST] pairs")
    circuits: list[Circuit] = []
    for i, pair in enumerate(raw):
        where = f"circuits[{i}]"
        line = line_of(pair) or line_of(raw)
        if isinstance(pair, dict):
            check.keys(pair, {"src", "dst"}, where)
            pair = [pair.get("src"), pair.get("dst")]
        if not isinstance(pair, list) or len(pair) != 2:
            raise InputError(topo.path, line, where, f"must be [SRC, DST], got {pair!r}")
        for end in pair:
            if not isinstance(end, str) or end not in topo.sites:
                raise InputError(topo.path, line, where, f"unknown site {end!r}; sites: {', '.join(topo.sites)}")
        if pair[0] == pair[1]:
            raise InputError(topo.path, line, where, f"a circuit joins two different sites, got {pair[0]} twice")
        circuit = Circuit(pair[0], pair[1])
        if circuit in circuits:
            raise InputError(topo.path, line, where, f"duplicate circuit {circuit.id}")
        if not topo.path_between(circuit.src, circuit.dst):
            raise InputError(topo.path, line, where, f"no path from {circuit.src} to {circuit.dst} over the links")
        circuits.append(circuit)
    return circuits


__all__ = ["AddressFamily", "Circuit", "Direction", "FAULT_KINDS", "Fault", "InputError", "Link", "Load", "RemoteHost",
           "Site", "TOPOLOGY_DIR", "Topology", "available", "load", "parse", "resolve_path"]
