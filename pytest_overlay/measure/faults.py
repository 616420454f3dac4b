"""WAN faults through an overlay: a scenario applied by the link emulator at exact moments
while probes cross the overlay at 100 round trips a second, on the circuit the fault affects
and on one it leaves alone; outage, detour, loss and recovery are read off their timelines.

Times are wall-clock ns throughout: the emulator says when each step took effect, irtt when
each request left and each reply came back, so the two line up without guessing.
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
from dataclasses import dataclass, field

from ..inputs.model import Fault
from . import probes
from .samples import ThroughputSamples

INTERVAL_MS = 10.0  # one round trip every 10 ms: outage and recovery resolve to 10 ms
BEFORE_S = 5.0  # probing before the fault: the RTT's level
TCP_LEAD_S = 4.0  # a loss burst's TCP transfer starts this long before the fault (1 s of it warm-up) and ends at the heal
SETTLE_S = 3.0  # probing after recovery is seen
LEVEL_MS = 1.0  # recovered: RTT back within this of its level before the fault ...
LEVEL_RUN = 20  # ... for this many replies in a row (200 ms)
BOUND_S = 120.0  # a recovery not seen this long after the heal is censored
# On real hosts a fault's step goes by itself this long after the fault's planned end, should the
# heal never come (the controller crashed without closing its sessions).
SELF_HEAL_MARGIN_S = 30.0
POLL_S = 1.0  # how often the control plane's state is read
LOG_LINES = 40  # per daemon, the newest lines it logged during the scenario


@dataclass(frozen=True)
class Trip:
    """One probe round trip; `rtt_ms` None when it was lost."""

    seq: int
    send_ns: int
    receive_ns: int | None
    rtt_ms: float | None


def parse_trips(output: str, interval_ms: float = INTERVAL_MS, what: str = "irtt") -> list[Trip]:
    """Every round trip of irtt's JSON, lost ones included (their send time, where irtt gives
    none, from the schedule: the first request's time plus seq intervals)."""
    try:
        data = json.loads(output)
        trips = data["round_trips"]
    except (ValueError, KeyError, TypeError) as e:
        raise probes.ProbeError(f"{what}: unreadable output ({type(e).__name__}: {e}): {output[:200]!r}") from None
    out, origin = [], None
    for rt in trips:
        client = (rt.get("timestamps") or {}).get("client") or {}
        sent = int((client.get("send") or {}).get("wall", 0))
        seq = int(rt["seqno"])
        if sent and origin is None:
            origin = sent - int(seq * interval_ms * 1e6)
        if not sent and origin is not None:
            sent = origin + int(seq * interval_ms * 1e6)
        came_back = rt.get("lost") == "false" and "rtt" in (rt.get("delay") or {})
        out.append(Trip(seq, sent, int((client.get("receive") or {}).get("wall", 0)) if came_back else None,
                        rt["delay"]["rtt"] / 1e6 if came_back else None))
    return [t for t in out if t.send_ns]


def in_time(trips: list[Trip]) -> list[Trip]:
    """Without the requests still in flight when the probe was stopped: lost ones sent less
    than twice the largest RTT seen (and 200 ms) before the last request."""
    rtts = [t.rtt_ms for t in trips if t.rtt_ms is not None]
    if not trips or not rtts:
        return trips
    cutoff = trips[-1].send_ns - int((2 * max(rtts) + 200) * 1e6)
    end = len(trips)
    while end and trips[end - 1].rtt_ms is None and trips[end - 1].send_ns > cutoff:
        end -= 1
    return trips[:end]


@dataclass
class Step:
    """One step of a scenario as it happened: "fault" or "heal", planned and applied."""

    what: str
    planned_s: float
    at_ns: int


