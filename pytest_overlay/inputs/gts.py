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
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..paths import DATA
from .generate import City, Spec, cities
from .yamlfile import InputError

REFERENCE = DATA / "reference" / "hermans-deniet-2016.yaml"
MAX_BYTES = 1 << 20
MAX_HOSTS = 200
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,11}$")
TOKEN = re.compile(r'''\s*(?:(?P<comment>//[^\n]*|/\*.*?\*/)|(?P<string>"(?:[^"\\\n]|\\.)*")|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>\d+(?:\.\d+)?)|(?P<punct>[{}=,.()\[\];:+\-*/<>!&|?'$@#%^~`\\]))''', re.S)
# The comment `write()` puts after each link: the RTT the topology emulated it with.
WRITTEN_RTT = re.compile(r'link\s*\{\s*id\s*=\s*"([^"\n]*)"[^\n]*//[^\n]*: RTT (\d+(?:\.\d+)?) ms')
UNSUPPORTED = {
    "for": "a loop", "while": "a loop", "if": "a condition", "def": "a method", "return": "a method",
    "switch": "an OpenFlow switch", "openflow": "an OpenFlow switch", "ofx": "an OpenFlow switch",
    "server": "a bare-metal server", "import": "an import",
}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    line: int


@dataclass
class Host:
    id: str
    location: str
    ports: list[str]
    line: int


@dataclass
class GtsLink:
    id: str
    ports: list[str]
    line: int


@dataclass
class Testbed:
    """What a GTS file declares: its type's name and description, hosts, links, and which
    host port each link end is joined to."""

    name: str
    description: str
    hosts: dict[str, Host]
    links: dict[str, GtsLink]
    ends: dict[tuple[str, str], tuple[str, str, int]]  # (link, port) -> (host, port, line)
    written: dict[str, float] = field(default_factory=dict)  # link -> the RTT a comment of ours gives it


class _Reader:
    def __init__(self, text: str, path: Path) -> None:
        self.path, self.tokens, self.at = path, _tokens(text, path), 0

    def fail(self, line: int | None, field: str, message: str) -> InputError:
        return InputError(self.path, line, field, message)

    def peek(self) -> Token | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, kind: str | None = None, text: str | None = None, what: str = "") -> Token:
        token = self.peek()
        if token is None:
            last = self.tokens[-1].line if self.tokens else 1
            raise self.fail(last, what, f"the file ends where {what or text or kind} was expected: close every "
                                        "block with }")
        if (kind and token.kind != kind) or (text and token.text != text):
            raise self.fail(token.line, what, f"expected {text or kind}{' (' + what + ')' if what else ''}, "
                                              f"found {token.text!r}{_advice(token)}")
        self.at += 1
        return token


def _advice(token: Token) -> str:
    if token.text in UNSUPPORTED:
        return (f": {UNSUPPORTED[token.text]} is Groovy or GTS beyond plain hosts and links; write the testbed "
                "out as plain declarations (one host { } per host, one link { } per link)")
    if token.text in ("(", ")", "[", "]"):
        return (": parameters, calls and lists are Groovy code; write the testbed out as plain declarations "
                "(one host { } per host, one link { } per link)")
    return ""


def _tokens(text: str, path: Path) -> list[Token]:
    out, position, line = [], 0, 1
    while position < len(text):
        match = TOKEN.match(text, position)
        if not match or match.end() == position:
            rest = text[position:].lstrip()
            if not rest:
                break
            line += text[position:len(text) - len(rest)].count("\n")
            raise InputError(path, line, "", f"unreadable: {rest[:20]!r}")
        line += text[position:match.start(match.lastgroup)].count("\n")
        kind = match.lastgroup
        if kind != "comment":
            value = match.group(kind)
            out.append(Token(kind, value[1:-1] if kind == "string" else value, line))
        line += match.group(kind).count("\n")
        position = match.end()
    return out


def parse(text: str, path: Path) -> Testbed:
    """The declarations of a GTS file; a construct it does not support is an InputError."""
    reader = _Reader(text, path)
    first = reader.take("name", "type", "the testbed's `type NAME {`")
    name = reader.take("name", what="the type's name").text
    reader.take("punct", "{", "the type's body")
    bed = Testbed(name, "", {}, {}, {})
    while True:
        token = reader.peek()
        if token is None:
            raise reader.fail(first.line, "type", f"type {name} is not closed: add its closing }}")
        if token.text == "}":
            reader.at += 1
            break
        if token.kind != "name":
            raise reader.fail(token.line, "", f"expected a declaration, found {token.text!r}{_advice(token)}")
        if token.text == "description":
            reader.at += 1
            reader.take("punct", "=", "description")
            bed.description = reader.take("string", what="description").text
        elif token.text == "host":
            reader.at += 1
            _host(reader, bed)
        elif token.text == "link":
            reader.at += 1
            _link(reader, bed)
        elif token.text == "adjacency":
            reader.at += 1
            _adjacency(reader, bed)
        else:
            raise reader.fail(token.line, token.text, f"{token.text!r} is not a declaration this importer "
                                                      f"reads{_advice(token) or ': it reads description, host, link and adjacency'}")
    extra = reader.peek()
    if extra is not None:
        raise reader.fail(extra.line, "", f"text after type {name}'s closing }}: one testbed type per file")
    _check(reader, bed)
    bed.written = {m.group(1): float(m.group(2)) for m in WRITTEN_RTT.finditer(text) if m.group(1) in bed.links}
    return bed


