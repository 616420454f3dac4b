"""The probe's own waits for a CPU, matched to its round trips: when each round trip needed
its client and its server, the poll windows in which one of their threads waited too long
(stalls, matched as the emulator's late windows are), and what the waits under the limit may
still add to a round trip kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .runqueue import Waits

if TYPE_CHECKING:  # validity matches these as it matches its own windows, and imports this
    from .validity import Hop


@dataclass(frozen=True)
class Stall:
    """A poll window in which a thread of a probe's side (`link` names it, "irtt client")
    waited `wait_us` for a CPU, or (wait_us None) a span before the side was found. Matched
    to the samples as an emulator's window is."""

    link: str
    start_ns: int
    end_ns: int
    wait_us: float | None
    dropped = 0  # touched() asks it of every window: a stall drops nothing

    def describe(self) -> str:
        span = (self.end_ns - self.start_ns) / 1e6
        if self.wait_us is None:
            return f"{self.link} not watched for {span:.1f} ms"
        return f"{self.link} waited {self.wait_us / 1e3:.1f} ms for a CPU within {span:.1f} ms"


def probe_moments(times_ns: list[tuple[int, int]], there: list[Hop], back: list[Hop]) -> list[list[tuple[str, int, int]]]:
    """When each round trip needed its probe's processes: the client as it sent and as it
    received, the server between the request's earliest arrival and the reply's latest
    departure."""
    ahead = sum(h.delay_ms - h.jitter_ms for h in there) * 1e6
    behind = sum(h.delay_ms - h.jitter_ms for h in back) * 1e6
    out = []
    for send, receive in times_ns:
        lo, hi = int(send + max(ahead, 0)), int(receive - max(behind, 0))
        out.append([("irtt client", send, send), ("irtt server", min(lo, hi), max(lo, hi)),
                    ("irtt client", receive, receive)])
    return out


def cpu_stalls(waits: Waits, times_ns: list[tuple[int, int]], limit_ms: float, margin_ns: int) -> list[Stall]:
    """The poll windows in which a side's thread waited over `limit_ms` for a CPU, and the
    spans before a side was found that round trips fall in: nothing says what it waited then.
    (A side never found is not judged at all; the record names it.)"""
    stalls = [Stall(f"irtt {w.side}", w.start_ns, w.end_ns, w.wait_ns / 1e3)
              for w in waits.windows if w.wait_ns > limit_ms * 1e6]
    if times_ns:
        first = min(t[0] for t in times_ns) - margin_ns
        stalls += [Stall(f"irtt {w.side}", max(w.start_ns, first), w.end_ns, None)
                   for w in waits.unwatched if w.end_ns > first]
    return stalls


def typical_wait_ms(waits: Waits, limit_ms: float) -> float:
    """What the probe's own waits may add to a round trip kept (its every moment under the
    limit): the mean longest wait of a poll window under the limit, the client's twice (it
    sends and receives) and the server's once. An estimate from above: a moment in a window
    meets at most its longest wait."""
    def mean(side: str) -> float:
        under = [w.wait_ns for w in waits.windows if w.side == side and w.wait_ns <= limit_ms * 1e6]
        return sum(under) / len(under) / 1e6 if under else 0.0

    return 2 * mean("client") + mean("server")