@dataclass
class Outcome:
    """What one probe's timeline says about a fault."""

    sent: int
    replies: int
    level_ms: float | None  # median RTT before the fault
    level_n: int
    outage_ms: float  # the longest time without a reply, less one probe interval
    outage_ns: tuple[int, int]  # the last reply before it was sent, the first after it
    lost_during: int  # requests sent while the fault was on that never came back
    sent_during: int
    during_ms: list[float]  # RTTs of round trips begun while the fault was on and answered in their time
    held_seqs: frozenset[int]  # requests sent while the fault was on, held by the overlay and answered after a heal
    held_max_ms: float | None  # the longest of those round trips
    first_reply_ms: float | None  # from the last heal to the first reply after it; None: censored
    back_to_level_ms: float | None  # from the last heal to RTT back within LEVEL_MS; None: censored
    bound_s: float
    observed_after_s: float  # how long the probe ran after the last heal

    @property
    def held(self) -> int:
        return len(self.held_seqs)

    def to_json(self) -> dict:
        return ({k: v for k, v in vars(self).items() if k not in ("during_ms", "held_seqs")}
                | {"during_n": len(self.during_ms), "held": self.held})


def fault_windows(steps: list[Step]) -> list[tuple[int, int]]:
    """[fault on, healed] pairs in wall ns."""
    ons = [s.at_ns for s in steps if s.what == "fault"]
    offs = [s.at_ns for s in steps if s.what == "heal"]
    return list(zip(ons, offs))


def analyse(trips: list[Trip], steps: list[Step], interval_ms: float = INTERVAL_MS,
            bound_s: float = BOUND_S, calm_until_ns: int | None = None) -> Outcome:
    """Outage, loss and RTT during the fault, and recovery after the last heal, from one
    probe's round trips and the steps the emulator applied. The RTT's level comes from before
    the fault (and before `calm_until_ns`, when other traffic began)."""
    windows = fault_windows(steps)
    first_on, last_heal = windows[0][0], windows[-1][1]
    calm = min(first_on, calm_until_ns or first_on)
    trips = in_time(trips)
    replies = [t for t in trips if t.rtt_ms is not None]
    settle_ns = trips[0].send_ns + int(1e9) if trips else 0  # the first second: connection set-up
    level_sample = [t.rtt_ms for t in replies if settle_ns <= t.send_ns < calm] or \
                   [t.rtt_ms for t in replies if t.send_ns < calm]
    level = statistics.median(level_sample) if level_sample else None
    end_ns = trips[-1].send_ns if trips else last_heal

    # Gaps between replies as they came back: a reply the overlay held through the fault and
    # delivered after the heal ends the outage when it arrives, not when it was asked for.
    outage, span = 0.0, (0, 0)
    marks = sorted(t.receive_ns for t in replies)
    if marks:  # from the first reply on (the wait for it is one RTT, not an outage) to the last request
        marks = [marks[0] - int(interval_ms * 1e6)] + marks + [end_ns + int(interval_ms * 1e6)]
    for a, b in zip(marks, marks[1:]):
        gap = (b - a) / 1e6 - interval_ms
        if gap > outage:
            outage, span = gap, (a, b)

    def on(ns: int) -> bool:
        return any(start <= ns < stop for start, stop in windows)

    during = [t for t in trips if on(t.send_ns)]
    answered = [t for t in during if t.rtt_ms is not None]
    # Held: answered only after a heal, and over twice as slowly as round trips of the time
    # (the level, or those begun and answered while the fault was on): the overlay kept them.
    usual = max([level or 0.0] + [statistics.median([t.rtt_ms for t in answered if on(t.receive_ns)] or [0.0])])
    held = [t for t in answered if not on(t.receive_ns) and t.rtt_ms > 2 * usual]
    carried = [t for t in answered if t not in held]
    after = sorted((t for t in replies if t.receive_ns >= last_heal), key=lambda t: t.receive_ns)
    first_reply = (after[0].receive_ns - last_heal) / 1e6 if after else None
    back = None
    if level is not None:
        later = [t for t in trips if t.send_ns >= last_heal]
        i = back_at(later, level)
        if i is not None:  # timed at the run's first round trip that is itself back at the level
            j = next((k for k in range(i, i + LEVEL_RUN) if abs(later[k].rtt_ms - level) <= LEVEL_MS), i)
            back = max(0.0, (later[j].receive_ns - last_heal) / 1e6)
    observed = max(0.0, (end_ns - last_heal) / 1e9)
    if first_reply is not None and first_reply > bound_s * 1e3:
        first_reply = None
    if back is not None and back > bound_s * 1e3:
        back = None
    return Outcome(
        sent=len(trips), replies=len(replies), level_ms=level, level_n=len(level_sample), outage_ms=max(0.0, outage),
        outage_ns=span, lost_during=sum(t.rtt_ms is None for t in during), sent_during=len(during),
        during_ms=[t.rtt_ms for t in carried], held_seqs=frozenset(t.seq for t in held),
        held_max_ms=max((t.rtt_ms for t in held), default=None),
        first_reply_ms=first_reply, back_to_level_ms=back, bound_s=bound_s, observed_after_s=observed)


