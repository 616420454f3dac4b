"""Terminal tables grouped like the study's: one per metric, a row per circuit and overlay.

Every figure says what it is, its unit, and how many samples made it. A row whose
measurement the emulator could not vouch for is marked INVALID with the reason below.
"""

from __future__ import annotations

import csv
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tabulate import tabulate

from .. import results
from ..inputs.model import Topology
from ..kinds import BASELINE
from ..results import Missing, Record, metrics


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


def _streaming_table(records: list[Record], notes: list[str]) -> str:
    levels: dict[tuple, dict[str, Record]] = {}
    for r in records:
        if r.metric.startswith("stream_"):
            key = (r.overlay != BASELINE, r.overlay, r.transport, r.concurrency)
            levels.setdefault(key, {})[r.metric] = r
    rows = []
    first = None
    for key in sorted(levels):
        m = levels[key]
        jitter, bitrate, loss, ttff = (m.get(k) for k in ("stream_jitter", "stream_bitrate", "stream_loss", "stream_ttff"))
        first = first or jitter
        verdicts = {r.verdict for r in (jitter, bitrate, loss) if r}
        status = _status(jitter, notes) if not jitter.valid else ("fail" if "fail" in verdicts else jitter.verdict)
        rows.append([key[1], key[2], key[3], _f(jitter.stats.mean), _f(jitter.stats.p99), _f(bitrate.stats.mean, 0),
                     _f(bitrate.stats.min, 0), _f(jitter.extra["nominal_kbit"], 0), _f(loss.stats.mean, 3),
                     _f(loss.stats.max, 3), _f(ttff.stats.mean, 0) if ttff else "-",
                     _f(jitter.extra["client_cpu_pct"], 1), status])
    title = (f"Streaming: H.264 over RTSP/RTP from {first.src} to {first.dst} (GStreamer RTSP server; per client: "
             "RFC 3550 jitter in ms, received kbit/s, loss %, time to first frame in ms; Clients = n per row)")
    return _table(title, ["Overlay", "RTP over", "Clients", "Jitter mean", "Jitter p99", "kbit/s mean", "kbit/s min",
                          "Clip kbit/s", "Loss % mean", "Loss % max", "TTFF mean", "Client CPU %", "Verdict"], rows)


def _ms(record: Record | None) -> str:
    """A recovery time in ms, or "> bound" where it was not seen (censored)."""
    if record is None:
        return "-"
    if record.extra.get("censored"):
        return f"> {record.extra['bound_s'] * 1e3:.0f} (censored)"
    return f"{record.stats.max:.0f}"


