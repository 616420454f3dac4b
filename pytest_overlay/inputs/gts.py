"""The GÉANT Testbeds Service's testbed language (GTS User & Resource Guide v2.0, §4.1), in and
out: the declarations a GTS testbed file makes, read as a topology, and any topology written
as one.

A GTS file is Groovy; what is read here is its declarative subset, the form GTS's own
examples take::

    type Line {
        description = "Line topology with selected locations"
        host { id="h1" location="BRA" port { id="port1" } }
        host { id="h2" location="PAR" port { id="port1" } }
        link { id="l1" port { id="src" } port { id="dst" } }
        adjacency h1.port1, l1.src
        adjacency h2.port1, l1.dst
    }

Hosts become sites at their location (a GÉANT location code), and a link whose two ends are
joined to hosts becomes a WAN link between them. GTS links carry no delay: theirs is the real
path between the locations. An RTT comes from the study's own measurements where both
locations are the study's, from `rtts` where the user gives one, and otherwise from the
great-circle distance between the locations' cities, as `topology mesh` computes it; each link
says which. Anything else Groovy can say (loops, parameters, methods, expressions) and what
the GTS language holds beyond hosts and links (OpenFlow switches, servers) is refused with the
file, the line and what to do.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..paths import DATA
from .generate import City, Spec, cities
from .gtsdsl import Testbed, read

REFERENCE = DATA / "reference" / "hermans-deniet-2016.yaml"


def study_rtts() -> dict[frozenset[str], float]:
    """The study's measured RTT per pair of its locations: its libnetwork mean (the figure
    geant.yaml was made from)."""
    measured = yaml.safe_load(REFERENCE.read_text())["rtt_ms"]
    return {frozenset(circuit.split("-")): rtt for circuit, rtt in measured.items()}


def rtt_of(a: str, b: str, given: dict[frozenset[str], float]) -> tuple[float, str]:
    """A link's RTT between two locations, and where it came from."""
    pair = frozenset((a, b))
    if pair in given:
        return given[pair], "given"
    measured = study_rtts()
    if pair in measured:
        return measured[pair], "the study's measurement (libnetwork mean)"
    by_code: dict[str, City] = {c.code: c for c in cities()}
    rtt = Spec("mesh", 2).rtt_ms(by_code[a], by_code[b])
    return round(rtt, 2), "great-circle distance (2/3 c, plus 1 ms for the equipment)"


def topology_data(bed: Testbed, rtts: dict[frozenset[str], float] | None = None) -> tuple[dict, dict[str, str]]:
    """The topology's YAML data for a GTS testbed, and where each link's RTT came from (by
    `A-B`). `rtts`: RTTs the user measured, by pair of host ids or of locations."""
    given = {}
    for pair, value in (rtts or {}).items():
        locations = frozenset(bed.hosts[h].location if h in bed.hosts else h for h in pair)
        given[locations] = value
    links, sources = [], {}
    for link in bed.links.values():
        joined = [bed.ends[(link.id, p)][0] for p in link.ports if (link.id, p) in bed.ends]
        if len(joined) != 2:
            continue
        a, b = joined
        if link.id in bed.written and frozenset((bed.hosts[a].location, bed.hosts[b].location)) not in given:
            rtt, source = bed.written[link.id], "written in the file (the RTT it was emulated with)"
        else:
            rtt, source = rtt_of(bed.hosts[a].location, bed.hosts[b].location, given)
        links.append({"between": [a, b], "rtt_ms": rtt})
        sources[f"{a}-{b}"] = source
    data = {"name": bed.name, "description": bed.description or f"GTS testbed {bed.name}",
            "sites": {h.id: {"location": h.location} for h in bed.hosts.values()}, "links": links}
    return data, sources


def load(path: Path) -> tuple[dict, dict[str, str]]:
    """A GTS file as a topology's data, with where each RTT came from."""
    return topology_data(read(path))


