"""WAN link emulators: netem where the kernel has it, the NFQUEUE delay line where it doesn't.

Both act in the testbed's `wan` namespace, on traffic forwarded from one site to another, so
the skbs are no longer charged to the sender's socket and every tool (ping included) sees
the emulated delay. Rate is shaped after the delay, as on a real path: tbf with the delay
line, netem's own `rate` with netem.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import procs
from . import duplicate
from ..inputs.model import Direction
from ..paths import CACHE
from .control import query_stats, set_queues
from .linkqueue import HIST_EDGES_US, LATE_LIMIT_S

KINDS = ("auto", "netem", "delayline", "none")
MTU = 1500
DEFAULT_RATE_MBIT = 10_000  # what an unshaped veth path carries, for sizing queues


@dataclass(frozen=True)
class Port:
    """One emulated link direction: the wan-namespace interfaces it enters and leaves by."""

    direction: Direction
    queue: int
    ingress: str
    egress: str
    # The far site's address by IP version: where a duplicated packet's copy is sent.
    next_hops: dict[int, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        return f"{self.direction.src}->{self.direction.dst}"


def netem_available(netns: str) -> tuple[bool, str]:
    """Try a netem qdisc on the namespace's loopback; the kernel's answer is the truth."""
    result = procs.run(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], netns)
    if result.ok:
        procs.run(["tc", "qdisc", "del", "dev", "lo", "root"], netns)
        return True, "kernel has sch_netem"
    answer = (result.stderr or result.stdout).strip().splitlines()
    return False, f"kernel lacks sch_netem (tc: {answer[-1] if answer else f'exit {result.rc}'})"


def _rate_bytes(direction: Direction) -> float:
    return (direction.rate_mbit or DEFAULT_RATE_MBIT) * 1e6 / 8


def queue_packets(direction: Direction) -> int:
    """Enough room for twice the bandwidth-delay product of full-size packets, and the
    link's buffer behind its rate limit (netem holds both in one queue)."""
    held_ms = direction.delay_ms + 2 * direction.jitter_ms
    bdp = _rate_bytes(direction) * held_ms / 1e3
    buffer = _rate_bytes(direction) * (direction.buffer_ms or 0.0) / 1e3
    return int(min(1_000_000, max(1000, math.ceil((2 * bdp + buffer) / MTU))))


def _tbf(direction: Direction, dev: str) -> list[str]:
    """The link's rate limit, with the link's buffer in front of it: tbf queues at most `limit`
    bytes, which drain at the rate in buffer_ms; a packet beyond is dropped, as a router's
    tail drop. (tc shows `lat`, (limit - burst) / rate: the wait left once the bucket is full.)"""
    rate = _rate_bytes(direction)
    burst = int(max(128 * 1024, rate / 1000))
    limit = int(max(2 * MTU, rate * (direction.buffer_ms or 0.0) / 1e3))
    return ["tc", "qdisc", "replace", "dev", dev, "root", "tbf",
            "rate", f"{direction.rate_mbit}mbit", "burst", str(burst), "limit", str(limit)]


def _tc_batch(netns: str, commands: list[list[str]]) -> None:
    """tc commands in one process: with a link per pair of 50 sites, tc started once per device
    cost 34 ms each (it reads every device of the namespace first), 83 s in all."""
    if commands:
        batch = "".join(" ".join(c[1:] if c[0] == "tc" else c) + "\n" for c in commands)
        procs.run(["tc", "-batch", "-"], netns, input=batch).check()


