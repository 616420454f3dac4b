"""Measurements between two endpoints: request/response latency and jitter (irtt), TCP and
UDP throughput (iperf3). Each returns raw samples; statistics are the results layer's job.

An endpoint is anything that can run a command and start a server where the traffic ends:
a site namespace for the underlay, a container for an overlay.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from .. import procs
from ..testbeds.contract import Endpoint, host_port
from . import runqueue
from .samples import (INTERVAL_S, UDP_BUFFER, LatencySamples, ProbeError, ThroughputSamples, parse_iperf3,
                      parse_irtt, parse_snmp, pooled)

_ports = itertools.count(20000)
# A UDP flow's datagrams (payload bytes): full size on a 1500-byte path; a path with a smaller
# MTU is given ones that fit it (udp_datagram), as iperf3 stops at the first EMSGSIZE.
UDP_DATAGRAM = 1400


def udp_datagram(path_mtu: int, address: str) -> int:
    """The largest datagram up to UDP_DATAGRAM that crosses a path of `path_mtu` unfragmented."""
    return min(UDP_DATAGRAM, path_mtu - (48 if ":" in address else 28))


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
    checked_first: bool = True  # its tools are checked before any traffic starts (else with its server)
    # A late release can move its statistic. Not so a UDP interval's rate: it is the sender's rate
    # times the share of the interval's sequence numbers that arrived (samples.delivered_mbit),
    # which a packet held a few ms and then delivered does not change; only a drop does.
    timing_matters: bool = True
    version: tuple[str, ...] = ()  # the command that prints its tool's version, for the run's metadata

    def check(self) -> list[str]:
        """What this machine lacks to run the probe, with the package to install."""
        return procs.missing(self.tools)

    def _listening(self, dst: "Endpoint", name: str, command: list[str], port: int, proto: str) -> procs.Daemon:
        """A server of this probe's at dst, started and already listening on `port`."""
        server = dst.start(f"{name}-{port}", command)
        try:
            wait_listening(dst, port, proto)
        except BaseException:
            server.stop()
            raise
        return server


