"""WAN faults between real hosts: the run's iptables chain on each receiving host drops what a
fault's loss asks for, and an emulating host's netem takes a delay step; each host asked
first whether it can, and whether a drop would cut this machine's own path to it."""

from __future__ import annotations

import concurrent.futures
import time

from ...inputs.model import Direction
from . import hostlinks
from .hostengine import RemoteError
from .hosts import controller_path, host_run


UNPLANNED_HOLD_S = 600.0  # a step applied with no planned end still goes by itself this long after


class HostFaults:
    """The fault half of RemoteTestbed: it keeps `topology`, `hosts`, `run_id`, `faulted`
    (hosts holding the run's chain), `impaired` (the directions a fault changed), `lost` (hosts
    whose lease the run lost), and the hosts' answers (`_iptables`, `_paths`), and saves its
    state (`_save_state`)."""

    def fault_unsupported(self, changes: dict[str, Direction]) -> str | None:
        """Why a fault's changes cannot be applied across these hosts, found by asking each
        host that would take drop rules (iptables as root); None when they can."""
        problems = hostlinks.unsupported(self.topology, changes)
        for site in sorted(hostlinks.receivers(self.topology, changes)):
            host = self.hosts[site]
            if host.ssh and site not in self._iptables:
                probed = host_run(host, f"iptables -w -t {hostlinks.TABLE} -S {hostlinks.HOOK} >/dev/null && "
                                       "command -v iptables-restore >/dev/null", 60)
                self._iptables[site] = None if probed.ok else (
                    f"{site}: iptables as root failed (exit {probed.rc}: "
                    f"{(probed.stderr or probed.stdout).strip()[-160:] or 'iptables-restore not found'})")
            if self._iptables.get(site):
                problems.append(self._iptables[site])
        return "; ".join(problems + self._controller_cut(changes)) or None

    def _controller_cut(self, changes: dict[str, Direction]) -> list[str]:
        """Why the changes would cut this machine's own path to a host (hostlinks.controller_cut),
        asked of each host a drop concerns, once per run."""
        for pair in hostlinks.plan(self.topology, changes):
            for site in (pair.src, pair.dst) if pair.drop > 0 else ():
                if self.hosts[site].ssh and site not in self._paths:
                    self._paths[site] = controller_path(self.hosts[site])
        seen = {site: path[0] for site, path in self._paths.items()}
        return hostlinks.controller_cut(self.topology, changes, seen, {s: p[1] for s, p in self._paths.items()})

    def impair(self, changes: dict[str, Direction], routed: dict[str, list[str]] | None = None,
               hold_s: float | None = None) -> int:
        """Apply a fault's step between the hosts: the run's iptables chain on each receiving
        host drops what the fault's loss asks for, from the far host's address and the
        overlay's unencapsulated ranges there (`routed`), and goes by itself after `hold_s` (by
        UNPLANNED_HOLD_S where none is given: no chain outlives its controller for good); a
        delay step changes the sending host's netem. Returns when it took effect, by the hosts'
        clocks: the first host to hold a step that impairs more, the last to hold one that heals."""
        after = {k: d for k, d in {**self.impaired, **changes}.items()
                 if d != hostlinks.topology_direction(self.topology, k)}
        problems = hostlinks.unsupported(self.topology, after) + self._controller_cut(after)
        if problems:
            raise RemoteError("; ".join(problems))
        old = {(p.src, p.dst): p.now for p in hostlinks.plan(self.topology, self.impaired)}
        new = {(p.src, p.dst): p.now for p in hostlinks.plan(self.topology, after)}
        scripts: dict[str, list[tuple[str, str | None]]] = {}
        healed = []  # hosts whose chain goes: nothing of the fault is left to drop there
        for site in self.hosts:
            lines = hostlinks.rules(self.topology, site, after, self.run_id, routed)
            if lines != hostlinks.rules(self.topology, site, self.impaired, self.run_id, routed) or \
                    (not lines and site in self.faulted):
                if lines and site not in self.faulted:
                    self.faulted.append(site)  # recorded first: a kill from here on leaves it to `clean`
                    self._save_state()
                if not lines:
                    healed.append(site)
                scripts[site] = [hostlinks.apply_script(self.run_id, lines, hold_s or UNPLANNED_HOLD_S) if lines else
                                 (hostlinks.heal_script(self.run_id), None)]
        handle = hostlinks.qdisc_handle(self.run_id)
        for src, dst in set(old) | set(new):
            healthy = hostlinks.PathValues.of(hostlinks.path_directions(self.topology, src, dst))
            was, now = old.get((src, dst), healthy), new.get((src, dst), healthy)
            if (was.delay_ms, was.jitter_ms) != (now.delay_ms, now.jitter_ms):  # only emulating hosts get here
                # netem keeps the path's own loss: the fault's is the chain's
                values = hostlinks.PathValues(now.delay_ms, now.jitter_ms, healthy.delivered)
                scripts.setdefault(src, []).append((hostlinks.netem_script(
                    self.hosts[src].interface, hostlinks.netem_class(self.topology, src, dst, handle), values), None))

        def apply(site: str) -> int:
            at = 0
            for script, stdin in scripts[site]:
                done = host_run(self.hosts[site], script, 60, input=stdin, fenced=self.run_id)
                if not done.ok:
                    raise RemoteError(f"host {site}: the fault's step failed (exit {done.rc}): "
                                      f"{(done.stderr or done.stdout).strip()[-300:]}")
                at = max(at, int(done.stdout.split()[-1]))
            return at

        # A fault begins at the first host that holds it; a heal is done at the last.
        took_effect = min if set(after) - set(self.impaired) else max
        self.impaired = after  # first: a host that fails midway still gets the heal's netem
        with concurrent.futures.ThreadPoolExecutor(max(1, len(scripts))) as pool:
            stamps = list(pool.map(apply, scripts))
        if healed:
            self.faulted = [site for site in self.faulted if site not in healed]
            self._save_state()
        return took_effect(stamps, default=time.time_ns())

    def _remove_fault_rules(self) -> list[str]:
        errors = []
        for site in [s for s in self.faulted if s not in self.lost]:  # a lost host removed it itself
            done = host_run(self.hosts[site], hostlinks.remove_script(self.run_id), 60, fenced=self.run_id)
            if done.ok:
                self.faulted.remove(site)
            else:
                errors.append(f"host {site}: the run's fault chain not removed: "
                              f"{(done.stderr or done.stdout).strip()[-200:]}")
        self.impaired = {}
        return errors
