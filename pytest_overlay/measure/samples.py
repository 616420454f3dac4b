"""What the probes give: round trips and throughput intervals as samples with their own
times, and the parsers that make them from the tools' output (tests feed them captured real
output). Statistics are the results layer's job."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field

from . import runqueue

INTERVAL_S = 0.5


def _udp_buffer() -> int:
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            return max(212992, min(int(f.read()), 64 << 20))
    except (OSError, ValueError):
        return 212992


UDP_BUFFER = _udp_buffer()


class ProbeError(RuntimeError):
    pass


@dataclass
class LatencySamples:
    """Round-trip times in milliseconds, per round of request/response (lost ones omitted),
    each with when its request left and its reply came back (wall clock, ns)."""

    rounds_ms: list[list[float]]
    sent: int
    lost: int
    interval_ms: float
    warmup: int = 0
    tool: str = "irtt"
    times_ns: list[list[tuple[int, int]]] = field(default_factory=list)  # per round, (send, receive)
    excluded: int = 0
    waits: runqueue.Waits | None = None  # the probe's processes' waits for a CPU (None: not watched)
    round_of: list[int] = field(default_factory=list)  # the round each list of rounds_ms counts in ([]: its own)
    excluded_ms: list[float] = field(default_factory=list)  # the round trips left out, kept aside to show what they were

    @property
    def spans_ns(self) -> list[tuple[int, int]]:
        return [t for one in self.times_ns for t in one]

    def keep(self, kept: list[bool]) -> "LatencySamples":
        """The same run without the round trips whose flag in `kept` (over rtt_ms) is False."""
        flags = iter(kept)
        rounds, times = [], []
        for rtts, stamps in zip(self.rounds_ms, self.times_ns or [[(0, 0)] * len(r) for r in self.rounds_ms]):
            pairs = [(rtt, t) for rtt, t in zip(rtts, stamps) if next(flags)]
            rounds.append([p[0] for p in pairs])
            times.append([p[1] for p in pairs])
        dropped = sum(map(len, self.rounds_ms)) - sum(map(len, rounds))
        left = [rtt for rtt, k in zip(self.rtt_ms, kept) if not k]
        return LatencySamples(rounds, self.sent, self.lost, self.interval_ms, self.warmup, self.tool, times,
                              self.excluded + dropped, self.waits, self.round_of, self.excluded_ms + left)

    @classmethod
    def merged(cls, runs: list["LatencySamples"]) -> "LatencySamples":
        """The round trips of a measurement's runs together: the first run's rounds as they
        are, each later run's (a top-up) joined to the round that kept the fewest."""
        first = runs[0]
        rounds = [list(r) for r in first.rounds_ms]
        of = list(first.round_of or range(len(rounds)))
        for run in runs[1:]:
            sizes = {}
            for index, rtts in zip(of, rounds):
                sizes[index] = sizes.get(index, 0) + len(rtts)
            fewest = min(sizes, key=sizes.get)
            rounds += [list(r) for r in run.rounds_ms]
            of += [fewest] * len(run.rounds_ms)
        watched = [run.waits for run in runs]
        return LatencySamples(rounds, sum(r.sent for r in runs), sum(r.lost for r in runs), first.interval_ms,
                              first.warmup, first.tool, [list(t) for run in runs for t in run.times_ns],
                              sum(r.excluded for r in runs),
                              runqueue.Waits.of(watched), of,
                              [x for r in runs for x in r.excluded_ms])

    @property
    def rtt_ms(self) -> list[float]:
        return [rtt for one in self.rounds_ms for rtt in one]

    @property
    def ipdv_ms(self) -> list[float]:
        """Absolute difference between consecutive round trips (RFC 3393 IPDV), within rounds."""
        return [abs(b - a) for one in self.rounds_ms for a, b in zip(one, one[1:])]

    @property
    def round_means(self) -> list[float]:
        """Each round's mean: a round's top-ups count in it (their runs are lists of their own,
        so that no IPDV pair spans two runs)."""
        rounds: dict[int, list[float]] = {}
        for index, rtts in zip(self.round_of or range(len(self.rounds_ms)), self.rounds_ms):
            rounds.setdefault(index, []).extend(rtts)
        return [statistics.fmean(one) for one in rounds.values() if one]


