"""Measurements between two endpoints: request/response latency and jitter (irtt), TCP and
UDP throughput (iperf3). Each returns raw samples; statistics are the results layer's job.

An endpoint is anything that can run a command and start a server where the traffic ends:
a site namespace for the underlay, a container for an overlay.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .. import procs
from . import runqueue

_ports = itertools.count(20000)
INTERVAL_S = 0.5


def _udp_buffer() -> int:
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            return max(212992, min(int(f.read()), 64 << 20))
    except (OSError, ValueError):
        return 212992


UDP_BUFFER = _udp_buffer()


class Endpoint(Protocol):
    name: str
    address: str

    def run(self, command: list[str], timeout: float | None = 60) -> procs.CommandResult: ...

    def netns_inode(self) -> int | None:
        """Its network namespace's inode, where it is on this machine (else None)."""

    def start(self, name: str, command: list[str], ready: str | None = None) -> procs.Daemon: ...

    def agent(self, name: str) -> str:
        """Where one of the package's agents (programs run inside sites) is, at the endpoint."""

    def file(self, path: Path) -> str:
        """Make a file of this machine readable at the endpoint; its path there."""


class ProbeError(RuntimeError):
    pass


@dataclass(frozen=True)
class Probe:
    """One kind of measurement, as flent's runners have it: the tools checked before any
    traffic starts, and what its statistic is made of, which is what the emulator's
    accounting judges a run on (`validity.account`)."""

    kind: str
    tools: dict[str, str]  # binary -> the Debian package that has it
    both_ways: bool  # the statistic depends on the way back too: round trips, TCP's ACK clock
    sample: str  # one sample, in words
    excluded_setting: str = ""  # the validity rule bounding the share of samples left out ("": judged whole)
    # What one sample is, as the emulator's accounting matches it against late and drop
    # windows: a round trip (its packets' own times), an interval of a flow, or a whole stream.
    shape: str = "interval"
    congestion_controlled: bool = False  # a drop or a long stall the emulator made changes the flow itself
    counts_loss: bool = False  # the probe reports loss: a drop the emulator made would be counted in it

    def check(self) -> list[str]:
        """What this machine lacks to run the probe, with the package to install."""
        return procs.missing(self.tools)


@dataclass(frozen=True)
class Irtt(Probe):
    """Request/response round trips over UDP (irtt), each with its own timestamps."""

    def command(self, src: "Endpoint", dst: "Endpoint", port: int, interval_ms: float, seconds: float,
                output: str = "-") -> list[str]:
        """The client; its JSON goes to stdout, or to `output` (written when it ends or is
        interrupted), for a run read while it goes."""
        return ["irtt", "client", *(["-Q"] if output == "-" else []), "-o", output, "-i", f"{interval_ms:g}ms",
                "-d", f"{seconds:g}s", "--tstamp=none", f"--local={src.address}:0", f"{dst.address}:{port}"]

    def server(self, dst: "Endpoint", port: int, idle_s: float | None = None) -> list[str]:
        """`idle_s`: how long a client may go unheard before the server forgets it (irtt's
        --timeout, 1 min by default). A forgotten client gets one more reply, then none: a
        probe through a longer outage must raise it, or the outage never ends."""
        return ["irtt", "server", "-b", f"{dst.address}:{port}", "-i", "0", "--tstamp=none",
                *([f"--timeout={idle_s:g}s"] if idle_s else [])]

    def watched(self, src: "Endpoint", dst: "Endpoint", port: int) -> list[runqueue.Side] | None:
        """The client and the server of a run on `port`, where both run on this machine (an
        endpoint without `netns_inode`, an out-of-tree kind's from before it, is not watched)."""
        at = tuple(getattr(end, "netns_inode", lambda: None)() for end in (src, dst))
        if None in at:
            return None
        return [runqueue.Side("client", "irtt", f"{dst.address}:{port}", at[0]),
                runqueue.Side("server", "irtt", f"{dst.address}:{port}", at[1])]

    def parse(self, output: str, interval_ms: float, what: str = "irtt") -> "LatencySamples":
        return parse_irtt(output, interval_ms, what)


