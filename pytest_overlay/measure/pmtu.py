"""Path MTU through an overlay, as the issues people file against overlays meet it: the
largest packet the endpoints carry end to end with DF set, whether the sender is told the
limit, and what a bulk TCP transfer does on the path: full speed, slowed, or a black hole
(the handshake completes and full-size segments never arrive).

Every step is bounded in time, so a black hole is a result, not a hang. The transfer runs
first: the pings that follow teach the sender the path's MTU, which would spare the transfer
the very discovery it tests.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from ..emulation import emulator as emu
from ..results import Record
from ..testbeds.contract import Endpoint
from . import probes
from .measured import Measured
from .path import OverlayPath, counts_only, makes
from .samples import ProbeError
from .streaming import SYSTEM_PYTHON

MIN_PACKET = 576  # every IPv4 host takes it (IPv6's 1280 too); below, the search does not go
# ping -s counts the ICMP payload: the packet is its IP and ICMP headers more.
HEADERS = {4: 20 + 8, 6: 40 + 8}
BULK_S = 4.0  # the bulk transfer: long enough for slow start to reach a 1 Gbit/s, 30 ms path
STALL_MS = 1000.0  # a first acknowledged segment later than this is a path that stalled, then found its way
FULL_SPEED_SHARE = 0.7  # of the path's rate: "full speed"
_TOLD = re.compile(r"mtu ?[=:] ?(\d+)")  # "(mtu = 1400)", "mtu=1400", and IPv6's local "mtu: 1400"


@dataclass
class PingOutcome:
    size: int  # the IP packet's length
    answered: bool
    told_mtu: int | None  # "Frag needed ... (mtu = N)" or "message too long, mtu=N"


def parse_ping(output: str, size: int) -> PingOutcome:
    """iputils ping's output for one size with DF set (-M do)."""
    told, received = _TOLD.search(output), re.search(r"(\d+) received", output)
    return PingOutcome(size, bool(received) and int(received[1]) > 0, int(told[1]) if told else None)


@dataclass
class PathMTU:
    """What one circuit's path did with big packets, in the words of the verdict."""

    interface_mtu: int  # the sender's interface toward dst: where the search starts
    largest: int  # the largest IP packet that crossed with DF set (0: not even MIN_PACKET)
    # carried (a full-size packet crossed with DF set: it fits, or the overlay fragments or clamps
    # it), told (the sender learned the limit) or silent (it vanished and nothing said so)
    discovery: str
    told_mtu: int | None
    tcp: str  # full speed, slowed, black hole, or no connection
    tcp_mbit: float
    tcp_detail: dict  # the sender's TCP_INFO: bytes acknowledged, retransmissions, first ack, its MSS and PMTU
    pings: list[PingOutcome] = field(default_factory=list)
    tool: str = "ping (iputils) -M do, bulk.py (TCP_INFO)"

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "tool"}


def tcp_verdict(sent: dict, rate_mbit: float | None) -> tuple[str, float]:
    """The bulk transfer's outcome and its rate (Mbit/s of acknowledged bytes over the run)."""
    if not sent.get("connected"):
        return "no connection", 0.0
    mbit = sent["bytes_acked"] * 8 / max(sent["seconds"], 1e-3) / 1e6
    if sent["bytes_acked"] <= 2 * max(1, sent.get("snd_mss", 0)):
        return "black hole", mbit
    stalled = (sent.get("first_ack_ms") or 0.0) > STALL_MS
    if stalled or (rate_mbit and mbit < FULL_SPEED_SHARE * rate_mbit):
        return "slowed", mbit
    return "full speed", mbit


def interface_mtu(src: Endpoint, dst: Endpoint) -> int:
    """The MTU of src's interface toward dst (its route's own, where the route sets one)."""
    route = src.run(["ip", "-o", "route", "get", dst.address], timeout=10)
    dev = re.search(r"\bdev (\S+)", route.stdout)
    if not route.ok or not dev:
        raise ProbeError(f"no route from {src.name} to {dst.address}: {(route.stderr or route.stdout).strip()}")
    link = src.run(["ip", "-o", "link", "show", "dev", dev[1]], timeout=10)
    mtu = re.search(r"\bmtu (\d+)", link.stdout)
    if not link.ok or not mtu:
        raise ProbeError(f"cannot read {dev[1]}'s MTU on {src.name}: {(link.stderr or link.stdout).strip()}")
    return int(mtu[1])


