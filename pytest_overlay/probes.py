"""Measurements between two endpoints: request/response latency and jitter (irtt), TCP and
UDP throughput (iperf3). Each returns raw samples; statistics are the results layer's job.

An endpoint is anything that can run a command and start a server where the traffic ends:
a site namespace for the underlay, a container for an overlay.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from dataclasses import dataclass, field
from typing import Protocol

from . import procs

TOOLS = {"irtt": "irtt", "iperf3": "iperf3", "nsenter": "util-linux", "tc": "iproute2",
         "iptables-restore": "iptables", "sysctl": "procps"}
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

    def start(self, name: str, command: list[str], ready: str | None = None) -> procs.Daemon: ...


def missing_tools() -> list[str]:
    """Binaries the probes need that are not installed, with the Debian package to install."""
    return [f"{tool} (apt-get install {package})" for tool, package in TOOLS.items() if not shutil.which(tool)]


class ProbeError(RuntimeError):
    pass


@dataclass
class LatencySamples:
    """Round-trip times of one request/response run, in milliseconds (lost ones omitted)."""

    rtt_ms: list[float]
    sent: int
    lost: int
    interval_ms: float
    tool: str = "irtt"

    @property
    def ipdv_ms(self) -> list[float]:
        """Absolute difference between consecutive round trips (RFC 3393 IPDV)."""
        return [abs(b - a) for a, b in zip(self.rtt_ms, self.rtt_ms[1:])]


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
    extra: dict = field(default_factory=dict)
    tool: str = "iperf3"


def _wait_listening(endpoint: Endpoint, port: int, proto: str, timeout: float = 5.0) -> None:
    flag = "-lnt" if proto == "tcp" else "-lnu"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = endpoint.run(["ss", "-H", flag, f"sport = :{port}"], timeout=5)
        if out.ok and out.stdout.strip():
            return
        time.sleep(0.02)
    raise ProbeError(f"server on {endpoint.name} port {port}/{proto} did not start listening within {timeout:g} s")


def latency(src: Endpoint, dst: Endpoint, samples: int, interval_ms: float = 10.0) -> LatencySamples:
    """`samples` UDP request/response round trips from src to dst, one every interval_ms."""
    port = next(_ports)
    server = dst.start(f"irtt-{port}", ["irtt", "server", "-b", f"{dst.address}:{port}", "-i", "0", "--tstamp=none"])
    try:
        _wait_listening(dst, port, "udp")
        duration = samples * interval_ms / 1000
        result = src.run(
            ["irtt", "client", "-Q", "-o", "-", "-i", f"{interval_ms}ms", "-d", f"{duration}s",
             "--tstamp=none", f"--local={src.address}:0", f"{dst.address}:{port}"],
            timeout=duration + 30,
        )
        if not result.ok:
            raise ProbeError(f"irtt {src.name} -> {dst.name} failed (exit {result.rc}): "
                             f"{(result.stderr or result.stdout).strip()[-500:]}\nserver log: {server.log_tail(5)}")
    finally:
        server.stop()
    data = json.loads(result.stdout)
    rtts = [rt["delay"]["rtt"] / 1e6 for rt in data["round_trips"] if rt.get("lost") == "false" and "rtt" in rt.get("delay", {})]
    sent = data["stats"]["packets_sent"]
    if not rtts:
        raise ProbeError(f"irtt {src.name} -> {dst.name}: none of {sent} requests came back")
    return LatencySamples(rtts, sent, sent - len(rtts), interval_ms)


def throughput(src: Endpoint, dst: Endpoint, protocol: str, duration: float,
               udp_rate_mbit: float | None = None, omit: float = 1.0) -> ThroughputSamples:
    """iperf3 from src to dst for `duration` seconds after `omit` seconds of warm-up."""
    port = next(_ports)
    server = dst.start(f"iperf3-{port}", ["iperf3", "-s", "-J", "-1", "-i", str(INTERVAL_S), "-B", dst.address, "-p", str(port)])
    try:
        _wait_listening(dst, port, "tcp")
        command = ["iperf3", "-c", dst.address, "-B", src.address, "-p", str(port), "-J", "--get-server-output",
                   "-t", str(duration), "-O", str(omit), "-i", str(INTERVAL_S)]
        if protocol == "udp":
            # A receive buffer the size of the kernel's cap: at hundreds of Mbit/s the
            # default one overflows whenever iperf3 is not scheduled for a few ms.
            command += ["-u", "-b", f"{udp_rate_mbit}M", "-l", "1400", "-w", str(UDP_BUFFER)]
        result = src.run(command, timeout=duration + omit + 30)
    finally:
        server.stop()
    try:
        data = json.loads(result.stdout)
    except ValueError:
        data = {}
    if not result.ok or "error" in data:
        raise ProbeError(f"iperf3 {protocol} {src.name} -> {dst.name} failed (exit {result.rc}): "
                         f"{data.get('error') or (result.stderr or result.stdout).strip()[-500:]}")
    # The receiver's intervals: what arrived, not what was sent. They lag the sender's by
    # the path's delay, which leaves a stub at the end; a stub's rate says nothing.
    received = data.get("server_output_json", {}).get("intervals") or data["intervals"]
    intervals = [i["sum"] for i in received
                 if not i["sum"].get("omitted") and i["sum"]["seconds"] >= 0.8 * INTERVAL_S]
    end = data["end"]
    if protocol == "tcp":
        return ThroughputSamples(
            "tcp", [i["bits_per_second"] / 1e6 for i in intervals],
            end["sum_received"]["bits_per_second"] / 1e6, INTERVAL_S,
            retransmits=end["sum_sent"].get("retransmits"),
        )
    total = end.get("sum_received", end["sum"])
    return ThroughputSamples(
        "udp", [i["bits_per_second"] / 1e6 for i in intervals],
        total["bits_per_second"] / 1e6, INTERVAL_S,
        lost_pct=total.get("lost_percent", 0.0), jitter_ms=total.get("jitter_ms"),
        offered_mbit=udp_rate_mbit,
        extra={"packets": total.get("packets"), "lost_packets": total.get("lost_packets"), "socket_buffer": UDP_BUFFER},
    )


def versions() -> dict[str, str]:
    """Versions of the measuring tools, for the run's metadata."""
    out = {}
    for tool, command in (("irtt", ["irtt", "version"]), ("iperf3", ["iperf3", "--version"])):
        result = procs.run(command, timeout=10)
        out[tool] = (result.stdout or result.stderr).strip().splitlines()[0] if result.ok else "missing"
    return out