def _faults_tables(records: list[Record], notes: list[str]) -> list[str]:
    """A table per WAN fault scenario: a row per overlay."""
    scenarios: dict[str, dict[str, dict[str, Record]]] = {}
    for r in records:
        if r.fault:
            scenarios.setdefault(r.fault, {}).setdefault(r.overlay, {})[r.metric] = r
    out = []
    for name, by_overlay in scenarios.items():
        rows, first = [], None
        for overlay in sorted(by_overlay, key=lambda o: (o != BASELINE, o)):
            m = by_overlay[overlay]
            outage = m["outage_ms"]
            first = first or outage
            e = outage.extra
            lost, detour = m.get("fault_lost"), m.get("detour_rtt")
            during = (f"{detour.stats.mean:.1f} (p99 {detour.stats.p99:.1f}, n={detour.stats.n})" if detour
                      else "no reply")
            path = e.get("detour_path") or ("-" if not detour else "not counted (real hosts)"
                                             if (outage.datapath or {}).get("testbed") == "remote" else "direct")
            events = e.get("control_events") or []
            said = "; ".join(f"{ev['t_s']:+.1f} s {ev['what']}: {ev['to']}" for ev in events[:3])
            said = (said + (f"; +{len(events) - 3} more" if len(events) > 3 else "")) if events else "no change"
            watch = e.get("watch")
            low, high = e.get("expected_outage_s", (None, None))
            verdicts = {r.verdict for r in m.values()}
            status = (_status(next(r for r in m.values() if not r.valid), notes) if not all(r.valid for r in m.values())
                      else "fail" if "fail" in verdicts else "pass")
            goodput = m.get("fault_goodput")
            rows.append([
                overlay, f"{outage.stats.max:.0f}", f"{lost.stats.max:.0f} of {lost.extra['sent']}" if lost else "-",
                during, path, (f"{e['outcome']['held']} (up to {e['outcome']['held_max_ms']:.0f})"
                               if e["outcome"].get("held") else "0"),
                _ms(m.get("recovery_ms")), _ms(m.get("recovery_level_ms")),
                f"{goodput.stats.mean:.0f} of {goodput.extra['before_mbit']:.0f} (n={goodput.stats.n})"
                if goodput and goodput.extra.get("before_mbit") else "-",
                f"{watch['outage_ms']:.0f}" if watch else "-",
                f"{low:g}-{high:g} s: {'agrees' if e.get('agrees_with_timers') else 'DISAGREES'}"
                if low is not None else "-",
                said, status])
        e = first.extra
        steps = e["steps"]
        heal = [st["offset_ms"] for st in steps if st["what"] == "heal"]
        fault = e["fault"]
        what = {"cut": f"link {', '.join(fault['links'])} drops everything for {fault['seconds']:g} s",
                "partition": f"site {fault['site']} loses every link for {fault['seconds']:g} s",
                "flap": f"link {', '.join(fault['links'])} down {fault['seconds']:g} s, up {fault['up_s']:g} s, "
                        f"{fault['times']} times",
                "loss": f"link {', '.join(fault['links'])} loses {fault['loss_pct']:g} % each way for "
                        f"{fault['seconds']:g} s, a TCP transfer through it",
                "reroute": f"link {', '.join(fault['links'])} RTT +{fault['add_rtt_ms']:g} ms for "
                           f"{fault['seconds']:g} s"}[fault["kind"]]
        watched = e["watch"]["circuit"] if e.get("watch") else "none"
        by = ("firewall rules between the hosts (by their clocks)" if (first.datapath or {}).get("testbed") == "remote"
              else "the link emulator")
        title = (f"WAN fault {name}: {what}. Probe {first.src} -> {first.dst} through each overlay, one request per "
                 f"{e['interval_ms']:g} ms (n = {e['outcome']['sent']} for {first.overlay}); applied at t = 0 by "
                 f"{by}, last heal at +{heal[-1] / 1e3:.3f} s; all times in ms but the expected outage; "
                 f"watched circuit {watched}")
        out.append(_table(title, ["Overlay", "Outage", "Lost during", "RTT during", "Path during",
                                  "Held, answered after the heal",
                                  "First reply after heal", "RTT back to level", "TCP Mbit/s during / before",
                                  f"Outage on {watched}" if e.get("watch") else "Watched outage",
                                  "Expected outage (timers)", "Control plane", "Verdict"], rows))
        timers = {overlay: m["outage_ms"].extra.get("timers") or [] for overlay, m in by_overlay.items()}
        lines = [f"  {overlay}: " + "; ".join(f"{t['what']} {t['default']} [{t['source']}]" for t in ts)
                 for overlay, ts in sorted(timers.items()) if ts]
        if lines:
            out[-1] += "\nTimers (defaults, from each overlay's source or documentation):\n" + "\n".join(lines)
    return out


def _who(record: Record) -> str:
    """The overlay column: the overlay, its CPU budget and its neighbour where it had them."""
    held = ([] if record.cpu is None else [f"CPU {record.cpu:g}"]) + ([f"beside {record.noise}"] if record.noise else [])
    return f"{record.overlay} ({', '.join(held)})" if held else record.overlay


def _difference(record: Record, base: Record) -> str:
    """Difference of means with the 95 % interval of the difference (independent samples)."""
    diff = results.difference(record, base)
    if diff is None:
        return results.UNKNOWN_OVERHEAD if not base.valid else ""
    return f"{diff[0]:+.2f} ±{diff[1]:.2f}"


def _ratio(record: Record, base: Record | None) -> str:
    if record.overlay == BASELINE or base is None:
        return ""
    value = results.ratio(record, base)
    return results.UNKNOWN_OVERHEAD if value is None and not base.valid else "" if value is None else f"{value:.2f}"


