"""The study, reproduced: run its two experiments on the embedded testbed and set our figures
beside the published ones (``python -m pytest_overlay study``, ``make study``).

Parts, each a pytest run of the suites:
  1. point-to-point on geant.yaml: latency, jitter, TCP and UDP, every circuit, every overlay;
  2. the throughput anomaly: libnetwork TCP with Docker's default container buffers;
  3. streaming on geant-star.yaml: the concurrency sweep, every overlay;
  4. the cut on BRA-LJU through Weave and libnetwork, 20 s and 90 s (past Weave's 60 s
     dead-connection timeout): can a relayed path make the study's Weave BRA-LJU row?
  5. the study's future work, on AMS-MIL: latency under load (RRUL) at the links' buffers and
     at 5 ms, and the CPU sweep, every overlay;
  6. and 7. today's encrypted meshes (WireGuard, Nebula, tinc) beside Weave's encrypted sleeve:
     latency and TCP on AMS-MIL, then the cut on BRA-LJU and LJU's partition.
Then one report (Markdown and HTML) judged by rules it states.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import kinds, results
from ..paths import DATA, SUITES
from ..results import Record, metrics
from . import page

REFERENCE = DATA / "reference" / "hermans-deniet-2016.yaml"
STUDY_OVERLAYS = ("libnetwork", "weave", "flannel")
# Judging rules, stated in the report.
MEAN_WITHIN_MS = 1.0  # a measured mean "reproduces" the published one within this
OVERHEAD_WITHIN_MS = 0.5  # an overlay's overhead over libnetwork "reproduces" within this
LONG_CUT_S = 90.0  # past Weave's 60 s HeartbeatTimeout (router/network_router.go): long enough to see a relay
LONG_CUT = "cut-90s-BRA-LJU"
STRESS_CIRCUIT = "AMS-MIL"  # the load section of geant.yaml names it
MESH_PEERS = ("weave-encrypted",)  # the study's own encrypted overlay, beside today's meshes
MESH_CUT, MESH_PARTITION = LONG_CUT, "partition-LJU"  # long enough for a mesh to find its way round


@dataclass
class Part:
    name: str
    args: list[str]
    estimate_s: float
    json: str
    report: str | None = None
    elapsed_s: float = 0.0
    rc: int | None = None


@dataclass
class Budget:
    """Sample counts chosen so the whole study fits the time it is given on this machine."""

    samples: int = 250
    interval_ms: float = 10.0
    # Six half-second intervals: three 1 s batch means, the fewest a throughput's interval is made of.
    duration_s: float = 3.0
    stream_seconds: float = 6.0
    concurrency: tuple[int, ...] = (1, 5, 10, 25, 50)
    bringup_s: float = 10.0  # measured: 5-10 s per container overlay on 4 sites, the image's layers linked
    load_seconds: float = 10.0
    cpu_budgets: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    # Latency of two circuits whose paths share no link at once (--overlay-parallel): geant's
    # six pair off, and two irtt flows of 100 packets/s load nothing.
    parallel: int = 2

    def ptp_s(self, overlays: int, circuits: int) -> float:
        latency = (self.samples + 10) * self.interval_ms / 1000 * math.ceil(circuits / self.parallel)
        return (overlays - 1) * self.bringup_s + overlays * (latency + circuits * 2 * (self.duration_s + 3.5))

    def stream_s(self, overlays: int) -> float:
        per_level = self.stream_seconds + 6
        return (overlays - 1) * self.bringup_s + overlays * len(self.concurrency) * per_level + 15

    def stress_s(self, overlays: int, buffers: int = 2) -> float:
        """RRUL at each buffer for every overlay, then latency and TCP unlimited and at each
        budget (the underlay unlimited only)."""
        rrul = 5 + 1 + 2 + self.load_seconds + 1 + 4
        level = (self.samples + 10) * self.interval_ms / 1000 + self.duration_s + 4.5
        return ((overlays - 1) * self.bringup_s + overlays * buffers * rrul
                + (1 + (overlays - 1) * (1 + len(self.cpu_budgets))) * level)


@dataclass
class Study:
    out: Path
    budget: Budget = field(default_factory=Budget)
    python: str = sys.executable
    suites: Path = SUITES

    def parts(self) -> list[Part]:
        b = self.budget
        common = ["--overlay-retries=2", f"--overlay-samples={b.samples}", f"--overlay-interval={b.interval_ms:g}",
                  f"--overlay-duration={b.duration_s:g}"]
        return [
            Part("point-to-point on geant (latency, jitter, TCP, UDP; host, libnetwork, weave, flannel, calico)",
                 ["--topology=geant", "--overlay=all", "-m", "latency or jitter or throughput", *common,
                  f"--overlay-parallel={b.parallel}", "--overlay-save=study-ptp",
                  f"--benchmark-storage=file://{self.out / 'saved'}"],
                 b.ptp_s(5, 6), "ptp.json", "ptp"),
            Part("TCP with Docker's default container buffers (libnetwork on geant)",
                 ["--topology=geant", "--overlay=libnetwork", "-m", "tcp", "--overlay-container-buffers=docker",
                  *common], b.bringup_s + 6 * (b.duration_s + 3.5), "buffers.json"),
            Part("streaming on geant-star (1 to 50 RTSP clients; every overlay)",
                 ["--topology=geant-star", "--overlay=all", "-m", "streaming", "--overlay-retries=2",
                  f"--overlay-stream-seconds={b.stream_seconds:g}",
                  f"--overlay-concurrency={','.join(map(str, b.concurrency))}"],
                 b.stream_s(5), "streaming.json", "streaming"),
            Part(f"the cut on BRA-LJU, {LONG_CUT_S:g} s and 20 s, through Weave and libnetwork (geant)",
                 [f"--topology={self.out / 'geant-cuts.yaml'}", "--overlay=weave,libnetwork", "-m", "faults",
                  f"--overlay-faults=cut-BRA-LJU,{LONG_CUT}"],
                 b.bringup_s + 2 * (2 * 30 + LONG_CUT_S + 10), "cuts.json", "cuts"),
            Part("the study's future work on AMS-MIL: latency under load at two link buffers, and CPU budgets "
                 f"({', '.join(f'{c:g}' for c in b.cpu_budgets)} cores; every overlay)",
                 ["--topology=geant", "--overlay=all", "-m", "load or latency or tcp", "-k", STRESS_CIRCUIT,
                  f"--overlay-cpu={','.join(f'{c:g}' for c in b.cpu_budgets)}", *common,
                  f"--overlay-load-seconds={b.load_seconds:g}"],
                 b.stress_s(5), "stress.json", "stress"),
            Part("today's encrypted meshes beside Weave's encrypted sleeve on AMS-MIL (latency, TCP)",
                 ["--topology=geant", f"--overlay=host,{','.join(MESH_PEERS)},meshes", "-m", "latency or tcp",
                  "-k", STRESS_CIRCUIT, *common], b.ptp_s(5, 1), "meshes.json", "meshes"),
            Part(f"the {LONG_CUT_S:g} s cut on BRA-LJU and LJU's partition through the meshes and Weave's "
                 "encrypted sleeve",
                 [f"--topology={self.out / 'geant-cuts.yaml'}", f"--overlay={','.join(MESH_PEERS)},meshes", "-m",
                  "faults", f"--overlay-faults={MESH_CUT},{MESH_PARTITION}"],
                 4 * (b.bringup_s + 2 * 30 + LONG_CUT_S + 20 + 10), "meshes-faults.json", "meshes-faults"),
        ]

    def write_topologies(self) -> None:
        """geant.yaml with one more scenario: a cut longer than Weave's dead-connection
        timeout, which the bundled faults leave out (it takes minutes per overlay)."""
        from ..paths import TOPOLOGY_DIR

        data = yaml.safe_load((TOPOLOGY_DIR / "geant.yaml").read_text())
        data.setdefault("faults", {})[LONG_CUT] = {"kind": "cut", "link": ["BRA", "LJU"], "seconds": LONG_CUT_S}
        (self.out / "geant-cuts.yaml").write_text(
            "# geant.yaml with the study's part 4 scenario added (written by the study command)\n"
            + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

    def run(self, only: set[int] | None = None) -> int:
        """Every part, or those numbered in `only`; the report is written from every part's
        results found in `out`, so a part run again replaces its own results only."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.write_topologies()
        parts = self.parts()
        chosen = [i for i in range(1, len(parts) + 1) if only is None or i in only]
        started = time.monotonic()
        for i, part in enumerate(parts, 1):
            if i not in chosen:
                continue
            left = sum(parts[j - 1].estimate_s for j in chosen if j >= i)
            say(f"part {i}/{len(parts)}: {part.name}; about {left / 60:.0f} min left "
                f"({time.monotonic() - started:.0f} s so far)")
            command = [self.python, "-m", "pytest", str(self.suites), "-p", "no:cacheprovider", "-q",
                       f"--overlay-json={self.out / part.json}", *part.args]
            if part.report:
                command.append(f"--overlay-report={self.out / part.report}")
            t0 = time.monotonic()
            part.rc = subprocess.run(command).returncode
            part.elapsed_s = time.monotonic() - t0
            say(f"part {i}/{len(parts)} done in {part.elapsed_s:.0f} s (pytest exit {part.rc})")
        written = write_report(self.out, parts, time.monotonic() - started)
        say(f"study done in {(time.monotonic() - started) / 60:.1f} min: {', '.join(written)} in {self.out}")
        return 0 if all(p.rc in (0, 1) for p in parts if p.rc is not None) else 1


