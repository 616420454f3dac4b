"""Pictures of a run: latency CDF per circuit, throughput per overlay, and streaming jitter
and bitrate against concurrency where the run has them. Each axis says what and in which
unit; each legend entry says how many samples it draws."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..results import Record  # noqa: E402


def _legend_below(ax) -> None:
    """The legend under the axes, never over the data."""
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def published_vs_measured(published: dict[str, dict[str, list[float]]], records: list[Record], path: Path) -> bool:
    """The study's question in one picture: per circuit and overlay, the published mean RTT
    beside ours, with our 95 % interval and n."""
    chosen = {(r.circuit, r.overlay): r for r in records if r.metric == "latency" and r.valid}
    circuits = [c for c in published if any((c, o) in chosen for o in published[c])]
    if not circuits:
        return False
    overlays = list(dict.fromkeys(o for c in circuits for o in published[c]))
    fig, ax = plt.subplots(figsize=(max(7, 1.9 * len(circuits)), 4.5))
    width = 0.8 / (2 * len(overlays))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, overlay in enumerate(overlays):
        colour = colours[i % len(colours)]
        xs = [c + 2 * i * width for c in range(len(circuits))]
        ax.bar(xs, [published[c].get(overlay, [0, 0, 0])[1] for c in circuits], width, color=colour, alpha=0.45,
               label=f"{overlay}, published mean")
        ours = [chosen.get((c, overlay)) for c in circuits]
        ax.bar([x + width for x in xs], [r.stats.mean if r else 0 for r in ours], width, color=colour,
               yerr=[r.stats.ci95 if r else 0 for r in ours], capsize=3,
               label=f"{overlay}, measured mean ±95 % CI (n={'/'.join(str(r.stats.n) for r in ours if r)})")
    ax.set_xticks([c + width * (2 * len(overlays) - 1) / 2 for c in range(len(circuits))],
                  [c.replace("-", " – ") for c in circuits])
    ax.set_ylabel("mean round-trip time (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title("Docker-to-Docker latency: published (light) beside measured (dark)")
    ax.grid(axis="y", alpha=0.3)
    _legend_below(ax)
    _save(fig, path)
    return True


def latency_cdf(records: list[Record], path: Path) -> bool:
    latency = [r for r in records if r.metric == "latency" and r.extra.get("samples")]
    if not latency:
        return False
    circuits = list(dict.fromkeys(r.circuit for r in latency))
    cols = min(3, len(circuits))
    rows = (len(circuits) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, circuit in zip(axes.flat, circuits):
        for r in (r for r in latency if r.circuit == circuit):
            xs = sorted(r.extra["samples"])
            # An INVALID record's curve is drawn apart (dotted, grey, named): its tail may be the machine's.
            ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post",
                    **({} if r.valid else {"linestyle": ":", "color": "0.6"}),
                    label=f"{r.overlay} (n={len(xs)})" + ("" if r.valid else " INVALID"))
        ax.set_title(f"{circuit.replace('-', ' – ')}")
        ax.set_xlabel("round-trip time (ms)")
        ax.set_ylabel("fraction of round trips ≤ x")
        ax.grid(alpha=0.3)
        _legend_below(ax)
    for ax in list(axes.flat)[len(circuits):]:
        ax.set_visible(False)
    fig.suptitle("Latency CDF per circuit (irtt request/response)")
    _save(fig, path)
    plt.close(fig)
    return True


def throughput(records: list[Record], path: Path) -> bool:
    metrics = [m for m in ("tcp_throughput", "udp_throughput") if any(r.metric == m for r in records)]
    if not metrics:
        return False
    fig, axes = plt.subplots(1, len(metrics), figsize=(7 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        chosen = [r for r in records if r.metric == metric]
        circuits = list(dict.fromkeys(r.circuit for r in chosen))
        overlays = list(dict.fromkeys(r.overlay for r in chosen))
        width = 0.8 / len(overlays)
        for i, overlay in enumerate(overlays):
            values, errors, labels = [], [], []
            for circuit in circuits:
                match = next((r for r in chosen if r.circuit == circuit and r.overlay == overlay), None)
                values.append(match.value("total") if match else 0)
                errors.append(match.stats.ci95 if match and match.stats.ci95 != float("inf") else 0)
                labels.append(match.stats.n if match else 0)
            xs = [c + i * width for c in range(len(circuits))]
            counts = f"{min(labels)}" if min(labels) == max(labels) else f"{min(labels)}–{max(labels)}"
            ax.bar(xs, values, width, yerr=errors, capsize=3, label=f"{overlay} (n={counts} intervals per bar)")
        ax.set_xticks([c + width * (len(overlays) - 1) / 2 for c in range(len(circuits))],
                      [c.replace("-", " – ") for c in circuits], rotation=20)
        ax.set_ylabel("received (Mbit/s)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{'TCP' if metric.startswith('tcp') else 'UDP'} throughput per circuit (iperf3, ±95 % CI)")
        ax.grid(axis="y", alpha=0.3)
        _legend_below(ax)
    _save(fig, path)
    plt.close(fig)
    return True


def streaming(records: list[Record], path: Path) -> bool:
    """Jitter and bitrate against concurrency, one line per overlay (the study's charts).
    Both axes start at zero; the bitrate chart marks the clip's own bitrate."""
    chosen = [r for r in records if r.metric in ("stream_jitter", "stream_bitrate") and r.concurrency is not None]
    if not chosen:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), squeeze=False)
    for ax, metric, label in ((axes[0][0], "stream_jitter", "RFC 3550 jitter, mean over clients (ms)"),
                              (axes[0][1], "stream_bitrate", "received bitrate, mean over clients (kbit/s)")):
        for overlay, transport in dict.fromkeys((r.overlay, r.transport) for r in chosen):
            points = sorted((r.concurrency, r.stats.mean, r.stats.n) for r in chosen
                            if r.metric == metric and r.overlay == overlay and r.transport == transport)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                    label=f"{overlay}, RTP over {transport} (n = {', '.join(str(p[2]) for p in points)} clients)")
        if metric == "stream_bitrate":
            nominal = next((r.extra.get("nominal_kbit") for r in chosen if r.extra.get("nominal_kbit")), None)
            if nominal:
                ax.axhline(nominal, color="grey", linestyle="--", label=f"the clip's bitrate ({nominal:.0f} kbit/s)")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        _legend_below(ax)
    fig.suptitle("Streaming under concurrency: one line per overlay, n = clients per point")
    _save(fig, path)
    plt.close(fig)
    return True