def _load_tables(records: list[Record], notes: list[str]) -> list[str]:
    """A table per circuit and link buffer of the latency-under-load suite: a row per overlay,
    then one sentence on which overlays add latency beyond the links' own buffers."""
    levels: dict[tuple, dict[str, dict[str, Record]]] = {}
    for r in records:
        if metrics.get(r.metric).load:
            levels.setdefault((r.circuit, r.queue_ms), {}).setdefault(r.overlay, {})[r.metric] = r
    out = []
    for (circuit, queue_ms), by_overlay in levels.items():
        rows, beyond, within, first = [], [], [], None
        for overlay in sorted(by_overlay, key=lambda o: (o != BASELINE, o)):
            m = by_overlay[overlay]
            latency, goodput = m.get("load_latency"), m.get("load_goodput")
            if latency is None or goodput is None:
                continue
            first = first or latency
            e, g = latency.extra, goodput.extra
            excess = e["induced_p50_ms"] - e["buffers_both_ways_ms"]
            if latency.valid:
                (beyond if excess > 1.0 else within).append(f"{overlay} {e['induced_p50_ms']:+.1f} ms")
            status = _status(next((r for r in (latency, goodput) if not r.valid), latency), notes) \
                if not (latency.valid and goodput.valid) else \
                "fail" if "fail" in (latency.verdict, goodput.verdict) else "pass"
            rows.append([
                overlay, f"{e['idle']['p50']:.2f} / {e['idle']['p99']:.2f} (n={e['idle']['n']})",
                f"{latency.stats.p50:.2f} ±{latency.stats.interval('p50'):.2f} / {latency.stats.p99:.2f} "
                f"(n={latency.stats.n})",
                f"{e['induced_p50_ms']:+.2f} / {e['induced_p99_ms']:+.2f}",
                f"{e['icmp']['idle_p50']:.2f} / {e['icmp']['loaded_p50']:.2f} (n={e['icmp']['loaded_n']})",
                f"{g['direction_mbit']['up']:.0f} / {g['direction_mbit']['down']:.0f}",
                f"{goodput.stats.mean:.0f} ±{goodput.stats.ci95:.0f} (n={goodput.stats.n} intervals)",
                f"{g['fairness']['up']:.2f} / {g['fairness']['down']:.2f}",
                " / ".join(str(g["retransmits"][d]) for d in ("up", "down")), status])
        if first is None:
            continue
        e = first.extra
        buffers = ", ".join(f"{hop} {ms:g}" for hop, ms in e["buffer_ms"].items())
        level = "the links' own buffers" if queue_ms is None else f"buffers set to {queue_ms:g} ms"
        title = (f"Latency under load on {circuit} at {level} (RRUL: {e['flows_each_way']} TCP flows each way for "
                 f"{e['seconds']:g} s after {e['warmup_s']:g} s; irtt and ICMP every {e['interval_ms']:g} ms; idle = "
                 f"the {e['idle_s']:g} s before). RTT in ms: median / p99, n = round trips, ± the median's 95 % "
                 f"interval (bootstrap); goodput in Mbit/s received, summed per direction (up: "
                 f"{circuit.split('-')[0]} to {circuit.split('-')[1]}), and both ways per 0.5 s interval: mean ± its "
                 f"95 % interval; buffers "
                 f"in ms: {buffers}")
        out.append(_table(title, ["Overlay", "Idle RTT", "Loaded RTT", "Induced (loaded - idle)", "ICMP idle / loaded",
                                  "Goodput up / down", "Goodput sum", "Jain up / down", "Retransmits up / down",
                                  "Verdict"], rows))
        answer = (f"Added latency under load beyond the links' buffers ({e['buffers_both_ways_ms']:g} ms both ways), "
                  f"median: " + (f"{', '.join(beyond)} (more than 1 ms beyond)" if beyond else "none")
                  + (f"; within them: {', '.join(within)}" if within else ""))
        out[-1] += "\n" + answer
    return out


def _kept(free: dict[str, Record], held: dict[str, Record]) -> tuple[float, float] | None:
    """Share of its TCP goodput and p99 RTT increase a run kept under a condition, against the
    same overlay without it; None where either TCP run cannot be vouched for."""
    if "tcp_throughput" not in free or "tcp_throughput" not in held \
            or not (free["tcp_throughput"].valid and held["tcp_throughput"].valid):
        return None
    share = held["tcp_throughput"].total / free["tcp_throughput"].total if free["tcp_throughput"].total else 0.0
    p99 = held["latency"].stats.p99 - free["latency"].stats.p99 \
        if "latency" in free and "latency" in held and free["latency"].valid and held["latency"].valid else 0.0
    return share, p99


