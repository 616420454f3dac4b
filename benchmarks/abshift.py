"""A pytest plugin for benchmarks/ab.py: before each of B's rounds, every link of the
topology takes AB_SHIFT_MS more RTT (half each way) and AB_RATE_PCT less rate, and before
each of A's it is given back: a known change, switched between A's rounds and B's as a real
difference between two builds would be. Loaded with `-p benchmarks.abshift`; with neither
set it changes nothing."""

from __future__ import annotations

import os
from dataclasses import replace

SHIFT_MS = float(os.environ.get("AB_SHIFT_MS", "0"))
RATE_PCT = float(os.environ.get("AB_RATE_PCT", "0"))


def pytest_overlay_ab_round(variant, overlay) -> None:
    if not (SHIFT_MS or RATE_PCT):
        return
    b = variant.role == "B"
    add, keep = (SHIFT_MS / 2, 1 - RATE_PCT / 100) if b else (0.0, 1.0)
    overlay.testbed.impair({f"{d.src}->{d.dst}": replace(d, delay_ms=d.delay_ms + add,
                                                         rate_mbit=d.rate_mbit * keep if d.rate_mbit else None)
                            for link in overlay.testbed.topology.links for d in (link.forward, link.reverse)})
