"""WAN link emulators: netem where the kernel has it, the NFQUEUE delay line where it doesn't.

Both act in the testbed's `wan` namespace, on traffic forwarded from one site to another, so
the skbs are no longer charged to the sender's socket and every tool (ping included) sees
the emulated delay. Rate is shaped after the delay, as on a real path: tbf with the delay
line, netem's own `rate` with netem.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .delayline import LATE_LIMIT_S, query_stats
from .topology import Direction

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
    """Enough room for twice the bandwidth-delay product of full-size packets."""
    bdp = _rate_bytes(direction) * (direction.delay_ms + 2 * direction.jitter_ms) / 1e3
    return int(min(1_000_000, max(1000, math.ceil(2 * bdp / MTU))))


def _tbf(direction: Direction, dev: str) -> list[str]:
    rate = _rate_bytes(direction)
    burst = int(max(128 * 1024, rate / 1000))
    limit = int(max(256 * 1024, rate * (2 * direction.delay_ms + 10) / 1e3))
    return ["tc", "qdisc", "replace", "dev", dev, "root", "tbf",
            "rate", f"{direction.rate_mbit}mbit", "burst", str(burst), "limit", str(limit)]


class Emulator:
    kind = ""

    def __init__(self, netns: str, ports: list[Port], run_dir: Path) -> None:
        self.netns, self.ports, self.run_dir = netns, ports, run_dir
        self.daemons: list[procs.Daemon] = []

    def start(self) -> None:
        raise NotImplementedError

    def counters(self) -> dict[str, dict]:
        """Per link direction: packets seen, dropped on purpose, dropped or late by accident."""
        raise NotImplementedError

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()

    def describe(self) -> dict:
        return {"kind": self.kind, "links": {p.name: vars(p.direction) for p in self.ports}}


class Netem(Emulator):
    kind = "netem"

    def start(self) -> None:
        for port in self.ports:
            d = port.direction
            command = ["tc", "qdisc", "replace", "dev", port.egress, "root", "netem",
                       "limit", str(queue_packets(d)), "delay", f"{d.delay_ms}ms"]
            if d.jitter_ms:
                command += [f"{d.jitter_ms}ms"]
            if d.loss_pct:
                command += ["loss", f"{d.loss_pct}%"]
            if d.rate_mbit:
                command += ["rate", f"{d.rate_mbit}mbit"]
            procs.run(command, self.netns).check()

    def counters(self) -> dict[str, dict]:
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


class DelayLine(Emulator):
    kind = "delayline"

    @property
    def control(self) -> Path:
        return self.run_dir / "delayline.sock"

    def start(self) -> None:
        rules = ["*mangle"] + [
            f"-A FORWARD -i {p.ingress} -j NFQUEUE --queue-num {p.queue}" for p in self.ports
        ] + ["COMMIT", ""]
        config = {
            "control": str(self.control),
            "seed": 1,
            "queues": [
                {"num": p.queue, "delay_ms": p.direction.delay_ms, "jitter_ms": p.direction.jitter_ms,
                 "loss_pct": p.direction.loss_pct, "maxlen": queue_packets(p.direction)}
                for p in self.ports
            ],
        }
        self.daemons.append(procs.start(
            "delayline", [sys.executable, "-m", "pytest_overlay.delayline", json.dumps(config)],
            self.run_dir / "delayline.log", self.netns, ready="ready",
        ))
        procs.run(["iptables-restore", "-w", "--noflush"], self.netns, input="\n".join(rules)).check()
        for port in self.ports:
            if port.direction.rate_mbit:
                procs.run(_tbf(port.direction, port.egress), self.netns).check()

    def counters(self) -> dict[str, dict]:
        stats = query_stats(str(self.control))
        out = {}
        for port in self.ports:
            q = stats["queues"].get(str(port.queue), {})
            out[port.name] = {
                "packets": q.get("queued", 0),
                "lost": q.get("lost", 0),
                "dropped": q.get("kernel_dropped", 0) + q.get("kernel_user_dropped", 0),
                "late": q.get("late", 0),
                "max_late_us": q.get("max_late_us", 0.0),
            }
        out["_enobufs"] = {"dropped": stats.get("enobufs", 0)}
        return out


class NoEmulation(Emulator):
    """Plain forwarding: the topology's delays, jitter, loss and rates are not applied."""

    kind = "none"

    def start(self) -> None:
        pass

    def counters(self) -> dict[str, dict]:
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


def delta(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Counters accrued between two snapshots."""
    out = {}
    for name, counts in after.items():
        prior = before.get(name, {})
        out[name] = {k: v - prior.get(k, 0) for k, v in counts.items() if k != "max_late_us"}
    return out


def faults(accrued: dict[str, dict], late_fraction: float = 0.01, late_floor: int = 3) -> list[str]:
    """Why a measurement over these counters cannot be trusted (empty if it can).

    Any packet the emulator dropped by accident spoils it; so do late releases once they
    are over 1 % of packets (and more than a stray two), since the 99th percentile would
    then be the emulator's.
    """
    problems = []
    for name, c in accrued.items():
        if c.get("dropped"):
            problems.append(f"emulator dropped {c['dropped']} packets on {name.strip('_')} (queue overflow)")
        packets = c.get("packets", 0)
        late = c.get("late", 0)
        if packets and late > late_fraction * packets and late >= late_floor:
            problems.append(f"emulator released {late} of {packets} packets on {name} over "
                            f"{LATE_LIMIT_S * 1e3:g} ms late")
    return problems