def _stress_tables(records: list[Record], notes: list[str]) -> list[str]:
    """With --overlay-cpu or --overlay-noise: per circuit, a row per overlay, budget and
    neighbour (TCP goodput, RTT, the CPU its cgroups used and how often the quota held them
    back, the CPU the neighbour used), then one sentence on which overlays keep their
    throughput and latency at their smallest budget, and one on which keep them beside each
    neighbour."""
    budgets, neighbours = any(r.cpu is not None for r in records), any(r.noise for r in records)
    if not budgets and not neighbours:
        return []
    rows_by_circuit: dict[str, dict[tuple, dict[str, Record]]] = {}
    for r in records:
        if r.metric in ("tcp_throughput", "latency"):
            rows_by_circuit.setdefault(r.circuit, {}).setdefault((r.overlay, r.cpu, r.noise), {})[r.metric] = r
    out = []
    for circuit, by_level in rows_by_circuit.items():
        rows, kept, lost, beside = [], [], [], {}
        for key in sorted(by_level, key=lambda k: (k[0] != BASELINE, k[0], -(k[1] or 1e9), k[2] or "")):
            overlay, cpu, noise = key
            m = by_level[key]
            tcp, latency = m.get("tcp_throughput"), m.get("latency")
            used = (tcp or latency).extra.get("cpu_used") or {}
            hog = (tcp or latency).extra.get("noise_used") or {}
            cores = sum(u["cores_used"] or 0 for u in used.values())
            throttled = max((u["throttled_share"] for u in used.values()), default=0.0)
            status = next((_status(r, notes) for r in (tcp, latency) if r is not None and not r.valid),
                          "fail" if any(r is not None and r.verdict == "fail" for r in (tcp, latency)) else "pass")
            rows.append([overlay] + (["unlimited" if cpu is None else f"{cpu:g}"] if budgets else [])
                        + ([noise or "none"] if neighbours else []) + [
                         f"{tcp.total:.0f} (n={tcp.stats.n})" if tcp and tcp.valid else "-",
                         f"{latency.stats.p50:.2f} / {latency.stats.p99:.2f} (n={latency.stats.n})"
                         if latency and latency.valid else "-",
                         f"{cores:.2f}" if used else "-", f"{throttled * 100:.0f} %" if used else "-"]
                        + ([f"{sum(u['cores_used'] or 0 for u in hog.values()):.2f} ({len(hog)} sites)" if hog else "-"]
                           if neighbours else []) + [status])
            if noise and cpu is None:
                change = _kept(by_level.get((overlay, None, None), {}), m)
                if change is not None:
                    beside.setdefault(noise, {})[overlay] = change

        for overlay in dict.fromkeys(k[0] for k in by_level):
            smallest = sorted(c for o, c, n in by_level if o == overlay and c is not None and n is None)
            change = _kept(by_level.get((overlay, None, None), {}),
                           by_level.get((overlay, smallest[0], None), {})) if smallest else None
            if change is not None:
                (kept if change[0] >= 0.9 and change[1] <= 1.0 else lost).append(
                    f"{overlay} {change[0] * 100:.0f} % of its TCP goodput, p99 {change[1]:+.2f} ms at "
                    f"{smallest[0]:g} cores")
        title = (f"{'CPU budgets' if budgets else ''}{' and ' if budgets and neighbours else ''}"
                 f"{'noisy neighbours' if neighbours else ''} on {circuit}: "
                 + ("every site's overlay (its containers and daemons; not the kernel's datapath) held to a budget "
                    "in cores; " if budgets else "")
                 + ("a neighbour is a stress-ng hog (kind:cores per site) in its own cgroup at every site the path "
                    "crosses, running while the probes did; " if neighbours else "")
                 + "TCP goodput in Mbit/s (n = 0.5 s intervals); RTT in ms, median / p99 (n = round trips); CPU used "
                 "by the circuit's two sites' overlay cgroups in cores, and the share of quota periods in which they "
                 "were held back, during the TCP run" + ("; the neighbour's CPU in cores, summed over its sites"
                                                         if neighbours else ""))
        head = ["Overlay"] + (["Budget (cores)"] if budgets else []) + (["Neighbour"] if neighbours else []) + [
            "TCP goodput", "RTT", "CPU used", "Throttled"] + (["Neighbour CPU"] if neighbours else []) + ["Verdict"]
        out.append(_table(title, head, rows))
        if kept or lost:
            out[-1] += ("\nAt their smallest budget, kept throughput (90 %) and latency (p99 within 1 ms): "
                        + (", ".join(kept) or "none") + "; did not: " + (", ".join(lost) or "none"))
        for noise, changes in beside.items():
            # On one machine the neighbour slows the emulated WAN too: the underlay's own change is
            # that part, and an overlay is judged on what it adds to it.
            _, wan = changes.get(BASELINE, (1.0, 0.0))
            fine, hurt = [], []
            for overlay, (share, p99) in changes.items():
                if overlay == BASELINE:
                    continue
                (fine if share >= 0.9 and p99 - wan <= 1.0 else hurt).append(
                    f"{overlay} {share * 100:.0f} %, p99 {p99:+.2f} ms")
            out[-1] += (f"\nBeside a {noise} neighbour, kept throughput (90 %) and latency (p99 within 1 ms of the "
                        "underlay's own change" + (f", {wan:+.2f} ms" if BASELINE in changes else "") + "): "
                        + (", ".join(fine) or "none") + "; did not: " + (", ".join(hurt) or "none"))
    return out


