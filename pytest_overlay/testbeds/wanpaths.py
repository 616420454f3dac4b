"""The embedded WAN's paths, per IP version: the sites' and the wan's addresses, static
neighbours and routes, each link direction's route (its MTU), and the mark that drops its ICMP
"fragmentation needed" or "packet too big"; changed at once by an mtu fault."""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING

from .. import procs
from ..inputs.model import Direction

if TYPE_CHECKING:
    from .emulated import EmulatedTestbed

BASE_ADDRESS6 = ipaddress.IPv6Address("2001:2::")  # the benchmarking range's IPv6 twin (RFC 5180)
# The wan's own interfaces, one address each: where a link's "fragmentation needed" or
# "packet too big" comes from (icmp_errors_use_inbound_ifaddr; IPv6 picks by the route back).
ROUTER_ADDRESSES = {4: ipaddress.IPv4Address("198.19.0.0"), 6: ipaddress.IPv6Address("2001:2:0:1::")}
# Packets entering a link direction that drops ICMP carry this mark, and so do the errors the
# wan answers them with (fwmark_reflect): OUTPUT drops those.
ICMP_DROP_MARK = 0x4F56
IPTABLES_RESTORE = {4: "iptables-restore", 6: "ip6tables-restore"}


def routes(bed: "EmulatedTestbed", version: int, ends: dict) -> tuple[list[str], dict[str, list[str]]]:
    """One IP version's addresses, static neighbours and routes: the wan's and each site's."""
    topo, bits = bed.topology, 32 if version == 4 else 128
    address = {name: handle.addresses[version] for name, handle in bed.sites.items()}
    nodad = "" if version == 4 else " nodad"
    wan_cmds: list[str] = []
    site_cmds = {name: ["link set lo up", f"address add {address[name]}/{bits} dev lo{nodad}"]
                 for name in bed.sites}
    for (site, peer), (site_if, _, wan_if, wan_mac) in ends.items():
        # The wan end answers for the peer: no ARP or neighbour discovery on emulated links.
        site_cmds[site] += [f"link set {site_if} up",
                            f"neigh add {address[peer]} lladdr {wan_mac} dev {site_if} nud permanent"]
        # Whatever enters the wan from `site` on this link leaves toward `peer`.
        out_if, out_mac = ends[(peer, site)][2], ends[(peer, site)][1]
        table = 1000 + len(wan_cmds)
        mtu = topo.link_between(site, peer).direction(site).mtu
        router = ROUTER_ADDRESSES[version] + bed.router_of[wan_if]
        bed.wan_routes[(site, peer, version)] = f"default via {address[peer]} dev {out_if} onlink table {table}"
        wan_cmds += [f"address add {router}/{bits} dev {wan_if}{nodad}",
                     f"route add {bed.wan_routes[(site, peer, version)]}" + (f" mtu lock {mtu}" if mtu else ""),
                     f"neigh replace {address[peer]} lladdr {out_mac} dev {out_if} nud permanent",
                     f"rule add iif {wan_if} table {table} pref 100"]
    # What the wan sends itself (a link's ICMP errors) goes straight to the site it is for.
    facing: dict[str, str] = {}
    for (site, _), (_, _, wan_if, _) in ends.items():
        facing.setdefault(site, wan_if)
    wan_cmds += [f"route add {address[site]}/{bits} via {address[site]} dev {wan_if} onlink"
                 for site, wan_if in facing.items()]
    for name in bed.sites:
        for other in bed.sites:
            if other != name:
                hop = topo.path_between(name, other)[1]
                site_cmds[name].append(f"route add {address[other]}/{bits} via {address[hop]} "
                                       f"dev {ends[(name, hop)][0]} onlink src {address[name]}")
    return wan_cmds, site_cmds


def resize(bed: "EmulatedTestbed", changes: dict[str, Direction]) -> int:
    """An mtu fault's step: each changed direction's route MTU, and whether what enters it is
    marked for its "fragmentation needed" to be dropped; when the last change took effect."""
    done = 0
    for name, d in changes.items():
        site, peer = name.split("->")
        if (site, peer) not in bed.link_ends:
            continue
        now = bed.topology.link_between(site, peer).direction(site)
        if (d.mtu, d.icmp_drop) == bed.sizes.get((site, peer), (now.mtu, now.icmp_drop)):
            continue  # a cut's or a loss burst's step: nothing of the sizes changes, nothing is spent
        bed.sizes[(site, peer)] = (d.mtu, d.icmp_drop)
        for version in bed.topology.families:
            route = f"{bed.wan_routes[(site, peer, version)]}" + (f" mtu lock {d.mtu}" if d.mtu else "")
            mark = ["PREROUTING", "-i", bed.link_ends[(site, peer)][2], "-j", "MARK", "--set-mark",
                    f"{ICMP_DROP_MARK:#x}"]
            table = IPTABLES_RESTORE[version].replace("-restore", "")
            marked = procs.run([table, "-w", "-t", "mangle", "-C", *mark], bed.wan).ok
            # Marked before the smaller MTU, unmarked after the larger one: no packet in between
            # may draw an error that tells the sender what the link's policy is to hide.
            steps = [["ip", f"-{version}", "route", "replace", *route.split()]]
            if d.icmp_drop != marked:
                change = [table, "-w", "-t", "mangle", "-A" if d.icmp_drop else "-D", *mark]
                steps = [change, *steps] if d.icmp_drop else [*steps, change]
            for step in steps:
                procs.run(step, bed.wan).check()
        done = time.time_ns()
    return done