def back_at(trips: list[Trip], level: float) -> int | None:
    """Where the RTT is back at its level: the first of LEVEL_RUN round trips in a row, all
    answered, whose median is within LEVEL_MS of it (a median: a userspace datapath's RTT
    wanders by more than 1 ms from one packet to the next, its level does not)."""
    for i in range(len(trips) - LEVEL_RUN + 1):
        run = trips[i:i + LEVEL_RUN]
        if all(t.rtt_ms is not None for t in run) and abs(statistics.median(t.rtt_ms for t in run) - level) <= LEVEL_MS:
            return i
    return None


_LINE = re.compile(r"^seq=(\d+) rtt=([\d.]+)(ns|µs|us|ms|s)\b")
_UNIT_MS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def live_replies(text: str) -> list[tuple[int, float]]:
    """(seq, RTT in ms) from irtt's per-reply lines, as it prints them while it runs."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append((int(m.group(1)), float(m.group(2)) * _UNIT_MS[m.group(3)]))
    return out


def server_idle_s(seconds: float) -> float:
    """How long the probe's server keeps a client it does not hear from: longer than the whole
    run, so no fault ends in a black hole of the probe's making (irtt's own 1 min did, after a
    90 s cut: one reply after the heal, then none)."""
    return seconds + 60


class LiveProbe:
    """irtt through the overlay, read while it runs and stopped when asked (Ctrl-C makes irtt
    write its JSON: every round trip with its wall-clock times)."""

    def __init__(self, src, dst, seconds: float, interval_ms: float = INTERVAL_MS) -> None:
        self.src, self.dst, self.interval_ms = src, dst, interval_ms
        self._read, self._replies = 0, []
        self.server, port = probes.LATENCY.serve(dst, idle_s=server_idle_s(seconds))
        self.output = f"/tmp/pytest-overlay-irtt-{port}.json"
        try:
            self.client = src.start(f"irtt-client-{port}", probes.LATENCY.command(
                src, dst, port, interval_ms, round(seconds), output=self.output))
        except BaseException:
            self.server.stop()
            raise

    def replies(self) -> list[tuple[int, float]]:
        """Every reply so far; the log is read from where the last call left it."""
        try:
            with open(self.client.log, "rb") as f:
                f.seek(self._read)
                chunk = f.read()
        except OSError:
            return self._replies
        whole = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written waits for the next call
        self._read += len(whole)
        self._replies += live_replies(whole.decode(errors="replace"))
        return self._replies

    def finish(self) -> list[Trip]:
        """Stop the client (its JSON is written then) and the server; the round trips."""
        try:
            self.client.interrupt(timeout=10)
            result = self.src.run(["cat", self.output], timeout=30)
            self.src.run(["rm", "-f", self.output], timeout=30)
        finally:
            self.server.stop()
        if not result.ok:
            raise probes.ProbeError(f"irtt {self.src.name} -> {self.dst.name} wrote no results (exit "
                                    f"{self.client.returncode}): {self.client.log_tail(5)}")
        return parse_trips(result.stdout, self.interval_ms, f"irtt {self.src.name} -> {self.dst.name}")

    def stop(self) -> None:
        self.client.stop()
        self.server.stop()
        self.src.run(["rm", "-f", self.output], timeout=30)


@dataclass
class ControlEvent:
    at_ns: int
    key: str
    before: str | None
    after: str | None

    def to_json(self, origin_ns: int) -> dict:
        return {"t_s": round((self.at_ns - origin_ns) / 1e9, 3), "what": self.key, "from": self.before,
                "to": self.after}


class ControlWatch(threading.Thread):
    """Reads the overlay's control-plane state every POLL_S and keeps its changes."""

    def __init__(self, overlay) -> None:
        super().__init__(daemon=True, name="control-watch")
        self.overlay = overlay
        self.events: list[ControlEvent] = []
        self.errors: list[str] = []
        self.halt = threading.Event()
        self.state: dict[str, str] | None = None
        self.initial: dict[str, str] = {}
        self.logs = {d.name: d.log_size() for d in overlay.control_logs()}

    def poll(self) -> None:
        try:
            now = self.overlay.control_state()
        except Exception as e:  # noqa: BLE001  (a control plane cut off answers with errors: that is an event)
            now = {"control": f"unreadable ({type(e).__name__}: {str(e)[:80]})"}
        at = time.time_ns()
        if self.state is None:
            self.state = self.initial = now
            return
        for key in sorted(set(now) | set(self.state)):
            if now.get(key) != self.state.get(key):
                self.events.append(ControlEvent(at, key, self.state.get(key), now.get(key)))
        self.state = now

    def run(self) -> None:
        while not self.halt.wait(POLL_S):
            self.poll()

    def finish(self) -> dict[str, list[str]]:
        """Stop polling; the daemons' log lines written while it watched."""
        self.halt.set()
        self.join(timeout=30)
        out = {}
        for daemon in self.overlay.control_logs():
            lines = [line for line in daemon.log_from(self.logs.get(daemon.name, 0)).splitlines()
                     if not any(noise in line for noise in self.overlay.control_log_noise)]
            if lines:
                out[daemon.name] = lines[-LOG_LINES:]
        return out


