"""One direction of one emulated link as the delay line keeps it: its settings, its counters,
its release-error histogram and its timeline of late and drop windows (a burst each, merged
when they touch), which probes' samples are matched against."""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field

DEFAULT_MAXLEN = 65536
# A packet released this much after it was due counts as late.
LATE_LIMIT_S = 0.001
# Upper edges of the release-error histogram (µs; the last bucket is open). The compiled
# core (core/delayline.c) uses the same edges.
HIST_EDGES_US = (25, 50, 100, 150, 200, 300, 400, 500, 700, 1000, 1500, 2000, 3000, 5000, 7000,
                 10000, 20000, 50000, 100000)
MAX_WINDOWS = 2048  # per queue; the newest are kept (a fault scenario runs minutes)
MERGE_GAP_NS = 2_000_000


@dataclass
class Queue:
    """One direction of one link."""

    num: int
    delay_s: float
    jitter_s: float
    loss: float
    maxlen: int = DEFAULT_MAXLEN
    reorder: float = 0.0  # the share of packets sent on at once, ahead of those still held
    pending: collections.deque = field(default_factory=collections.deque)
    last_due: float = 0.0
    queued: int = 0
    released: int = 0
    lost: int = 0
    reordered: int = 0
    late: int = 0
    max_late_s: float = 0.0
    window_max_late_s: float = 0.0
    total_late_s: float = 0.0
    late_hist: list = field(default_factory=lambda: [0] * (len(HIST_EDGES_US) + 1))
    # [start_ns, end_ns, late, dropped, max_late_us], wall clock, oldest first
    windows: collections.deque = field(default_factory=lambda: collections.deque(maxlen=MAX_WINDOWS))
    overwritten_end: int = -1
    kernel_drops: int = 0

    def note_window(self, start: int, end: int, late_s: float = 0.0, dropped: int = 0) -> None:
        """Add a stretch of trouble (wall ns) to the timeline, merged with the newest window
        when they touch."""
        windows = self.windows
        if not windows or start > windows[-1][1] + MERGE_GAP_NS:
            if len(windows) == MAX_WINDOWS:
                self.overwritten_end = windows[0][1]
            windows.append([start, end, 0, 0, 0.0])
        w = windows[-1]
        w[0], w[1] = min(w[0], start), max(w[1], end)
        w[2] += late_s > LATE_LIMIT_S
        w[3] += dropped
        w[4] = max(w[4], round(late_s * 1e6, 1))

    def windows_since(self, since: int) -> dict:
        return {"windows_incomplete": self.overwritten_end >= since,
                "windows": [list(w) for w in self.windows if w[1] >= since]}

    def counters(self, reset: bool = False) -> dict:
        counts = {
            "queued": self.queued,
            "released": self.released,
            "lost": self.lost,
            "reordered": self.reordered,
            "late": self.late,
            "max_late_us": round(self.max_late_s * 1e6, 1),
            "window_max_late_us": round(self.window_max_late_s * 1e6, 1),
            "mean_late_us": round(self.total_late_s * 1e6 / max(1, self.released), 1),
            "pending": len(self.pending),
            "late_hist": list(self.late_hist),
        }
        if reset:
            self.window_max_late_s = 0.0
        return counts

    def count_release(self, late: float, due: float = 0.0, wall_offset: float = 0.0) -> None:
        self.released += 1
        self.total_late_s += late
        self.late_hist[bisect.bisect_right(HIST_EDGES_US, late * 1e6)] += 1
        if late > self.max_late_s:
            self.max_late_s = late
        if late > self.window_max_late_s:
            self.window_max_late_s = late
        if late > LATE_LIMIT_S:
            self.late += 1
            start = int((due + wall_offset) * 1e9)
            self.note_window(start, start + int(late * 1e9), late)
