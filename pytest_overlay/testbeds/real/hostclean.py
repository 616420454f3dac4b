"""`clean --topology`: what runs that are over left on real hosts (containers, networks, a
swarm they made, netem, WAN fault rules, daemons and what those added to the hosts' network),
found on the hosts by the run id and removed once this machine proves the run over.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ...inputs.model import Topology
from ...paths import STATE_ROOT
from ..engines import LABEL, SWARM_LABEL
from ..runs import RUN_ID, may_remove
from . import hostlinks
from .hostengine import RemoteEngine, remove_run, tls_reason
from .hostlock import LOCK_DELAY_S, HostLock
from .hosts import HOST_IDENTITY, HOST_STATE, FootprintOf, end_host_daemons, host_run


@dataclass
class Cleaned:
    """What `clean --topology` did: the runs whose leftovers it removed, and those whose state
    on this machine it keeps (a host held by a live run was skipped, or an undo failed there),
    so that the next `clean --topology` finds them again without --force."""

    runs: int = 0
    kept: set[str] = field(default_factory=set)


def swarm_to_leave(engines: dict[str, RemoteEngine], state: dict, report: Callable[[str], None]) -> set[str]:
    """The hosts a killed run's swarm may be left on: those still the very node the run made
    them (their node id as recorded); and, where the run was killed between making or joining
    the swarm and recording the node, a manager of a swarm labelled with the run's id, or a
    worker whose managers are such a swarm's."""
    if not state.get("swarm_created"):
        return set()
    nodes = (state.get("swarm") or {}).get("nodes", {})
    infos: dict[str, dict] = {}
    for name, engine in engines.items():
        try:
            infos[name] = engine.client.info().get("Swarm", {})
        except Exception as e:  # noqa: BLE001
            report(f"host {name}: swarm state unknown ({tls_reason(e)}); left as it is")
    ours = {info.get("NodeID") for name, info in infos.items()
            if info.get("NodeID") and info.get("ControlAvailable") and _labelled(engines[name], state.get("run_id"))}
    ours |= set(nodes.values())
    leave = set()
    for name, info in infos.items():
        node = info.get("NodeID") or ""
        if not node:
            continue
        managers = {m.get("NodeID") for m in info.get("RemoteManagers") or []}
        if nodes.get(name) == node or node in ours or (not info.get("ControlAvailable") and managers & ours):
            leave.add(name)
        else:
            report(f"host {name}: its swarm node {node[:12]} is not the one run {state.get('run_id')} made "
                   f"({(nodes.get(name) or '')[:12] or 'none recorded'}); left as it is")
    return leave


def _labelled(engine: RemoteEngine, run_id: str | None) -> bool:
    """Whether the swarm this manager belongs to carries the run's id (SWARM_LABEL, set at init)."""
    try:
        engine.client.swarm.reload()
        labels = (engine.client.swarm.attrs.get("Spec") or {}).get("Labels") or {}
    except Exception:  # noqa: BLE001  (not a manager after all, or unreachable: not known to be ours)
        return False
    return bool(run_id) and labels.get(SWARM_LABEL) == run_id


def clean_hosts(topology: Topology, footprint_of: FootprintOf, report: Callable[[str], None] = print,
                force: bool = False, state_root: Path | None = None) -> Cleaned:
    """Remove, on the topology's hosts, the containers, networks and WAN fault rules of runs
    that are over (their lock on this machine is free), and leave a swarm such a run made;
    what an overlay's daemons added to a host's network is undone by its footprint
    (`footprint_of`: the overlay's name -> what it adds). A host a live run holds is never
    touched, with or without `force`. A run with no state here cannot be proven over and is
    left alone unless `force`."""
    root = state_root or STATE_ROOT
    locks, held = [], set()  # a host a live run holds (or whose lock could not be asked) is skipped
    for name, site in topology.sites.items():
        if site.host is None or not site.host.ssh:
            continue
        lock = HostLock(site.host, "clean")
        refused = lock.acquire()
        wait = lock.expired_for(refused or "")
        if wait is not None and wait <= LOCK_DELAY_S:  # a lapsed lease frees the host by itself: wait for it
            report(f"host {name}: its run's lease lapsed; waiting {wait:.0f} s for its lock delay")
            time.sleep(wait + 1)
            refused = lock.acquire()
        if refused is None:
            locks.append(lock)
        else:
            held.add(name)
            report(f"host {name}: skipped, not touched: {refused}")
    try:
        return _clean_free_hosts(topology, footprint_of, report, force, root, held)
    finally:
        for lock in locks:
            lock.release()


