"""Today's encrypted meshes beside Weave's encrypted sleeve, in a group of their own: one row
per overlay from a run's records on one circuit (latency and TCP) and its WAN faults."""

from __future__ import annotations

from ..kinds import BASELINE
from ..results import Record
from ..results.records import difference

HEAD = ["Overlay", "Cipher", "Container MTU", "Δ mean RTT vs host (ms, ±95% CI, n)", "TCP Mbit/s (n intervals)",
        "CPU cores per Gbit/s", "Cut: longest outage (s) / path while cut", "Partition: recovery after heal (s)"]


def _cut(records: dict, overlay: str, fault: str) -> str:
    outage = records.get((overlay, fault, "outage_ms"))
    if outage is None:
        return "-"
    detour = records.get((overlay, fault, "detour_rtt"))
    path = outage.extra.get("detour_path") or ""
    shown = f"{outage.stats.max / 1e3:.1f} / " + (
        f"via {path or 'a path the WAN counters do not chain'} ({detour.stats.mean:.1f} ms, n={detour.stats.n})"
        if detour is not None else "black hole")
    return shown if outage.valid else f"INVALID: {shown}"


def _recovery(records: dict, overlay: str, fault: str) -> str:
    recovery = records.get((overlay, fault, "recovery_ms"))
    if recovery is None:
        return "-"
    shown = f"{recovery.stats.max / 1e3:.2f}"
    return shown if recovery.valid else f"INVALID: {shown}"


def rows(measured: list[Record], faults: list[Record], overlays: list[str], cut: str, partition: str) -> list[list[str]]:
    """A row per overlay of `overlays` measured: its datapath's cipher and MTU, its mean RTT over
    the underlay's, its TCP rate and the CPU its sites' daemons spent per Gbit/s of it, and
    what a cut and a partition did to it."""
    by = {(r.overlay, r.metric): r for r in measured if r.cpu is None and r.noise is None}
    fault_records = {(r.overlay, r.fault, r.metric): r for r in faults if r.fault}
    out = []
    for overlay in overlays:
        latency, tcp = by.get((overlay, "latency")), by.get((overlay, "tcp_throughput"))
        if latency is None and tcp is None:
            continue
        datapath = (latency or tcp).datapath
        diff = difference(latency, by.get((BASELINE, "latency"))) if latency is not None else None
        delta = f"{diff[0]:+.2f} ±{diff[1]:.2f} (n={latency.stats.n})" if diff else "-"
        used = (tcp.extra.get("cpu_used") or {}) if tcp is not None else {}
        cores = sum(u["cores_used"] or 0 for u in used.values())
        rate = (tcp.total or tcp.stats.mean) if tcp is not None else None
        out.append([overlay, datapath.get("cipher") or datapath.get("kind", "-"), str(datapath.get("mtu", "-")),
                    delta if latency is None or latency.valid else f"INVALID: {delta}",
                    (f"{rate:.0f} (n={tcp.stats.n})" + ("" if tcp.valid else " INVALID")) if tcp is not None else "-",
                    f"{cores / (rate / 1000):.1f}" if used and rate else "-",
                    _cut(fault_records, overlay, cut), _recovery(fault_records, overlay, partition)])
    return out
