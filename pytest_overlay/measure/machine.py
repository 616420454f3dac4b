"""What the machine itself did while something was measured: the hypervisor's steal time
(`/proc/stat`) and CPU pressure (`/proc/pressure/cpu`).

On a VM of a shared host the hypervisor takes the vCPUs away in bursts of seconds, and
nothing the delay line does can release packets on time meanwhile. A record carries its
measurement window with these figures, so an exclusion or an INVALID can name the cause.
"""

from __future__ import annotations

import collections
import contextlib
import os
import struct
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

SAMPLE_S = 0.5
KEEP = 7200  # one hour of half-second samples
# A burst worth naming: the hypervisor took at least this share of the CPUs.
STEAL_BURST_PCT = 5.0
# Before a measurement is taken again for the machine's load: this long without a burst, but
# never a longer wait than the bound (a machine that is never quiet is measured all the same).
QUIET_S = 2.0
QUIET_WAIT_S = 20.0


@dataclass(frozen=True)
class Tick:
    wall_ns: int
    busy: int  # jiffies over every CPU, idle excluded
    total: int
    steal: int
    pressure_us: int | None  # /proc/pressure/cpu "some" total


def read_tick() -> Tick:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    steal = fields[7] if len(fields) > 7 else 0
    pressure = None
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    pressure = int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return Tick(time.time_ns(), total - idle, total, steal, pressure)