def say(message: str) -> None:
    print(f"[study] {message}", flush=True)


# --- the report ---------------------------------------------------------------------------------
def load_reference(path: Path = REFERENCE) -> dict:
    return yaml.safe_load(path.read_text())


def load_records(path: Path) -> list[Record]:
    if not path.exists():
        return []
    document = json.loads(path.read_text())
    return [Record.from_json(r, document.get("version", 2)) for r in document["results"]]


def _find(records: list[Record], overlay: str, metric: str, circuit: str) -> Record | None:
    a, b = circuit.split("-")
    return next((r for r in records if r.overlay == overlay and r.metric == metric and {r.src, r.dst} == {a, b}), None)


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def latency_rows(reference: dict, records: list[Record]) -> list[list[str]]:
    """Published beside measured, per circuit and overlay, with overheads and a verdict."""
    rows = []
    for circuit, published in reference["docker_to_docker_latency"].items():
        host = _find(records, "host", "latency", circuit)
        pub_libnet = published["libnetwork"][1]
        ours_libnet = _find(records, "libnetwork", "latency", circuit)
        for overlay in STUDY_OVERLAYS:
            pmin, pmean, p99 = published[overlay]
            r = _find(records, overlay, "latency", circuit)
            if r is None:
                rows.append([circuit, overlay, _f(pmin, 1), _f(pmean, 1), _f(p99, 1), "-", "-", "-", "-", "-", "-",
                             "not measured"])
                continue
            pub_over = pmean - pub_libnet
            ours_over = r.stats.mean - ours_libnet.stats.mean if ours_libnet else None
            diff = results.difference(r, host)
            vs_host = (f"{diff[0]:+.2f} ±{diff[1]:.2f}" if diff else
                       results.UNKNOWN_OVERHEAD if host and not host.valid else "-")
            rows.append([circuit, overlay, _f(pmin, 1), _f(pmean, 1), _f(p99, 1), _f(r.stats.min), _f(r.stats.mean),
                         _f(r.stats.p99), f"{pub_over:+.1f}", "-" if ours_over is None else f"{ours_over:+.2f}",
                         vs_host, verdict(pmean, r.stats.mean, pub_over, ours_over) if r.valid
                         else f"INVALID: {'; '.join(r.invalid_reasons)}"])
    return rows