def _clean_free_hosts(topology: Topology, footprint_of: FootprintOf, report: Callable[[str], None], force: bool,
                      root: Path, held: set[str]) -> Cleaned:
    engines = {}
    for name, site in topology.sites.items():
        if site.host is None or not site.host.docker or name in held:
            continue
        engine = RemoteEngine(name, "", site.host.address, "", None, host=site.host)
        try:
            engine.connect()
            engine.client.ping()
            engines[name] = engine
        except Exception as e:  # noqa: BLE001
            report(f"host {name}: Docker API at {site.host.docker} did not answer ({tls_reason(e)}); skipped")
    found: set[str] = set()
    for engine in engines.values():
        found |= {c.labels.get(LABEL) for c in engine.client.containers.list(all=True, filters={"label": LABEL})}
        found |= {n.attrs.get("Labels", {}).get(LABEL) for n in engine.client.networks.list(filters={"label": LABEL})}
    ssh_hosts = {name: site.host for name, site in topology.sites.items()
                 if site.host is not None and site.host.ssh and name not in held}
    for name, host in ssh_hosts.items():  # runs that started daemons there
        listed = host_run(host, f"ls -d {HOST_STATE}/*/host/*/pid {HOST_STATE}/*/host/net-*.before 2>/dev/null "
                                "|| true", 60)
        found |= {run for path in listed.stdout.split() if RUN_ID.match(run := path[len(HOST_STATE) + 1:][:6])}
    lapsed: set[str] = set()  # runs whose lease lapsed on a host: over, whichever controller ran them
    for name, host in ssh_hosts.items():
        listed = host_run(host, f"ls -d {HOST_STATE}/*/lapsed-* 2>/dev/null || true", 60)
        lapsed |= {run for path in listed.stdout.split() if RUN_ID.match(run := path[len(HOST_STATE) + 1:][:6])}
    found |= lapsed
    fault_chains: dict[str, list[str]] = {}  # run id -> hosts holding its WAN fault's chain
    for name, host in ssh_hosts.items():
        saved = host_run(host, f"iptables-save -t {hostlinks.TABLE} 2>/dev/null || true", 60).stdout
        for run_id in hostlinks.runs_in(saved):
            fault_chains.setdefault(run_id, []).append(name)
    found |= set(fault_chains)
    endpoints = {h.docker for h in ssh_hosts.values()}
    for state_file in root.glob("*/state.json"):  # runs killed before any container, or cleaned in part
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if state.get("backend") == "remote" and endpoints & set((state.get("hosts") or {}).values()):
            found.add(state_file.parent.name)
    done = Cleaned()
    for run_id in sorted(r for r in found if r):
        if run_id in lapsed:
            report(f"run {run_id}: its lease on the hosts lapsed, so it is over")
        elif not may_remove(run_id, root / run_id, force, report, "on the hosts"):
            continue
        try:
            state = json.loads((root / run_id / "state.json").read_text())
        except (OSError, ValueError):
            state = {}
        failed: list[str] = []
        leave = swarm_to_leave(engines, state, report)
        failed += remove_run(engines, run_id, leave, set(state.get("gwbridge_made") or []))
        emulated = {n: ssh_hosts[n] for n in (state.get("emulated") or {}) if n in ssh_hosts}
        failed += hostlinks.remove_netem(emulated, run_id, report)
        for name in fault_chains.get(run_id, []):
            removed = host_run(ssh_hosts[name], hostlinks.remove_script(run_id), 60)
            if removed.ok:
                report(f"host {name}: removed run {run_id}'s WAN fault rules ({hostlinks.chain(run_id)})")
            else:
                failed.append(f"host {name}: run {run_id}'s WAN fault rules not removed: "
                              f"{(removed.stderr or removed.stdout).strip()[-200:]}")
        ended, undone = end_host_daemons(ssh_hosts, run_id, footprint_of)
        failed += undone
        marks = f'{HOST_STATE}/{run_id}/lapsed-$({HOST_IDENTITY}) "{hostlinks.emulated_file(run_id)}"'
        for host in ssh_hosts.values():  # the marks a lapsed lease left: the run is cleaned now
            host_run(host, f"rm -f {marks}; rmdir {HOST_STATE}/{run_id} 2>/dev/null || true", 60)
        for name, daemons in ended.items():
            for daemon in daemons:
                report(f"host {name}: ended {daemon} of run {run_id}")
        for failure in failed:
            report(failure)
        report(f"removed what run {run_id} left on {', '.join(sorted(set(engines) | set(ssh_hosts)))}"
               + (f"; left the swarm it made on {', '.join(sorted(leave))}" if leave else ""))
        if failed or held:
            done.kept.add(run_id)
            report(f"run {run_id}: its state here is kept for another `clean --topology` "
                   f"({'hosts skipped: ' + ', '.join(sorted(held)) if held else 'not everything was undone'})")
        done.runs += 1
    for engine in engines.values():
        engine.client.close()
    return done
