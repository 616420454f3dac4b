"""The overlay kinds a run can ask for: the built-in ones and those other distributions
register under the entry-point group `pytest_overlay.overlays` (``NAME = module:Class``), as
pytest finds its plugins.

Each kind declares everything about itself on its class (overlays/base.py, `Overlay`): its
label, address family, Debian packages, binaries, host needs and footprint, and whether
`--overlay=all` includes it. Every other layer asks here. Names are known without importing
a kind; its module is imported the first time it is asked for.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

# Nothing of the package is imported here, not even for types: every layer may ask the registry,
# and the registry stands below them all. What it hands out is described in words instead:
# a kind is an overlays.base.Overlay subclass; a family an inputs.model.AddressFamily; host
# needs a testbeds.contract.HostNeeds; a footprint a testbeds.hostnet.Footprint.

GROUP = "pytest_overlay.overlays"
# The underlay: every overlay's figures are read against it.
BASELINE = "host"
BUILTIN = {
    BASELINE: "pytest_overlay.overlays.host:HostOverlay",
    "libnetwork": "pytest_overlay.overlays.libnetwork:LibnetworkOverlay",
    "libnetwork-encrypted": "pytest_overlay.overlays.libnetwork:EncryptedLibnetworkOverlay",
    "weave": "pytest_overlay.overlays.weave:WeaveOverlay",
    "weave-encrypted": "pytest_overlay.overlays.weave:EncryptedWeaveOverlay",
    "flannel": "pytest_overlay.overlays.flannel:FlannelOverlay",
    "flannel-udp": "pytest_overlay.overlays.flannel:FlannelUdpOverlay",
    "flannel-host-gw": "pytest_overlay.overlays.flannel:FlannelHostGwOverlay",
    "calico": "pytest_overlay.overlays.calico:CalicoOverlay",
    "wireguard": "pytest_overlay.overlays.wireguard:WireGuardOverlay",
    "nebula": "pytest_overlay.overlays.nebula:NebulaOverlay",
    "tinc": "pytest_overlay.overlays.tinc:TincOverlay",
}


class KindError(LookupError):
    """A kind that cannot be loaded, or is declared twice."""


@cache
def _table() -> dict[str, str]:
    table = dict(BUILTIN)
    for point in entry_points(group=GROUP):
        if point.name in table and table[point.name] != point.value:
            raise KindError(f"overlay kind {point.name!r} is registered twice: {table[point.name]} and "
                            f"{point.value} (entry point of {point.dist.name if point.dist else '?'})")
        table[point.name] = point.value
    return table


def names() -> tuple[str, ...]:
    """Every kind's name: the built-in ones first, then the other distributions'."""
    return tuple(_table())


@cache
def get(name: str) -> type:
    try:
        module, _, attribute = _table()[name].partition(":")
    except KeyError:
        raise KindError(f"unknown overlay {name!r}; known: {', '.join(names())}") from None
    try:
        kind = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as e:
        raise KindError(f"overlay kind {name!r} ({module}:{attribute}) cannot be loaded: {e}") from e
    if getattr(kind, "name", None) != name:
        raise KindError(f"overlay kind {name!r} ({module}:{attribute}) calls itself {getattr(kind, 'name', None)!r}")
    missing = sorted(getattr(kind, "__abstractmethods__", ())) + [
        part for part in getattr(kind, "REQUIRED", ()) if not getattr(kind, part, None)]
    if missing:
        raise KindError(f"overlay kind {name!r} ({module}:{attribute}) leaves out {', '.join(missing)}: an overlay "
                        "kind declares these (pytest_overlay/overlays/base.py)")
    return kind


def in_all() -> tuple[str, ...]:
    """What `--overlay=all` measures: the kinds that declare themselves part of it."""
    return tuple(name for name in names() if get(name).in_all)


def groups() -> dict[str, tuple[str, ...]]:
    """The groups kinds declare themselves in (`--overlay=meshes`), each with its kinds."""
    found: dict[str, list[str]] = {}
    for name in names():
        group = get(name).group
        if group:
            found.setdefault(group, []).append(name)
    return {group: tuple(members) for group, members in found.items()}


def leftovers(run_id: str) -> list[Any]:
    """The files every kind's killed daemons may have left of a run, outside its directories."""
    return [path for name in names() for path in get(name).leftovers(run_id)]


