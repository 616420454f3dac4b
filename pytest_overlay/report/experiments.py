"""The experiments' own tables: streaming by concurrency level, WAN faults (outage, recovery,
control plane), latency under load, and the CPU budgets and noisy neighbours."""

from __future__ import annotations

from ..kinds import BASELINE
from ..results import Record, metrics
from .cells import millis, number, status_cell, titled_table


def streaming_table(records: list[Record], notes: list[str]) -> str:
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
        status = status_cell(jitter, notes) if not jitter.valid else ("fail" if "fail" in verdicts else jitter.verdict)
        rows.append([key[1], key[2], key[3], number(jitter.stats.mean), number(jitter.stats.p99), number(bitrate.stats.mean, 0),
                     number(bitrate.stats.min, 0), number(jitter.extra["nominal_kbit"], 0), number(loss.stats.mean, 3),
                     number(loss.stats.max, 3), number(ttff.stats.mean, 0) if ttff else "-",
                     number(jitter.extra["client_cpu_pct"], 1), status])
    title = (f"Streaming: H.264 over RTSP/RTP from {first.src} to {first.dst} (GStreamer RTSP server; per client: "
             "RFC 3550 jitter in ms, received kbit/s, loss %, time to first frame in ms; Clients = n per row)")
    return titled_table(title, ["Overlay", "RTP over", "Clients", "Jitter mean", "Jitter p99", "kbit/s mean", "kbit/s min",
                          "Clip kbit/s", "Loss % mean", "Loss % max", "TTFF mean", "Client CPU %", "Verdict"], rows)


def _flowing(extra: dict) -> str:
    """An mtu fault's time until the flow carried half its goodput again, or that it never did."""
    if "flowing_after_ms" not in extra:
        return ""
    after = extra["flowing_after_ms"]
    return "; never flowed during it" if after is None else f"; flowing after {after / 1e3:.1f} s"


def faults_tables(records: list[Record], notes: list[str]) -> list[str]:
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
            status = (status_cell(next(r for r in m.values() if not r.valid), notes) if not all(r.valid for r in m.values())
                      else "fail" if "fail" in verdicts else "pass")
            goodput = m.get("fault_goodput")
            rows.append([
                overlay, f"{outage.stats.max:.0f}", f"{lost.stats.max:.0f} of {lost.extra['sent']}" if lost else "-",
                during, path, (f"{e['outcome']['held']} (up to {e['outcome']['held_max_ms']:.0f})"
                               if e["outcome"].get("held") else "0"),
                millis(m.get("recovery_ms")), millis(m.get("recovery_level_ms")),
                f"{goodput.stats.mean:.0f} of {goodput.extra['before_mbit']:.0f} (n={goodput.stats.n})"
                + _flowing(goodput.extra) if goodput and goodput.extra.get("before_mbit") else "-",
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
                           f"{fault['seconds']:g} s",
                "mtu": f"link {', '.join(fault['links'])} carries at most {fault.get('mtu')} bytes for "
                       f"{fault['seconds']:g} s, its \"fragmentation needed\" "
                       f"{'dropped' if fault.get('icmp') == 'drop' else 'sent back'}, a TCP transfer through it",
                }[fault["kind"]]
        watched = e["watch"]["circuit"] if e.get("watch") else "none"
        by = ("firewall rules between the hosts (by their clocks)" if (first.datapath or {}).get("testbed") == "remote"
              else "the link emulator")
        title = (f"WAN fault {name}: {what}. Probe {first.src} -> {first.dst} through each overlay, one request per "
                 f"{e['interval_ms']:g} ms (n = {e['outcome']['sent']} for {first.overlay}); applied at t = 0 by "
                 f"{by}, last heal at +{heal[-1] / 1e3:.3f} s; all times in ms but the expected outage; "
                 f"watched circuit {watched}")
        out.append(titled_table(title, ["Overlay", "Outage", "Lost during", "RTT during", "Path during",
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


def load_tables(records: list[Record], notes: list[str]) -> list[str]:
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
            status = status_cell(next((r for r in (latency, goodput) if not r.valid), latency), notes) \
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
        out.append(titled_table(title, ["Overlay", "Idle RTT", "Loaded RTT", "Induced (loaded - idle)", "ICMP idle / loaded",
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


def stress_tables(records: list[Record], notes: list[str]) -> list[str]:
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
            status = next((status_cell(r, notes) for r in (tcp, latency) if r is not None and not r.valid),
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
        out.append(titled_table(title, head, rows))
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
    out = load_tables(records, notes) + stress_tables(records, notes)
    return out + (["\n".join(notes)] if notes else [])