@dataclass(frozen=True)
class Window:
    """The machine over one measurement window."""

    start_ns: int
    end_ns: int
    steal_pct: float | None  # share of all CPUs the hypervisor took
    busy_pct: float | None  # share of all CPUs busy (steal included)
    cpu_pressure_pct: float | None  # share of the time some task waited for a CPU
    steal_burst: tuple[float, float] | None  # (mean steal %, seconds) of the longest burst
    samples: int

    def to_json(self) -> dict:
        def r(v):
            return None if v is None else round(v, 2)

        return {
            "start": iso(self.start_ns), "end": iso(self.end_ns),
            "seconds": round((self.end_ns - self.start_ns) / 1e9, 3),
            "steal_pct": r(self.steal_pct), "busy_pct": r(self.busy_pct),
            "cpu_pressure_pct": r(self.cpu_pressure_pct),
            "steal_burst": None if self.steal_burst is None else
            {"pct": r(self.steal_burst[0]), "seconds": r(self.steal_burst[1])},
            "samples": self.samples,
        }

    def cause(self) -> str:
        """The machine's part, in words, where it had one."""
        parts = []
        if self.steal_burst:
            pct, seconds = self.steal_burst
            parts.append(f"the hypervisor took {pct:.0f} % of the CPUs for {seconds:.1f} s")
        if self.cpu_pressure_pct is not None and self.cpu_pressure_pct >= 10:
            parts.append(f"tasks waited for a CPU {self.cpu_pressure_pct:.0f} % of the time")
        return "; ".join(parts)


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Monitor:
    """Samples the machine every half second on a daemon thread while a session measures."""

    def __init__(self, interval: float = SAMPLE_S, keep: int = KEEP) -> None:
        self.interval = interval
        self.ticks: collections.deque[Tick] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Monitor":
        if self._thread is None:
            self._sample()
            self._thread = threading.Thread(target=self._loop, name="pytest-overlay-machine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _sample(self) -> None:
        try:
            tick = read_tick()
        except OSError:
            return
        with self._lock:
            self.ticks.append(tick)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def wait_quiet(self, quiet_s: float = QUIET_S, limit_s: float = QUIET_WAIT_S) -> tuple[float, bool]:
        """Wait until the hypervisor has taken less than STEAL_BURST_PCT of the CPUs for the
        last `quiet_s` seconds, at most `limit_s`: a measurement taken again at once after a
        steal burst falls in the same burst (they last up to 10 s here). Returns the seconds
        waited and whether the machine was quiet then."""
        began = time.monotonic()
        while True:
            self._sample()
            with self._lock:
                ticks = list(self.ticks)
            waited, quiet = time.monotonic() - began, quiet_for(ticks, quiet_s)
            if quiet or waited >= limit_s:
                return waited, quiet
            time.sleep(self.interval)

    def window(self, start_ns: int, end_ns: int) -> Window:
        """The machine between two wall times (ns), from the samples that bracket them."""
        self._sample()
        with self._lock:
            ticks = list(self.ticks)
        return summarise(ticks, start_ns, end_ns)


def summarise(ticks: list[Tick], start_ns: int, end_ns: int) -> Window:
    inside = [t for t in ticks if start_ns <= t.wall_ns <= end_ns]
    before = [t for t in ticks if t.wall_ns < start_ns]
    after = [t for t in ticks if t.wall_ns > end_ns]
    span = ([before[-1]] if before else []) + inside + ([after[0]] if after else [])
    if len(span) < 2:
        return Window(start_ns, end_ns, None, None, None, None, len(span))
    first, last = span[0], span[-1]
    total = last.total - first.total
    steal = (last.steal - first.steal) / total * 100 if total > 0 else None
    busy = (last.busy - first.busy) / total * 100 if total > 0 else None
    pressure = None
    if first.pressure_us is not None and last.pressure_us is not None and last.wall_ns > first.wall_ns:
        pressure = (last.pressure_us - first.pressure_us) * 1e3 / (last.wall_ns - first.wall_ns) * 100
    return Window(start_ns, end_ns, steal, busy, pressure, _burst(span), len(span))


def quiet_for(ticks: list[Tick], seconds: float) -> bool:
    """The samples cover at least the last `seconds` and the hypervisor took less than
    STEAL_BURST_PCT of the CPUs in every interval of it."""
    if not ticks:
        return False
    since = ticks[-1].wall_ns - int(seconds * 1e9)
    start = next((i for i in range(len(ticks) - 1, -1, -1) if ticks[i].wall_ns <= since), None)
    if start is None:
        return False
    return _burst(ticks[start:]) is None


def _burst(span: list[Tick]) -> tuple[float, float] | None:
    """The longest run of consecutive sample intervals where steal was at least
    STEAL_BURST_PCT of the CPUs, as (its mean steal %, its seconds)."""
    best: tuple[float, float] | None = None
    run_steal = run_total = run_ns = 0
    for a, b in zip(span, span[1:]):
        total = b.total - a.total
        pct = (b.steal - a.steal) / total * 100 if total > 0 else 0.0
        if pct >= STEAL_BURST_PCT:
            run_steal += b.steal - a.steal
            run_total += total
            run_ns += b.wall_ns - a.wall_ns
            if best is None or run_ns / 1e9 > best[1]:
                best = (run_steal / run_total * 100, run_ns / 1e9)
        else:
            run_steal = run_total = run_ns = 0
    return best


PM_QOS = "/dev/cpu_dma_latency"


@contextlib.contextmanager
def awake(latency_us: int | None):
    """Hold a PM QoS request that no CPU takes longer than `latency_us` to wake while a probe
    runs (None: no request). On an idle VM a vCPU that halts costs each wake-up a trip
    through the hypervisor, and that showed in the round trips: with another process keeping
    one core busy, make bench's latency means came out 0.01 to 0.23 ms lower than idle. The
    request lasts as long as the file stays open; yields whether it was made."""
    fd = None
    if latency_us is not None:
        try:
            fd = os.open(PM_QOS, os.O_WRONLY)
            os.write(fd, struct.pack("i", latency_us))
        except OSError:  # no such device (a container, a kernel without PM QoS): nothing to hold
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


_MONITOR: Monitor | None = None


def monitor() -> Monitor:
    """The process's one monitor, started on first use."""
    global _MONITOR
    if _MONITOR is None:
        _MONITOR = Monitor().start()
    return _MONITOR