@dataclass
class ThroughputSamples:
    """Per-interval receive rates of one iperf3 run, in Mbit/s, with the run's totals."""

    protocol: str
    mbit: list[float]
    total_mbit: float
    interval_s: float
    retransmits: int | None = None
    lost_pct: float | None = None
    jitter_ms: float | None = None
    offered_mbit: float | None = None
    sent_mbit: float | None = None  # what the sender put on the wire (UDP), by iperf3's own count
    extra: dict = field(default_factory=dict)
    tool: str = "iperf3"
    round_totals: list[float] = field(default_factory=list)
    # Each interval's (start, end) in seconds after the warm-up, as iperf3 counts them, and
    # where in wall time (ns) it may have been, bounded by when the client ran.
    offsets_s: list[tuple[float, float]] = field(default_factory=list)
    spans_ns: list[tuple[int, int]] = field(default_factory=list)
    excluded: int = 0

    def place(self, launched_ns: int, exited_ns: int, duration: float, omit: float) -> None:
        """Put the intervals in wall time: the measured part began after the client started
        and its warm-up ended, and at most `duration` before the client exited."""
        earliest, latest = launched_ns + int(omit * 1e9), exited_ns - int(duration * 1e9)
        self.spans_ns = [(earliest + int(a * 1e9), max(earliest, latest) + int(b * 1e9)) for a, b in self.offsets_s]

    def keep(self, kept: list[bool]) -> "ThroughputSamples":
        """Without the intervals whose flag is False; the run's total then comes from the
        intervals kept (the excluded ones are in the whole run's count)."""
        if all(kept):
            return self
        mbit = [m for m, k in zip(self.mbit, kept) if k]
        total = statistics.fmean(mbit) if mbit else float("nan")
        return ThroughputSamples(
            self.protocol, mbit, total, self.interval_s, self.retransmits, self.lost_pct, self.jitter_ms,
            self.offered_mbit, self.sent_mbit, {**self.extra, "total_whole_run_mbit": self.total_mbit}, self.tool,
            [total] if len(self.round_totals) <= 1 else self.round_totals,
            [o for o, k in zip(self.offsets_s, kept) if k], [sp for sp, k in zip(self.spans_ns, kept) if k],
            self.excluded + len(kept) - len(mbit))


def parse_irtt(output: str, interval_ms: float, what: str = "irtt") -> LatencySamples:
    """Round trips from irtt's JSON (`irtt client -o -`); lost ones are left out and counted."""
    try:
        data = json.loads(output)
        trips, sent = data["round_trips"], data["stats"]["packets_sent"]
    except (ValueError, KeyError, TypeError) as e:
        raise ProbeError(f"{what}: unreadable output ({type(e).__name__}: {e}): {output[:200]!r}") from None
    came_back = [rt for rt in trips if rt.get("lost") == "false" and "rtt" in rt.get("delay", {})]
    if not came_back:
        raise ProbeError(f"{what}: none of {sent} requests came back")
    rtts = [rt["delay"]["rtt"] / 1e6 for rt in came_back]
    times = [(_wall(rt, "send"), _wall(rt, "receive")) for rt in came_back]
    return LatencySamples([rtts], sent, sent - len(rtts), interval_ms, times_ns=[times])


def _wall(trip: dict, which: str) -> int:
    return int(((trip.get("timestamps") or {}).get("client") or {}).get(which, {}).get("wall", 0))


def _weighted_total(runs: list[ThroughputSamples]) -> float:
    """The runs' totals, each weighing as many intervals as it measured (a top-up is short)."""
    weights = [len(r.mbit) for r in runs]
    if not sum(weights):
        return statistics.fmean(r.total_mbit for r in runs)
    return sum(r.total_mbit * w for r, w in zip(runs, weights)) / sum(weights)


