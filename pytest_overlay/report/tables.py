"""Terminal tables grouped like the study's: one per metric, a row per circuit and overlay.

Every figure says what it is, its unit, and how many samples made it. A row whose
measurement the emulator could not vouch for is marked INVALID with the reason below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import results
from ..inputs.model import Topology
from ..kinds import BASELINE
from ..results import Missing, Record, metrics
from .cells import (
    change_cell,
    circuit_cell,
    difference_cell,
    noise_cell,
    number,
    ratio_cell,
    status_cell,
    titled_table,
    who,
)
from .experiments import faults_tables, load_tables, streaming_table, stress_tables


def _order(records: list[Record], topology: Topology) -> list[Record]:
    circuits = [c.id for c in topology.circuits]
    return sorted(records, key=lambda r: (circuits.index(r.circuit) if r.circuit in circuits else len(circuits),
                                          r.overlay != BASELINE, r.overlay))


@dataclass
class View:
    """What a section of the tables sees: the records by metric (in the topology's order),
    all of them, whether the underlay is there to compare with, and the notes under the
    tables (reasons of INVALID rows)."""

    by_metric: dict[str, list[Record]]
    records: list[Record]
    compare: bool
    notes: list[str]


def _latency_section(v: View) -> list[str]:
    rows = []
    for r in v.by_metric["latency"]:
        base = results.baseline(v.records, r)
        row = [circuit_cell(r), who(r), number(r.stats.min), number(r.stats.mean), number(r.stats.p99),
               number(r.stats.ci95, 3), number((r.instrument or {}).get("ms"), 3), r.stats.n,
               number(r.expected["rtt_ms"], 1)]
        if v.compare:
            row.append("" if r.overlay == BASELINE or base is None else difference_cell(r, base))
        rows.append(row + [status_cell(r, v.notes)])
    head = ["Circuit", "Overlay", "Min", "Mean", "99th %", "±95% CI", "± instrument", "n", "Topology RTT"]
    head += ["Δ mean vs host ±95% CI"] if v.compare else []
    return [titled_table("Latency: round-trip time in ms (irtt request/response; n = round trips; ± instrument = "
                         "the emulator's release error on the path plus the probe's typical wait for a CPU)",
                         head + ["Verdict"], rows)]


def _jitter_section(v: View) -> list[str]:
    rows = [[circuit_cell(r), who(r), number(r.stats.mean, 3), number(r.stats.p50, 3), number(r.stats.p99, 3),
             number(r.stats.max, 3), r.stats.n, status_cell(r, v.notes)] for r in v.by_metric["jitter"]]
    return [titled_table("Jitter: IPDV |RTT[i] - RTT[i-1]| in ms (n = consecutive pairs of round trips)",
                   ["Circuit", "Overlay", "Mean", "Median", "99th %", "Max", "n", "Verdict"], rows)]


def _tcp_section(v: View) -> list[str]:
    rows = []
    for r in v.by_metric["tcp_throughput"]:
        row = [circuit_cell(r), who(r), number(r.total, 0), number(r.stats.min, 0),
               number(r.stats.mean, 0), number(r.stats.ci95, 0), number(r.stats.max, 0), r.stats.n,
               r.extra.get("retransmits"), number(r.expected["rate_mbit"], 0)]
        if v.compare:
            row.append(ratio_cell(r, results.baseline(v.records, r)))
        rows.append(row + [status_cell(r, v.notes)])
    head = ["Circuit", "Overlay", "Total", "Min", "Mean", "±95% CI", "Max", "n", "Retransmits", "Link rate"]
    head += ["× host"] if v.compare else []
    return [titled_table("TCP throughput in Mbit/s received (iperf3; Total = the whole run; "
                   "Min to Max over n = 0.5 s intervals after 1 s warm-up)", head + ["Verdict"], rows)]


def _udp_section(v: View) -> list[str]:
    losses = {(r.overlay, r.circuit, r.cpu, r.noise): r for r in v.by_metric.get("udp_loss", [])}
    rows = []
    for r in v.by_metric.get("udp_throughput", []):
        loss = losses.get((r.overlay, r.circuit, r.cpu, r.noise))
        status = status_cell(r, v.notes)
        if loss and r.valid and loss.verdict != "pass":
            status = f"{status} (loss: {loss.verdict})"
        row = [circuit_cell(r), who(r), number(r.extra.get("offered_mbit"), 0), number(r.total, 0),
               number(r.stats.mean, 0), number(r.stats.ci95, 0), r.stats.n, number(loss.stats.mean, 3) if loss else "-",
               r.extra.get("packets")]
        if v.compare:
            row.append(ratio_cell(r, results.baseline(v.records, r)))
        rows.append(row + [status])
    head = ["Circuit", "Overlay", "Offered", "Total", "Mean", "±95% CI", "n", "Loss %", "Packets"]
    head += ["× host"] if v.compare else []
    return [titled_table("UDP throughput in Mbit/s received, and loss in % of packets sent "
                   "(iperf3; Total = the whole run; Mean over n = 0.5 s intervals after 1 s warm-up)",
                   head + ["Verdict"], rows)] if rows else []


def _plain_section(v: View, name: str) -> list[str]:
    """A metric no section knows: its headline and spread per circuit and overlay, so that a
    metric added to the registry is never left out of the tables."""
    metric = metrics.get(name)
    rows = [[circuit_cell(r), who(r), number(getattr(r.stats, metric.headline, None) if metric.headline != "total"
                                      else r.total), number(r.stats.min), number(r.stats.max), r.stats.n, status_cell(r, v.notes)]
            for r in v.by_metric[name]]
    return [titled_table(f"{metric.title} in {metric.unit} (headline: {metric.headline}; n = samples)",
                   ["Circuit", "Overlay", metric.headline.capitalize(), "Min", "Max", "n", "Verdict"], rows)]


def _condition(r: Record) -> str:
    """What the circuit's path does to big or ordered packets, as the topology says."""
    e = r.expected
    said = [f"MTU {e['mtu']}" + (" without ICMP" if e.get("icmp_dropped") else " with ICMP")] \
        if e.get("mtu", 1500) < 1500 or e.get("icmp_dropped") else []
    said += [f"reorder {e['reorder_pct']:g} %"] if e.get("reorder_pct") else []
    said += [f"duplicate {e['duplicate_pct']:g} %"] if e.get("duplicate_pct") else []
    return ", ".join(said) or "1500, clean"


def what_breaks(records: list[Record]) -> tuple[list[str], list[list[str]]]:
    """Each overlay's bulk TCP outcome (and largest packet) on each kind of path: the kinds, and
    a row per overlay."""
    breaks: dict[str, dict[str, str]] = {}
    for r in records:
        cell = "INVALID" if not r.valid else f"{r.extra.get('pmtu', {}).get('tcp')} ({r.stats.min:.0f} B)"
        breaks.setdefault(who(r), {})[_condition(r)] = cell
    conditions = sorted({c for by in breaks.values() for c in by})
    return conditions, [[overlay, *(by.get(c, "-") for c in conditions)] for overlay, by in breaks.items()]


def _pmtu_section(v: View) -> list[str]:
    rows = []
    for r in v.by_metric["path_mtu"]:
        p = r.extra.get("pmtu", {})
        tcp = p.get("tcp_detail", {})
        rows.append([circuit_cell(r), who(r), _condition(r), p.get("interface_mtu"), number(r.stats.min, 0),
                     p.get("discovery"), p.get("told_mtu") or "-", p.get("tcp"), number(p.get("tcp_mbit"), 0),
                     tcp.get("total_retrans"), number(tcp.get("first_ack_ms"), 0), status_cell(r, v.notes)])
    tables_ = [titled_table(
        "Path MTU: the largest IP packet carried end to end with DF set, in bytes (one bisection per circuit, "
        "exact to the byte); discovery: carried, told (the sender learned the limit) or silent (a black hole); "
        "a bulk TCP transfer of a few seconds: full speed, slowed or black hole, its Mbit/s acknowledged, "
        "retransmissions and first acknowledged segment (ms)",
        ["Circuit", "Overlay", "Path", "Interface MTU", "Largest", "Discovery", "Told MTU", "Bulk TCP", "Mbit/s",
         "Retrans", "First ack ms", "Verdict"], rows)]
    conditions, pivot = what_breaks(v.by_metric["path_mtu"])
    if len(conditions) > 1:
        tables_.append(titled_table(
            "What breaks: each overlay's bulk TCP transfer (and largest packet) on each kind of path "
            "(one circuit each)", ["Overlay", *conditions], pivot))
    return tables_


# Each section of the tables and the metrics it shows, in the order they print. A registered
# metric in none of them still prints, as a plain table (_plain_section).
SECTIONS: list[tuple[tuple[str, ...], Callable[[View], list[str]]]] = [
    (("latency",), _latency_section),
    (("jitter",), _jitter_section),
    (("tcp_throughput",), _tcp_section),
    (("udp_throughput", "udp_loss"), _udp_section),
    (tuple(m.name for m in metrics.METRICS.values() if m.streaming),
     lambda v: [streaming_table(v.records, v.notes)] if "stream_jitter" in v.by_metric else []),
    (tuple(m.name for m in metrics.FAULT_METRICS), lambda v: faults_tables(v.records, v.notes)),
    (tuple(m.name for m in metrics.LOAD_METRICS), lambda v: load_tables(v.records, v.notes)),
    (("path_mtu",), _pmtu_section),
]


def tables(records: list[Record], topology: Topology, missing: list[Missing] = (), comparisons: list = (),
           ab_run: dict | None = None) -> str:
    out = [ab_table(comparisons, ab_run or {})] if comparisons else []
    return "\n\n".join(out + ([_record_tables(records, topology, missing)] if records or missing else []))


def ab_table(comparisons: list, run: dict) -> str:
    """The A/B verdicts (results.ab.ABComparison), one row per metric and circuit."""
    first = comparisons[0]
    rows = [[c.circuit, c.metric, c.stat, f"{c.a_mean:.3f}", f"{c.b_mean:.3f}", c.unit,
             f"{c.difference:+.3f} ±{c.ci95:.3f}", f"{c.change_pct:+.2f} [{c.change_pct_interval[0]:+.2f}, "
             f"{c.change_pct_interval[1]:+.2f}]", f"±{c.margin:.3g}", str(c.n_pairs), c.verdict.upper()]
            for c in comparisons]
    how = (f"{run.get('pairs', '?')} pairs in random order (seed {run.get('seed', '?')}), {run.get('how', '')}; "
           f"{run.get('bringups', '?')} bring-ups, {run.get('seconds', '?')} s") if run else ""
    return titled_table(
        f"A/B: A = {first.a}, B = {first.b}. B - A with its 95 % interval over the pairs of rounds (paired t); "
        f"same: the interval within the margin, different: wholly beyond it, unknown: across its edge. {how}",
        ["Circuit", "Metric", "Stat", "A", "B", "Unit", "B - A (95 %)", "Change % [95 %]", "Margin", "Pairs",
         "Verdict"], rows)


def _record_tables(records: list[Record], topology: Topology, missing: list[Missing]) -> str:
    by_metric: dict[str, list[Record]] = {}
    for r in _order(records, topology):
        by_metric.setdefault(r.metric, []).append(r)
    overlays = {r.overlay for r in records}
    view = View(by_metric, records, len(overlays) > 1 and BASELINE in overlays, [])
    notes = view.notes
    out: list[str] = []
    shown: set[str] = set()
    for names, section in SECTIONS:
        if by_metric.keys() & set(names):
            out += section(view)
        shown |= set(names)
    for name in metrics.METRICS:
        if name in by_metric and name not in shown:
            out += _plain_section(view, name)
    out += stress_tables(records, notes)

    compared = [(r, c) for r in _order(records, topology) for c in r.compared]
    if compared:
        rows = [[circuit_cell(r), who(r), r.metric, c["stat"], f"{c['saved']:.3f}", f"{c['now']:.3f}", r.unit,
                 change_cell(c), noise_cell(c), "yes" if c["within_noise"] else "no", c["gate"] or "-"]
                for r, c in compared]
        out.append(titled_table(f"Compared with saved run {compared[0][1]['run']} (noise: the combined 95 % "
                          "intervals of the compared statistic, saved and now; a change inside it is noise)",
                          ["Circuit", "Overlay", "Metric", "Stat", "Saved", "Now", "Unit", "Change %", "±Noise",
                           "Within noise", "Gate"], rows))
    excluded = exclusions_line(records)
    if excluded:
        out.append(excluded)
    if missing:
        out.append(_missing_table(missing, topology))
    if notes:
        out.append("\n".join(notes))
    return "\n\n".join(out)


def exclusions_line(records: list[Record]) -> str:
    """How many samples the accounting left out (the emulator's windows, and the latency
    probe's own waits for a CPU): the median measurement's share and the worst, named."""
    counted = {}
    for r in records:  # latency and jitter share a run, as do UDP's rate and loss
        if r.exclusions.get("n") and r.concurrency is None:
            run = r.fault or (r.queue_ms, r.cpu, r.noise, r.metric.split("_")[0] if r.metric != "jitter" else "latency")
            counted.setdefault((r.overlay, r.circuit, run), (r, r.exclusions))
    if not counted:
        return ""
    shares = sorted(((e["n_excluded"] / e["n"], r, e) for r, e in counted.values()), key=lambda x: x[0])
    median = shares[len(shares) // 2][0]
    share, worst, e = shares[-1]
    level = f" at {worst.concurrency} clients" if worst.concurrency else ""
    return (f"Samples the emulator touched (released late or dropped on their own path) or, round trips, whose probe "
            "waited for a CPU beyond max_probe_wait_ms, left out of the statistics: "
            f"{sum(e['n_excluded'] for _, _, e in shares)} of {sum(e['n'] for _, _, e in shares)} over "
            f"{len(shares)} measurements; median {median * 100:.2f} %, worst {worst.overlay} {worst.circuit}{level} "
            f"{worst.metric}: {e['n_excluded']} of {e['n']} ({share * 100:.2f} %)")


def _missing_table(missing: list[Missing], topology: Topology) -> str:
    """What was asked for and not measured: a row per overlay and reason. What the user
    deselected (-m, -k) is one line: it was their choice, not a failure."""
    deselected = [m for m in missing if m.reason == "deselected"]
    missing = [m for m in missing if m.reason != "deselected"]
    line = f"{len(deselected)} requested measurements deselected (-m/-k)" if deselected else ""
    if not missing:
        return line
    groups: dict[tuple[str, str], tuple[dict, dict]] = {}
    for m in missing:
        metrics_, where = groups.setdefault((m.overlay, m.reason), ({}, {}))
        metrics_[m.metric] = None
        where[m.where] = None
    rows = [[overlay, ", ".join(metrics_), ", ".join(where), reason]
            for (overlay, reason), (metrics_, where) in sorted(groups.items(), key=lambda g: (g[0][0] != BASELINE, g[0]))]
    table = titled_table(f"Not measured: {len(missing)} requested measurements, with the reason (bring-up failed, skipped, "
                   "errored or not run)", ["Overlay", "Metrics", "Circuits", "Reason"], rows)
    return f"{table}\n\n{line}" if line else table
