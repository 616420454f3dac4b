"""Why a measurement cannot be vouched for, judged on the packets it measured.

The link emulator keeps, per link direction, a timeline of the moments it released packets
late or the kernel dropped them from its queue (windows). Every probe's samples carry their
own times. A sample whose packets crossed such a window, on a direction of its own path, is
excluded from the statistics and counted; the rest stand. A measurement is INVALID (reported
with the reason, its test failed; never a clean figure) only where the statistic itself was
touched: more samples excluded than the bound, a TCP run whose congestion control saw a
loss or a stall the network did not make, a UDP loss figure the emulator added to, a
streaming level whose own direction had too many late packets (a binomial bound, never a
raw share of a handful), or a timeline that cannot be read.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from ..emulation.linkqueue import LATE_LIMIT_S
from .machine import Window as MachineWindow
from .probes import probe_of
from .probewait import Stall, cpu_stalls, probe_moments, typical_wait_ms
from .runqueue import Waits

# The rules themselves are in the thresholds file (section `validity`); a probe says which of
# them bounds its samples.
CPU_BOUND_PCT = 80.0  # the bundled max_client_cpu_pct
# A window is matched with this much room either side: the emulator's own limit for "late".
MATCH_MARGIN_NS = int(LATE_LIMIT_S * 1e9)
Z95 = 1.645  # one-sided 95 %
# Causes that come from the machine being busy, not from the overlay: such a measurement may
# be taken again (--overlay-retries).
LOAD_CAUSES = ("emulator released", "emulator dropped", "emulator touched", "emulator's timeline",
               "clients CPU-bound", "sender offered only", "probe processes waited", "receiver's socket dropped",
               "too few clean")
TOO_FEW = LOAD_CAUSES[-1]  # a measurement whose runs the machine spoiled past its budget (topup.py)


@dataclass(frozen=True)
class Hop:
    """One link direction a probe's packets cross, with its configured delay."""

    link: str
    delay_ms: float
    jitter_ms: float = 0.0


@dataclass(frozen=True)
class Trouble:
    """One window of the emulator's timeline on one link direction (wall ns)."""

    link: str
    start_ns: int
    end_ns: int
    late: int
    dropped: int
    max_late_us: float

    @classmethod
    def of(cls, link: str, window: list) -> "Trouble":
        start, end, late, dropped, max_late = window
        return cls(link, int(start), int(end), int(late), int(dropped), float(max_late))

    def describe(self) -> str:
        what = []
        if self.late:
            what.append(f"{self.late} released late (up to {self.max_late_us / 1e3:.1f} ms)")
        if self.dropped:
            what.append(f"{self.dropped} dropped (queue overflow)")
        return f"{self.link}: {', '.join(what)} over {(self.end_ns - self.start_ns) / 1e6:.1f} ms"


@dataclass
class Accounting:
    """How the emulator's timeline met one measurement's samples."""

    kind: str
    path: list[str]
    n: int = 0
    excluded: int = 0
    rule: str = ""
    troubles: list[Trouble] = field(default_factory=list)  # on the path, during the probe
    faults: list[str] = field(default_factory=list)
    kept: list[bool] = field(default_factory=list)
    loss_faults: list[str] = field(default_factory=list)  # UDP: what touches the loss figure only
    late: int | None = None  # streaming: the stream's packets released late (none can be left out)
    probe_wait: dict | None = None  # round trips: how long the probe's own processes waited for a CPU
    stalls: list[Stall] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "n": self.n, "n_excluded": self.excluded, "rule": self.rule, "path": self.path,
            **({"late": self.late} if self.late is not None else {}),
            **({"probe_wait": {**self.probe_wait, "windows": [t.describe() for t in self.stalls[:10]]}}
               if self.probe_wait is not None else {}),
            "windows": [t.describe() for t in self.troubles[:20]] + (
                [f"... {len(self.troubles) - 20} more"] if len(self.troubles) > 20 else []),
        }