def verdict(published_mean: float, measured_mean: float, published_overhead: float,
            measured_overhead: float | None) -> str:
    mean_ok = abs(measured_mean - published_mean) <= MEAN_WITHIN_MS
    over_ok = measured_overhead is not None and abs(measured_overhead - published_overhead) <= OVERHEAD_WITHIN_MS
    if mean_ok and over_ok:
        return f"reproduces (mean within {MEAN_WITHIN_MS:g} ms, overhead within {OVERHEAD_WITHIN_MS:g} ms)"
    parts = []
    if not mean_ok:
        parts.append(f"mean differs by {measured_mean - published_mean:+.1f} ms")
    if not over_ok and measured_overhead is not None:
        parts.append(f"overhead differs by {measured_overhead - published_overhead:+.1f} ms")
    return "differs: " + ", ".join(parts)


def significance_rows(records: list[Record]) -> list[list[str]]:
    """Per overlay: is the difference from the underlay significant (outside the 95 % interval)?"""
    rows = []
    overlays = sorted({r.overlay for r in records if r.metric == "latency" and r.overlay != "host"})
    for overlay in overlays:
        diffs = []
        for r in (r for r in records if r.overlay == overlay and r.metric == "latency"):
            diff = results.difference(r, _find(records, "host", "latency", r.circuit))
            if diff:
                diffs.append(diff)
        significant = [d for d, ci in diffs if abs(d) > ci]
        tcp = [(r, _find(records, "host", "tcp_throughput", r.circuit))
               for r in records if r.overlay == overlay and r.metric == "tcp_throughput"]
        ratios = [v for v in (results.ratio(r, h) for r, h in tcp) if v is not None]
        rows.append([overlay, str(len(diffs)), f"{min(d for d, _ in diffs):+.2f} to {max(d for d, _ in diffs):+.2f}"
                     if diffs else "-", f"{len(significant)} of {len(diffs)}",
                     f"{min(ratios):.2f} to {max(ratios):.2f}" if ratios else "-"])
    return rows