@dataclass
class FaultRun:
    """One scenario through one overlay, as it happened."""

    fault: Fault
    steps: list[Step]
    trips: list[Trip]
    watch_trips: list[Trip]
    events: list[ControlEvent]
    control_before: dict[str, str]
    logs: dict[str, list[str]]
    started_ns: int
    ended_ns: int
    wire_during: dict[str, int] | None = None  # the overlay's packets per link direction while the fault was on
    calm_until_ns: int | None = None  # when the loss burst's TCP transfer began (the RTT's level is from before)
    tcp: ThroughputSamples | None = None
    restore_error: str | None = None
    notes: list[str] = field(default_factory=list)
    sent: list[tuple] = field(default_factory=list)  # per step: (what, planned, sent at, the host's own hold_s)

    @property
    def origin_ns(self) -> int:
        return self.steps[0].at_ns if self.steps else self.started_ns


def recovered_live(replies: list[tuple[int, float]], level: float | None, after_seq: int) -> bool:
    """The last LEVEL_RUN replies after `after_seq` are consecutive and their median within
    LEVEL_MS of the level (as back_at() judges it afterwards): the probe can stop."""
    if level is None:
        return False
    tail = [r for r in replies if r[0] > after_seq][-LEVEL_RUN:]
    return (len(tail) == LEVEL_RUN and tail[-1][0] - tail[0][0] == LEVEL_RUN - 1
            and abs(statistics.median(rtt for _, rtt in tail) - level) <= LEVEL_MS)