def merged(parts: list[Accounting], kind: str | None = None) -> Accounting:
    """Several accountings (the runs of one measurement, or its flow groups) as one record's
    exclusions: counts summed, windows and stalls together, the probe's waits added up."""
    acc = Accounting(kind or (parts[0].kind if parts else ""), list(dict.fromkeys(l for a in parts for l in a.path)))
    acc.n, acc.excluded = sum(a.n for a in parts), sum(a.excluded for a in parts)
    acc.rule = parts[0].rule if parts else ""
    acc.troubles = [t for a in parts for t in a.troubles]
    acc.stalls = [t for a in parts for t in a.stalls]
    acc.faults = [f for a in parts for f in a.faults]
    acc.loss_faults = [f for a in parts for f in a.loss_faults]
    acc.kept = [k for a in parts for k in a.kept]
    lates = [a.late for a in parts if a.late is not None]
    acc.late = sum(lates) if lates else None
    waits = [a.probe_wait for a in parts if a.probe_wait is not None]
    if waits:
        acc.probe_wait = {**waits[0], **{k: round(sum(w.get(k, 0) for w in waits), 3) for k in
                                         ("client_ms", "server_ms", "polls", "windows_over_limit", "n_excluded",
                                          "threads_preceded")}}
        acc.probe_wait["typical_ms"] = max(w.get("typical_ms", 0.0) for w in waits)
        unseen = sorted({side for w in waits for side in w.get("not_found", [])})
        if unseen:
            acc.probe_wait["not_found"] = unseen
    return acc


def path_troubles(accrued: dict[str, dict], links: list[str]) -> tuple[list[Trouble], list[str]]:
    """The windows on these link directions, and the directions whose timeline overflowed."""
    troubles, incomplete = [], []
    for link in links:
        counts = accrued.get(link, {})
        troubles += [Trouble.of(link, w) for w in counts.get("windows", [])]
        if counts.get("windows_incomplete"):
            incomplete.append(link)
    return troubles, incomplete


def touched(spans: list[list[tuple[str, int, int]]], troubles: list[Trouble] | list[Stall],
            min_overlap_ns: int = 0) -> list[bool]:
    """For each sample (a list of (link, from_ns, to_ns): when its packets may have been due
    on that link), whether windows on the same link overlap it: by more than `min_overlap_ns`
    in all, or at all where a window dropped packets."""
    by_link: dict[str, list[Trouble]] = {}
    for t in sorted(troubles, key=lambda t: t.start_ns):
        by_link.setdefault(t.link, []).append(t)
    starts = {link: [t.start_ns for t in ts] for link, ts in by_link.items()}
    longest = {link: max(t.end_ns - t.start_ns for t in ts) for link, ts in by_link.items()}
    out = []
    for sample in spans:
        overlap, hit = 0, False
        for link, lo, hi in sample:
            ts = by_link.get(link)
            if not ts:
                continue
            lo, hi = lo - MATCH_MARGIN_NS, hi + MATCH_MARGIN_NS
            # windows that start no later than hi and end no earlier than lo
            for t in ts[bisect.bisect_left(starts[link], lo - longest[link]):bisect.bisect_right(starts[link], hi)]:
                if t.end_ns >= lo:
                    overlap += max(1, min(hi, t.end_ns) - max(lo, t.start_ns))
                    hit = hit or bool(t.dropped)
        out.append(hit or overlap > min_overlap_ns)
    return out


def round_trip_spans(times_ns: list[tuple[int, int]], there: list[Hop], back: list[Hop]) -> list[list[tuple[str, int, int]]]:
    """When each round trip's request and reply were due on each hop: after the configured
    delays of the hops before it, and before those after it, give or take the jitter."""
    loop = there + back
    rtt_ns = sum(h.delay_ms for h in loop) * 1e6
    slack = sum(h.jitter_ms for h in loop) * 1e6
    out = []
    for send, receive in times_ns:
        cumulative = 0.0
        sample = []
        for hop in loop:
            cumulative += hop.delay_ms * 1e6
            sample.append((hop.link, int(send + cumulative - slack), int(receive - (rtt_ns - cumulative) + slack)))
        out.append(sample)
    return out