def stress_sections(records: list[Record]) -> list[str]:
    """The latency-under-load and CPU-budget tables with their answers, and the reasons of
    their INVALID rows: what the study's future-work part reports."""
    notes: list[str] = []
    out = _load_tables(records, notes) + _stress_tables(records, notes)
    return out + (["\n".join(notes)] if notes else [])


def _circuit(r: Record) -> str:
    return f"{r.src} – {r.dst}"


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
        row = [_circuit(r), _who(r), _f(r.stats.min), _f(r.stats.mean), _f(r.stats.p99),
               _f(r.stats.ci95, 3), r.stats.n, _f(r.expected["rtt_ms"], 1)]
        if v.compare:
            row.append("" if r.overlay == BASELINE or base is None else _difference(r, base))
        rows.append(row + [_status(r, v.notes)])
    head = ["Circuit", "Overlay", "Min", "Mean", "99th %", "±95% CI", "n", "Topology RTT"]
    head += ["Δ mean vs host ±95% CI"] if v.compare else []
    return [_table("Latency: round-trip time in ms (irtt request/response; n = round trips)", head + ["Verdict"], rows)]


def _jitter_section(v: View) -> list[str]:
    rows = [[_circuit(r), _who(r), _f(r.stats.mean, 3), _f(r.stats.p50, 3), _f(r.stats.p99, 3),
             _f(r.stats.max, 3), r.stats.n, _status(r, v.notes)] for r in v.by_metric["jitter"]]
    return [_table("Jitter: IPDV |RTT[i] - RTT[i-1]| in ms (n = consecutive pairs of round trips)",
                   ["Circuit", "Overlay", "Mean", "Median", "99th %", "Max", "n", "Verdict"], rows)]


def _tcp_section(v: View) -> list[str]:
    rows = []
    for r in v.by_metric["tcp_throughput"]:
        row = [_circuit(r), _who(r), _f(r.total, 0), _f(r.stats.min, 0),
               _f(r.stats.mean, 0), _f(r.stats.ci95, 0), _f(r.stats.max, 0), r.stats.n,
               r.extra.get("retransmits"), _f(r.expected["rate_mbit"], 0)]
        if v.compare:
            row.append(_ratio(r, results.baseline(v.records, r)))
        rows.append(row + [_status(r, v.notes)])
    head = ["Circuit", "Overlay", "Total", "Min", "Mean", "±95% CI", "Max", "n", "Retransmits", "Link rate"]
    head += ["× host"] if v.compare else []
    return [_table("TCP throughput in Mbit/s received (iperf3; Total = the whole run; "
                   "Min to Max over n = 0.5 s intervals after 1 s warm-up)", head + ["Verdict"], rows)]