def write(topology, out: Path, command: str = "") -> str:
    """A topology as a GTS testbed: a host per site at the GÉANT location nearest its city, a
    link per WAN link, their adjacencies, and the RTT each link was emulated with."""
    by_code = {c.code: c for c in cities()}
    name = re.sub(r"[^A-Za-z0-9_]", "_", topology.name) or "Testbed"
    about = (getattr(topology, "description", "") or topology.name).replace('"', "'")
    lines = [f"// Written by pytest-overlay{': ' + command if command else ''}",
             f"// from topology {topology.name}; load it back with --topology {out.name}.",
             f"type {name[0].upper() + name[1:]} {{",
             f"\tdescription = \"{about}\"", ""]
    degree: dict[str, int] = {site: 0 for site in topology.sites}
    pairs = []
    for link in topology.links:
        a, b = link.a, link.b
        degree[a] += 1
        degree[b] += 1
        pairs.append((a, b, degree[a], degree[b], link))
    for site, count in degree.items():
        place = topology.sites[site].location or site
        location = nearest_location(place, by_code)
        ports = " ".join(f'port {{ id="port{i}" }}' for i in range(1, count + 1))
        known = place.upper() == location or by_code[location].name.lower() == place.lower()
        note = "" if known else f'  // "{place}" is no GÉANT location: {location} stands for it'
        lines.append(f'\thost {{ id="{site}" location="{location}" {ports} }}{note}')
    lines.append("")
    for index, (a, b, _, _, link) in enumerate(pairs, 1):
        rtt = link.forward.delay_ms + link.reverse.delay_ms
        lines.append(f'\tlink {{ id="l{index}" port {{ id="src" }} port {{ id="dst" }} }}  // {a}-{b}: RTT '
                     f'{rtt:g} ms')
    lines.append("")
    for index, (a, b, pa, pb, _) in enumerate(pairs, 1):
        lines.append(f"\tadjacency {a}.port{pa}, l{index}.src")
        lines.append(f"\tadjacency {b}.port{pb}, l{index}.dst")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def nearest_location(place: str, by_code: dict[str, City]) -> str:
    """A site's GÉANT location: its own code, the code of its city by name, else AMS (GTS has
    no location for an unknown place; the site keeps its name as the host's id)."""
    if place.upper() in by_code:
        return place.upper()
    for code, city in by_code.items():
        if city.name.lower() == place.lower():
            return code
    return "AMS"


def companion(check, data, path) -> tuple[dict, dict[str, str]]:
    """A topology YAML that names a GTS file (`gts: FILE.dsl`), so the GTS file stays as GTS
    wants it: its hosts and links, with what the YAML adds. `rtts: {A-B: ms}` gives measured
    RTTs (by host ids or locations); `sites:` adds to the GTS hosts (a real `host:`), `links:`
    to the GTS links between the same two hosts (rate, jitter, loss, a buffer); the rest
    (faults, load, ranges, circuits, roles) is the topology's as in any YAML."""
    name = data["gts"]
    if not isinstance(name, str) or not name.endswith(".dsl"):
        raise check.fail(data, "gts", "gts", f"must name a GTS testbed file (FILE.dsl), got {name!r}")
    gts_path = Path(path).parent / name
    if not gts_path.exists():
        raise check.fail(data, "gts", "gts", f"{gts_path}: no such file")
    given: dict[frozenset[str], float] = {}
    if "rtts" in data:
        raw = check.mapping(data["rtts"], "rtts", data, "rtts")
        for pair in raw:
            ends = str(pair).split("-")
            if len(ends) != 2:
                raise check.fail(raw, pair, f"rtts.{pair}", "a pair is A-B (two host ids or locations)")
            given[frozenset(ends)] = check.number(raw, pair, f"rtts.{pair}", positive=True, maximum=60_000)
    base, sources = topology_data(read(gts_path), given)
    merged = {key: value for key, value in data.items() if key not in ("gts", "rtts", "sites", "links")}
    merged["name"] = data.get("name", base["name"])
    merged["description"] = data.get("description", base["description"])
    sites = {site: dict(spec) for site, spec in base["sites"].items()}
    for site, spec in (check.mapping(data["sites"], "sites", data, "sites") if "sites" in data else {}).items():
        if site not in sites:
            raise check.fail(data["sites"], site, f"sites.{site}", f"{gts_path.name} declares no host {site!r}; its "
                                                                   f"hosts: {', '.join(sites)}")
        sites[site].update(check.mapping(spec, f"sites.{site}", data["sites"], site))
    links = [dict(link) for link in base["links"]]
    for index, extra in enumerate(data.get("links") or []):
        where = f"links[{index}]"
        extra = check.mapping(extra, where, data["links"], index)
        pair = extra.get("between")
        match = next((l for l in links if isinstance(pair, list) and set(l["between"]) == set(pair)), None)
        if match is None:
            raise check.fail(extra, "between", f"{where}.between", f"{gts_path.name} has no link between {pair!r}: "
                                                                   "links: here add to the GTS file's links")
        match.update({k: v for k, v in extra.items() if k != "between"})
        if "rtt_ms" in extra or "delay_ms" in extra:
            sources[f"{match['between'][0]}-{match['between'][1]}"] = f"given in {Path(path).name}"
    merged["sites"], merged["links"] = sites, links
    return merged, sources


def same_links(a, b, within_ms: float = 0.1) -> bool | str:
    """True where two topologies have the same sites and the same links with the same RTTs
    (within `within_ms`); else what differs."""
    if set(a.sites) != set(b.sites):
        return f"sites {sorted(a.sites)} against {sorted(b.sites)}"
    rtts = [{frozenset((link.a, link.b)): link.rtt_ms for link in t.links} for t in (a, b)]
    if set(rtts[0]) != set(rtts[1]):
        return f"links {sorted(map(sorted, rtts[0]))} against {sorted(map(sorted, rtts[1]))}"
    off = {"-".join(sorted(pair)): (rtts[0][pair], rtts[1][pair]) for pair in rtts[0]
           if abs(rtts[0][pair] - rtts[1][pair]) > within_ms}
    return True if not off else f"RTTs {off}"
