"""A topology's experiments: its WAN fault scenarios (`faults:`) and its latency-under-load
circuits and buffers (`load:`), validated as the rest of the file is, every error naming the
file, the line and the field."""

from __future__ import annotations

import math
import re
from dataclasses import replace

from .model import FAULT_KINDS, MTU_RANGE, Circuit, Fault, Load, Topology
from .yamlfile import Checker, LineDict

LOAD_KEYS = {"circuits", "queue_ms"}
FAULT_KEYS = {"kind", "link", "site", "seconds", "up_s", "times", "loss_pct", "add_rtt_ms", "probe", "watch", "mtu",
              "icmp"}
FAULT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
MAX_FAULTS = 64
MAX_FAULT_S = 3600.0  # one scenario, every flap and gap of it
MAX_QUEUES = 16


def parse_faults(check: Checker, data: LineDict, topo: Topology) -> dict[str, Fault]:
    """The `faults:` section: a mapping of scenario name to {kind, link or site, timing}."""
    if "faults" not in data:
        return {}
    raw = check.mapping(data["faults"], "faults", data, "faults")
    if len(raw) > MAX_FAULTS:
        raise check.fail(data, "faults", "faults", f"{len(raw)} scenarios; at most {MAX_FAULTS} (each one is a test "
                                                   "per overlay, and on real hosts a set of firewall rules)")
    faults = {}
    for name, spec in raw.items():
        where = f"faults.{name}"
        if not isinstance(name, str) or not FAULT_NAME.fullmatch(name):
            raise check.fail(raw, name, f"faults.{name!r}", "a scenario name is a letter or digit, then up to 39 "
                                                             "letters, digits, '_', '.' or '-'")
        check.mapping(spec, where, raw, name)
        check.keys(spec, FAULT_KEYS, where)
        kind = spec.get("kind")
        if not isinstance(kind, str) or kind not in FAULT_KINDS:
            raise check.fail(spec, "kind" if "kind" in spec else None, f"{where}.kind",
                             f"must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        flap = kind == "flap"
        for key, kinds in (("link", {"cut", "flap", "loss", "reroute", "mtu"}), ("site", {"partition"}),
                           ("up_s", {"flap"}), ("times", {"flap"}), ("loss_pct", {"loss"}),
                           ("add_rtt_ms", {"reroute"}), ("mtu", {"mtu"}), ("icmp", {"mtu"})):
            if key in spec and kind not in kinds:
                raise check.fail(spec, key, f"{where}.{key}", f"a {kind} fault takes no {key} (it is for "
                                                               f"{', '.join(sorted(kinds))})")
        if kind == "partition":
            site = spec.get("site")
            if not isinstance(site, str) or site not in topo.sites:
                raise check.fail(spec, "site" if "site" in spec else None, f"{where}.site",
                                 f"a partition names the site it cuts off; unknown site {site!r}; sites: "
                                 f"{', '.join(topo.sites)}")
            links = tuple(link for link in topo.links if site in (link.a, link.b))
            others = [s for s in topo.sites if s != site]
            probe_default = next((c for c in topo.circuits if site in (c.src, c.dst)), Circuit(others[0], site))
        else:
            ends = spec.get("link")
            if not (isinstance(ends, list) and len(ends) == 2 and all(isinstance(e, str) and e in topo.sites
                                                                       for e in ends)):
                raise check.fail(spec, "link" if "link" in spec else None, f"{where}.link",
                                 f"must name a link as [SITE, SITE] of sites {', '.join(topo.sites)}, got {ends!r}")
            link = topo.link_between(*ends)
            if link is None or ends[0] == ends[1]:
                raise check.fail(spec, "link", f"{where}.link", f"no link between {ends[0]} and {ends[1]}")
            links, site = (link,), None
            probe_default = Circuit(ends[0], ends[1])
        seconds = check.number(spec, "seconds", f"{where}.seconds", 2.0 if flap else 20.0, positive=True,
                               maximum=3600)
        fault = Fault(
            name=name, kind=kind, links=links, seconds=seconds, site=site,
            probe=_fault_circuit(check, spec, "probe", where, topo) or probe_default,
            up_s=check.number(spec, "up_s", f"{where}.up_s", 3.0 if flap else 0.0, positive=flap, maximum=3600),
            times=int(check.number(spec, "times", f"{where}.times", 5 if flap else 1, minimum=1, maximum=100)),
            loss_pct=check.number(spec, "loss_pct", f"{where}.loss_pct", 5.0, positive=True, maximum=100)
            if kind == "loss" else 100.0,
            add_rtt_ms=check.number(spec, "add_rtt_ms", f"{where}.add_rtt_ms", 20.0, positive=True,
                                    maximum=10_000) if kind == "reroute" else 0.0,
            **(_mtu_fault(check, spec, where) if kind == "mtu" else {}),
        )
        if "times" in spec and spec["times"] != int(spec["times"]):
            raise check.fail(spec, "times", f"{where}.times", f"must be a whole number, got {spec['times']!r}")
        watch = _fault_circuit(check, spec, "watch", where, topo)
        if watch is None:
            watch = next((c for c in _all_pairs(topo) if untouched(topo, fault, c)), None)
        elif not untouched(topo, fault, watch):
            raise check.fail(spec, "watch", f"{where}.watch", f"the fault touches {watch.id}'s path: the watched "
                                                               "circuit is the one left alone")
        if fault.duration_s > MAX_FAULT_S:
            raise check.fail(spec, "times" if flap else "seconds", where,
                             f"lasts {fault.duration_s:g} s in all; at most {MAX_FAULT_S:g} s (an hour)")
        faults[name] = replace(fault, watch=watch)
    return faults


def parse_load(check: Checker, data: LineDict, topo: Topology) -> Load:
    """The `load:` section: {circuits: [[SRC, DST], ...], queue_ms: [ms, ...]}; without it, every
    circuit at the links' own buffers."""
    if "load" not in data:
        return Load(list(topo.circuits), ())
    raw = check.mapping(data["load"], "load", data, "load")
    check.keys(raw, LOAD_KEYS, "load")
    circuits = list(topo.circuits)
    if "circuits" in raw:
        pairs = raw["circuits"]
        if not isinstance(pairs, list) or not pairs:
            raise check.fail(raw, "circuits", "load.circuits", "must be a non-empty list of [SRC, DST] pairs")
        circuits = []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(e, str) and e in topo.sites
                                                                      for e in pair) and pair[0] != pair[1]):
                raise check.fail(raw, "circuits", f"load.circuits[{i}]", f"must be [SRC, DST], two different sites "
                                                                         f"of {', '.join(topo.sites)}, got {pair!r}")
            circuits.append(Circuit(pair[0], pair[1]))
    queues: list[float] = []
    if "queue_ms" in raw:
        values = raw["queue_ms"]
        if not isinstance(values, list):
            raise check.fail(raw, "queue_ms", "load.queue_ms", f"must be a list of buffer sizes in ms, got {values!r}")
        if len(values) > MAX_QUEUES:
            raise check.fail(raw, "queue_ms", "load.queue_ms", f"{len(values)} buffer sizes; at most {MAX_QUEUES}")
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 < value <= 10_000:
                raise check.fail(raw, "queue_ms", f"load.queue_ms[{i}]",
                                 f"must be a number of ms in (0, 10000], got {value!r}")
            if float(value) in queues:
                raise check.fail(raw, "queue_ms", f"load.queue_ms[{i}]", f"{value!r} is given twice")
            queues.append(float(value))
        bare = next((c for c in circuits if not topo.with_queue(c, None)), None)
        if bare is not None and queues:
            raise check.fail(raw, "queue_ms", "load.queue_ms", f"circuit {bare.id} has no rate_mbit on its path: "
                                                                "no buffer fills there")
    return Load(circuits, tuple(queues))