def buffer_rows(ptp: list[Record], buffers: list[Record]) -> list[list[str]]:
    rows = []
    for r in (r for r in ptp if r.overlay == "libnetwork" and r.metric == "tcp_throughput"):
        host = _find(ptp, "host", "tcp_throughput", r.circuit)
        default = _find(buffers, "libnetwork", "tcp_throughput", r.circuit)
        rows.append([f"{r.src} – {r.dst}", _f(r.expected.get("rtt_ms"), 1), _f(host.value("total") if host else None, 0),
                     _f(r.value("total"), 0), _f(default.value("total") if default else None, 0),
                     _f(default.value("total") / r.value("total") if default and r.value("total") else None)])
    return sorted(rows, key=lambda row: float(row[1]))


def confidence(records: list[Record]) -> str:
    """What the chosen sample counts gave: the 95 % half-widths, per metric, over every row."""
    lines = []
    for metric, what in (("latency", "mean RTT"), ("jitter", "mean IPDV"), ("tcp_throughput", "TCP total"),
                         ("udp_throughput", "UDP total")):
        chosen = [r for r in records if r.metric == metric and math.isfinite(r.stats.ci95)]
        for unit in sorted({r.stats.ci95_unit for r in chosen}):
            rows = [r for r in chosen if r.stats.ci95_unit == unit]
            widths = [r.stats.ci95 for r in rows]
            relative = [r.stats.ci95 / abs(r.value(metrics.get(metric).headline)) * 100 for r in rows
                        if r.value(metrics.get(metric).headline)]
            counts = sorted({r.stats.ci95_n for r in rows})
            lines.append(f"- {what}: ±{min(widths):.3f} to ±{max(widths):.3f} {rows[0].unit} (95 %)"
                         + (f", ±{min(relative):.1f} to ±{max(relative):.1f} % of the value" if relative else "")
                         + f", from {unit}, n = {counts[0]}{f' to {counts[-1]}' if len(counts) > 1 else ''} per row, "
                         f"{len(rows)} rows")
    invalid = [r for r in records if not r.valid]
    if invalid:
        lines.append(f"- {len(invalid)} of {len(records)} results INVALID (the emulator could not vouch for them); "
                     "they are in ptp/report.md with the reason, and left out of no table here")
    return "\n".join(lines) or "No results."


