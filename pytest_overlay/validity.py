"""Why a measurement cannot be vouched for. A measurement with any such reason is INVALID:
reported with the reason, and its test fails; never a clean figure."""

from __future__ import annotations

from . import emulator as emu

# The rules themselves are in the thresholds file (section `validity`, strict defaults).
LATE_SETTING = {"latency": "max_late_share_latency", "tcp": "max_late_share_throughput",
                "udp": "max_late_share_throughput", "stream": "max_late_share_stream"}
CPU_BOUND_PCT = 80.0  # the bundled max_client_cpu_pct
# Causes that come from the machine being busy, not from the overlay: such a measurement may
# be taken again (--overlay-retries).
LOAD_CAUSES = ("emulator released", "emulator dropped", "clients CPU-bound", "sender offered only")


def emulator_faults(kind: str, accrued: dict[str, dict], rules: dict[str, float]) -> list[str]:
    """What the link emulator did wrong during a probe of this kind (latency, tcp, udp, stream)."""
    return emu.faults(accrued, rules[LATE_SETTING[kind]])


def load_related(faults: list[str]) -> bool:
    """Every fault is the machine's load: re-measuring may give a valid result."""
    return bool(faults) and all(f.startswith(LOAD_CAUSES) for f in faults)


def wire_faults(overlay: str, counted: dict[str, int], what: str = "encapsulated packets") -> list[str]:
    """None of the overlay's packets on a hop of the circuit: the probe's traffic bypassed it."""
    if counted and not all(counted.values()):
        return [f"no {overlay} {what} crossed {', '.join(n for n, c in counted.items() if not c)}: "
                "the probe's traffic did not go through the overlay"]
    return []


def sender_faults(offered_mbit: float | None, sent_mbit: float | None, min_fraction: float) -> list[str]:
    """The sender put less on the wire than asked: what arrived says nothing of the network."""
    if offered_mbit and sent_mbit is not None and sent_mbit < min_fraction * offered_mbit:
        return [f"sender offered only {sent_mbit:.0f} of {offered_mbit:g} Mbit/s asked (iperf3's count): the sending "
                "host was short of CPU, so what arrived is not the network's limit"]
    return []


def cpu_faults(cpu_pct: float, clients: int, limit: float = CPU_BOUND_PCT) -> list[str]:
    if cpu_pct >= limit:
        return [f"clients CPU-bound: {cpu_pct:.0f} % of a core for {clients} clients; "
                "their own delays would pass for network jitter"]
    return []