def _fields(reader: _Reader, what: str, allowed: set[str]) -> tuple[dict[str, str], list[str], int]:
    """`{ key="value" ... port { id="..." } ... }`: the fields and the ports' ids."""
    opening = reader.take("punct", "{", what)
    fields, ports = {}, []
    while True:
        token = reader.take(what=f"{what}'s fields")
        if token.text == "}":
            return fields, ports, opening.line
        if token.text == "port":
            reader.take("punct", "{", f"{what}.port")
            reader.take("name", "id", f"{what}.port.id")
            reader.take("punct", "=", f"{what}.port.id")
            port = reader.take("string", what=f"{what}.port.id")
            reader.take("punct", "}", f"{what}.port")
            if port.text in ports:
                raise reader.fail(port.line, f"{what}.port", f"port {port.text!r} is declared twice in this {what}")
            ports.append(port.text)
            continue
        if token.kind != "name" or token.text not in allowed:
            raise reader.fail(token.line, f"{what}.{token.text}", f"{what} takes {', '.join(sorted(allowed))} and "
                                                                 f"port {{ id=\"...\" }}; found {token.text!r}"
                                                                 f"{_advice(token)}")
        reader.take("punct", "=", f"{what}.{token.text}")
        value = reader.take("string", what=f"{what}.{token.text} (a quoted string)")
        if token.text in fields:
            raise reader.fail(token.line, f"{what}.{token.text}", f"{token.text} is given twice")
        fields[token.text] = value.text


def _host(reader: _Reader, bed: Testbed) -> None:
    fields, ports, line = _fields(reader, "host", {"id", "location"})
    for key in ("id", "location"):
        if key not in fields:
            raise reader.fail(line, f"host.{key}", f"a host needs its {key}")
    host_id = fields["id"]
    if not NAME.match(host_id):
        raise reader.fail(line, "host.id", f"{host_id!r} cannot name a site: a letter, then up to 11 letters, "
                                           "digits or _")
    if host_id in bed.hosts or host_id in bed.links:
        raise reader.fail(line, "host.id", f"{host_id!r} names something else already")
    if len(bed.hosts) >= MAX_HOSTS:
        raise reader.fail(line, "host", f"more than {MAX_HOSTS} hosts")
    bed.hosts[host_id] = Host(host_id, fields["location"], ports, line)


def _link(reader: _Reader, bed: Testbed) -> None:
    fields, ports, line = _fields(reader, "link", {"id"})
    if "id" not in fields:
        raise reader.fail(line, "link.id", "a link needs its id")
    if len(ports) != 2:
        raise reader.fail(line, "link.port", f"link {fields['id']!r} has {len(ports)} port(s): a link has two ends")
    if fields["id"] in bed.links or fields["id"] in bed.hosts:
        raise reader.fail(line, "link.id", f"{fields['id']!r} names something else already")
    bed.links[fields["id"]] = GtsLink(fields["id"], ports, line)


def _end(reader: _Reader) -> tuple[str, str, int]:
    owner = reader.take("name", what="adjacency: OWNER.PORT")
    reader.take("punct", ".", "adjacency: OWNER.PORT")
    port = reader.take("name", what="adjacency: OWNER.PORT")
    return owner.text, port.text, owner.line


def _adjacency(reader: _Reader, bed: Testbed) -> None:
    a = _end(reader)
    reader.take("punct", ",", "adjacency: A.PORT, B.PORT")
    b = _end(reader)
    host_end, link_end = (a, b) if a[0] in bed.hosts else (b, a)
    line = a[2]
    for owner, port, _ in (a, b):
        things = bed.hosts.get(owner) or bed.links.get(owner)
        if things is None:
            raise reader.fail(line, "adjacency", f"{owner!r} is no host or link declared before this adjacency")
        if port not in things.ports:
            raise reader.fail(line, "adjacency", f"{owner} has no port {port!r} (its ports: "
                                                 f"{', '.join(things.ports) or 'none'})")
    if host_end[0] not in bed.hosts or link_end[0] not in bed.links:
        raise reader.fail(line, "adjacency", "an adjacency joins a host's port to a link's end")
    key = (link_end[0], link_end[1])
    if key in bed.ends:
        raise reader.fail(line, "adjacency", f"{link_end[0]}.{link_end[1]} is joined twice (line {bed.ends[key][2]})")
    if any(h == host_end[0] and p == host_end[1] for h, p, _ in bed.ends.values()):
        raise reader.fail(line, "adjacency", f"{host_end[0]}.{host_end[1]} is joined twice")
    bed.ends[key] = (host_end[0], host_end[1], line)


def _check(reader: _Reader, bed: Testbed) -> None:
    if len(bed.hosts) < 2:
        raise reader.fail(None, "host", "a testbed needs at least two hosts")
    known = {c.code for c in cities()}
    for host in bed.hosts.values():
        if host.location not in known:
            raise reader.fail(host.line, "host.location", f"unknown location {host.location!r}; known: "
                                                          f"{', '.join(sorted(known))} (add it to cities.yaml)")
    for link in bed.links.values():
        joined = [port for port in link.ports if (link.id, port) in bed.ends]
        if len(joined) == 1:
            raise reader.fail(link.line, "link", f"link {link.id!r} has one end joined to a host: join both, or "
                                                 "remove it")
        if len(joined) == 2 and len({bed.ends[(link.id, p)][0] for p in joined}) == 1:
            raise reader.fail(link.line, "link", f"link {link.id!r} joins host {bed.ends[(link.id, joined[0])][0]} "
                                                 "to itself")


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


def read(path: Path) -> Testbed:
    """A GTS file's declarations, refused whole where it is too large or not text."""
    if path.stat().st_size > MAX_BYTES:
        raise InputError(path, None, "", f"over {MAX_BYTES} bytes: not a testbed this importer reads")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise InputError(path, None, "", f"not text: {e}") from None
    return parse(text, path)


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
