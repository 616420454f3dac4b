"""Latency under load, as flent's RRUL test measures it, through an overlay: a request/response
probe (irtt, UDP) and ICMP echo (ping) run on a circuit for a few idle seconds, then beside
TCP flows in both directions for a set time. The idle and loaded round trips are told apart by
their own send times; the flows' goodput comes from the receiving end of each.

The emulated link's buffer sets how much latency a loaded link can add (a packet waits at
most that long behind the rate limit), so it is part of the result: the experiment can run a
circuit at buffers besides the links' own, and records which.
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
from dataclasses import dataclass, field

from .. import procs
from . import probes
from .probes import Endpoint, LatencySamples, ProbeError, ThroughputSamples

IDLE_S = 5.0  # probing before the flows start (at most as long as the load): the idle RTT
SETTLE_S = 1.0  # the probes' first second (connection set-up) counts as neither idle nor loaded
WARMUP_S = 2.0  # the flows' slow start, left out of goodput and of the loaded RTT
TAIL_S = 1.0  # probing on after the flows end
INTERVAL_MS = 10.0  # both probes: one request every 10 ms
DIRECTIONS = ("up", "down")  # up: from the circuit's source to its destination


@dataclass
class Flows:
    """The TCP flows of one direction, from one iperf3 run with -P: each flow's goodput over
    the loaded time (Mbit/s, receiver side) and the sum per interval."""

    direction: str
    per_flow_mbit: list[float]
    sums: ThroughputSamples
    retransmits: int | None

    @property
    def total_mbit(self) -> float:
        return sum(self.per_flow_mbit)


@dataclass
class LoadRun:
    idle: LatencySamples
    loaded: LatencySamples
    icmp_idle_ms: list[float]
    icmp_loaded_ms: list[float]
    flows: dict[str, Flows]
    loaded_ns: tuple[int, int]  # the window judged as loaded: after warm-up, until the flows end
    started_ns: int
    timeline: dict = field(default_factory=dict)  # every probe reply and goodput interval, for the plot
    lost: dict[str, int] = field(default_factory=dict)  # irtt requests with no reply, idle and loaded
    tool: str = "irtt, ping -D, iperf3 -P"

    @property
    def all_latency(self) -> LatencySamples:
        """Idle and loaded round trips together, each with its times: what the emulator's
        accounting is matched against."""
        rtts = self.idle.rtt_ms + self.loaded.rtt_ms
        spans = self.idle.spans_ns + self.loaded.spans_ns
        return LatencySamples([rtts], self.idle.sent + self.loaded.sent, self.idle.lost + self.loaded.lost,
                              INTERVAL_MS, times_ns=[spans])


def idle_seconds(seconds: float) -> float:
    """How long the probes run idle before the flows: IDLE_S, or as long as a shorter load
    (beyond the settling second)."""
    return min(IDLE_S, max(seconds, SETTLE_S + 1))


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when every flow gets the same, 1/n when one gets it all."""
    if not values or not any(values):
        return float("nan")
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def parse_flows(output: str, direction: str, what: str = "iperf3") -> tuple[list[float], list[dict], int | None]:
    """Per-flow goodput (Mbit/s, the receiver's, omitted warm-up left out) and the receiver's
    intervals of the sum ({"start", "end", "mbit"} in s from the flows' start) from iperf3's
    JSON of a -P run (`-J --get-server-output`; `-R` for the down direction)."""
    try:
        data = json.loads(output)
        streams = data["end"]["streams"]
    except (ValueError, KeyError, TypeError) as e:
        raise ProbeError(f"{what}: unreadable output ({type(e).__name__}: {e}): {output[:200]!r}") from None
    if "error" in data:
        raise ProbeError(f"{what}: {data['error']}")
    per_flow = [s["receiver"]["bits_per_second"] / 1e6 for s in streams]
    received = data["intervals"] if direction == "down" else \
        (data.get("server_output_json") or {}).get("intervals") or data["intervals"]
    intervals = [{"start": i["sum"]["start"], "end": i["sum"]["end"], "mbit": i["sum"]["bits_per_second"] / 1e6}
                 for i in received if not i["sum"].get("omitted") and i["sum"]["seconds"] >= 0.8 * probes.INTERVAL_S]
    retransmits = data["end"].get("sum_sent", {}).get("retransmits")
    return per_flow, intervals, retransmits


PING_LINE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*time=([\d.]+) ms")


def parse_ping(output: str) -> list[tuple[int, float]]:
    """(send time in wall ns, RTT in ms) of each echo reply in `ping -D` output; ping stamps a
    line when the reply came, so the request left one RTT before."""
    out = []
    for line in output.splitlines():
        m = PING_LINE.match(line)
        if m:
            rtt = float(m.group(2))
            out.append((int(float(m.group(1)) * 1e9 - rtt * 1e6), rtt))
    return out


def split(samples: LatencySamples, idle: tuple[int, int], loaded: tuple[int, int]) -> tuple[LatencySamples,
                                                                                             LatencySamples]:
    """The round trips sent in the idle window and in the loaded window, with their times."""
    def within(window: tuple[int, int]) -> LatencySamples:
        kept = [(r, sp) for r, sp in zip(samples.rtt_ms, samples.spans_ns) if window[0] <= sp[0] < window[1]]
        return LatencySamples([[r for r, _ in kept]], len(kept), 0, samples.interval_ms, times_ns=[[sp for _, sp in kept]])

    return within(idle), within(loaded)