def fault_timeline(records: list[Record], fault: str, path: Path) -> bool:
    """One WAN fault scenario: RTT against time from the fault's start, one line per overlay,
    the fault's windows shaded, lost requests marked under the axis."""
    chosen = [r for r in records if r.fault == fault and r.metric == "outage_ms" and r.extra.get("timeline")]
    if not chosen:
        return False
    fig, ax = plt.subplots(figsize=(10, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    steps = chosen[0].extra["steps"]
    ons = [st["offset_ms"] / 1e3 for st in steps if st["what"] == "fault"]
    offs = [st["offset_ms"] / 1e3 for st in steps if st["what"] == "heal"]
    for i, (on, off) in enumerate(zip(ons, offs)):
        ax.axvspan(on, off, color="grey", alpha=0.2, label="fault on" if i == 0 else None)
    top = max((v for r in chosen for v in r.extra["timeline"]["rtt_ms"] if v is not None), default=1.0)
    for i, r in enumerate(chosen):
        colour = colours[i % len(colours)]
        line = r.extra["timeline"]
        got = [(t / 1e3, v) for t, v in zip(line["t_ms"], line["rtt_ms"]) if v is not None]
        lost = [t / 1e3 for t, v in zip(line["t_ms"], line["rtt_ms"]) if v is None]
        ax.plot([t for t, _ in got], [v for _, v in got], ".", markersize=2, color=colour,
                label=f"{r.overlay}: RTT (n={len(got)} replies), outage {r.stats.max / 1e3:.2f} s")
        ax.plot(lost, [-(0.03 + 0.03 * i) * top] * len(lost), "|", markersize=6, color=colour,
                label=f"{r.overlay}: lost request (n={len(lost)})")
    ax.set_xlabel("time from the fault's start (s); request send times")
    ax.set_ylabel("round-trip time through the overlay (ms)")
    ax.set_title(f"WAN fault {fault}: {chosen[0].src} -> {chosen[0].dst}")
    ax.grid(alpha=0.3)
    _legend_below(ax)
    _save(fig, path)
    return True


def load_timeline(records: list[Record], circuit: str, queue_ms: float | None, path: Path) -> bool:
    """Latency under load as flent draws RRUL: RTT against time above, the flows' goodput per
    direction below, one colour per overlay, the loaded window shaded."""
    chosen = [r for r in records if r.metric == "load_latency" and r.circuit == circuit and r.queue_ms == queue_ms
              and r.extra.get("timeline")]
    if not chosen:
        return False
    fig, (rtt_ax, goodput_ax) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    start, end = chosen[0].extra["timeline"]["loaded_s"]
    for ax in (rtt_ax, goodput_ax):
        ax.axvspan(start, end, color="grey", alpha=0.15)
    for i, r in enumerate(chosen):
        colour, line = colours[i % len(colours)], r.extra["timeline"]
        rtt_ax.plot([t for t, _ in line["rtt"]], [v for _, v in line["rtt"]], ".", markersize=2, color=colour,
                    label=f"{r.overlay}: RTT, irtt (n={len(line['rtt'])})")
        for direction, style in (("up", "-"), ("down", "--")):
            points = line["goodput"].get(direction, [])
            goodput_ax.plot([t for t, _ in points], [v for _, v in points], style, color=colour,
                            label=f"{r.overlay}: goodput {direction} (n={len(points)} intervals of 0.5 s)")
    level = "the links' own buffers" if queue_ms is None else f"buffers of {queue_ms:g} ms"
    rtt_ax.set_title(f"Latency under load, {circuit}, {level} (shaded: loaded, after warm-up)")
    rtt_ax.set_ylabel("round-trip time (ms)")
    goodput_ax.set_ylabel("goodput, flows summed (Mbit/s)")
    goodput_ax.set_xlabel("time from the first probe (s)")
    for ax in (rtt_ax, goodput_ax):
        ax.grid(alpha=0.3)
    _legend_below(goodput_ax)
    rtt_ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)
    return True


def load_cdf(records: list[Record], circuit: str, queue_ms: float | None, path: Path) -> bool:
    """CDFs of the RTT idle (dashed) and under load (solid), one colour per overlay."""
    chosen = [r for r in records if r.metric == "load_latency" and r.circuit == circuit and r.queue_ms == queue_ms
              and r.extra.get("samples")]
    if not chosen:
        return False
    fig, ax = plt.subplots(figsize=(9, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(chosen):
        for key, style, what in (("idle_samples", "--", "idle"), ("samples", "-", "loaded")):
            values = sorted(r.extra.get(key) or [])
            if values:
                ax.plot(values, [(k + 1) / len(values) for k in range(len(values))], style,
                        color=colours[i % len(colours)], label=f"{r.overlay}: {what} (n={len(values)})")
    level = "the links' own buffers" if queue_ms is None else f"buffers of {queue_ms:g} ms"
    ax.set_title(f"RTT idle and under load, {circuit}, {level}")
    ax.set_xlabel("round-trip time (ms)")
    ax.set_ylabel("share of round trips at or below")
    ax.grid(alpha=0.3)
    _legend_below(ax)
    _save(fig, path)
    return True


def cpu_budgets(records: list[Record], path: Path) -> bool:
    """TCP goodput and p99 RTT against the CPU budget, one line per overlay and circuit; the
    unlimited run drawn at the machine's core count."""
    import os

    chosen = [r for r in records if r.metric in ("tcp_throughput", "latency") and r.valid and not r.noise]
    if not any(r.cpu is not None for r in chosen):
        return False
    cores = float(os.cpu_count() or 1)
    fig, (tcp_ax, rtt_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for (overlay, circuit) in dict.fromkeys((r.overlay, r.circuit) for r in chosen):
        for ax, metric, value, what in ((tcp_ax, "tcp_throughput", lambda r: r.total, "goodput"),
                                        (rtt_ax, "latency", lambda r: r.stats.p99, "p99")):
            points = sorted((r.cpu if r.cpu is not None else cores, value(r), r.stats.n) for r in chosen
                            if r.overlay == overlay and r.circuit == circuit and r.metric == metric)
            if points:
                ax.plot([x for x, _, _ in points], [y for _, y, _ in points], "o-",
                        label=f"{overlay} {circuit} (n={min(n for _, _, n in points)}+ per point)")
    tcp_ax.set_ylabel("TCP goodput (Mbit/s)")
    rtt_ax.set_ylabel("RTT, 99th percentile (ms)")
    for ax in (tcp_ax, rtt_ax):
        ax.set_xlabel(f"CPU budget of each site's overlay (cores; {cores:g} = unlimited)")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    fig.suptitle("What a CPU budget does to each datapath")
    _legend_below(tcp_ax)
    _save(fig, path)
    return True
