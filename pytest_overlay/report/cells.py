"""What a report's cells say: a figure with its digits, a verdict or INVALID with its note,
an overhead over the underlay, a circuit, and a table with its title."""

from __future__ import annotations

import math

from tabulate import tabulate

from .. import results
from ..kinds import BASELINE
from ..results import Record


def number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def status_cell(record: Record, notes: list[str]) -> str:
    if not record.valid:
        notes.append(f"[{len(notes) + 1}] {record.circuit} {record.overlay} {record.metric}: "
                     + "; ".join(record.invalid_reasons))
        return f"INVALID [{len(notes)}]"
    return record.verdict


def millis(record: Record | None) -> str:
    """A recovery time in ms, or "> bound" where it was not seen (censored)."""
    if record is None:
        return "-"
    if record.extra.get("censored"):
        return f"> {record.extra['bound_s'] * 1e3:.0f} (censored)"
    return f"{record.stats.max:.0f}"


def who(record: Record) -> str:
    """The overlay column: the overlay, its CPU budget and its neighbour where it had them."""
    held = ([] if record.cpu is None else [f"CPU {record.cpu:g}"]) + ([f"beside {record.noise}"] if record.noise else [])
    return f"{record.overlay} ({', '.join(held)})" if held else record.overlay


def difference_cell(record: Record, base: Record) -> str:
    """Difference of means with the 95 % interval of the difference (independent samples)."""
    diff = results.difference(record, base)
    if diff is None:
        return results.UNKNOWN_OVERHEAD if not base.valid else ""
    return f"{diff[0]:+.2f} ±{diff[1]:.2f}"


def ratio_cell(record: Record, base: Record | None) -> str:
    if record.overlay == BASELINE or base is None:
        return ""
    value = results.ratio(record, base)
    return results.UNKNOWN_OVERHEAD if value is None and not base.valid else "" if value is None else f"{value:.2f}"


def circuit_cell(r: Record) -> str:
    return f"{r.src} – {r.dst}"


def change_cell(c: dict) -> str:
    return f"{c['change_pct']:+.1f}" if c.get("change_pct") is not None and math.isfinite(c["change_pct"]) else "from 0"


def noise_cell(c: dict) -> str:
    return f"{c['noise']:.3f}" if c.get("noise") is not None and math.isfinite(c["noise"]) else "unknown"


def titled_table(title: str, head: list[str], rows: list[list]) -> str:
    return f"{title}\n{tabulate(rows, headers=head, tablefmt='github', disable_numparse=True)}"