@dataclass(frozen=True)
class Iperf3(Probe):
    """A TCP or UDP flow (iperf3), rated per interval at the receiver."""

    def command(self, src: "Endpoint", dst: "Endpoint", port: int, seconds: float, omit: float,
                udp_rate_mbit: float | None = None, flows: int = 1, reverse: bool = False) -> list[str]:
        """The client: `flows` parallel flows, from dst to src where `reverse`."""
        command = ["iperf3", "-c", dst.address, "-B", src.address, "-p", str(port), "-J", "--get-server-output",
                   "-t", f"{seconds:g}", "-O", f"{omit:g}", "-i", f"{INTERVAL_S:g}",
                   *(["-P", str(flows)] if flows > 1 else []), *(["-R"] if reverse else [])]
        if self.kind == "udp":
            # A receive buffer the size of the kernel's cap: at hundreds of Mbit/s the
            # default one overflows whenever iperf3 is not scheduled for a few ms.
            command += ["-u", "-b", f"{udp_rate_mbit}M", "-l", "1400", "-w", str(UDP_BUFFER)]
        return command

    def server(self, dst: "Endpoint", port: int) -> list[str]:
        return ["iperf3", "-s", "-J", "-1", "-i", str(INTERVAL_S), "-B", dst.address, "-p", str(port)]

    def parse(self, output: str, udp_rate_mbit: float | None = None, rc: int = 0, stderr: str = "",
              what: str = "iperf3") -> "ThroughputSamples":
        return parse_iperf3(output, self.kind, udp_rate_mbit, rc, stderr, what)


SHAPES = ("round_trip", "interval", "stream")
LATENCY = Irtt("latency", {"irtt": "irtt"}, both_ways=True, sample="round trips",
               excluded_setting="max_excluded_share_latency", shape="round_trip")
TCP = Iperf3("tcp", {"iperf3": "iperf3"}, both_ways=True, sample="intervals",
             excluded_setting="max_excluded_share_throughput", congestion_controlled=True)
# UDP's rate is what arrives: the way back carries nothing the statistic is made of.
UDP = Iperf3("udp", {"iperf3": "iperf3"}, both_ways=False, sample="intervals",
             excluded_setting="max_excluded_share_throughput", counts_loss=True)
# Each client's whole-run jitter from one RTSP server's RTP packets: judged on the stream's own
# direction as a whole (streaming.py runs it).
STREAM = Probe("stream", {"gst-launch-1.0": "gstreamer1.0-tools"}, both_ways=False, sample="packets",
               shape="stream")
PROBES: dict[str, Probe] = {p.kind: p for p in (LATENCY, TCP, UDP, STREAM)}


def probe_of(kind: str) -> Probe:
    """The probe behind a measurement's kind ("latency", "tcp", "udp", "stream-udp-25", ...)."""
    return PROBES[kind.split("-")[0]]


def traffic_tools() -> dict[str, str]:
    """Every tool the traffic probes need (the stream's are checked with its RTSP server)."""
    return {tool: package for probe in (LATENCY, TCP, UDP) for tool, package in probe.tools.items()}


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
        return LatencySamples(rounds, self.sent, self.lost, self.interval_ms, self.warmup, self.tool, times,
                              self.excluded + dropped, self.waits)

    @property
    def rtt_ms(self) -> list[float]:
        return [rtt for one in self.rounds_ms for rtt in one]

    @property
    def ipdv_ms(self) -> list[float]:
        """Absolute difference between consecutive round trips (RFC 3393 IPDV), within rounds."""
        return [abs(b - a) for one in self.rounds_ms for a, b in zip(one, one[1:])]

    @property
    def round_means(self) -> list[float]:
        return [statistics.fmean(one) for one in self.rounds_ms if one]


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


def wait_listening(endpoint: Endpoint, port: int, proto: str, timeout: float = 5.0) -> None:
    flag = "-lnt" if proto == "tcp" else "-lnu"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = endpoint.run(["ss", "-H", flag, f"sport = :{port}"], timeout=5)
        if out.ok and out.stdout.strip():
            return
        time.sleep(0.02)
    raise ProbeError(f"server on {endpoint.name} port {port}/{proto} did not start listening within {timeout:g} s")


