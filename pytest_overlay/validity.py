"""Why a measurement cannot be vouched for. A measurement with any such reason is INVALID:
reported with the reason, and its test fails; never a clean figure."""

from __future__ import annotations

from . import emulator as emu

# Share of packets the emulator may release over a millisecond late before a measurement
# is invalid: latency's 99th percentile cannot hide 1 %; throughput barely feels 5 %.
LATE_TOLERANCE = {"latency": 0.01, "tcp": 0.05, "udp": 0.05, "stream": 0.01}
CPU_BOUND_PCT = 80.0  # of one core: beyond this, a client's own delays pass for network jitter


def emulator_faults(kind: str, accrued: dict[str, dict]) -> list[str]:
    """What the link emulator did wrong during a probe of this kind (latency, tcp, udp, stream)."""
    return emu.faults(accrued, LATE_TOLERANCE[kind])


def wire_faults(overlay: str, counted: dict[str, int], what: str = "encapsulated packets") -> list[str]:
    """None of the overlay's packets on a hop of the circuit: the probe's traffic bypassed it."""
    if counted and not all(counted.values()):
        return [f"no {overlay} {what} crossed {', '.join(n for n, c in counted.items() if not c)}: "
                "the probe's traffic did not go through the overlay"]
    return []


def cpu_faults(cpu_pct: float, clients: int) -> list[str]:
    if cpu_pct >= CPU_BOUND_PCT:
        return [f"clients CPU-bound: {cpu_pct:.0f} % of a core for {clients} clients; "
                "their own delays would pass for network jitter"]
    return []