def flannel_answer(reference: dict, ptp: list[Record]) -> str:
    published = reference["docker_to_docker_latency"]
    shift = {c: published[c]["flannel"][1] - published[c]["libnetwork"][1] for c in ("AMS-MIL", "MIL-LJU")}
    flannel, libnet = _find(ptp, "flannel", "latency", "AMS-MIL"), _find(ptp, "libnetwork", "latency", "AMS-MIL")
    if not (flannel and libnet):
        return "Not measured in this run (see ptp/report.md, 'Not measured')."
    return (f"Published: flannel is {shift['AMS-MIL']:+.1f} ms from libnetwork on AMS–MIL and {shift['MIL-LJU']:+.1f} ms "
            f"on MIL–LJU. Measured on AMS–MIL: flannel {flannel.stats.mean:.2f} ms, libnetwork {libnet.stats.mean:.2f} ms "
            f"({flannel.stats.mean - libnet.stats.mean:+.2f} ms; n = {flannel.stats.n} and {libnet.stats.n}). Flannel's "
            f"{flannel.datapath.get('backend')} datapath routes each lease straight to its site "
            f"({'; '.join(f'{k}: {v}' for k, v in flannel.datapath.get('routes', {}).get('AMS', {}).items())}) and adds "
            "what VXLAN adds, a fraction of a millisecond. A shift of about 6 ms that is positive on one circuit and "
            "negative on another is a different underlay path, not encapsulation: the study's Flannel hosts were "
            "most likely reached over other GTS routes than its libnetwork hosts.")


def weave_answer(reference: dict, ptp: list[Record]) -> str:
    published = reference["docker_to_docker_latency"]["BRA-LJU"]
    (wmin, wmean, w99), (lmin, lmean, l99) = published["weave"], published["libnetwork"]
    weave, libnet = _find(ptp, "weave", "latency", "BRA-LJU"), _find(ptp, "libnetwork", "latency", "BRA-LJU")
    if not (weave and libnet):
        return "Not measured in this run (see ptp/report.md, 'Not measured')."
    connections = weave.datapath.get("peer_connections", {}).get("BRA", [])
    direct = all(c.get("state") == "established" for c in connections)
    return (f"Published: weave min/mean/p99 {wmin}/{wmean}/{w99} ms against libnetwork {lmin}/{lmean}/{l99}: a minimum "
            f"{lmin - wmin:.1f} ms lower (another path), a mean {wmean - lmean:.1f} ms and a p99 {w99 - l99:.0f} ms "
            f"higher (some round trips stalled). Measured: weave {weave.stats.min:.2f}/{weave.stats.mean:.2f}/"
            f"{weave.stats.p99:.2f} ms against libnetwork {libnet.stats.min:.2f}/{libnet.stats.mean:.2f}/"
            f"{libnet.stats.p99:.2f} (n = {weave.stats.n}); Weave reports datapath {weave.datapath.get('weave_datapath')} "
            f"and BRA's peer connections {[c.get('info') for c in connections]}. "
            + ("Every connection is direct and established, so no round trip was relayed through a third peer, and "
               f"the tail over libnetwork ({weave.stats.p99 - libnet.stats.p99:+.2f} ms at p99) is what a userspace "
               "datapath costs on a busy host. The study's 130 ms p99 fits Weave's mesh routing by hop count "
               "through a third site while a direct connection was down or being re-established, or sleeve's "
               "userspace forwarding stalling on a loaded VM; its lower minimum fits a different underlay path."
               if direct else "Not every connection was established: some round trips may have been relayed."))