def _udp_section(v: View) -> list[str]:
    losses = {(r.overlay, r.circuit, r.cpu, r.noise): r for r in v.by_metric.get("udp_loss", [])}
    rows = []
    for r in v.by_metric.get("udp_throughput", []):
        loss = losses.get((r.overlay, r.circuit, r.cpu, r.noise))
        status = _status(r, v.notes)
        if loss and r.valid and loss.verdict != "pass":
            status = f"{status} (loss: {loss.verdict})"
        row = [_circuit(r), _who(r), _f(r.extra.get("offered_mbit"), 0), _f(r.total, 0),
               _f(r.stats.mean, 0), _f(r.stats.ci95, 0), r.stats.n, _f(loss.stats.mean, 3) if loss else "-",
               r.extra.get("packets")]
        if v.compare:
            row.append(_ratio(r, results.baseline(v.records, r)))
        rows.append(row + [status])
    head = ["Circuit", "Overlay", "Offered", "Total", "Mean", "±95% CI", "n", "Loss %", "Packets"]
    head += ["× host"] if v.compare else []
    return [_table("UDP throughput in Mbit/s received, and loss in % of packets sent "
                   "(iperf3; Total = the whole run; Mean over n = 0.5 s intervals after 1 s warm-up)",
                   head + ["Verdict"], rows)] if rows else []


def _plain_section(v: View, name: str) -> list[str]:
    """A metric no section knows: its headline and spread per circuit and overlay, so that a
    metric added to the registry is never left out of the tables."""
    metric = metrics.get(name)
    rows = [[_circuit(r), _who(r), _f(getattr(r.stats, metric.headline, None) if metric.headline != "total"
                                      else r.total), _f(r.stats.min), _f(r.stats.max), r.stats.n, _status(r, v.notes)]
            for r in v.by_metric[name]]
    return [_table(f"{metric.title} in {metric.unit} (headline: {metric.headline}; n = samples)",
                   ["Circuit", "Overlay", metric.headline.capitalize(), "Min", "Max", "n", "Verdict"], rows)]


# Each section of the tables and the metrics it shows, in the order they print. A registered
# metric in none of them still prints, as a plain table (_plain_section).
SECTIONS: list[tuple[tuple[str, ...], Callable[[View], list[str]]]] = [
    (("latency",), _latency_section),
    (("jitter",), _jitter_section),
    (("tcp_throughput",), _tcp_section),
    (("udp_throughput", "udp_loss"), _udp_section),
    (tuple(m.name for m in metrics.METRICS.values() if m.streaming),
     lambda v: [_streaming_table(v.records, v.notes)] if "stream_jitter" in v.by_metric else []),
    (tuple(m.name for m in metrics.FAULT_METRICS), lambda v: _faults_tables(v.records, v.notes)),
    (tuple(m.name for m in metrics.LOAD_METRICS), lambda v: _load_tables(v.records, v.notes)),
]