def interval_spans(spans_ns: list[tuple[int, int]], hops: list[Hop]) -> list[list[tuple[str, int, int]]]:
    """A throughput interval, as the receiver counted it, holds packets due on each hop of
    the path from a little before the interval (the path's delay) to its end."""
    lead = int(sum(h.delay_ms + h.jitter_ms for h in hops) * 1e6)
    return [[(h.link, lo - lead, hi) for h in hops] for lo, hi in spans_ns]


def late_share(troubles: list[Trouble], window: tuple[int, int]) -> float:
    """The share of a window (wall ns) covered by the emulator's late or drop windows on any
    of the given link directions, overlapping ones counted once."""
    start, end = window
    if end <= start:
        return 0.0
    spans = sorted((max(t.start_ns, start), min(t.end_ns, end)) for t in troubles if t.end_ns > start and t.start_ns < end)
    covered, reach = 0, start
    for lo, hi in spans:
        lo = max(lo, reach)
        if hi > lo:
            covered += hi - lo
            reach = hi
    return covered / (end - start)


def wilson_lower(k: int, n: int, z: float = Z95) -> float:
    """One-sided lower confidence bound of a share k/n (Wilson score)."""
    if n <= 0 or k <= 0:
        return 0.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def account(kind: str, accrued: dict[str, dict], there: list[Hop], back: list[Hop], samples: object,
            rules: dict[str, float], machine: MachineWindow | None = None, held: list[bool] | None = None,
            resolution_ms: float = 0.0, replaced: bool = False) -> Accounting:
    """Judge one probe run (kind: latency, tcp, udp, stream-...) on its own path.

    `there` are the hops from the probe's source to its destination, `back` the way back;
    which of them count depends on what the probe's statistic is made of. `held` marks round
    trips an overlay held through a WAN fault: they last seconds and say only when the
    overlay let them go, so only a window that dropped or was late by more than
    `resolution_ms` can change them. `replaced`: the run is one of a measurement's runs
    (topup.py), which a fault of the machine's load replaces whole; its rule says so.
    """
    probe = probe_of(kind)
    crossing = there + back if probe.both_ways else there
    links = [h.link for h in crossing]
    acc = Accounting(kind, links)
    cause = machine.cause() if machine else ""
    because = f": {cause}" if cause else ""
    troubles, incomplete = path_troubles(accrued, links)
    acc.troubles = troubles
    if incomplete:
        acc.faults.append(f"emulator's timeline of late releases overflowed on {', '.join(incomplete)}: "
                          "which samples it touched cannot be told" + because)
    if not any("windows" in accrued.get(link, {}) for link in links):
        # No timeline (netem, or no emulator): drops on the path can only be counted.
        for link in links:
            dropped = accrued.get(link, {}).get("dropped", 0)
            if dropped:
                acc.faults.append(f"emulator dropped {dropped} packets on {link} (queue overflow)" + because)
    if probe.shape == "stream":
        return _stream(acc, accrued, rules, because)
    round_trips = probe.shape == "round_trip"
    if round_trips:
        times = samples.spans_ns
        spans = round_trip_spans(times, there, back) if times and all(times[0]) else None
    else:
        spans = interval_spans(samples.spans_ns, crossing) if samples.spans_ns else None
    n = len(samples.rtt_ms) if round_trips else len(samples.mbit)
    acc.n = n
    emulator_hits = 0
    if spans is None or len(spans) != n:
        acc.kept = [not troubles] * n
        acc.rule = "no sample times: any window on the path touches every sample"
    elif round_trips:
        hits = touched(spans, troubles)
        if held and any(held):
            coarse = [t for t in troubles if t.dropped or t.max_late_us > resolution_ms * 1e3]
            judged = iter(touched([span for span, h in zip(spans, held) if h], coarse))
            hits = [next(judged) if h else hit for hit, h in zip(hits, held)]
        emulator_hits = hits.count(True)
        waited = _probe_waited(acc, getattr(samples, "waits", None), times, there, back, rules["max_probe_wait_ms"])
        acc.kept = [not (hit or wait) for hit, wait in zip(hits, waited)]
    else:
        # An interval's rate moves by at most the share of its time the emulator spent late (not
        # at all where its timing does not matter: then only a drop touches it).
        interval_ns = int(samples.interval_s * 1e9)
        matched = troubles if probe.timing_matters else [t for t in troubles if t.dropped]
        acc.kept = [not hit for hit in touched(spans, matched, int(rules["max_late_share_interval"] * interval_ns))]
    acc.excluded = acc.kept.count(False)
    bound = rules[probe.excluded_setting]
    what = ("a round trip whose packets were due on a link of its path while the emulator released late or dropped "
            "there" if round_trips else
            f"an interval whose path had the emulator releasing late for over {rules['max_late_share_interval'] * 100:g} "
            "% of its time, or dropping")
    if round_trips and held and any(held):
        what += (f" (one the overlay held through the fault: a drop there, or a release over {resolution_ms:g} ms "
                 "late)")
    if acc.probe_wait is not None:
        what += (f", or one whose irtt client or server had a thread wait over {acc.probe_wait['limit_ms']:g} ms "
                 "for a CPU as it handled it,")
    acc.rule = acc.rule or f"{what} is excluded; {'a run is replaced' if replaced else 'INVALID'} beyond " \
                           f"{bound * 100:g} % excluded"
    if n and acc.excluded > bound * n:
        if not round_trips or emulator_hits > bound * n or not acc.stalls:
            worst = max(troubles, key=lambda t: (t.late + t.dropped, t.max_late_us))
            acc.faults.append(
                f"emulator touched {acc.excluded} of {n} {probe.sample} "
                f"({acc.excluded / n * 100:.1f} %, bound {bound * 100:g} %) on their path; worst {worst.describe()}"
                + because)
        else:
            worst = max(acc.stalls, key=lambda t: t.wait_us or 0.0)
            acc.faults.append(
                f"probe processes waited for a CPU over {acc.probe_wait['limit_ms']:g} ms around "
                f"{acc.probe_wait['n_excluded']} of {n} {probe.sample}: with the emulator's {emulator_hits}, "
                f"{acc.excluded} excluded ({acc.excluded / n * 100:.1f} %, bound {bound * 100:g} %); worst "
                f"{worst.describe()}" + because)
    dropped = _dropped(troubles)
    if probe.congestion_controlled:
        if dropped:
            acc.faults.append(f"{dropped}: {probe.kind.upper()}'s congestion control reacted to losses the network did "
                              f"not make{because}")
        stall_ms = max((t.max_late_us / 1e3 for t in troubles), default=0.0)
        if stall_ms > rules["max_stall_ms_tcp"]:
            acc.faults.append(f"emulator released packets {stall_ms:.0f} ms late on the path (bound "
                              f"{rules['max_stall_ms_tcp']:g} ms): {probe.kind.upper()} saw a stall long enough to "
                              "change its "
                              "congestion window" + because)
    if probe.counts_loss and dropped:
        acc.loss_faults.append(f"{dropped}: the loss figure would count them{because}")
    if probe.counts_loss:
        _receiver_dropped(acc, samples.extra, rules["max_receiver_dropped_share_udp"], because)
    return acc