def run(src: Endpoint, dst: Endpoint, seconds: float, flows: int,
        progress=lambda message: None) -> LoadRun:
    """Idle probing, then `flows` TCP flows each way for `seconds` after WARMUP_S, probes
    throughout; every server ended, every client waited for, whatever fails."""
    idle_s = idle_seconds(seconds)
    total = idle_s + WARMUP_S + seconds + TAIL_S
    irtt, irtt_port = probes.LATENCY.serve(dst)
    servers: dict[str, tuple[procs.Daemon, int]] = {}
    results: dict[str, object] = {}
    errors: list[str] = []

    def keep(name: str, work) -> threading.Thread:
        def target() -> None:
            try:
                results[name] = (work(), time.time_ns())  # the output, and when the client exited
            except Exception as e:  # noqa: BLE001  (said below, after every thread ended)
                errors.append(f"{name}: {e}")
        thread = threading.Thread(target=target, name=f"load-{name}", daemon=True)
        thread.start()
        return thread

    try:
        for direction in DIRECTIONS:
            servers[direction] = probes.TCP.serve(dst)
        count = int(total * 1000 / INTERVAL_MS)
        started = time.time_ns()
        probing = [
            keep("irtt", lambda: src.run(probes.LATENCY.command(src, dst, irtt_port, INTERVAL_MS, total),
                                         timeout=total + 30)),
            keep("ping", lambda: src.run(["ping", "-D", "-n", "-i", f"{INTERVAL_MS / 1000:g}", "-c", str(count),
                                          "-W", "2", dst.address], timeout=total + 30)),
        ]
        time.sleep(idle_s)
        launched = time.time_ns()
        progress(f"load: {flows} TCP flow(s) each way for {WARMUP_S:g} + {seconds:g} s")
        loading = [keep(direction, lambda d=direction: src.run(
            probes.TCP.command(src, dst, servers[d][1], seconds, WARMUP_S, flows=flows, reverse=d == "down"),
            timeout=seconds + WARMUP_S + 30)) for direction in DIRECTIONS]
        for thread in loading + probing:
            thread.join()
    finally:
        irtt.stop()
        for server, _ in servers.values():
            server.stop()
    if errors:
        raise ProbeError("latency under load: " + "; ".join(errors))
    for name, (result, _) in results.items():
        if not result.ok and not (name == "ping" and result.rc == 1):  # ping: 1 when some echo had no reply
            raise ProbeError(f"{name} {src.name} -> {dst.name} failed (exit {result.rc}): "
                             f"{(result.stderr or result.stdout).strip()[-400:]}")
    return assemble(results["irtt"][0].stdout, results["ping"][0].stdout,
                    {d: results[d][0].stdout for d in DIRECTIONS}, started, launched,
                    {d: results[d][1] for d in DIRECTIONS}, seconds, f"{src.name} -> {dst.name}")


def assemble(irtt_json: str, ping_output: str, iperf_json: dict[str, str], started: int, launched: int,
             exited: dict[str, int], seconds: float, what: str = "") -> LoadRun:
    """A LoadRun from the tools' outputs and the wall times (ns) the probes started, the
    flows were launched and each direction's client exited."""
    samples = probes.LATENCY.parse(irtt_json, INTERVAL_MS, f"irtt {what}")
    idle_window = (started + int(SETTLE_S * 1e9), launched)
    loaded_window = (launched + int((WARMUP_S + 0.5) * 1e9), launched + int((WARMUP_S + seconds) * 1e9))
    idle, loaded = split(samples, idle_window, loaded_window)
    data = json.loads(irtt_json)
    sent = [_send_ns(rt) for rt in data["round_trips"]]
    lost = {name: sum(1 for rt, t in zip(data["round_trips"], sent)
                      if rt.get("lost") != "false" and window[0] <= t < window[1])
            for name, window in (("idle", idle_window), ("loaded", loaded_window))}
    idle.lost, loaded.lost = lost["idle"], lost["loaded"]
    idle.sent, loaded.sent = idle.sent + idle.lost, loaded.sent + loaded.lost
    echoes = parse_ping(ping_output)
    flows = {}
    for direction in DIRECTIONS:
        per_flow, intervals, retransmits = parse_flows(iperf_json[direction], direction, f"iperf3 {direction} {what}")
        sums = ThroughputSamples("tcp", [i["mbit"] for i in intervals], sum(per_flow), probes.INTERVAL_S,
                                 retransmits=retransmits, offsets_s=[(i["start"], i["end"]) for i in intervals])
        sums.place(launched, exited[direction], seconds, WARMUP_S)
        flows[direction] = Flows(direction, per_flow, sums, retransmits)
    timeline = {
        "t0_ns": started, "launched_s": (launched - started) / 1e9,
        "loaded_s": [(loaded_window[0] - started) / 1e9, (loaded_window[1] - started) / 1e9],
        "rtt": [[round((sp[0] - started) / 1e9, 3), round(r, 3)] for r, sp in zip(samples.rtt_ms, samples.spans_ns)],
        "icmp": [[round((t - started) / 1e9, 3), round(r, 3)] for t, r in echoes],
        "goodput": {d: [[round((a - started) / 1e9, 3), round(m, 1)] for (a, _), m in zip(f.sums.spans_ns, f.sums.mbit)]
                    for d, f in flows.items()},
    }
    return LoadRun(idle, loaded,
                   [r for t, r in echoes if idle_window[0] <= t < idle_window[1]],
                   [r for t, r in echoes if loaded_window[0] <= t < loaded_window[1]],
                   flows, loaded_window, started, timeline, lost)


def _send_ns(trip: dict) -> int:
    return int(((trip.get("timestamps") or {}).get("client") or {}).get("send", {}).get("wall", 0))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
