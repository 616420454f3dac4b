"""The study's questions answered from its records, in sentences and small tables: how sure
its latency figures are, whether Flannel's and Weave's published anomalies reproduce, what
the long cut did to each overlay, what load added, and the meshes beside Weave."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .. import kinds
from ..results import Record, metrics

LONG_CUT = "cut-90s-BRA-LJU"
MESH_CUT, MESH_PARTITION = LONG_CUT, "partition-LJU"  # long enough for a mesh to find its way round
STRESS_CIRCUIT = "AMS-MIL"  # the load section of geant.yaml names it
MESH_PEERS = ("weave-encrypted",)  # the study's own encrypted overlay, beside today's meshes


def load_records(path: Path) -> list[Record]:
    if not path.exists():
        return []
    document = json.loads(path.read_text())
    return [Record.from_json(r, document.get("version", 2)) for r in document["results"]]


def find_record(records: list[Record], overlay: str, metric: str, circuit: str) -> Record | None:
    a, b = circuit.split("-")
    return next((r for r in records if r.overlay == overlay and r.metric == metric and {r.src, r.dst} == {a, b}), None)


def figure(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


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
    flannel, libnet = find_record(ptp, "flannel", "latency", "AMS-MIL"), find_record(ptp, "libnetwork", "latency", "AMS-MIL")
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
    weave, libnet = find_record(ptp, "weave", "latency", "BRA-LJU"), find_record(ptp, "libnetwork", "latency", "BRA-LJU")
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
    table = markdown_table(["Scenario", "Overlay", "Longest outage (s)", "RTT while cut: mean / p99 ms", "Path while cut",
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
            + markdown_table(meshes.HEAD, rows))


def what_breaks_section(out: Path) -> str:
    """The path MTU part: each overlay against each kind of path, in the future-work group."""
    from .tables import what_breaks

    records = [r for r in load_records(out / "pmtu.json") if r.metric == "path_mtu"]
    conditions, rows = what_breaks(records)
    return ("## Beyond the study: what breaks\n\nOverlays between sites break on packet size more often than on "
            "delay. On the pmtu triangle (1400-byte links; MIL–LJU drops ICMP \"fragmentation needed\", a path MTU "
            "black hole; AMS–LJU reorders 1 %), a bulk TCP transfer through each overlay: full speed, slowed (below "
            "70 % of the link's rate, or after a stall) or black hole, with the largest packet carried end to end. "
            "See pmtu/report.md and docs/pmtu.md.\n\n" + markdown_table(["Overlay", *conditions], rows))


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    from tabulate import tabulate

    if not rows:
        return "Not measured in this run."
    return tabulate(rows, headers=head, tablefmt="github", disable_numparse=True)