def tables(records: list[Record], topology: Topology, missing: list[Missing] = ()) -> str:
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
    out += _stress_tables(records, notes)

    compared = [(r, c) for r in _order(records, topology) for c in r.compared]
    if compared:
        rows = [[_circuit(r), _who(r), r.metric, c["stat"], f"{c['saved']:.3f}", f"{c['now']:.3f}", r.unit,
                 _change(c), _noise(c), "yes" if c["within_noise"] else "no", c["gate"] or "-"]
                for r, c in compared]
        out.append(_table(f"Compared with saved run {compared[0][1]['run']} (noise: the combined 95 % "
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
    """How many samples the emulator's accounting left out: the median measurement's share
    and the worst, named."""
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
    return (f"Samples the emulator touched (released late or dropped on their own path), left out of the statistics: "
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
    table = _table(f"Not measured: {len(missing)} requested measurements, with the reason (bring-up failed, skipped, "
                   "errored or not run)", ["Overlay", "Metrics", "Circuits", "Reason"], rows)
    return f"{table}\n\n{line}" if line else table


def _change(c: dict) -> str:
    return f"{c['change_pct']:+.1f}" if c.get("change_pct") is not None and math.isfinite(c["change_pct"]) else "from 0"


def _noise(c: dict) -> str:
    return f"{c['noise']:.3f}" if c.get("noise") is not None and math.isfinite(c["noise"]) else "unknown"


def _table(title: str, head: list[str], rows: list[list]) -> str:
    return f"{title}\n{tabulate(rows, headers=head, tablefmt='github', disable_numparse=True)}"


CSV_FIELDS = ("overlay", "metric", "src", "dst", "unit", "min", "mean", "p50", "p99", "max", "stdev", "n", "ci95",
              "total", "valid", "verdict", "invalid_reasons")


def write_files(directory: str | Path, records: list[Record], topology: Topology, run: dict,
                missing: list[Missing] = ()) -> list[str]:
    """Markdown, CSV, JSON, plots and one HTML page that shows them all."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    from . import plots  # matplotlib: only when pictures are asked for

    results.write_json(out / "results.json", run, records, missing)
    written.append("results.json")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        for r in records:
            writer.writerow({**{k: getattr(r, k) for k in ("overlay", "metric", "src", "dst", "unit", "valid", "verdict")},
                             **{k: v for k, v in r.stats.rounded().items() if k in CSV_FIELDS}, "total": "" if r.total is None else r.total,
                             "invalid_reasons": "; ".join(r.invalid_reasons)})
    written.append("results.csv")
    text = tables(records, topology, missing)
    header = (f"# pytest-overlay results: {topology.name}\n\n"
              f"Run {run.get('testbed', {}).get('run_id', '?')} on {run.get('host', '?')} ({run.get('kernel', '?')}, "
              f"{run.get('cpus', '?')} CPUs), emulator {run.get('testbed', {}).get('emulator', {}).get('kind', '?')}, "
              f"started {run.get('started', '?')}.\n\n")
    (out / "report.md").write_text(header + _markdown_sections(text) + "\n")
    written.append("report.md")
    pictures = [(name, title) for name, title, draw in (
        ("latency_cdf.png", "Latency CDF per circuit", plots.latency_cdf),
        ("throughput.png", "Throughput per overlay", plots.throughput),
        ("streaming.png", "Streaming jitter and bitrate against concurrency", plots.streaming),
        ("cpu_budgets.png", "TCP goodput and p99 RTT against each overlay's CPU budget", plots.cpu_budgets),
    ) if draw(records, out / name)]
    for circuit, queue_ms in dict.fromkeys((r.circuit, r.queue_ms) for r in records if r.metric == "load_latency"):
        tag = f"{circuit}_{'links' if queue_ms is None else f'q{queue_ms:g}ms'}"
        level = "the links' own buffers" if queue_ms is None else f"buffers of {queue_ms:g} ms"
        if plots.load_timeline(records, circuit, queue_ms, out / f"load_{tag}.png"):
            pictures.append((f"load_{tag}.png", f"Latency under load, {circuit}, {level}: RTT and goodput over time"))
        if plots.load_cdf(records, circuit, queue_ms, out / f"load_cdf_{tag}.png"):
            pictures.append((f"load_cdf_{tag}.png", f"RTT idle and under load, {circuit}, {level}"))
    for fault in dict.fromkeys(r.fault for r in records if r.fault):
        name = f"fault_{fault}.png"
        if plots.fault_timeline(records, fault, out / name):
            pictures.append((name, f"WAN fault {fault}: RTT through each overlay against time"))
    written += [name for name, _ in pictures]
    (out / "index.html").write_text(_html(topology, header, text, pictures))
    written.append("index.html")
    return written


def _markdown_sections(text: str) -> str:
    """Tables with their titles as headings; notes as a list."""
    parts = []
    for block in text.split("\n\n"):
        title, _, table = block.partition("\n")
        parts.append(f"## {title}\n\n{table}" if table.startswith("|") else "\n".join(f"- {l}" for l in block.splitlines()))
    return "\n\n".join(parts)


def _html(topology: Topology, header: str, text: str, pictures: list[tuple[str, str]]) -> str:
    body = [f"<h1>pytest-overlay results: {html.escape(topology.name)}</h1>",
            f"<p>{html.escape(header.split(chr(10), 2)[2].strip())}</p>"]
    for block in text.split("\n\n"):
        title, _, table = block.partition("\n")
        if not table.startswith("|"):
            body.append("<ul>" + "".join(f"<li>{html.escape(l)}</li>" for l in block.splitlines()) + "</ul>")
            continue
        lines = [l for l in table.splitlines() if not set(l) <= set("|-: ")]
        cells = [[c.strip() for c in l.strip("|").split("|")] for l in lines]
        rows = "".join("<tr>" + "".join(f"<t{'h' if i == 0 else 'd'}>{html.escape(c)}</t{'h' if i == 0 else 'd'}>"
                                         for c in row) + "</tr>" for i, row in enumerate(cells))
        body.append(f"<h2>{html.escape(title)}</h2><table>{rows}</table>")
    for name, title in pictures:
        body.append(f"<h2>{html.escape(title)}</h2><img src='{name}' alt='{html.escape(title)}'>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#eee}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>pytest-overlay: {html.escape(topology.name)}"
            f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n")