def pooled(runs: list[ThroughputSamples]) -> ThroughputSamples:
    """Several rounds of one flow as one measurement: intervals together, totals averaged."""
    first, protocol = runs[0], runs[0].protocol
    if len(runs) == 1:
        first.round_totals = [first.total_mbit]
        return first
    packets = sum(r.extra.get("packets") or 0 for r in runs)
    lost = sum(r.extra.get("lost_packets") or 0 for r in runs)
    dropped = [r.extra.get("receiver_socket_dropped") for r in runs]
    extra = {**first.extra, "packets": packets, "lost_packets": lost}
    if protocol == "udp":
        extra["receiver_socket_dropped"] = None if None in dropped else sum(dropped)
        disordered = [r.extra.get("out_of_order") for r in runs]
        extra["out_of_order"] = None if None in disordered else sum(disordered)
    return ThroughputSamples(
        protocol, [m for r in runs for m in r.mbit], _weighted_total(runs), first.interval_s,
        retransmits=sum(r.retransmits or 0 for r in runs) if protocol == "tcp" else None,
        lost_pct=lost / packets * 100 if packets else first.lost_pct, jitter_ms=first.jitter_ms,
        offered_mbit=first.offered_mbit, extra=extra,
        sent_mbit=min((r.sent_mbit for r in runs if r.sent_mbit), default=None),
        round_totals=[r.total_mbit for r in runs],
        offsets_s=[o for r in runs for o in r.offsets_s], spans_ns=[sp for r in runs for sp in r.spans_ns],
        excluded=sum(r.excluded for r in runs),
    )


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp: per protocol, a line of names, then a line of values."""
    lines = [line.split() for line in text.splitlines() if ":" in line]
    table: dict[str, dict[str, int]] = {}
    for names, values in zip(lines, lines[1:]):
        if names[0] == values[0] and names[0][:-1] not in table and not names[1].lstrip("-").isdigit():
            table[names[0][:-1]] = {n: int(v) for n, v in zip(names[1:], values[1:])}
    return table


def parse_iperf3(output: str, protocol: str, udp_rate_mbit: float | None = None, rc: int = 0, stderr: str = "",
                 what: str = "iperf3") -> ThroughputSamples:
    """Receiver-side rates from iperf3's JSON (`-J --get-server-output`)."""
    try:
        data = json.loads(output)
    except ValueError:
        data = {}
    if rc != 0 or "error" in data or "end" not in data:
        raise ProbeError(f"{what} failed (exit {rc}): {data.get('error') or (stderr or output).strip()[-500:]}")
    received = data.get("server_output_json", {}).get("intervals") or data["intervals"]
    intervals = measured_intervals([i["sum"] for i in received])
    offsets = [(i["start"], i["end"]) for i in intervals]
    end = data["end"]
    if protocol == "tcp":
        return ThroughputSamples(
            "tcp", [i["bits_per_second"] / 1e6 for i in intervals],
            end["sum_received"]["bits_per_second"] / 1e6, INTERVAL_S,
            retransmits=end["sum_sent"].get("retransmits"), offsets_s=offsets,
        )
    total = end.get("sum_received", end["sum"])
    packets, lost = _udp_loss(received, total, (data.get("server_output_json") or {}).get("end", {}).get("sum"))
    sent_mbit = (end.get("sum_sent") or {}).get("bits_per_second", 0) / 1e6 or None
    read_mbit = total["bits_per_second"] / 1e6
    return ThroughputSamples(
        "udp", [delivered_mbit(i.get("packets"), i.get("lost_packets", 0), sent_mbit, i["bits_per_second"] / 1e6)
                for i in intervals],
        delivered_mbit(packets, lost, sent_mbit, read_mbit),
        INTERVAL_S, lost_pct=100 * lost / packets if packets else 0.0, jitter_ms=total.get("jitter_ms"),
        offered_mbit=udp_rate_mbit, sent_mbit=sent_mbit,
        extra={"packets": packets, "lost_packets": lost, "socket_buffer": UDP_BUFFER, "read_mbit": read_mbit,
               "out_of_order": _out_of_order(data)},
        offsets_s=offsets,
    )