def _receiver_dropped(acc: Accounting, extra: dict, bound: float, because: str) -> None:
    """Datagrams the receiver's own socket dropped (its buffer full while iperf3 waited for a
    CPU) are gaps iperf3 counts as lost on the path. Up to as many as it counted lost may be
    the receiver's: the loss figure cannot be vouched for; the rate, beyond `bound` of the
    datagrams."""
    socket, lost, packets = (extra.get(k) for k in ("receiver_socket_dropped", "lost_packets", "packets"))
    if not (socket and lost and packets):
        return
    theirs = min(socket, lost)
    said = (f"receiver's socket dropped {socket} datagrams, its buffer full while iperf3 waited for a CPU (Udp "
            f"RcvbufErrors in its namespace), and iperf3 counted {lost} of {packets} lost: up to {theirs} of them "
            "are the receiver's, not the path's")
    acc.loss_faults.append(said + because)
    if theirs > bound * packets:
        acc.faults.append(f"{said} ({theirs / packets * 100:.1f} %, bound {bound * 100:g} %): the rate is short of "
                          f"what the path delivered{because}")


def _probe_waited(acc: Accounting, waits: Waits | None, times: list[tuple[int, int]], there: list[Hop],
                  back: list[Hop], limit_ms: float) -> list[bool]:
    """Which round trips the probe's own processes may have delayed over `limit_ms` (none
    where they were not watched); the waits go on the accounting."""
    if waits is None:
        return [False] * len(times)
    stalls = cpu_stalls(waits, times, limit_ms, MATCH_MARGIN_NS)
    waited = touched(probe_moments(times, there, back), stalls)
    acc.stalls = stalls
    acc.probe_wait = {"limit_ms": limit_ms, "client_ms": round(waits.total_ms("client"), 3),
                      "server_ms": round(waits.total_ms("server"), 3), "polls": waits.polls,
                      "windows_over_limit": sum(1 for t in stalls if t.wait_us is not None),
                      "n_excluded": waited.count(True),
                      "threads_preceded": len(waits.preceded),
                      "typical_ms": round(typical_wait_ms(waits, limit_ms), 4)}
    unseen = [side for side in ("client", "server") if side not in waits.found]
    if unseen:
        acc.probe_wait["not_found"] = unseen
    return waited


