"""The WAN links between real hosts: shaped as the topology says on hosts with
`emulate: true` (netem under htb, one class per destination), and broken as a WAN fault says.

Shaping: the run's root qdisc (its handle from the run id) on the host's interface, an htb
class per other site with the path's rate, a netem with the path's delay, jitter and loss,
and a filter on that site's address; removed at the end, or by `clean --topology`, only
while it is still the run's.

Faults: loss (a cut, a partition, a flap, a loss burst) is an iptables chain of the run's
own on the receiving host, jumped to first from the raw table's PREROUTING, dropping what
arrives from the far host's address and from the overlay's unencapsulated ranges there:
everything the far end sends (tunnels, gossip, BGP, routed workloads) vanishes in transit,
and no sender is told (a drop on the sender's OUTPUT would fail its send with EPERM, which a
WAN never does). A delay or jitter step (a reroute) changes the netem of the sending host's
class for that destination; a host without it cannot take one, and says so before the
scenario starts. A fault on a link touches every pair of hosts whose topology path crosses
it, as the emulator's does: the hosts talk directly, the topology says which pairs share the
link. The chain's name carries the run id, so teardown and `clean --topology` remove only
the run's.

A fault removes itself when the controller goes: the run's lock session on each host (hostlock)
removes the chain as its input closes, which a killed controller's closes at once; and each step
that applies a chain starts a timer on the host that removes it at the fault's planned end plus
a margin, for a controller that vanished without closing anything (a crash, a cut cable).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass
from typing import Callable

from ...inputs.model import Direction, RemoteHost, Topology
from .hosts import HOST_IDENTITY, HOST_STATE, as_root, fence, ssh_run

DEFAULT_QDISCS = {"noqueue", "pfifo_fast", "fq_codel", "fq", "mq", "pfifo"}  # what a kernel sets up itself
UNSHAPED = "100gbit"

# --- faults ----------------------------------------------------------------------------------
CHAIN_PREFIX = "OVL-FAULT-"
TABLE, HOOK = "raw", "PREROUTING"
_CHAIN = re.compile(rf"^:({re.escape(CHAIN_PREFIX)}([0-9a-f]{{6}})) ", re.M)


def chain(run_id: str) -> str:
    return f"{CHAIN_PREFIX}{run_id}"


def runs_in(iptables_save: str) -> set[str]:
    """The run ids whose fault chains an `iptables-save -t raw` shows."""
    return {m.group(2) for m in _CHAIN.finditer(iptables_save)}


@dataclass(frozen=True)
class PathValues:
    """What a path of link directions does end to end: delays and jitters add up, losses
    compound."""

    delay_ms: float
    jitter_ms: float
    delivered: float  # the share of packets that arrive

    @classmethod
    def of(cls, directions: list[Direction]) -> PathValues:
        delivered = 1.0
        for d in directions:
            delivered *= 1 - d.loss_pct / 100
        return cls(sum(d.delay_ms for d in directions), sum(d.jitter_ms for d in directions), delivered)

    @property
    def loss_pct(self) -> float:
        return (1 - self.delivered) * 100

    def netem(self) -> list[str]:
        """netem's arguments for this path (a root qdisc's limit first)."""
        args = ["limit", "100000", "delay", f"{self.delay_ms:g}ms"]
        if self.jitter_ms:
            args += [f"{self.jitter_ms:g}ms"]
        if self.delivered < 1:
            args += ["loss", f"{self.loss_pct:g}%"]
        return args


def path_directions(topology: Topology, src: str, dst: str,
                    changed: dict[str, Direction] | None = None) -> list[Direction]:
    """The link directions from src to dst, each as `changed` gives it ("A->B") or else as
    the topology does."""
    return [(changed or {}).get(f"{d.src}->{d.dst}", d) for d in topology.directions(src, dst)]


@dataclass(frozen=True)
class PairFault:
    """What a fault does between two hosts, beyond what the topology gives them."""

    src: str
    dst: str
    drop: float  # the extra share of packets dropped, 0..1
    healthy: PathValues
    now: PathValues

    @property
    def delay_changed(self) -> bool:
        return (self.now.delay_ms, self.now.jitter_ms) != (self.healthy.delay_ms, self.healthy.jitter_ms)


def plan(topology: Topology, changed: dict[str, Direction]) -> list[PairFault]:
    """Every ordered pair of sites whose path a set of changed link directions touches, with
    the extra drop (the fault's loss over the path's own) and the path's values then."""
    touched = {name for name, d in changed.items() if d != topology_direction(topology, name)}
    out = []
    for src in topology.sites:
        for dst in topology.sites:
            if src == dst:
                continue
            path = topology.directions(src, dst)
            if not touched & {f"{d.src}->{d.dst}" for d in path}:
                continue
            healthy = PathValues.of(path)
            now = PathValues.of(path_directions(topology, src, dst, changed))
            drop = 1.0 if now.delivered <= 0 else max(0.0, 1 - now.delivered / healthy.delivered)
            out.append(PairFault(src, dst, round(drop, 9), healthy, now))
    return out


