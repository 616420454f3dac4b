"""The GÉANT Testbeds Service's testbed language read (GTS User & Resource Guide v2.0, §4.1):
its declarative subset, tokenised and parsed into hosts, links and adjacencies, refused with
the file, the line and what to do where it says more (gts.py makes a topology of it)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .generate import cities
from .yamlfile import InputError

# The comment `write()` puts after each link: the RTT the topology emulated it with.
WRITTEN_RTT = re.compile(r'link\s*\{\s*id\s*=\s*"([^"\n]*)"[^\n]*//[^\n]*: RTT (\d+(?:\.\d+)?) ms')
MAX_BYTES = 1 << 20
MAX_HOSTS = 200
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,11}$")
TOKEN = re.compile(r'''\s*(?:(?P<comment>//[^\n]*|/\*.*?\*/)|(?P<string>"(?:[^"\\\n]|\\.)*")|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>\d+(?:\.\d+)?)|(?P<punct>[{}=,.()\[\];:+\-*/<>!&|?'$@#%^~`\\]))''', re.S)
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


def read(path: Path) -> Testbed:
    """A GTS file's declarations, refused whole where it is too large or not text."""
    if path.stat().st_size > MAX_BYTES:
        raise InputError(path, None, "", f"over {MAX_BYTES} bytes: not a testbed this importer reads")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise InputError(path, None, "", f"not text: {e}") from None
    return parse(text, path)