def irtt_server(dst: Endpoint, idle_s: float | None = None) -> tuple[procs.Daemon, int]:
    """An irtt server at dst, already listening: its daemon and its port."""
    port = next(_ports)
    server = dst.start(f"irtt-{port}", LATENCY.server(dst, port, idle_s))
    try:
        wait_listening(dst, port, "udp")
    except BaseException:
        server.stop()
        raise
    return server, port


def iperf3_server(dst: Endpoint) -> tuple[procs.Daemon, int]:
    """An iperf3 server at dst for one test, already listening: its daemon and its port."""
    port = next(_ports)
    server = dst.start(f"iperf3-{port}", TCP.server(dst, port))
    try:
        wait_listening(dst, port, "tcp")
    except BaseException:
        server.stop()
        raise
    return server, port


def latency(src: Endpoint, dst: Endpoint, samples: int, interval_ms: float = 10.0) -> LatencySamples:
    """`samples` UDP request/response round trips from src to dst, one every interval_ms."""
    server, port = irtt_server(dst)
    sides = LATENCY.watched(src, dst, port)
    try:
        duration = samples * interval_ms / 1000
        with runqueue.Watch(sides or []) as watch:
            result = src.run(LATENCY.command(src, dst, port, interval_ms, duration), timeout=duration + 30)
        if not result.ok:
            raise ProbeError(f"irtt {src.name} -> {dst.name} failed (exit {result.rc}): "
                             f"{(result.stderr or result.stdout).strip()[-500:]}\nserver log: {server.log_tail(5)}")
    finally:
        server.stop()
    parsed = LATENCY.parse(result.stdout, interval_ms, f"irtt {src.name} -> {dst.name}")
    parsed.waits = watch.waits if sides else None
    return parsed


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


def repeated_latency(src: Endpoint, dst: Endpoint, samples: int, interval_ms: float,
                     rounds: int = 1, warmup: int = 0) -> LatencySamples:
    """`rounds` runs of latency(), each dropping its first `warmup` round trips."""
    runs = [latency(src, dst, samples + warmup, interval_ms) for _ in range(rounds)]
    watched = [run.waits for run in runs]
    return LatencySamples([run.rtt_ms[warmup:] for run in runs], sum(r.sent for r in runs),
                          sum(r.lost for r in runs), interval_ms, warmup,
                          times_ns=[run.spans_ns[warmup:] for run in runs],
                          waits=None if None in watched else sum(watched[1:], watched[0]))


def repeated_throughput(src: Endpoint, dst: Endpoint, protocol: str, duration: float,
                        udp_rate_mbit: float | None = None, rounds: int = 1,
                        receiver_cpus: frozenset[int] = frozenset()) -> ThroughputSamples:
    """`rounds` runs of throughput(), pooled: intervals together, totals averaged."""
    runs = [throughput(src, dst, protocol, duration, udp_rate_mbit, receiver_cpus=receiver_cpus)
            for _ in range(rounds)]
    first = runs[0]
    if rounds == 1:
        first.round_totals = [first.total_mbit]
        return first
    packets = sum(r.extra.get("packets") or 0 for r in runs)
    lost = sum(r.extra.get("lost_packets") or 0 for r in runs)
    dropped = [r.extra.get("receiver_socket_dropped") for r in runs]
    extra = {**first.extra, "packets": packets, "lost_packets": lost}
    if protocol == "udp":
        extra["receiver_socket_dropped"] = None if None in dropped else sum(dropped)
    return ThroughputSamples(
        protocol, [m for r in runs for m in r.mbit], statistics.fmean(r.total_mbit for r in runs), first.interval_s,
        retransmits=sum(r.retransmits or 0 for r in runs) if protocol == "tcp" else None,
        lost_pct=lost / packets * 100 if packets else first.lost_pct, jitter_ms=first.jitter_ms,
        offered_mbit=first.offered_mbit, extra=extra,
        sent_mbit=min((r.sent_mbit for r in runs if r.sent_mbit), default=None),
        round_totals=[r.total_mbit for r in runs],
        offsets_s=[o for r in runs for o in r.offsets_s], spans_ns=[sp for r in runs for sp in r.spans_ns],
    )