def ping(src: Endpoint, dst: Endpoint, size: int) -> PingOutcome:
    """Two packets of `size` bytes with DF set, each given 1 s to come back."""
    headers = HEADERS[6 if ":" in dst.address else 4]
    result = src.run(["ping", "-n", "-M", "do", "-s", str(size - headers), "-c", "2", "-i", "0.2",
                      "-W", "1", dst.address], timeout=10)
    return parse_ping(result.stdout + result.stderr, size)


def bulk(src: Endpoint, dst: Endpoint, seconds: float = BULK_S) -> dict:
    """A bounded bulk transfer from src to dst; the sender's account of it."""
    port = probes.next_port()
    sink = dst.start(f"bulk-sink-{port}", [SYSTEM_PYTHON, dst.agent("bulk.py"), "sink", dst.address,
                                           str(port), f"{seconds:g}"], ready="ready")
    try:
        sent = src.run([SYSTEM_PYTHON, src.agent("bulk.py"), "send", dst.address, str(port), f"{seconds:g}"],
                       timeout=seconds + 15)
    finally:
        sink.stop()
    if not sent.ok:
        raise ProbeError(f"bulk.py {src.name} -> {dst.name} failed (exit {sent.rc}): "
                         f"{(sent.stderr or sent.stdout).strip()[-400:]}")
    return json.loads(sent.stdout.strip().splitlines()[-1])


def measure(src: Endpoint, dst: Endpoint, rate_mbit: float | None, bulk_s: float = BULK_S) -> PathMTU:
    """The transfer (`bulk_s` long), then the pings: one at the interface's MTU, then a
    bisection below it."""
    sent = bulk(src, dst, bulk_s)
    verdict, mbit = tcp_verdict(sent, rate_mbit)
    top = interface_mtu(src, dst)
    first = ping(src, dst, top)
    pings = [first]
    discovery = "carried" if first.answered else "told" if first.told_mtu else "silent"
    largest = top if first.answered else 0
    if not first.answered:
        low, high = MIN_PACKET - 1, top  # low: known to cross (or below the floor); high: known not to
        if first.told_mtu and MIN_PACKET <= first.told_mtu < top:
            told = ping(src, dst, first.told_mtu)
            pings.append(told)
            low, high = (first.told_mtu, top) if told.answered else (low, first.told_mtu)
        while high - low > 1:
            size = (low + high) // 2
            outcome = ping(src, dst, size)
            pings.append(outcome)
            low, high = (size, high) if outcome.answered else (low, size)
        largest = low if low >= MIN_PACKET else 0
    return PathMTU(top, largest, discovery, first.told_mtu, verdict, round(mbit, 3), sent, pings)


@makes("path_mtu")
def path_mtu(path: OverlayPath) -> Record:
    """The circuit's path MTU record: the largest packet (bytes) and, in `extra.pmtu`, how the
    sender found it and what the bulk transfer did. INVALID where the emulator dropped or
    released late on the path meanwhile: a drop of its own could pass for a black hole."""
    b = path._bracketed("pmtu", lambda: measure(path.src, path.dst, path.expected["rate_mbit"]))
    there, back = path.hops()
    on_path = {hop.link for hop in there + back} | {"_enobufs"}
    faults = emu.faults({name: counts for name, counts in b.accrued.items() if name in on_path}) + b.faults
    counts_only(b.accrued)
    found: PathMTU = b.samples
    measured = Measured(found, faults, b.accrued, b.wire, machine=b.window, cpu_used=b.cpu_used,
                        noise_used=b.noise_used)
    return path.record("path_mtu", [float(found.largest)], measured, {"pmtu": found.to_json()}, ci95=0.0,
                       ci95_unit="one bisection, exact to the byte")