class Emulator:
    kind = ""

    def __init__(self, netns: str, ports: list[Port], run_dir: Path) -> None:
        self.netns, self.ports, self.run_dir = netns, ports, run_dir
        self.daemons: list[procs.Daemon] = []
        self.cpus: frozenset[int] = frozenset()  # where its daemon is held; empty: anywhere

    def start(self) -> None:
        raise NotImplementedError

    def counters(self, reset: bool = False, since: int | None = None) -> dict[str, dict]:
        """Per link direction: packets seen, dropped on purpose, dropped or late by accident,
        the release-error histogram and the largest error since the last `reset`; with
        `since` (wall ns), the late and drop windows that ended then or later, where the
        emulator keeps a timeline (`windows`: [[start_ns, end_ns, late, dropped, max_late_us]])."""
        raise NotImplementedError

    def impair(self, changes: dict[str, Direction]) -> int:
        """Give the named link directions ("A->B") new delay, jitter and loss at one moment (a
        WAN fault starting or healing); the wall clock (ns) at which they took effect."""
        raise NotImplementedError(f"the {self.kind or 'no'} emulator cannot change a link while it runs")

    def rebuffer(self, directions: list[Direction]) -> None:
        """Give rate-limited link directions a new buffer (their queue_ms) while the testbed
        runs, for the latency-under-load experiment; the rest of each link is unchanged."""
        raise NotImplementedError(f"the {self.kind or 'no'} emulator has no link buffers to change")

    def _ports_named(self, changes: dict[str, Direction]) -> list[tuple[Port, Direction]]:
        by_name = {p.name: p for p in self.ports}
        unknown = sorted(set(changes) - set(by_name))
        if unknown:
            raise ValueError(f"no emulated link direction {', '.join(unknown)}; links: {', '.join(by_name)}")
        return [(by_name[name], d) for name, d in changes.items()]

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()

    def describe(self) -> dict:
        return {"kind": self.kind, "links": {p.name: vars(p.direction) for p in self.ports}}


def _netem(port: Port, d: Direction) -> list[str]:
    command = ["qdisc", "replace", "dev", port.egress, "root", "netem", "limit", str(queue_packets(d)),
               "delay", f"{d.delay_ms}ms"]
    if d.jitter_ms:
        command += [f"{d.jitter_ms}ms"]
    if d.loss_pct:
        command += ["loss", f"{d.loss_pct}%"]
    if d.reorder_pct:
        command += ["reorder", f"{d.reorder_pct}%"]
    if d.duplicate_pct:
        command += ["duplicate", f"{d.duplicate_pct}%"]
    if d.rate_mbit:
        command += ["rate", f"{d.rate_mbit}mbit"]
    return command


class Netem(Emulator):
    kind = "netem"

    def start(self) -> None:
        _tc_batch(self.netns, [_netem(port, port.direction) for port in self.ports])

    def impair(self, changes: dict[str, Direction]) -> int:
        _tc_batch(self.netns, [_netem(port, d) for port, d in self._ports_named(changes)])
        return time.time_ns()

    def rebuffer(self, directions: list[Direction]) -> None:
        self.impair({f"{d.src}->{d.dst}": d for d in directions})

    def counters(self, reset: bool = False, since: int | None = None) -> dict[str, dict]:
        shown = procs.run(["tc", "-s", "-j", "qdisc", "show"], self.netns).check()
        by_dev = {q.get("dev"): q for q in json.loads(shown.stdout or "[]") if q.get("kind") == "netem"}
        out = {}
        for port in self.ports:
            q = by_dev.get(port.egress, {})
            # netem counts its emulated loss as drops too: only a lossless link proves overflow.
            drops = q.get("drops", 0)
            out[port.name] = {
                "packets": q.get("packets", 0),
                "lost": drops if port.direction.loss_pct else 0,
                "dropped": 0 if port.direction.loss_pct else drops,
                "late": 0,
            }
        return out


CORE_SOURCE = Path(__file__).resolve().parent / "core" / "delayline.c"
# "python" forces the portable core (for comparing the two, or where cc misbehaves).
CORE_ENV = "PYTEST_OVERLAY_DELAYLINE_CORE"


def compiled_core() -> tuple[str | None, str]:
    """The delay line's compiled core, built once per source version into the cache; or
    None and why the portable (Python) core runs instead."""
    if os.environ.get(CORE_ENV) == "python":
        return None, f"portable core forced by {CORE_ENV}=python"
    source = CORE_SOURCE.read_bytes()
    target = CACHE / f"delayline-core-{hashlib.sha256(source).hexdigest()[:12]}"
    if os.access(target, os.X_OK):
        return str(target), "compiled core"
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None, "no C compiler (cc) to build the compiled core: portable core, about 10x the CPU per packet"
    CACHE.mkdir(parents=True, exist_ok=True)
    building = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    built = subprocess.run([cc, "-O2", "-o", str(building), str(CORE_SOURCE)], capture_output=True, text=True)
    if built.returncode:
        building.unlink(missing_ok=True)
        error = (built.stderr.strip().splitlines() or [f"exit {built.returncode}"])[-1]
        return None, f"compiled core failed to build ({cc}: {error}): portable core"
    os.replace(building, target)
    return str(target), "compiled core"