def _mtu_fault(check: Checker, spec: LineDict, where: str) -> dict:
    """An mtu fault's `mtu` (576..9000 bytes, default 1380: a path moved onto a tunnel) and
    `icmp` (pass, or drop: a black hole meanwhile)."""
    mtu = check.number(spec, "mtu", f"{where}.mtu", 1380, minimum=MTU_RANGE[0], maximum=MTU_RANGE[1])
    if mtu != int(mtu):
        raise check.fail(spec, "mtu", f"{where}.mtu", f"must be a whole number of bytes, got {spec['mtu']!r}")
    icmp = spec.get("icmp", "pass")
    if not isinstance(icmp, str) or icmp not in ("pass", "drop"):
        raise check.fail(spec, "icmp", f"{where}.icmp", f"must be one of pass, drop, got {icmp!r}")
    return {"mtu": int(mtu), "icmp_drop": icmp == "drop"}


def _fault_circuit(check: Checker, spec: LineDict, key: str, where: str, topo: Topology) -> Circuit | None:
    if key not in spec:
        return None
    pair = spec[key]
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(e, str) and e in topo.sites for e in pair)
            and pair[0] != pair[1]):
        raise check.fail(spec, key, f"{where}.{key}", f"must be [SRC, DST], two different sites of "
                                                       f"{', '.join(topo.sites)}, got {pair!r}")
    return Circuit(pair[0], pair[1])


def _all_pairs(topo: Topology) -> list[Circuit]:
    sites = list(topo.sites)
    return topo.circuits + [Circuit(a, b) for i, a in enumerate(sites) for b in sites[i + 1:]]


def untouched(topo: Topology, fault: Fault, circuit: Circuit) -> bool:
    """The circuit's path crosses none of the fault's links and ends at no partitioned site."""
    if fault.site in (circuit.src, circuit.dst):
        return False
    hops = topo.path_between(circuit.src, circuit.dst)
    touched = {frozenset((link.a, link.b)) for link in fault.links}
    return not any(frozenset(pair) in touched for pair in zip(hops, hops[1:]))