def cut_answer(reference: dict, cuts: list[Record]) -> str:
    """Whether a relayed path can make the study's Weave BRA-LJU figures: what the cut did to
    Weave and to libnetwork, and the share of round trips a relay would have to carry."""
    published = reference["docker_to_docker_latency"]["BRA-LJU"]
    (wmin, wmean, w99), (lmin, lmean, _) = published["weave"], published["libnetwork"]
    found = {(r.overlay, r.fault, r.metric): r for r in cuts if r.fault}
    rows, relayed = [], []
    for fault in ("cut-BRA-LJU", LONG_CUT):
        for overlay in ("weave", "libnetwork"):
            outage = found.get((overlay, fault, "outage_ms"))
            if outage is None:
                continue
            detour = found.get((overlay, fault, "detour_rtt"))
            path = outage.extra.get("detour_path") or ""
            if detour is not None and path:
                relayed.append((overlay, fault, detour, path))
            rows.append([fault, overlay, f"{outage.stats.max / 1e3:.2f}",
                         f"{detour.stats.mean:.1f} / {detour.stats.p99:.1f} (n={detour.stats.n})" if detour else "none",
                         path or "-", "yes" if outage.valid else "INVALID"])
    if not rows:
        return "Not measured in this run (see cuts/report.md, 'Not measured')."
    table = _table(["Scenario", "Overlay", "Longest outage (s)", "RTT while cut: mean / p99 ms", "Path while cut",
                    "Valid"], rows)
    if not relayed:
        answer = ("No overlay carried a round trip while BRA-LJU was cut: none relayed through a third site within "
                  "the cut, so a relay cannot be what made the study's Weave row in runs like these.")
    else:
        overlay, fault, detour, path = relayed[0]
        need = (wmean - lmean) / (detour.stats.mean - lmean) if detour.stats.mean > lmean else math.inf
        answer = (f"{overlay} relayed during {fault} via {path} at a mean of {detour.stats.mean:.1f} ms (p99 "
                  f"{detour.stats.p99:.1f}, n = {detour.stats.n}). For the published mean of {wmean} ms, "
                  + (f"{need * 100:.0f} % of the study's round trips would have had to take that path"
                     if need <= 1 else "no share of relayed round trips would suffice: the relay is faster than "
                                       "the published mean")
                  + f"; a relay cannot lower the minimum below the direct path's, yet the published Weave minimum "
                    f"({wmin} ms) is {lmin - wmin:.1f} ms under libnetwork's; and its p99 of {w99:.0f} ms is "
                    f"{'above' if w99 > detour.stats.p99 else 'within'} the relay's p99. A relay explains the mean "
                    f"only in part; the minimum says the study's Weave ran over another underlay path.")
    return table + "\n\n" + answer


def stress_answer(stress: list[Record]) -> str:
    """The study asks for a heavily shared environment and for CPU capping: the RRUL tables and
    the CPU sweep on one circuit, each ending with its answer in one sentence."""
    from .. import report

    sections = report.stress_sections(stress)
    if not sections:
        return "Not measured in this run (see stress/report.md, 'Not measured')."
    return "\n\n".join(s.replace("\n|", "\n\n|", 1) for s in sections)


def meshes_section(out: Path) -> str:
    """Today's encrypted meshes in a group of their own, after the study's comparison."""
    from . import meshes

    overlays = [*MESH_PEERS, *kinds.groups().get("meshes", ())]
    rows = meshes.rows(load_records(out / "meshes.json"), load_records(out / "meshes-faults.json"), overlays,
                       MESH_CUT, MESH_PARTITION)
    return ("## Beyond the study: today's encrypted meshes\n\nThe study compared the overlays of 2016. WireGuard, "
            "Nebula and tinc, each a real daemon per site in userspace, beside Weave's encrypted sleeve: latency "
            f"and TCP on {STRESS_CIRCUIT} (the CPU is what the sites' daemons and containers used during the TCP "
            f"run), then {MESH_CUT} (does the mesh find a path round it?) and {MESH_PARTITION} for 20 s (how long "
            "after the heal until it answers again). See meshes/report.md and meshes-faults/report.md.\n\n"
            + _table(meshes.HEAD, rows))


def _table(head: list[str], rows: list[list[str]]) -> str:
    from tabulate import tabulate

    if not rows:
        return "Not measured in this run."
    return tabulate(rows, headers=head, tablefmt="github", disable_numparse=True)


