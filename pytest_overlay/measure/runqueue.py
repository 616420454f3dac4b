"""How long a probe's own processes waited for a CPU while it measured.

A round trip's time includes the moments its client and its server spent runnable but not
running: on a busy machine (another process on a core, the hypervisor's steal) irtt's
client sends late, or its server replies late, and the delay line cannot see that. The
kernel counts each thread's run-queue wait (`/proc/PID/task/TID/schedstat`, second field,
ns); sampling it every few milliseconds puts those waits on the same wall clock as the
samples, so a sample the machine delayed is excluded like one the emulator released late.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from .. import procs

POLL_S = 0.01


@dataclass(frozen=True)
class Wait:
    """Within [start_ns, end_ns], one side's threads waited `total_ns` for a CPU in all, the
    longest-waiting one `wait_ns`: what delayed the work that thread did, a round trip's
    send, reply or receive among it; the window reaches back to where that wait began. (The
    sum over the threads bounds it too, but loosely: the Go runtime's idle threads wait as
    well, and most of that delays no packet.)"""

    side: str
    start_ns: int
    end_ns: int
    wait_ns: int
    total_ns: int


@dataclass(frozen=True)
class Side:
    """The processes to watch: named `comm`, with `needle` in their command line, in the
    network namespace whose inode is `netns`."""

    name: str
    comm: str
    needle: str
    netns: int


@dataclass
class Waits:
    """What watches saw: every poll window's wait per side; per side, the span from a watch's
    start to its first sample of that side, when nothing says what it waited; and the sides
    every watch found."""

    windows: list[Wait] = field(default_factory=list)
    unwatched: list[Wait] = field(default_factory=list)
    found: set[str] = field(default_factory=set)
    polls: int = 0
    preceded: set[tuple[int, int]] = field(default_factory=set)  # threads put in the probes' scheduling class

    def total_ms(self, side: str) -> float:
        return sum(w.total_ns for w in self.windows if w.side == side) / 1e6

    @staticmethod
    def of(runs: list["Waits | None"]) -> "Waits | None":
        """Several runs' waits as one (None where any run was not watched)."""
        return None if not runs or None in runs else sum(runs[1:], runs[0])

    def __add__(self, other: "Waits") -> "Waits":
        return Waits(self.windows + other.windows, self.unwatched + other.unwatched, self.found & other.found,
                     self.polls + other.polls, self.preceded | other.preceded)


def find(side: Side) -> list[int]:
    """The pids of the side's processes now running on this machine."""
    return procs.pids_where(lambda proc: (proc / "comm").read_text().strip() == side.comm
                            and side.needle.encode() in (proc / "cmdline").read_bytes()
                            and os.stat(proc / "ns/net").st_ino == side.netns)


def hold(side: Side, cpus: frozenset[int]) -> list[int]:
    """Keep the side's processes (every thread) to `cpus`; the pids it held."""
    held = []
    for pid in find(side):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, FileNotFoundError):  # it ended meanwhile
            continue
        held.append(pid)
    return held


def run_delays(pids: list[int]) -> dict[tuple[int, int], int]:
    """Each thread's run-queue wait so far (ns), by (pid, tid)."""
    delays = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    delays[(pid, int(tid))] = int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return delays


# The probes' threads run in this real-time class while watched: they then wait for no other
# process of the machine's (the sites' engines and daemons, pytest, a neighbour's load), only
# for the kernel's own work and the hypervisor. irtt uses a few % of a core, so nothing
# starves (and the kernel's RT throttling would stop it if it spun). Round-robin, not FIFO:
# Go's runtime spins on one thread while another of the same process finishes its turn, and
# under FIFO that other thread never gets its turn (irtt servers ran at 94 % of both cores
# for minutes, three probes at once beside `stress-ng --cpu 2`); RR's time slice ends it.
PRECEDENCE = (os.SCHED_RR, 1)


def precede(tids: list[tuple[int, int]], policy: tuple[int, int] = PRECEDENCE) -> list[tuple[int, int]]:
    """Put these threads ((pid, tid)) in the probes' scheduling class; those it could."""
    done = []
    for key in tids:
        try:
            os.sched_setscheduler(key[1], policy[0], os.sched_param(policy[1]))
            done.append(key)
        except (ProcessLookupError, PermissionError):  # ended meanwhile; or not ours to raise
            continue
    return done


class Poller:
    """Calls `poll()` at once and then every `poll_s`, on a thread of its own, while the
    `with` block runs."""

    name = "pytest-overlay-poller"

    def __init__(self, poll_s: float = POLL_S) -> None:
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def poll(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while True:
            self.poll()
            if self._stop.wait(self.poll_s):
                return


class Watch(Poller):
    """Samples the sides' run-queue waits every POLL_S while the `with` block runs. A thread
    is counted from its first sample: what it waited before is in no window. With `precede`,
    every thread found is put in the probes' scheduling class first."""

    name = "pytest-overlay-runqueue"

    def __init__(self, sides: list[Side], poll_s: float = POLL_S, precede: bool = True) -> None:
        super().__init__(poll_s)
        self.sides = sides
        self.precede = precede
        self.waits = Waits()
        self._pids: dict[str, list[int]] = {side.name: [] for side in sides}
        self._last: dict[str, tuple[int, dict]] = {}
        self._began = time.time_ns()

    def poll(self) -> None:
        pids, last = self._pids, self._last
        for side in self.sides:
            if not pids[side.name]:
                pids[side.name] = find(side)
            # The kernel adds a wait to the count when it ends: a window runs from before
            # the last reading, or from where its longest wait began if earlier, to after
            # this one (this thread may itself wait while it reads).
            reading = time.time_ns()
            delays = run_delays(pids[side.name])
            read = time.time_ns()
            if self.precede:
                self.waits.preceded.update(precede([k for k in delays if k not in self.waits.preceded]))
            if side.name in last:
                then, before = last[side.name]
                waited = [d - before[k] for k, d in delays.items() if k in before and d > before[k]]
                longest = max(waited, default=0)
                self.waits.windows.append(Wait(side.name, min(then, read - longest), read, longest, sum(waited)))
            elif delays:
                self.waits.unwatched.append(Wait(side.name, self._began, read, 0, 0))
                self.waits.found.add(side.name)
            if delays:
                last[side.name] = (reading, delays)
        self.waits.polls += 1


# A flow's sender and receiver are CPU-bound, so no real-time class for them: a weight instead.
# At nice -15 a thread weighs 28 times a default one: beside a busy loop on its CPU, iperf3's
# UDP sender offered 309-430 of 500 Mbit/s asked at nice 0 (make bench, one core kept busy).
FLOW_NICE = -15


class Boost(Poller):
    """While the `with` block runs, find the sides' processes every POLL_S and give each of
    their threads `nice`: a probe that moves data gets the CPU before the machine's other work
    without starving it."""

    name = "pytest-overlay-boost"

    def __init__(self, sides: list[Side], nice: int = FLOW_NICE, poll_s: float = POLL_S) -> None:
        super().__init__(poll_s)
        self.sides, self.nice = sides, nice
        self.boosted: set[int] = set()

    def poll(self) -> None:
        for side in self.sides:
            for pid in find(side):
                try:
                    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
                except OSError:
                    continue
                for tid in tids:
                    if tid in self.boosted:
                        continue
                    try:
                        os.setpriority(os.PRIO_PROCESS, tid, self.nice)
                        self.boosted.add(tid)
                    except (ProcessLookupError, PermissionError):
                        continue
