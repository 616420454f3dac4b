"""A pytest plugin for benchmarks/ab.py: before each of B's rounds, every link of the
topology takes AB_SHIFT_MS more RTT (half each way), and before each of A's it is given
back: a known change, switched between A's rounds and B's as a real difference between two
builds would be. Loaded with `-p benchmarks.abshift`; AB_SHIFT_MS=0 changes nothing."""

from __future__ import annotations

import os
from dataclasses import replace

SHIFT_MS = float(os.environ.get("AB_SHIFT_MS", "0"))


def pytest_overlay_ab_round(variant, overlay) -> None:
    if not SHIFT_MS:
        return
    add = SHIFT_MS / 2 if variant.role == "B" else 0.0
    links = overlay.testbed.topology.links
    overlay.testbed.impair({f"{d.src}->{d.dst}": replace(d, delay_ms=d.delay_ms + add)
                            for link in links for d in (link.forward, link.reverse)})