UDP_RECORDED = ("packets", "lost_packets", "out_of_order", "read_mbit", "receiver_socket_dropped", "receiver_cpus")


def delivered_mbit(packets: int | None, lost: int, sent_mbit: float | None, read_mbit: float) -> float:
    """A UDP interval's (or run's) rate as the path delivered it, not as the receiver read it
    (`read_mbit`, kept where the sequence numbers or the sender's rate are missing).

    iperf3's receiver counts an interval's bytes when it reads them, so a receiver kept from
    its CPU for about 35 ms moves 17 Mbit from one half-second to the next: 466 then 535
    Mbit/s of a steady 500, with no datagram lost (captured through Calico under the
    machine's load: tests/unit/data/iperf3-udp-reading-lag.json). `packets` are the
    sequence numbers the interval covered and `lost` the gaps among them, both fixed
    when the datagrams were sent; so the share that arrived, at the sender's rate, is the
    path's own."""
    return sent_mbit * (packets - lost) / packets if sent_mbit and packets else read_mbit


def measured_intervals(received: list[dict]) -> list[dict]:
    """The receiver's intervals that are one interval each of the measured run: what arrived,
    not what was sent.

    Two kinds are not, and each would be counted as a sample of its own: the stub at the end
    (the receiver's intervals lag the sender's by the path's delay: a few ms, whose rate says
    nothing), and, where the warm-up ends, an interval iperf3 3.12 sometimes reports as
    measured although it spans the last omitted one too: its start is the omitted one's, its
    length twice the interval, and its bytes only the second half's, so its rate is half the
    flow's (captured over a 17.7 ms path: tests/unit/data/iperf3-omit-boundary.json)."""
    return [i for i in received if not i.get("omitted") and abs(i["seconds"] - INTERVAL_S) <= 0.2 * INTERVAL_S]


def _spans_the_warmup(interval: dict) -> bool:
    """The interval iperf3 reports where the warm-up ends, spanning the last omitted one."""
    return not interval.get("omitted") and interval["seconds"] > 1.2 * INTERVAL_S


# Consecutive intervals batched into one unit of the throughput's confidence interval: a
# second of a flow spans 16 to 77 round trips on the study's paths, so its mean depends
# little on the window the batch before it left.
BATCH_INTERVALS = 2


def _out_of_order(data: dict) -> int | None:
    """Datagrams the receiver got after a later one (iperf3's per-stream count, the whole run's,
    warm-up included): what a reordering path did. None where iperf3 does not say."""
    ends = (data.get("server_output_json") or data).get("end", {}).get("streams") or []
    counts = [(stream.get("udp") or {}).get("out_of_order") for stream in ends]
    return None if not counts or None in counts else sum(counts)


def _udp_loss(received: list[dict], total: dict, receiver_total: dict | None = None) -> tuple[int, int]:
    """Datagrams expected and lost after the warm-up, summed over the receiver's own intervals.

    Where datagrams arrive out of order, iperf3 counts the ones overtaken as lost in one interval
    and takes them back in the next, and 3.12 writes a negative count as 2^64 less it, as a
    float that no longer says which (1.8e19): the receiver's whole-run total is used then.

    The client's ``sum_received`` is not used: with ``--omit`` and an offered rate above what
    the path carries, iperf3 3.12 counts the warm-up's losses in it but not its datagrams
    (esnet/iperf#1489: 107 802 lost of 89 269, "120 %"). The receiver's intervals after the
    warm-up add up to its own correct total.
    """
    kept = [i["sum"] for i in received
            if not i["sum"].get("omitted") and not _spans_the_warmup(i["sum"]) and "packets" in i["sum"]]
    if any(i.get("lost_packets", 0) >= 2**63 for i in kept) and receiver_total and "packets" in receiver_total:
        return receiver_total["packets"], receiver_total.get("lost_packets") or 0
    if kept:
        return sum(i["packets"] for i in kept), sum(i.get("lost_packets", 0) for i in kept)
    return total.get("packets") or 0, total.get("lost_packets") or 0