def run(overlay, fault: Fault, bound_s: float = BOUND_S, tcp: bool = False,
        progress=lambda message: None) -> FaultRun:
    """Apply `fault` on the testbed's links while probing through `overlay`; every link it
    touched is given back its topology values before this returns, whatever happened."""
    testbed = overlay.testbed
    src, dst = overlay.endpoints([fault.probe.src, fault.probe.dst])
    seconds = BEFORE_S + fault.duration_s + bound_s + SETTLE_S + 5
    probe = LiveProbe(src, dst, seconds)
    watch = None
    steps: list[Step] = []
    watcher = ControlWatch(overlay)
    tcp_result: dict = {}
    tcp_thread, calm_until, restore_error, sent = None, None, None, []
    started = time.time_ns()
    try:
        if fault.watch:
            watch = LiveProbe(*overlay.endpoints([fault.watch.src, fault.watch.dst]), seconds)
        watcher.poll()
        watcher.start()
        begin = time.monotonic() + BEFORE_S + (TCP_LEAD_S if tcp else 0.0)
        if tcp:  # from the RTT's level (idle) to the heal: the queue it builds drains as the fault ends
            def transfer() -> None:
                try:
                    tcp_result["samples"] = probes.TCP.run(src, dst, TCP_LEAD_S - 1 + fault.duration_s)
                except Exception as e:  # noqa: BLE001  (reported on the record)
                    tcp_result["error"] = f"{type(e).__name__}: {e}"
            time.sleep(max(0.0, begin - TCP_LEAD_S - time.monotonic()))
            calm_until = time.time_ns()
            tcp_thread = threading.Thread(target=transfer, daemon=True, name="fault-tcp")
            tcp_thread.start()
        time.sleep(max(0.0, begin - time.monotonic()))
        level_live = [rtt for seq, rtt in probe.replies() if seq * INTERVAL_MS / 1e3 < BEFORE_S]
        level = statistics.median(level_live[len(level_live) // 5:]) if level_live else None
        wire_before = overlay.wire_counters()
        wire_during: dict[str, int] | None = None
        try:
            for planned, what, changes in fault.steps():
                time.sleep(max(0.0, begin + planned - time.monotonic()))
                if what == "heal" and wire_before is not None and wire_during is None:
                    after = overlay.wire_counters() or {}
                    wire_during = {k: v - wire_before.get(k, 0) for k, v in after.items() if v - wire_before.get(k, 0)}
                hold_s = fault.duration_s - planned + SELF_HEAL_MARGIN_S
                sent.append((what, planned, time.monotonic() - begin, hold_s if testbed.heals_itself else None))
                steps.append(Step(what, planned, testbed.impair(changes, overlay.routed(), hold_s=hold_s)))
                progress(f"{overlay.name} {fault.name}: {what} at +{planned:g} s")
        finally:
            if not steps or steps[-1].what != "heal":
                try:
                    steps.append(Step("heal", time.monotonic() - begin, testbed.impair(fault.healthy(), overlay.routed())))
                except Exception as e:  # noqa: BLE001  (the testbed's teardown removes the emulator anyway)
                    restore_error = f"{type(e).__name__}: {e}"
        healed_seq = max((seq for seq, _ in probe.replies()), default=-1)
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline and not recovered_live(probe.replies(), level, healed_seq):
            time.sleep(0.1)
        time.sleep(SETTLE_S)
        if tcp_thread is not None:
            tcp_thread.join(timeout=fault.duration_s + 60)
        trips = probe.finish()
        probe = None
        watch_trips = watch.finish() if watch else []
        watch = None
    finally:
        for live in (probe, watch):
            if live is not None:
                live.stop()
        logs = watcher.finish()
    result = FaultRun(fault, steps, trips, watch_trips, watcher.events, watcher.initial, logs, started, time.time_ns(),
                      wire_during=wire_during, calm_until_ns=calm_until, tcp=tcp_result.get("samples"),
                      restore_error=restore_error, sent=sent)
    if "error" in tcp_result:
        result.notes.append(f"TCP transfer failed: {tcp_result['error']}")
    return result


def detour(wire: dict[str, int] | None, requests: int, exclude: set[str]) -> list[str]:
    """The link directions that carried the overlay's traffic while the fault was on, at least
    half a packet per probe round trip answered then (the watched circuit's own links left out)."""
    if not wire or not requests:
        return []
    return sorted(link for link, n in wire.items() if n >= requests / 2 and link not in exclude)


def relay_path(links: list[str], src: str, dst: str) -> str:
    """The sites a probe's requests crossed from src to dst, chained from link directions
    ("BRA->AMS", "AMS->LJU" -> "BRA->AMS->LJU"); "" where they do not chain."""
    step = dict(link.split("->", 1) for link in links)
    path, seen = [src], {src}
    while path[-1] != dst and path[-1] in step and step[path[-1]] not in seen:
        path.append(step[path[-1]])
        seen.add(path[-1])
    return "->".join(path) if path[-1] == dst else ""
