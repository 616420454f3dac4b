"""What one measurement gave, the key it is kept under for the session, and how the runs of
a probe that make one measurement are pieced together."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..inputs.model import Circuit
from . import machine, validity


@dataclass(frozen=True)
class MeasureKey:
    """One measurement of the session: latency and jitter share one, as UDP's rate and loss do."""

    overlay: str
    circuit: Circuit
    kind: str  # the probe's kind: latency, tcp, udp, stream-udp-25, load-None ...
    cpu: float | None = None
    noise: object | None = None  # the Noise it ran beside


@dataclass
class Bracket:
    """A probe's samples and what happened around them while it ran."""

    samples: object
    accrued: dict  # what the emulator accrued, with its late windows
    wire: dict[str, int] | None  # packets the overlay put on each hop of the path
    window: machine.Window
    cpu_used: dict  # by site: the overlay's cgroup
    noise_used: dict  # by site: the neighbour's hog
    faults: list[str]  # a neighbour that was not there throughout


@dataclass
class Measured:
    """What one measurement gave, and why it may not be vouched for."""

    samples: object  # what the statistics are made of: the samples the emulator did not touch
    faults: list[str]
    emulator: dict
    wire: dict[str, int] | None
    tries: int = 1  # runs of the probe it took
    earlier_faults: list[str] = field(default_factory=list)  # why runs of it were replaced or taken again
    accounting: validity.Accounting | None = None
    machine: machine.Window | None = None
    parts: dict[str, validity.Accounting] = field(default_factory=dict)  # a probe of several flows: each one's
    cpu_used: dict = field(default_factory=dict)  # by site: CPU its overlay's cgroup used, and was throttled
    noise_used: dict = field(default_factory=dict)  # by site: CPU the neighbour's hog used
    beside: list[str] = field(default_factory=list)  # circuits probed at the same time (--overlay-parallel)
    replaced: dict | None = None  # samples topped up for the machine: how many, in how many runs, why

    @property
    def exclusions(self) -> dict:
        if not self.accounting:
            return {}
        return {**self.accounting.to_json(), **({"replaced": self.replaced} if self.replaced else {})}

    @property
    def load_faults(self) -> list[str]:
        """Everything that keeps this run from being used, the loss figure's own included."""
        return self.faults + (self.accounting.loss_faults if self.accounting else [])


def merged_emulator(parts: list[dict[str, dict]]) -> dict[str, dict]:
    """The emulator's counters over several runs: counts summed, release errors the worst."""
    out: dict[str, dict] = {}
    for accrued in parts:
        for link, counts in accrued.items():
            into = out.setdefault(link, {})
            for name, value in counts.items():
                if name in ("p99_late_us", "max_late_us"):
                    into[name] = None if value is None or (name in into and into[name] is None) \
                        else max(into.get(name) or 0.0, value)
                elif isinstance(value, int):
                    into[name] = into.get(name, 0) + value
    return out


def merged_wire(parts: list[dict[str, int] | None]) -> dict[str, int] | None:
    if any(p is None for p in parts):
        return None
    out: dict[str, int] = {}
    for wire in parts:
        for hop, count in wire.items():
            out[hop] = out.get(hop, 0) + count
    return out
