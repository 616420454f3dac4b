"""What the measurements are asked for, read once from the session's options: frozen, and
named by typed fields rather than by the options' string names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Settings:
    samples: int  # round trips per latency run
    interval_ms: float  # between latency requests
    rounds: int  # runs of every probe
    warmup: int  # round trips discarded at the start of every latency run
    duration_s: float  # of a throughput run, after its warm-up
    udp_rate_mbit: float  # offered, before the circuit's rate caps it
    topup_budget: float  # × a measurement's nominal time, for replacing spoiled samples
    retries: int  # of a measurement judged whole, spoiled by the machine
    parallel: int  # circuits whose latency is probed at once
    cpu_latency_us: int | None  # the PM QoS request held while probing (None: none)
    stream_seconds: float  # of a streaming level
    load_seconds: float  # of TCP load under which latency is measured
    load_flows: int  # TCP flows each way under load
    fault_bound_s: float  # after a heal, within which recovery must be seen
    compare_fail: tuple  # the gates against a saved run (results.gates.Gate)
    compare_strict: bool  # an inconclusive gate fails
    ab: tuple  # the two variants of --overlay-ab (kinds.Variant), or ()
    ab_pairs: tuple[int, int]  # pairs of rounds taken at least, and at most while a verdict is unknown
    ab_fail: tuple  # the gates on B against A (results.gates.Gate)
    ab_margins: tuple  # equivalence margins given: (metric, value, percent)
    ab_seed: int | None  # of the rounds' order (None: drawn, and recorded)

    @classmethod
    def of(cls, option: Callable[[str], object]) -> "Settings":
        """From the options' values (`option("overlay_samples")` ...)."""
        return cls(
            samples=option("overlay_samples"), interval_ms=option("overlay_interval"), rounds=option("overlay_rounds"),
            warmup=option("overlay_warmup"), duration_s=option("overlay_duration"),
            udp_rate_mbit=option("overlay_udp_rate"), topup_budget=option("overlay_topup_budget"),
            retries=option("overlay_retries"), parallel=option("overlay_parallel"),
            cpu_latency_us=option("overlay_cpu_latency"), stream_seconds=option("overlay_stream_seconds"),
            load_seconds=option("overlay_load_seconds"), load_flows=option("overlay_load_flows"),
            fault_bound_s=option("overlay_fault_bound"), compare_fail=tuple(option("overlay_compare_fail")),
            compare_strict=option("overlay_compare_strict"), ab=tuple(option("overlay_ab") or ()),
            ab_pairs=option("overlay_ab_pairs"), ab_fail=tuple(option("overlay_ab_fail")),
            ab_margins=tuple(option("overlay_ab_margin")), ab_seed=option("overlay_ab_seed"))