@dataclass(frozen=True)
class Irtt(Probe):
    """Request/response round trips over UDP (irtt), each with its own timestamps."""

    def command(self, src: "Endpoint", dst: "Endpoint", port: int, interval_ms: float, seconds: float,
                output: str = "-") -> list[str]:
        """The client; its JSON goes to stdout, or to `output` (written when it ends or is
        interrupted), for a run read while it goes."""
        return ["irtt", "client", *(["-Q"] if output == "-" else []), "-o", output, "-i", f"{interval_ms:g}ms",
                "-d", f"{seconds:g}s", "--tstamp=none", f"--local={host_port(src.address, 0)}",
                host_port(dst.address, port)]

    def server(self, dst: "Endpoint", port: int, idle_s: float | None = None) -> list[str]:
        """`idle_s`: how long a client may go unheard before the server forgets it (irtt's
        --timeout, 1 min by default). A forgotten client gets one more reply, then none: a
        probe through a longer outage must raise it, or the outage never ends."""
        return ["irtt", "server", "-b", host_port(dst.address, port), "-i", "0", "--tstamp=none",
                *([f"--timeout={idle_s:g}s"] if idle_s else [])]

    def serve(self, dst: "Endpoint", idle_s: float | None = None) -> tuple[procs.Daemon, int]:
        """An irtt server at dst, already listening: its daemon and its port."""
        port = next(_ports)
        return self._listening(dst, "irtt", self.server(dst, port, idle_s), port, "udp"), port

    def run(self, src: "Endpoint", dst: "Endpoint", samples: int, interval_ms: float = 10.0, rounds: int = 1,
            warmup: int = 0) -> "LatencySamples":
        """`rounds` runs of request/response round trips from src to dst, one every
        `interval_ms`, each dropping its first `warmup` and keeping `samples` of the rest. irtt
        sends for a duration, and its count falls a round trip or two short as often as not:
        each run asks for 2 % more, so that a measurement is not topped up (a further run) for
        that alone."""
        spare = max(2, samples // 50)
        runs = [self._once(src, dst, samples + warmup + spare, interval_ms) for _ in range(rounds)]
        watched = [run.waits for run in runs]
        end = warmup + samples
        return LatencySamples([run.rtt_ms[warmup:end] for run in runs], sum(r.sent for r in runs),
                              sum(r.lost for r in runs), interval_ms, warmup,
                              times_ns=[run.spans_ns[warmup:end] for run in runs],
                              waits=runqueue.Waits.of(watched))

    def _once(self, src: "Endpoint", dst: "Endpoint", samples: int, interval_ms: float) -> "LatencySamples":
        server, port = self.serve(dst)
        sides = self.watched(src, dst, port)
        try:
            duration = samples * interval_ms / 1000
            with runqueue.Watch(sides or []) as watch:
                result = src.run(self.command(src, dst, port, interval_ms, duration), timeout=duration + 30)
            if not result.ok:
                raise ProbeError(f"irtt {src.name} -> {dst.name} failed (exit {result.rc}): "
                                 f"{(result.stderr or result.stdout).strip()[-500:]}\nserver log: {server.log_tail(5)}")
        finally:
            server.stop()
        parsed = self.parse(result.stdout, interval_ms, f"irtt {src.name} -> {dst.name}")
        parsed.waits = watch.waits if sides else None
        return parsed

    def watched(self, src: "Endpoint", dst: "Endpoint", port: int) -> list[runqueue.Side] | None:
        """The client and the server of a run on `port`, where both run on this machine (an
        endpoint without `netns_inode`, an out-of-tree kind's from before it, is not watched)."""
        at = tuple(getattr(end, "netns_inode", lambda: None)() for end in (src, dst))
        if None in at:
            return None
        return [runqueue.Side("client", "irtt", host_port(dst.address, port), at[0]),
                runqueue.Side("server", "irtt", host_port(dst.address, port), at[1])]

    def parse(self, output: str, interval_ms: float, what: str = "irtt") -> "LatencySamples":
        return parse_irtt(output, interval_ms, what)


@dataclass(frozen=True)
class Iperf3(Probe):
    """A TCP or UDP flow (iperf3), rated per interval at the receiver."""

    def command(self, src: "Endpoint", dst: "Endpoint", port: int, seconds: float, omit: float,
                udp_rate_mbit: float | None = None, flows: int = 1, reverse: bool = False,
                datagram: int = UDP_DATAGRAM) -> list[str]:
        """The client: `flows` parallel flows, from dst to src where `reverse`; UDP datagrams of
        `datagram` bytes of payload."""
        command = ["iperf3", "-c", dst.address, "-B", src.address, "-p", str(port), "-J", "--get-server-output",
                   "-t", f"{seconds:g}", "-O", f"{omit:g}", "-i", f"{INTERVAL_S:g}",
                   *(["-P", str(flows)] if flows > 1 else []), *(["-R"] if reverse else [])]
        if self.kind == "udp":
            # A receive buffer the size of the kernel's cap: at hundreds of Mbit/s the
            # default one overflows whenever iperf3 is not scheduled for a few ms.
            command += ["-u", "-b", f"{udp_rate_mbit}M", "-l", str(datagram), "-w", str(UDP_BUFFER)]
        return command

    def server(self, dst: "Endpoint", port: int) -> list[str]:
        return ["iperf3", "-s", "-J", "-1", "-i", str(INTERVAL_S), "-B", dst.address, "-p", str(port)]

    def parse(self, output: str, udp_rate_mbit: float | None = None, rc: int = 0, stderr: str = "",
              what: str = "iperf3") -> "ThroughputSamples":
        return parse_iperf3(output, self.kind, udp_rate_mbit, rc, stderr, what)

    def serve(self, dst: "Endpoint") -> tuple[procs.Daemon, int]:
        """An iperf3 server at dst for one test, already listening: its daemon and its port."""
        port = next(_ports)
        return self._listening(dst, "iperf3", self.server(dst, port), port, "tcp"), port

    def run(self, src: "Endpoint", dst: "Endpoint", duration: float, udp_rate_mbit: float | None = None,
            rounds: int = 1, omit: float = 1.0, receiver_cpus: frozenset[int] = frozenset(),
            datagram: int = UDP_DATAGRAM) -> "ThroughputSamples":
        """`rounds` flows from src to dst, each for `duration` seconds after `omit` seconds of
        warm-up, pooled: intervals together, totals averaged. A UDP receiver running on this
        machine is kept to `receiver_cpus` (if any); the flows' own threads get their weight
        (runqueue.Boost)."""
        return pooled([self._once(src, dst, duration, udp_rate_mbit, omit, receiver_cpus, datagram)
                       for _ in range(rounds)])

    def _once(self, src: "Endpoint", dst: "Endpoint", duration: float, udp_rate_mbit: float | None, omit: float,
              receiver_cpus: frozenset[int], datagram: int = UDP_DATAGRAM) -> "ThroughputSamples":
        server, port = self.serve(dst)
        held, udp = None, self.kind == "udp"
        try:
            if udp and receiver_cpus and (inode := dst.netns_inode()) is not None:
                held = bool(runqueue.hold(runqueue.Side("server", "iperf3", f"-p\0{port}\0", inode), receiver_cpus))
            before = udp_counters(dst) if udp else None
            at = tuple(getattr(end, "netns_inode", lambda: None)() for end in (src, dst))
            sides = [runqueue.Side(name, "iperf3", f"-p\0{port}\0", inode)
                     for name, inode in zip(("client", "server"), at) if inode is not None]
            launched = time.time_ns()
            with runqueue.Boost(sides) as boost:
                result = src.run(self.command(src, dst, port, duration, omit, udp_rate_mbit, datagram=datagram),
                                 timeout=duration + omit + 30)
            exited = time.time_ns()
            after = udp_counters(dst) if before else None
        finally:
            server.stop()
        samples = self.parse(result.stdout, udp_rate_mbit, result.rc, result.stderr,
                             f"iperf3 {self.kind} {src.name} -> {dst.name}")
        samples.place(launched, exited, duration, omit)
        samples.extra["threads_niced"] = len(boost.boosted)
        if udp:
            samples.extra["receiver_socket_dropped"] = (
                after["RcvbufErrors"] - before["RcvbufErrors"] if before and after else None)
            samples.extra["receiver_cpus"] = sorted(receiver_cpus) if held else None
        return samples


SHAPES = ("round_trip", "interval", "stream")
LATENCY = Irtt("latency", {"irtt": "irtt"}, both_ways=True, sample="round trips",
               excluded_setting="max_excluded_share_latency", shape="round_trip", version=("irtt", "version"))
TCP = Iperf3("tcp", {"iperf3": "iperf3"}, both_ways=True, sample="intervals",
             excluded_setting="max_excluded_share_throughput", congestion_controlled=True,
             version=("iperf3", "--version"))
# UDP's rate is what arrives: the way back carries nothing the statistic is made of.
UDP = Iperf3("udp", {"iperf3": "iperf3"}, both_ways=False, sample="intervals",
             excluded_setting="max_excluded_share_udp", counts_loss=True, version=("iperf3", "--version"),
             timing_matters=False)
# Each client's whole-run jitter from one RTSP server's RTP packets: judged on the stream's own
# direction as a whole (streaming.py runs it).
STREAM = Probe("stream", {"gst-launch-1.0": "gstreamer1.0-tools"}, both_ways=False, sample="packets",
               shape="stream", checked_first=False)
# The path MTU search and its bulk transfer (pmtu.py): judged on the path as a whole, both ways
# (an ICMP error and TCP's acknowledgements come back).
PMTU = Probe("pmtu", {"ping": "iputils-ping"}, both_ways=True, sample="packet sizes tried", shape="stream")
PROBES: dict[str, Probe] = {p.kind: p for p in (LATENCY, TCP, UDP, STREAM, PMTU)}


def next_port() -> int:
    """A port no other probe of this run has used."""
    return next(_ports)


def probe_of(kind: str) -> Probe:
    """The probe behind a measurement's kind ("latency", "tcp", "udp", "stream-udp-25", ...)."""
    return PROBES[kind.split("-")[0]]


def traffic_tools() -> dict[str, str]:
    """Every tool the probes checked before any traffic need (the stream's are checked with
    its RTSP server)."""
    return {tool: package for probe in PROBES.values() if probe.checked_first for tool, package in probe.tools.items()}


def packages() -> list[str]:
    """The Debian packages every probe's tools come in on this machine (the Makefile installs them)."""
    return sorted({package for probe in PROBES.values() for package in probe.tools.values()})


def wait_listening(endpoint: Endpoint, port: int, proto: str, timeout: float = 5.0) -> None:
    flag = "-lnt" if proto == "tcp" else "-lnu"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = endpoint.run(["ss", "-H", flag, f"sport = :{port}"], timeout=5)
        if out.ok and out.stdout.strip():
            return
        time.sleep(0.02)
    raise ProbeError(f"server on {endpoint.name} port {port}/{proto} did not start listening within {timeout:g} s")


def udp_counters(endpoint: Endpoint) -> dict[str, int] | None:
    """The UDP counters of the endpoint's namespace (None: unreadable). `RcvbufErrors`: datagrams
    a socket there dropped, its buffer full; each is a gap iperf3 counts as lost on the path."""
    result = endpoint.run(["cat", "/proc/net/snmp"], timeout=10)
    return parse_snmp(result.stdout).get("Udp") if result.ok else None


def versions() -> dict[str, str]:
    """Versions of the probes' tools, for the run's metadata."""
    out = {}
    for probe in PROBES.values():
        tool = probe.version[0] if probe.version else None
        if tool and tool not in out:
            result = procs.run(list(probe.version), timeout=10)
            out[tool] = (result.stdout or result.stderr).strip().splitlines()[0] if result.ok else "missing"
    return out