def _dropped(troubles: list[Trouble]) -> str:
    """What the emulator dropped on the path, in words ("" if nothing)."""
    dropped = [t for t in troubles if t.dropped]
    if not dropped:
        return ""
    return (f"emulator dropped {sum(t.dropped for t in dropped)} packets on "
            f"{', '.join(sorted({t.link for t in dropped}))} (queue overflow)")


def _stream(acc: Accounting, accrued: dict[str, dict], rules: dict[str, float], because: str) -> Accounting:
    """A streaming level's statistic is each client's whole-run jitter: its own direction's
    late share decides, judged by a binomial bound; drops there always do."""
    limit = rules["max_late_share_stream"]
    acc.rule = (f"the stream's own direction ({', '.join(acc.path)}): INVALID where the lower 95 % bound of the "
                f"late share exceeds {limit * 100:g} %, or on any drop")
    acc.late = 0
    for link in acc.path:
        c = accrued.get(link, {})
        packets, late = c.get("packets", 0), c.get("late", 0)
        acc.n += packets
        acc.late += late
        if wilson_lower(late, packets) > limit:
            p99 = c.get("p99_late_us")
            how = [f"at least {wilson_lower(late, packets) * 100:.2f} % at 95 %",
                   f"release error p99 {'over 100 ms' if p99 is None else f'<= {p99 / 1e3:g} ms'}"]
            how += [f"max {c['max_late_us'] / 1e3:.1f} ms"] if c.get("max_late_us") else []
            acc.faults.append(f"emulator released {late} of {packets} packets on {link} over "
                              f"{LATE_LIMIT_S * 1e3:g} ms late ({'; '.join(how)})" + because)
    dropped = _dropped(acc.troubles)
    if dropped:
        acc.faults.append(dropped + because)
    return acc


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


def outage_faults(troubles: list[Trouble], span_ns: tuple[int, int], resolution_ms: float) -> list[str]:
    """An outage is the overlay's only if the emulator kept time on the path through it: a
    window inside the gap that dropped, or released later than the outage's resolution,
    could have made (or lengthened) it."""
    start, end = span_ns
    inside = [t for t in troubles if t.start_ns < end and t.end_ns > start
              and (t.dropped or t.max_late_us > resolution_ms * 1e3)]
    if not inside:
        return []
    worst = max(inside, key=lambda t: (t.late + t.dropped, t.max_late_us))
    return [f"emulator released late or dropped on the probe's path inside the longest outage: {worst.describe()}"]
