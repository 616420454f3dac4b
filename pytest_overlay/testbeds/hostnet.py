"""What an overlay's daemons add to a real host's network, found by difference and undone exactly.

weaver, flanneld and BIRD add iptables chains and rules, links and routes of their own accord;
the run cannot list them in advance. So the run reads the host's network (iptables' filter
and nat tables, links, routes) before the overlay's first daemon starts there, keeps
that reading on the host beside the daemons' pid files, and at teardown (or at `clean`, after a
kill) removes what is there now and was not then, and only what the overlay's footprint
claims: a Kubernetes node's own Flannel chains, rules and routes, present before, stay as they
were. Every removal is one argument list, quoted for the shell; nothing read from the host is
ever evaluated.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections import Counter
from dataclasses import dataclass, field

TABLES = ("filter", "nat")
ROUTE_TYPES = ("blackhole", "unreachable", "prohibit", "throw", "local", "broadcast")
_SECTION = "### pytest-overlay "
SNAPSHOT_SCRIPT = "".join(f"echo '{_SECTION}iptables {t}'; iptables-save -t {t}\n" for t in TABLES) + (
    f"echo '{_SECTION}links'; ip -o link show | cut -d: -f2 | cut -d@ -f1\n"
    f"echo '{_SECTION}routes'; ip -4 route show\n")


@dataclass(frozen=True)
class Footprint:
    """What one overlay's daemons may add on a host: the names of its links (exact, or by
    prefix), words that mark its iptables rules, the prefixes of its chains, the range its
    routes fall in, and a command that removes a link better than `ip link del` does."""

    overlay: str
    links: tuple[str, ...] = ()
    link_prefixes: tuple[str, ...] = ()
    marks: tuple[str, ...] = ()
    chain_prefixes: tuple[str, ...] = ()
    routes_within: str | None = None
    link_removers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def owns_link(self, name: str) -> bool:
        return name in self.links or (bool(self.link_prefixes) and name.startswith(self.link_prefixes))

    def owns_chain(self, name: str) -> bool:
        return bool(self.chain_prefixes) and name.startswith(self.chain_prefixes)


# A site namespace of the embedded testbed is the run's own: whatever an overlay added there is
# the overlay's.
EVERYTHING = Footprint("everything", link_prefixes=("",), marks=("",), chain_prefixes=("",),
                       routes_within="0.0.0.0/0")


@dataclass
class Snapshot:
    """A host's network as SNAPSHOT_SCRIPT printed it."""

    chains: dict[str, list[str]] = field(default_factory=dict)  # table -> chain names, in order
    rules: dict[str, list[str]] = field(default_factory=dict)  # table -> "-A CHAIN ..." lines
    links: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        snap = cls({t: [] for t in TABLES}, {t: [] for t in TABLES})
        section = None
        for line in text.splitlines():
            if line.startswith(_SECTION):
                section = line[len(_SECTION):].split()
                continue
            line = line.strip()
            if not line or section is None:
                continue
            if section[0] == "iptables":
                table = section[1]
                if line.startswith(":"):
                    snap.chains[table].append(line[1:].split()[0])
                elif line.startswith("-A "):
                    snap.rules[table].append(line)
            elif section[0] == "links":
                snap.links.append(line)
            elif section[0] == "routes":
                snap.routes.append(line)
        return snap


def _jumps_to(rule: list[str]) -> str | None:
    for flag in ("-j", "-g"):
        if flag in rule[:-1]:
            return rule[rule.index(flag) + 1]
    return None


def undo(before: Snapshot, after: Snapshot, footprint: Footprint) -> list[list[str]]:
    """The commands that remove what `footprint` claims and `after` has beyond `before`:
    rules first (those in a new chain of its own go with their chain), then its new chains
    (emptied, then deleted), its new routes inside its range, and its new links."""
    commands: list[list[str]] = []
    emptied: list[list[str]] = []
    for table in TABLES:
        new_chains = [c for c in after.chains.get(table, []) if c not in set(before.chains.get(table, []))
                      and footprint.owns_chain(c)]
        added = Counter(after.rules.get(table, [])) - Counter(before.rules.get(table, []))
        for line in added.elements():
            try:
                rule = shlex.split(line)
            except ValueError:
                continue  # unbalanced quotes: not a rule iptables-save wrote, and not ours to touch
            chain = rule[1]
            if chain in new_chains:
                continue
            if _jumps_to(rule) in new_chains or any(mark in line for mark in footprint.marks):
                commands.append(["iptables", "-w", "-t", table, "-D", *rule[1:]])
        emptied += [["iptables", "-w", "-t", table, "-F", c] for c in new_chains]
        emptied += [["iptables", "-w", "-t", table, "-X", c] for c in new_chains]
    commands += sorted(emptied, key=lambda c: c[5] == "-X")  # every -F before any -X: chains may jump to each other
    if footprint.routes_within:  # before the links: a route through a link goes with it
        pool = ipaddress.ip_network(footprint.routes_within)
        for route in after.routes:
            found = None if route in before.routes else _route_selector(route.split())
            if found and found[0].subnet_of(pool):
                commands.append(["ip", "route", "del", *found[1]])
    links = [link for link in after.links if link not in before.links and footprint.owns_link(link)]
    for link in sorted(links, key=lambda name: name not in footprint.link_removers):  # weave's datapath first
        commands.append(list(footprint.link_removers.get(link, ("ip", "link", "del", link))))
    return commands


def _route_head(words: list[str]) -> tuple[list[str], ipaddress.IPv4Network] | None:
    """A route of `ip route show`: its type (if any) and destination, as words, and the
    destination as a network."""
    head = words[:2] if words and words[0] in ROUTE_TYPES and len(words) > 1 else words[:1]
    try:
        return head, ipaddress.ip_network("0.0.0.0/0" if head[-1] == "default" else head[-1], strict=False)
    except (IndexError, ValueError):
        return None


def route_destination(words: list[str]) -> ipaddress.IPv4Network | None:
    """The destination of a route as `ip route show` prints it."""
    found = _route_head(words)
    return found[1] if found else None


def _route_selector(words: list[str]) -> tuple[ipaddress.IPv4Network, list[str]] | None:
    """A route of `ip route show`: its destination, and what `ip route del` needs to remove
    exactly it (type, prefix, gateway, device, protocol, metric; not the kernel's flags)."""
    found = _route_head(words)
    if found is None:
        return None
    head, network = found
    keyed = [w for key, value in zip(words, words[1:]) if key in ("via", "dev", "proto", "metric")
             for w in (key, value)]
    return network, [*head, *keyed]


def script(commands: list[list[str]]) -> str:
    """Shell that runs each command on its own (a failure does not stop the rest) and names
    the ones that failed on stdout, one per line. A link already gone is no failure: the
    other end of a veth goes with the first."""
    lines = []
    for c in commands:
        run = f"{shlex.join(c)} 2>/dev/null || echo {shlex.quote('failed: ' + shlex.join(c))}"
        if c[:3] == ["ip", "link", "del"]:
            run = f"if ip link show dev {shlex.quote(c[3])} > /dev/null 2>&1; then {run}; fi"
        lines.append(run + "\n")
    return "".join(lines)