class DelayLine(Emulator):
    kind = "delayline"
    core = ""  # which core runs, and why: set by command()

    @property
    def control(self) -> Path:
        return self.run_dir / "delayline.sock"

    def command(self) -> list[str]:
        """The compiled core where it builds, else the portable one; same protocol."""
        core, self.core = compiled_core()
        if core:
            command = [core, "--control", str(self.control), "--seed", "1"]
            for p in self.ports:
                d = p.direction
                command += ["--queue", f"{p.queue}:{d.delay_ms * 1e3:g}:{d.jitter_ms * 1e3:g}:"
                                       f"{d.loss_pct * 1e4:g}:{queue_packets(d)}:{d.reorder_pct * 1e4:g}"]
            return command
        config = {
            "control": str(self.control),
            "seed": 1,
            "queues": [
                {"num": p.queue, "delay_ms": p.direction.delay_ms, "jitter_ms": p.direction.jitter_ms,
                 "loss_pct": p.direction.loss_pct, "maxlen": queue_packets(p.direction),
                 "reorder_pct": p.direction.reorder_pct}
                for p in self.ports
            ],
        }
        return [sys.executable, "-m", "pytest_overlay.emulation.delayline", json.dumps(config)]

    def start(self) -> None:
        # --queue-bypass: were the delay line to die, packets pass instead of stalling the probe
        # in flight until its timeout; the measurement is then thrown away (measure.py checks
        # the testbed's daemons after every probe) and the session stops, saying why.
        rules = ["*mangle"] + [
            f"-A FORWARD -i {p.ingress} -j NFQUEUE --queue-num {p.queue} --queue-bypass" for p in self.ports
        ] + ["COMMIT", ""]
        self.cpus = own_cpu()
        self.daemons.append(procs.start(
            "delayline", self.command(), self.run_dir / "delayline.log", self.netns, ready="ready",
            preexec=(lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None,
        ))
        for restore in ("iptables-restore", "ip6tables-restore"):  # whichever family the sites' addresses are
            procs.run([restore, "-w", "--noflush"], self.netns, input="\n".join(rules)).check()
        duplicate.install(self.netns, self.ports)
        _tc_batch(self.netns, [_tbf(port.direction, port.egress) for port in self.ports if port.direction.rate_mbit])

    def counters(self, reset: bool = False, since: int | None = None) -> dict[str, dict]:
        stats = query_stats(str(self.control), reset=reset, since=since)
        copies = duplicate.counts(self.netns, self.ports)
        out = {}
        for port in self.ports:
            q = stats["queues"].get(str(port.queue), {})
            out[port.name] = {
                "packets": q.get("queued", 0),
                "lost": q.get("lost", 0),
                "reordered": q.get("reordered", 0),
                "duplicated": copies.get(port.name, 0),
                "dropped": q.get("kernel_dropped", 0) + q.get("kernel_user_dropped", 0),
                "late": q.get("late", 0),
                "max_late_us": q.get("window_max_late_us", 0.0),
                "late_hist": q.get("late_hist", []),
            }
            if since is not None:
                out[port.name]["windows"] = q.get("windows", [])
                out[port.name]["windows_incomplete"] = bool(q.get("windows_incomplete"))
        out["_enobufs"] = {"dropped": stats.get("enobufs", 0)}
        return out

    def rebuffer(self, directions: list[Direction]) -> None:
        _tc_batch(self.netns, [_tbf(d, port.egress) for port, d in
                               self._ports_named({f"{d.src}->{d.dst}": d for d in directions}) if d.rate_mbit])

    def impair(self, changes: dict[str, Direction]) -> int:
        return set_queues(str(self.control), {port.queue: (d.delay_ms, d.jitter_ms, d.loss_pct)
                                              for port, d in self._ports_named(changes)})

    def describe(self) -> dict:
        return {**super().describe(), "core": self.core, "cpus": sorted(self.cpus)}


def own_cpu() -> frozenset[int]:
    """A CPU of its own for the delay line, where there are two or more: the last one.

    It runs at a real-time priority and the packets it releases go on up the receiving
    stack on its CPU, waking their reader there. A reader woken onto its CPU waits until it
    lets go: iperf3's UDP receiver, which reads a datagram per wake-up, waited 40 to 50 % of
    a run there and its socket dropped 1 to 7 % of a 500 Mbit/s flow through Flannel. Held to
    one CPU, the delay line leaves the other to whoever the probes keep there (`probe_cpus`)."""
    allowed = sorted(os.sched_getaffinity(0))
    return frozenset(allowed[-1:]) if len(allowed) >= 2 else frozenset()


class NoEmulation(Emulator):
    """Plain forwarding: the topology's delays, jitter, loss and rates are not applied."""

    kind = "none"

    def start(self) -> None:
        pass

    def counters(self, reset: bool = False, since: int | None = None) -> dict[str, dict]:
        return {}


def choose(kind: str, netns: str) -> tuple[type[Emulator], str]:
    """The emulator class to use, and why."""
    if kind == "none":
        return NoEmulation, "forced by --overlay-emulator=none: links carry no delay"
    has_netem, why = netem_available(netns)
    if kind == "netem" and not has_netem:
        raise RuntimeError(f"--overlay-emulator=netem, but the {why}; use --overlay-emulator=delayline or auto")
    if kind == "netem" or (kind == "auto" and has_netem):
        return Netem, why
    return DelayLine, why if kind == "auto" else "forced by --overlay-emulator=delayline"


def percentile_bound_us(hist: list[int], q: float) -> float | None:
    """The upper edge of the histogram bucket holding the q-th percentile release error
    (µs): the error is at most this. None without releases; inf in the open last bucket."""
    total = sum(hist)
    if not total:
        return None
    seen = 0
    for i, count in enumerate(hist):
        seen += count
        if seen >= q / 100 * total:
            return float(HIST_EDGES_US[i]) if i < len(HIST_EDGES_US) else math.inf
    return math.inf


def delta(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Counters accrued between two snapshots, with the release error's 99th percentile
    bound and maximum (`before` taken with reset) over that window."""
    out = {}
    for name, counts in after.items():
        prior = before.get(name, {})
        accrued = {k: v - prior.get(k, 0) for k, v in counts.items() if type(v) is int}
        for kept in ("windows", "windows_incomplete"):
            if kept in counts:
                accrued[kept] = counts[kept]
        if "late_hist" in counts:
            old = prior.get("late_hist") or [0] * len(counts["late_hist"])
            p99 = percentile_bound_us([a - b for a, b in zip(counts["late_hist"], old)], 99)
            accrued["p99_late_us"] = None if p99 is None or math.isinf(p99) else p99
            accrued["max_late_us"] = counts.get("max_late_us", 0.0)
        out[name] = accrued
    return out


def faults(accrued: dict[str, dict], late_fraction: float = 0.01, late_floor: int = 3) -> list[str]:
    """Why a measurement over these counters cannot be trusted (empty if it can), the worst
    link first.

    Any packet the emulator dropped by accident spoils it; so do late releases once they
    are over 1 % of packets (and more than a stray two), since the 99th percentile would
    then be the emulator's.
    """
    problems = []
    for name, c in sorted(accrued.items(), key=lambda kv: -kv[1].get("late", 0) / max(1, kv[1].get("packets", 0))):
        if c.get("dropped"):
            problems.append(f"emulator dropped {c['dropped']} packets on {name.strip('_')} (queue overflow)")
        packets = c.get("packets", 0)
        late = c.get("late", 0)
        if packets and late > late_fraction * packets and late >= late_floor:
            p99 = c.get("p99_late_us")
            how = [f"p99 {'over 100 ms' if p99 is None else f'<= {p99 / 1e3:g} ms'}"] if "p99_late_us" in c else []
            how += [f"max {c['max_late_us'] / 1e3:.1f} ms"] if c.get("max_late_us") else []
            problems.append(f"emulator released {late} of {packets} packets on {name} over "
                            f"{LATE_LIMIT_S * 1e3:g} ms late" + (f" (release error {', '.join(how)})" if how else ""))
    return problems