def topology_direction(topology: Topology, name: str) -> Direction:
    """A link direction ("A->B") as the topology gives it."""
    a, b = name.split("->", 1)
    link = topology.link_between(a, b)
    if link is None:
        raise ValueError(f"no link {a}-{b} in topology {topology.name}")
    return link.direction(a)


def unsupported(topology: Topology, changed: dict[str, Direction]) -> list[str]:
    """Why these changes cannot be applied across the topology's hosts (empty: they can)."""
    problems = []
    for name, d in changed.items():
        if (d.mtu, d.icmp_drop) != ((given := topology_direction(topology, name)).mtu, given.icmp_drop):
            problems.append(f"the fault changes {name}'s MTU: across real hosts the path is the hosts' own; run an mtu "
                            "fault on the embedded WAN")
    for pair in plan(topology, changed):
        receiver, sender = topology.sites[pair.dst].host, topology.sites[pair.src].host
        if pair.drop > 0 and (receiver is None or not receiver.ssh):
            problems.append(f"{pair.dst} has no ssh: entry: a fault's drops are placed on the receiving host over ssh")
        if pair.delay_changed and not (sender is not None and sender.ssh and sender.emulate and sender.interface):
            problems.append(f"the fault changes the delay from {pair.src} to {pair.dst} "
                            f"({pair.healthy.delay_ms:g} -> {pair.now.delay_ms:g} ms): on real hosts a delay step "
                            f"needs netem there (emulate: true and an interface on {pair.src})")
    return sorted(set(problems))


def controller_cut(topology: Topology, changed: dict[str, Direction], seen_from: dict[str, str | None],
                   via: dict[str, str | None]) -> list[str]:
    """Why these changes would cut this machine's own path to a host, so that the heal could
    not reach it: a receiving host that sees this machine at the address of a site whose
    packets it is to drop (`seen_from`: per site, the client address its ssh server sees), or a
    site this machine reaches through the host that is to drop what that site sends (`via`:
    per site, the gateway of this machine's route to it)."""
    address = {name: _ip(site.host.address) for name, site in topology.sites.items() if site.host}
    problems = []
    for pair in plan(topology, changed):
        if pair.drop <= 0:
            continue
        if _ip(seen_from.get(pair.dst)) == address[pair.src]:
            problems.append(f"{pair.dst} sees this machine at {address[pair.src]}, the address of {pair.src}, whose "
                            f"packets the fault has {pair.dst} drop: the heal could not reach {pair.dst}; run from "
                            "a machine that is none of the sites")
        if _ip(via.get(pair.src)) == address[pair.dst]:
            problems.append(f"this machine reaches {pair.src} through {pair.dst} (its route via "
                            f"{address[pair.dst]}), which the fault has drop what {pair.src} sends: {pair.src}'s "
                            f"answers could not come back; reach {pair.src} by a path that avoids the sites")
    return sorted(set(problems))


def _ip(text: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(text)) if text else None
    except ValueError:
        return text


def receivers(topology: Topology, changed: dict[str, Direction]) -> set[str]:
    """The sites whose hosts take drop rules for these changes."""
    return {pair.dst for pair in plan(topology, changed) if pair.drop > 0}


def rules(topology: Topology, site: str, changed: dict[str, Direction], run_id: str,
          routed: dict[str, list[str]] | None = None) -> list[list[str]]:
    """The fault chain's rules on one site's host (iptables-restore lines as argument lists):
    a drop, certain or by chance, of what arrives from each site whose path here the fault
    touches."""
    name = chain(run_id)
    out = []
    for pair in plan(topology, changed):
        if pair.dst != site or pair.drop <= 0:
            continue
        chance = [] if pair.drop >= 1 else ["-m", "statistic", "--mode", "random", "--probability", f"{pair.drop:.6f}"]
        for source in [f"{topology.sites[pair.src].host.address}/32", *(routed or {}).get(pair.src, [])]:
            out.append(["-A", name, "-s", source, *chance, "-j", "DROP"])
    return out


