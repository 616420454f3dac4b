"""Terminal tables grouped like the study's: one per metric, a row per circuit and overlay.

Every figure says what it is, its unit, and how many samples made it. A row whose
measurement the emulator could not vouch for is marked INVALID with the reason below.
"""

from __future__ import annotations

import math

from tabulate import tabulate

from .results import Record
from .topology import Topology

BASELINE = "host"


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _order(records: list[Record], topology: Topology) -> list[Record]:
    circuits = [c.id for c in topology.circuits]
    return sorted(records, key=lambda r: (circuits.index(r.circuit) if r.circuit in circuits else len(circuits),
                                          r.overlay != BASELINE, r.overlay))


def _status(record: Record, notes: list[str]) -> str:
    if not record.valid:
        notes.append(f"[{len(notes) + 1}] {record.circuit} {record.overlay} {record.metric}: "
                     + "; ".join(record.invalid_reasons))
        return f"INVALID [{len(notes)}]"
    return record.verdict


def _baseline(records: list[Record], record: Record) -> Record | None:
    for other in records:
        if other.overlay == BASELINE and other.circuit == record.circuit and other.metric == record.metric:
            return other
    return None


def _difference(record: Record, base: Record) -> str:
    """Difference of means with the 95 % interval of the difference (independent samples)."""
    half = math.hypot(record.stats.ci95, base.stats.ci95)
    return f"{record.stats.mean - base.stats.mean:+.2f} ±{half:.2f}"


def _ratio(record: Record, base: Record | None) -> str:
    if record.overlay == BASELINE or base is None or not base.extra.get("total_mbit"):
        return ""
    return f"{record.extra['total_mbit'] / base.extra['total_mbit']:.2f}"


def tables(records: list[Record], topology: Topology) -> str:
    by_metric: dict[str, list[Record]] = {}
    for r in _order(records, topology):
        by_metric.setdefault(r.metric, []).append(r)
    overlays = {r.overlay for r in records}
    compare = len(overlays) > 1 and BASELINE in overlays
    notes: list[str] = []
    out: list[str] = []

    def circuit_name(r: Record) -> str:
        return f"{r.src} – {r.dst}"

    if "latency" in by_metric:
        rows = []
        for r in by_metric["latency"]:
            base = _baseline(records, r)
            row = [circuit_name(r), r.overlay, _f(r.stats.min), _f(r.stats.mean), _f(r.stats.p99),
                   _f(r.stats.ci95, 3), r.stats.n, _f(r.extra["expected"]["rtt_ms"], 1)]
            if compare:
                row.append("" if r.overlay == BASELINE or base is None else _difference(r, base))
            rows.append(row + [_status(r, notes)])
        head = ["Circuit", "Overlay", "Min", "Mean", "99th %", "±95% CI", "n", "Topology RTT"]
        head += ["Δ mean vs host ±95% CI"] if compare else []
        out.append(_table("Latency: round-trip time in ms (irtt request/response; n = round trips)", head + ["Verdict"], rows))

    if "jitter" in by_metric:
        rows = [[circuit_name(r), r.overlay, _f(r.stats.mean, 3), _f(r.stats.p50, 3), _f(r.stats.p99, 3),
                 _f(r.stats.max, 3), r.stats.n, _status(r, notes)] for r in by_metric["jitter"]]
        out.append(_table("Jitter: IPDV |RTT[i] - RTT[i-1]| in ms (n = consecutive pairs of round trips)",
                          ["Circuit", "Overlay", "Mean", "Median", "99th %", "Max", "n", "Verdict"], rows))

    if "tcp_throughput" in by_metric:
        rows = []
        for r in by_metric["tcp_throughput"]:
            base = _baseline(records, r)
            row = [circuit_name(r), r.overlay, _f(r.extra.get("total_mbit"), 0), _f(r.stats.min, 0),
                   _f(r.stats.mean, 0), _f(r.stats.ci95, 0), _f(r.stats.max, 0), r.stats.n,
                   r.extra.get("retransmits"), _f(r.extra["expected"]["rate_mbit"], 0)]
            if compare:
                row.append(_ratio(r, base))
            rows.append(row + [_status(r, notes)])
        head = ["Circuit", "Overlay", "Total", "Min", "Mean", "±95% CI", "Max", "n", "Retransmits", "Link rate"]
        head += ["× host"] if compare else []
        out.append(_table("TCP throughput in Mbit/s received (iperf3; Total = the whole run; "
                          "Min to Max over n = 0.5 s intervals after 1 s warm-up)",
                          head + ["Verdict"], rows))

    if "udp_throughput" in by_metric:
        losses = {(r.overlay, r.circuit): r for r in by_metric.get("udp_loss", [])}
        rows = []
        for r in by_metric["udp_throughput"]:
            loss = losses.get((r.overlay, r.circuit))
            status = _status(r, notes)
            if loss and r.valid and loss.verdict != "pass":
                status = f"{status} (loss: {loss.verdict})"
            row = [circuit_name(r), r.overlay, _f(r.extra.get("offered_mbit"), 0), _f(r.extra.get("total_mbit"), 0),
                   _f(r.stats.mean, 0), _f(r.stats.ci95, 0), r.stats.n, _f(loss.stats.mean, 3) if loss else "-",
                   r.extra.get("packets")]
            if compare:
                row.append(_ratio(r, _baseline(records, r)))
            rows.append(row + [status])
        head = ["Circuit", "Overlay", "Offered", "Total", "Mean", "±95% CI", "n", "Loss %", "Packets"]
        head += ["× host"] if compare else []
        out.append(_table("UDP throughput in Mbit/s received, and loss in % of packets sent "
                          "(iperf3; Total = the whole run; Mean over n = 0.5 s intervals after 1 s warm-up)",
                          head + ["Verdict"], rows))
    if notes:
        out.append("\n".join(notes))
    return "\n\n".join(out)


def _table(title: str, head: list[str], rows: list[list]) -> str:
    return f"{title}\n{tabulate(rows, headers=head, tablefmt='github', disable_numparse=True)}"
