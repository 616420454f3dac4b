"""Duplicated packets on a link direction, for the delay line: NFQUEUE gives a packet one
verdict and cannot copy it, so nftables' `dup` sends the copy, after the packet's delay, out
of the same interface to the same next hop; the rule's counter is the emulator's own count
of what it duplicated."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .. import procs

if TYPE_CHECKING:
    from .emulator import Port

TABLE = "pytest_overlay_dup"  # one per family, in the run's own wan namespace
PRIORITY = 10  # after the delay line's NFQUEUE (mangle, -150) and the wire counters (filter, 0)
FAMILIES = {4: "ip", 6: "ip6"}
TOOLS = {"nft": "nftables"}


def rules(ports: list["Port"]) -> str:
    """`nft -f` input: per family, a forward chain copying each duplicating direction's packets
    with the probability asked, counted under the direction's name."""
    text = []
    for version, family in FAMILIES.items():
        lines = [f"    iifname {p.ingress} numgen random mod 1000000 < {round(p.direction.duplicate_pct * 1e4)} counter "
                 f"dup to {p.next_hops[version]} device {p.egress} comment \"{p.name}\""
                 for p in ports if p.direction.duplicate_pct and version in p.next_hops]
        if lines:
            text += [f"table {family} {TABLE} {{", "  chain forward {",
                     f"    type filter hook forward priority {PRIORITY}; policy accept;", *lines, "  }", "}"]
    return "\n".join(text) + "\n" if text else ""


def install(netns: str, ports: list["Port"]) -> None:
    """The copies, where a direction asks for any."""
    text = rules(ports)
    if text:
        procs.run(["nft", "-f", "-"], netns, input=text).check()


def counts(netns: str, ports: list["Port"]) -> dict[str, int]:
    """Packets each duplicating direction copied so far, by its name ("A->B")."""
    if not any(p.direction.duplicate_pct for p in ports):
        return {}
    out: dict[str, int] = {}
    for family in FAMILIES.values():
        shown = procs.run(["nft", "-j", "list", "table", family, TABLE], netns)
        if not shown.ok:  # no such table: that family's sites duplicate nothing
            continue
        out.update(parse_counts(shown.stdout))
    return out


def parse_counts(listing: str) -> dict[str, int]:
    """`nft -j list table`'s rules: each commented rule's counter, by comment."""
    out = {}
    for item in json.loads(listing).get("nftables", []):
        rule = item.get("rule")
        if not rule or "comment" not in rule:
            continue
        counter = next((e["counter"] for e in rule.get("expr", []) if isinstance(e, dict) and "counter" in e), None)
        if counter is not None:
            out[rule["comment"]] = counter.get("packets", 0)
    return out