def _timer_file(run_id: str) -> str:
    """Where a host keeps the pid of the run's fault timer: one per host (per network namespace,
    as the lab's hosts share one file system)."""
    return f"{HOST_STATE}/{run_id}/fault-timer-$({HOST_IDENTITY})"


def _timer_marker(run_id: str) -> str:
    return f"ovl-fault-timer-{run_id}"


def _stop_timer(run_id: str) -> str:
    """Shell ending the run's fault timer on a host (its process group, by the pid it left,
    and only while that pid is still the timer)."""
    return (f't="{_timer_file(run_id)}"\nif [ -f "$t" ]; then p=$(cat "$t"); '
            f"grep -qaF {_timer_marker(run_id)} /proc/$p/cmdline 2>/dev/null && kill -- -$p 2>/dev/null; "
            'rm -f "$t"; fi')


def _mutex(run_id: str) -> str:
    """Shell holding the run's fault mutex on the host until the shell ends: applying a step
    and removing the chain (the lease's far end among them) never interleave. What it starts
    in the background must close fd 8, or it holds the mutex as long as it runs."""
    return (f"(umask 077; mkdir -p {HOST_STATE}/{run_id})\n"
            f'exec 8>>"{HOST_STATE}/{run_id}/fault-mutex-$({HOST_IDENTITY})"\nflock 8')


def apply_script(run_id: str, lines: list[list[str]], hold_s: float | None = None) -> tuple[str, str]:
    """Shell (run as root on the host) giving the fault chain exactly `lines`, jumped to
    first from the hook, and printing the host's wall clock (ns) once it holds; and the
    iptables-restore input it reads from stdin. With `hold_s`, the host removes the chain by
    itself that many seconds later unless a later step replaces this one's timer. It runs
    under the run's fault mutex, and only while the run still holds the host: a step that
    arrives after the host let the run go recreates nothing."""
    name = chain(run_id)
    restore = f"*{TABLE}\n:{name} - [0:0]\n" + "".join(shlex.join(line) + "\n" for line in lines) + "COMMIT\n"
    script = (f"{_mutex(run_id)}\n{fence(run_id)}\n"
              f"iptables-restore -w --noflush\niptables -w -t {TABLE} -C {HOOK} -j {name} 2>/dev/null || "
              f"iptables -w -t {TABLE} -I {HOOK} 1 -j {name}\n")
    if hold_s is not None:
        expire = (f"sleep {max(1, round(hold_s))}; {_remove_chain(run_id)}\n"
                  f'rm -f "{_timer_file(run_id)}"; rmdir {HOST_STATE}/{run_id} 2>/dev/null')
        script += (f"{_stop_timer(run_id)}\n(umask 077; mkdir -p {HOST_STATE}/{run_id})\n"
                   f"setsid sh -c {shlex.quote(expire)} {_timer_marker(run_id)} >/dev/null 2>&1 </dev/null 8>&- &\n"
                   'echo $! > "$t"\n')
    return script + "date +%s%N", restore


def netem_script(dev: str, classid: str, values: PathValues) -> str:
    """Shell changing the netem under one of the run's htb classes (a destination's) to
    `values`, and printing the host's wall clock (ns) once it holds."""
    child = f"{classid.split(':')[1]}:"
    return (shlex.join(["tc", "qdisc", "change", "dev", dev, "parent", classid, "handle", child, "netem",
                        *values.netem()]) + "\ndate +%s%N")


def _remove_chain(run_id: str) -> str:
    name, table = chain(run_id), f"-t {TABLE}"
    return (f"while iptables -w {table} -D {HOOK} -j {name} 2>/dev/null; do :; done; "
            f"if iptables -w {table} -S {name} >/dev/null 2>&1; then iptables -w {table} -F {name} && "
            f"iptables -w {table} -X {name} && echo removed; fi")


def remove_script(run_id: str) -> str:
    """Shell removing the run's fault chain, its jump and its timer from a host (and the run's
    directory there, once empty), under the run's fault mutex; says `removed` if there was a
    chain. Safe to run twice, and where there never was one."""
    return (f"{_mutex(run_id)}\n{_stop_timer(run_id)}\n{_remove_chain(run_id)}\n"
            f'rm -f "{HOST_STATE}/{run_id}/fault-mutex-$({HOST_IDENTITY})"; exec 8>&-\n'
            f"rmdir {HOST_STATE}/{run_id} 2>/dev/null || :")


