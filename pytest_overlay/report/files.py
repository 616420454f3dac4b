"""A run's report as files: Markdown, CSV, JSON, plots, and one HTML page that shows them."""

from __future__ import annotations

import csv
import html
from pathlib import Path

from .. import results
from ..inputs.model import Topology
from ..results import Missing, Record
from . import page
from .tables import tables

CSV_FIELDS = ("overlay", "metric", "src", "dst", "unit", "min", "mean", "p50", "p99", "max", "stdev", "n", "ci95",
              "total", "valid", "verdict", "invalid_reasons")


def write_files(directory: str | Path, records: list[Record], topology: Topology, run: dict,
                missing: list[Missing] = (), comparisons: list = ()) -> list[str]:
    """Markdown, CSV, JSON, plots and one HTML page that shows them all."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    from . import plots  # matplotlib: only when pictures are asked for

    results.write_json(out / "results.json", run, records, missing, comparisons)
    written.append("results.json")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        for r in records:
            writer.writerow({**{k: getattr(r, k) for k in ("overlay", "metric", "src", "dst", "unit", "valid", "verdict")},
                             **{k: v for k, v in r.stats.rounded().items() if k in CSV_FIELDS}, "total": "" if r.total is None else r.total,
                             "invalid_reasons": "; ".join(r.invalid_reasons)})
    written.append("results.csv")
    text = tables(records, topology, missing, comparisons, run.get("ab"))
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
        body.append(f"<h2>{html.escape(title)}</h2>{page.table(table.splitlines())}")
    for name, title in pictures:
        body.append(f"<h2>{html.escape(title)}</h2><img src='{name}' alt='{html.escape(title)}'>")
    return page.page(f"pytest-overlay: {topology.name}", body, page.STYLE + "td,th{text-align:right}")