def write_report(out: Path, parts: list[Part], wall_s: float) -> list[str]:
    reference = load_reference()
    ptp, buffers = load_records(out / "ptp.json"), load_records(out / "buffers.json")
    sections = [
        f"# The study, reproduced\n\n{reference['citation']}\n\nPublished figures: {reference['source']}. Ours: "
        f"the same circuits on pytest-overlay's embedded testbed (every RTT of geant.yaml is the study's libnetwork "
        f"mean, so absolute agreement of libnetwork is by construction; overheads and the differences between "
        f"overlays are what is judged). Wall time {wall_s / 60:.1f} min; "
        + "; ".join(f"part {i}: {p.elapsed_s:.0f} s" if p.rc is not None else
                    f"part {i}: {'results of an earlier run' if (out / p.json).exists() else 'not run'}"
                    for i, p in enumerate(parts, 1)) + ".",
        "## Docker-to-Docker latency, published beside measured (ms)\n\n"
        f"Rule: a row *reproduces* when the measured mean is within {MEAN_WITHIN_MS:g} ms of the published one and "
        f"the overlay's overhead over libnetwork is within {OVERHEAD_WITHIN_MS:g} ms of the published overhead. "
        "n per measured row is in ptp/report.md (round trips after warm-up).\n\n"
        + _table(["Circuit", "Overlay", "Pub. min", "Pub. mean", "Pub. p99", "Min", "Mean", "p99",
                  "Pub. Δ vs libnetwork", "Δ vs libnetwork", "Δ vs host ±95% CI", "Verdict"],
                 latency_rows(reference, ptp)),
        "## \"No significant performance degradation\"\n\nSignificant: the difference of mean RTT from the "
        "underlay lies outside its 95 % interval. Significant is not large: read the range.\n\n"
        + _table(["Overlay", "Circuits", "Δ mean RTT vs host (ms)", "Significant", "TCP × host"],
                 significance_rows(ptp)),
        "## The throughput anomaly: Docker's default TCP buffers in containers\n\nOne TCP stream is capped at "
        "send buffer / RTT. Inside a container's own network namespace Docker leaves the kernel's defaults "
        "(tcp_wmem max 4 MB): the longer the circuit, the lower the ceiling. Mbit/s received, iperf3:\n\n"
        + _table(["Circuit", "RTT ms", "host", "libnetwork, tuned buffers", "libnetwork, Docker's defaults",
                  "default ÷ tuned"], buffer_rows(ptp, buffers)),
        "## Flannel +6 ms on AMS–MIL\n\n" + flannel_answer(reference, ptp),
        "## Weave p99 of 130 ms on BRA–LJU\n\n" + weave_answer(reference, ptp),
        "## A cut on BRA–LJU: could a relay make Weave's row?\n\nThe direct path dropped for 20 s and for "
        f"{LONG_CUT_S:g} s (Weave declares a connection dead after 60 s without heartbeats, "
        "router/network_router.go), probed at 100 round trips a second; see cuts/report.md and cuts/index.html.\n\n"
        + cut_answer(reference, load_records(out / "cuts.json")),
        "## Future work: a shared host, and CPU capping\n\nThe study's future work asks how the overlays fare "
        "\"in a heavily shared environment\" and \"with more compute resources (CPU capping)\". On "
        f"{STRESS_CIRCUIT}: RRUL (TCP flows both ways beside latency probes) at the links' own buffers and at 5 ms, "
        "and latency and TCP with every site's overlay held to a CPU budget; see stress/report.md and "
        "stress/index.html.\n\n" + stress_answer(load_records(out / "stress.json")),
    ]
    if (out / "meshes.json").exists() or (out / "meshes-faults.json").exists():
        sections.append(meshes_section(out))
    streaming = out / "streaming"
    if (streaming / "report.md").exists():
        sections.append("## Streaming (BRA to AMS)\n\nSee streaming/report.md and streaming/index.html: jitter and "
                        "bitrate per level of concurrency and per overlay.")
    sections.insert(1, "## Confidence\n\n" + confidence(ptp))
    text = "\n\n".join(sections) + "\n"
    (out / "report.md").write_text(text)
    body = page.markdown(text)
    from . import plots

    if plots.published_vs_measured(reference["docker_to_docker_latency"], ptp, out / "published_vs_measured.png"):
        body.insert(1, "<h2>Published against measured</h2><img src='published_vs_measured.png' "
                       "alt='published against measured mean RTT, per circuit and overlay'>")
    for image in ("ptp/latency_cdf.png", "ptp/throughput.png", "streaming/streaming.png",
                  "cuts/fault_cut-BRA-LJU.png", f"cuts/fault_{LONG_CUT}.png",
                  *(f"stress/{kind}_{STRESS_CIRCUIT}_{level}.png" for level in ("links", "q5ms")
                    for kind in ("load", "load_cdf")), "stress/cpu_budgets.png"):
        if (out / image).exists():
            body.append(f"<h2>{image}</h2><img src='{image}' alt='{image}'>")
    (out / "index.html").write_text(page.page("The study, reproduced", body))
    return ["report.md", "index.html"]