def families() -> dict[str, Any]:
    """The address families the kinds give their containers, by `ranges:` key."""
    found: dict[str, Any] = {}
    for name in names():
        family = get(name).family
        if family is not None:
            found.setdefault(family.name, family)
    return found


def packages() -> list[str]:
    """The Debian packages every kind's daemons need on this machine (the Makefile installs them)."""
    return sorted({package for name in names() for package in get(name).packages})


def shipped() -> list[str]:
    """The binaries kinds run that no Debian package carries (found on PATH here; the lab copies
    them to its hosts)."""
    return sorted({binary for name in names() for binary in get(name).shipped})


def host_needs(asked: list[str]) -> list[Any]:
    """What the kinds asked for need on a real host, one declaration per family (weave and
    weave-encrypted are one Weave Net)."""
    found: dict[str, Any] = {}
    for name in asked:
        needs = get(name).host_needs
        if needs is not None:
            found.setdefault(needs.family.name, needs)
    return list(found.values())


def footprint(name: str) -> Any:
    """What the kind called `name` adds to a real host's network (None: nothing, or no such
    kind), for undoing it after a run that is over."""
    needs = get(name).host_needs if name in _table() else None
    return needs.footprint if needs else None


@dataclass(frozen=True)
class Variant:
    """A kind with values for some of the settings it declares (`wireguard[mtu=1380]`): one
    side of an A/B comparison. `role` is "A" or "B"."""

    role: str
    kind: str
    chosen: tuple[tuple[str, int | str], ...] = ()

    def __str__(self) -> str:
        inside = ",".join(f"{name}={value}" for name, value in self.chosen)
        return f"{self.kind}[{inside}]" if inside else self.kind

    @property
    def label(self) -> str:
        return f"{self.role}: {self}"

    def make(self, testbed: Any, **options: Any) -> Any:
        """The overlay of this variant on `testbed` (not up yet)."""
        return get(self.kind)(testbed, chosen=dict(self.chosen), **options)


def parse_variant(text: str, role: str) -> Variant:
    """KIND or KIND[NAME=VALUE,...]; ValueError naming the kinds or the settings allowed."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[(.*)\])?\s*", text)
    if not match:
        raise ValueError(f"{text!r}: give KIND or KIND[NAME=VALUE,...], e.g. wireguard[mtu=1380]")
    name, inside = match.groups()
    kind = get(name)
    declared = {setting.name: setting for setting in kind.settings}
    chosen: dict[str, int | str] = {}
    for part in [p for p in (inside or "").split(",") if p.strip()]:
        key, equals, value = (x.strip() for x in part.partition("="))
        if key not in declared or not equals:
            takes = "; ".join(f"{s.name} ({s.what}): {s.allowed()}" for s in declared.values()) or "no setting"
            raise ValueError(f"{text!r}: {name} takes {takes}")
        if key in chosen:
            raise ValueError(f"{text!r}: {key} set twice")
        try:
            chosen[key] = declared[key].parse(value)
        except ValueError as e:
            raise ValueError(f"{text!r}: {e}") from None
    return Variant(role, name, tuple(sorted(chosen.items())))


def parse_pair(text: str) -> tuple[Variant, Variant]:
    """A,B: two variants, split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"{text!r}: give two variants, A,B, e.g. flannel,flannel-udp or "
                         "wireguard[mtu=1380],wireguard")
    return parse_variant(parts[0], "A"), parse_variant(parts[1], "B")