def throughput(src: Endpoint, dst: Endpoint, protocol: str, duration: float,
               udp_rate_mbit: float | None = None, omit: float = 1.0,
               receiver_cpus: frozenset[int] = frozenset()) -> ThroughputSamples:
    """iperf3 from src to dst for `duration` seconds after `omit` seconds of warm-up; a UDP
    receiver running on this machine is kept to `receiver_cpus` (if any)."""
    probe = PROBES[protocol]
    server, port = iperf3_server(dst)
    held = None
    try:
        if protocol == "udp" and receiver_cpus and (inode := dst.netns_inode()) is not None:
            held = bool(runqueue.hold(runqueue.Side("server", "iperf3", f"-p\0{port}\0", inode), receiver_cpus))
        before = udp_counters(dst) if protocol == "udp" else None
        launched = time.time_ns()
        result = src.run(probe.command(src, dst, port, duration, omit, udp_rate_mbit), timeout=duration + omit + 30)
        exited = time.time_ns()
        after = udp_counters(dst) if before else None
    finally:
        server.stop()
    samples = probe.parse(result.stdout, udp_rate_mbit, result.rc, result.stderr,
                          f"iperf3 {protocol} {src.name} -> {dst.name}")
    samples.place(launched, exited, duration, omit)
    if protocol == "udp":
        samples.extra["receiver_socket_dropped"] = (
            after["RcvbufErrors"] - before["RcvbufErrors"] if before and after else None)
        samples.extra["receiver_cpus"] = sorted(receiver_cpus) if held else None
    return samples


def udp_counters(endpoint: Endpoint) -> dict[str, int] | None:
    """The UDP counters of the endpoint's namespace (None: unreadable). `RcvbufErrors`: datagrams
    a socket there dropped, its buffer full; each is a gap iperf3 counts as lost on the path."""
    result = endpoint.run(["cat", "/proc/net/snmp"], timeout=10)
    return parse_snmp(result.stdout).get("Udp") if result.ok else None


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
    packets, lost = _udp_loss(received, total)
    sent_mbit = (end.get("sum_sent") or {}).get("bits_per_second", 0) / 1e6 or None
    read_mbit = total["bits_per_second"] / 1e6
    return ThroughputSamples(
        "udp", [delivered_mbit(i.get("packets"), i.get("lost_packets", 0), sent_mbit, i["bits_per_second"] / 1e6)
                for i in intervals],
        delivered_mbit(packets, lost, sent_mbit, read_mbit),
        INTERVAL_S, lost_pct=100 * lost / packets if packets else 0.0, jitter_ms=total.get("jitter_ms"),
        offered_mbit=udp_rate_mbit, sent_mbit=sent_mbit,
        extra={"packets": packets, "lost_packets": lost, "socket_buffer": UDP_BUFFER, "read_mbit": read_mbit},
        offsets_s=offsets,
    )


UDP_RECORDED = ("packets", "lost_packets", "read_mbit", "receiver_socket_dropped", "receiver_cpus")


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


def _udp_loss(received: list[dict], total: dict) -> tuple[int, int]:
    """Datagrams expected and lost after the warm-up, summed over the receiver's own intervals.

    The client's ``sum_received`` is not used: with ``--omit`` and an offered rate above what
    the path carries, iperf3 3.12 counts the warm-up's losses in it but not its datagrams
    (esnet/iperf#1489: 107 802 lost of 89 269, "120 %"). The receiver's intervals after the
    warm-up add up to its own correct total.
    """
    kept = [i["sum"] for i in received
            if not i["sum"].get("omitted") and not _spans_the_warmup(i["sum"]) and "packets" in i["sum"]]
    if kept:
        return sum(i["packets"] for i in kept), sum(i.get("lost_packets", 0) for i in kept)
    return total.get("packets") or 0, total.get("lost_packets") or 0


def versions() -> dict[str, str]:
    """Versions of the measuring tools, for the run's metadata."""
    out = {}
    for tool, command in (("irtt", ["irtt", "version"]), ("iperf3", ["iperf3", "--version"])):
        result = procs.run(command, timeout=10)
        out[tool] = (result.stdout or result.stderr).strip().splitlines()[0] if result.ok else "missing"
    return out