def heal_script(run_id: str) -> str:
    """`remove_script`, printing the host's wall clock (ns) last, as taken the moment the jump
    went: the heal held from then, and the chain's removal after it takes several more
    iptables runs, each one slower when the hypervisor takes the CPU."""
    name = chain(run_id)
    return (f"iptables -w -t {TABLE} -D {HOOK} -j {name} 2>/dev/null; healed=$(date +%s%N)\n"
            f"{remove_script(run_id)}\necho $healed")


# --- shaping ---------------------------------------------------------------------------------
def qdisc_handle(run_id: str) -> str:
    """The major handle of the run's root qdisc on a host: from its id, so that teardown and
    `clean` remove a root qdisc only while it is still the run's own. Always 0x1000 or more:
    the netem under its classes take majors from 10 (hex) up, one per other site (netem_class)."""
    return f"{0x1000 + int(run_id[:3], 16):x}"


def emulated_file(run_id: str) -> str:
    """Where a host records, before the run's link emulation goes on, the interface it goes
    on: the lease's far end and `clean` from any controller find it there."""
    return f"{HOST_STATE}/{run_id}/emulated-$({HOST_IDENTITY})"


def record_emulation_script(run_id: str, dev: str) -> str:
    return f'umask 077; mkdir -p {HOST_STATE}/{run_id} && echo {shlex.quote(dev)} > "{emulated_file(run_id)}"'


def remove_netem_script(dev: str, handle: str) -> str:
    """Shell removing the root qdisc of `dev` if it is the run's (htb with its handle); says
    what it did, or that the root is someone else's now."""
    quoted = shlex.quote(dev)
    return (f"root=$(tc qdisc show dev {quoted} root)\n"
            f'case "$root" in "qdisc htb {handle}: root"*) tc qdisc del dev {quoted} root && echo removed ;;\n'
            '  *) echo "not ours: $root" ;; esac')


def netem_class(topology: Topology, site: str, other: str, handle: str = "1") -> str:
    """The htb class of the run's root qdisc on `site`'s host that holds the traffic to `other`."""
    return f"{handle}:{10 + [o for o in topology.sites if o != site].index(other)}"


def netem_commands(topology: Topology, site: str, host: RemoteHost, handle: str = "1") -> list[list[str]]:
    """tc commands for one emulating host: an htb root (major `handle`, the run's) whose
    default class is unshaped, and per other site a class (the path's rate), a netem (its
    one-way delay, jitter and loss) and a filter on that site's address. Paths over several
    links add up, as on the testbed."""
    dev = host.interface
    commands = [["tc", "qdisc", "replace", "dev", dev, "root", "handle", f"{handle}:", "htb", "default", "1"],
                ["tc", "class", "add", "dev", dev, "parent", f"{handle}:", "classid", f"{handle}:1", "htb", "rate",
                 UNSHAPED]]
    for other in (o for o in topology.sites if o != site):
        there = path_directions(topology, site, other)
        rates = [d.rate_mbit for d in there if d.rate_mbit]
        classid = netem_class(topology, site, other, handle)
        rate = f"{min(rates):g}mbit" if rates else UNSHAPED
        commands += [["tc", "class", "add", "dev", dev, "parent", f"{handle}:", "classid", classid, "htb", "rate", rate],
                     ["tc", "qdisc", "add", "dev", dev, "parent", classid, "handle", f"{classid.split(':')[1]}:",
                      "netem", *PathValues.of(there).netem()],
                     ["tc", "filter", "add", "dev", dev, "parent", f"{handle}:", "protocol", "ip", "prio", "1", "u32",
                      "match", "ip", "dst", f"{topology.sites[other].host.address}/32", "flowid", classid]]
    return commands


def remove_netem(hosts: dict[str, RemoteHost], run_id: str, report: Callable[[str], None]) -> list[str]:
    """Take the run's root qdisc off each host's interface, where it is still the run's."""
    errors = []
    for name, host in hosts.items():
        if not host.ssh or not host.interface:
            continue
        done = ssh_run(host, as_root(remove_netem_script(host.interface, qdisc_handle(run_id))), 60)
        if not done.ok:
            errors.append(f"host {name}: netem on {host.interface} not removed: "
                          f"{(done.stderr or done.stdout).strip()[-200:]}")
        elif done.stdout.startswith("removed"):
            report(f"host {name}: removed run {run_id}'s netem from {host.interface}")
        elif not any(f"qdisc {kind} " in done.stdout for kind in DEFAULT_QDISCS):  # never applied: nothing to say
            report(f"host {name}: the root qdisc of {host.interface} is not run {run_id}'s any more "
                   f"({done.stdout.strip()[9:][:120]}); left as it is")
    return errors
