"""Result records: statistics of one measurement, its validity and verdict, and the run's
metadata, saved as versioned JSON that users script against (keep the field names)."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..kinds import BASELINE

SCHEMA = "pytest-overlay/results"
# What each version added: the schema page (docs/results-schema.md) lists these.
VERSIONS = (
    "2: typed record fields (expected, datapath, emulator, tool, total, concurrency, transport, compared, "
    "vs_host) instead of keys of `extra`; stats.ci95_of per statistic; `missing`: what was requested and not "
    "measured, with why.",
    "3: `exclusions` (samples the emulator touched, left out and counted) and `measured` (the measurement window "
    "in UTC, with the machine's steal time and CPU pressure).",
    "4: `fault`, the WAN fault scenario.",
    "5: `queue_ms`, the link buffer a latency-under-load record was measured at where the experiment set one; "
    "`cpu`, the CPU budget (cores) its overlay was held to.",
    "6: `noise`, the neighbour (stress-ng kind:cores per site) it ran beside.",
    "7: stats.ci95_unit and stats.ci95_n, what the mean's interval was made of (rounds, batch means of intervals, "
    "samples, or a binomial count) and how many of them; run.verdicts (tests regressed, and those that could not "
    "be judged, with why).",
    "8: a udp_throughput's total and intervals are the sender's rate times the share of its datagrams that "
    "arrived (by sequence number), no longer what the receiver read (extra.read_mbit); a UDP record's extra adds "
    "receiver_socket_dropped (Udp RcvbufErrors in the receiver's namespace over the run) and receiver_cpus.",
    "9: `instrument`, the instrument's own error on a time the record measured (ms: the emulator's release "
    "error on the path and the probe's typical wait for a CPU); tries counts the probe's runs, and "
    "exclusions.replaced says how many samples further runs replaced, and why; a latency record's extra adds "
    "excluded_samples (the round trips left out).",
    "10: `comparisons`, the A/B verdicts of --overlay-ab (one per metric and circuit: the variants, B - A with "
    "its 95 % interval, change_pct, the margin, verdict same, different or unknown, and the pairs); run.ab, how "
    "the A/B run went (seed, orders, bring-ups, seconds); a record's datapath.settings, a variant's settings.",
    "11: expected.mtu and expected.mtu_back (the path's smallest link MTU each way), expected.icmp_dropped (the "
    "link directions that drop ICMP \"fragmentation needed\"), expected.reorder_pct, expected.duplicate_pct, "
    "expected.underlay (the sites' address family: ipv4, ipv6 or dual-stack); the emulator's counters add "
    "`reordered` and `duplicated`; a UDP record's extra adds out_of_order; an mtu fault's fault_goodput adds "
    "extra.flowing_after_ms; the metric "
    "path_mtu, with extra.pmtu (interface_mtu, largest, discovery, told_mtu, tcp, tcp_mbit, tcp_detail, pings).",
)
SCHEMA_VERSION = 11
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
BOOTSTRAP_RESAMPLES = 200

# Two-sided 95 % Student t quantiles for small samples; 1.96 beyond.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def t95(dof: int) -> float:
    if dof >= 40:
        return 1.96
    return _T95[max(k for k in _T95 if k <= dof)] if dof >= 1 else math.inf


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) on sorted data."""
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class Stats:
    min: float
    mean: float
    p50: float
    p99: float
    max: float
    stdev: float
    n: int
    ci95: float  # half-width of the 95 % confidence interval of the mean
    # Half-widths of 95 % intervals of the other statistics (bootstrap), so that "within
    # noise" can be said of whatever statistic a gate compares.
    ci95_of: dict[str, float] = field(default_factory=dict)
    # What the mean's interval is made of, and how many: "rounds" (whole runs), "batches of
    # N intervals" (batch means of consecutive intervals), "samples", or the caller's (binomial).
    ci95_unit: str = "samples"
    ci95_n: int = 0

    @classmethod
    def of(cls, samples: list[float], round_values: list[float] | None = None, ci95: float | None = None,
           batch: int = 0, ci95_unit: str = "given") -> "Stats":
        """Statistics of the samples, with the mean's 95 % interval from independent units:
        with two or more rounds, the rounds' own values; else, where `batch` is given and
        three or more batches fit, the means of consecutive batches of that many samples
        (a flow's successive intervals are not independent; batches long enough nearly
        are); else the samples. `ci95` replaces it where the caller knows better (binomial
        loss), named `ci95_unit`."""
        if not samples:
            raise ValueError("no samples")
        ordered = sorted(samples)
        n = len(ordered)
        stdev = statistics.stdev(ordered) if n > 1 else 0.0
        units, unit = list(samples), "samples"
        batches = [statistics.fmean(samples[i:i + batch]) for i in range(0, n - batch + 1, batch)] if batch else []
        if round_values and len(round_values) > 1:
            units, unit = list(round_values), "rounds"
        elif len(batches) >= 3:
            units, unit = batches, f"batches of {batch} intervals"
        mean_ci = t95(len(units) - 1) * statistics.stdev(units) / math.sqrt(len(units)) if len(units) > 1 else math.inf
        if ci95 is not None:
            mean_ci, unit = ci95, ci95_unit
        return cls(
            min=ordered[0], mean=statistics.fmean(ordered), p50=percentile(ordered, 50),
            p99=percentile(ordered, 99), max=ordered[-1], stdev=stdev, n=n, ci95=mean_ci,
            ci95_of={"mean": mean_ci, **_bootstrap(ordered)}, ci95_unit=unit, ci95_n=len(units),
        )

    def interval(self, stat: str) -> float:
        """Half-width of the 95 % interval of a statistic (inf where it cannot be told)."""
        if stat in ("mean", "total"):
            return self.ci95
        return self.ci95_of.get(stat, math.inf)

    def rounded(self, digits: int = 4) -> dict:
        def r(v):
            return round(v, digits) if isinstance(v, float) and math.isfinite(v) else (None if isinstance(v, float) else v)

        out = {k: r(v) for k, v in asdict(self).items() if k != "ci95_of"}
        out["ci95_of"] = {k: r(v) for k, v in self.ci95_of.items()}
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Stats":
        def f(v):
            return math.inf if v is None else v

        return cls(**{k: f(data[k]) for k in ("min", "mean", "p50", "p99", "max", "stdev", "ci95")}, n=data["n"],
                   ci95_of={k: f(v) for k, v in (data.get("ci95_of") or {}).items()},
                   ci95_unit=data.get("ci95_unit", "samples"), ci95_n=data.get("ci95_n", data["n"]))


def _bootstrap(ordered: list[float]) -> dict[str, float]:
    """Percentile-bootstrap 95 % half-widths of min, p50, p99 and max (seeded: repeatable)."""
    n = len(ordered)
    if n < 2:
        return {k: math.inf for k in ("min", "p50", "p99", "max")}
    rng = random.Random(n)
    draws: dict[str, list[float]] = {k: [] for k in ("min", "p50", "p99", "max")}
    for _ in range(BOOTSTRAP_RESAMPLES):
        sample = sorted(rng.choices(ordered, k=n))
        draws["min"].append(sample[0])
        draws["p50"].append(percentile(sample, 50))
        draws["p99"].append(percentile(sample, 99))
        draws["max"].append(sample[-1])
    out = {}
    for stat, values in draws.items():
        values.sort()
        out[stat] = (percentile(values, 97.5) - percentile(values, 2.5)) / 2
    return out


FIELD_DOCS: dict[str, dict[str, str]] = {
    "Stats": {
        "min": "smallest sample", "mean": "mean of the samples", "p50": "median", "p99": "99th percentile",
        "max": "largest sample", "stdev": "standard deviation of the samples",
        "n": "samples counted (after the emulator's exclusions)",
        "ci95": "half-width of the 95 % confidence interval of the mean (null: cannot be told)",
        "ci95_of": "half-widths of 95 % intervals of min, p50, p99 and max (bootstrap) and the mean",
        "ci95_unit": "what the mean's interval is made of: rounds, batches of N intervals, samples, or a binomial "
                     "count",
        "ci95_n": "how many of those units",
    },
    "Record": {
        "overlay": "the overlay it went through (`host`: the underlay)", "metric": "the metric (docs/results.md)",
        "src": "the circuit's first site", "dst": "the circuit's second site", "unit": "the metric's unit",
        "stats": "its statistics (below)", "valid": "false: INVALID, the tool cannot vouch for it",
        "invalid_reasons": "why it is INVALID", "threshold": "the limit it was held to, with its source",
        "verdict": "pass, fail, invalid, or not judged", "test": "the pytest node that measured it",
        "expected": "what the topology promises on the circuit (RTT, jitter, loss, rate, buffers, the path's MTU "
                    "each way, where it drops ICMP \"fragmentation needed\", reordering, the underlay's family)",
        "datapath": "how the overlay carried it (encapsulation, MTU, port, cipher, control-plane state)",
        "emulator": "the link emulator's counters during the probe", "tool": "the probe's tool and version",
        "total": "the whole run's value, where the metric has one (throughput)",
        "concurrency": "streaming: clients at this level", "transport": "streaming: RTP over udp or tcp",
        "fault": "the WAN fault scenario it was measured under",
        "queue_ms": "latency under load: the buffer set on the path's links (null: theirs)",
        "cpu": "the CPU budget (cores) every site's overlay was held to (null: none)",
        "noise": "the noisy neighbour beside it, kind:cores per site (null: alone)",
        "vs_host": "the underlay's value of the headline statistic, for a limit relative to it",
        "compared": "against the saved run: each statistic compared, saved and now, the change, the noise, the "
                    "gate and its verdict",
        "tries": "runs of the probe the measurement took: top-ups, or tries taken again for the machine's load",
        "instrument": "the instrument's own error on a time (ms), beside the 95 % interval: emulator_ms (the "
                      "release error's p99 on each direction of the path, summed), probe_wait_ms (what the probe's "
                      "own waits for a CPU may add to a round trip kept) and their sum, ms",
        "exclusions": "samples left out because the emulator released late or dropped on their path, or (round "
                      "trips) a thread of the probe's client or server waited over max_probe_wait_ms for a CPU: n, "
                      "n_excluded, the rule, the path and its windows; probe_wait: the probe's waits (ms) and the "
                      "round trips they excluded",
        "measured": "the measurement window (UTC) and the machine's steal, busy and CPU pressure in it",
        "extra": "metric-specific detail (samples, packets, retransmits, rounds, ...)",
    },
}


@dataclass
class Record:
    """One measured metric on one circuit through one overlay."""

    overlay: str
    metric: str
    src: str
    dst: str
    unit: str
    stats: Stats
    valid: bool = True
    invalid_reasons: list[str] = field(default_factory=list)
    threshold: dict | None = None
    verdict: str = "not judged"
    test: str = ""
    expected: dict = field(default_factory=dict)  # what the topology promises on the circuit
    datapath: dict = field(default_factory=dict)  # how the overlay carried it (encapsulation, MTU, ...)
    emulator: dict = field(default_factory=dict)  # the link emulator's counters during the probe
    tool: str = ""
    total: float | None = None  # the whole run's value, where the metric has one (throughput)
    concurrency: int | None = None  # streaming level
    transport: str | None = None  # streaming: RTP over udp or tcp
    fault: str | None = None  # the WAN fault scenario it was measured under (schema 4)
    queue_ms: float | None = None  # latency under load: the buffer it set on the path's links (None: theirs)
    cpu: float | None = None  # the CPU budget (cores) every site's overlay was held to (None: none)
    noise: str | None = None  # the noisy neighbour beside it, kind:cores per site (None: alone)
    vs_host: dict | None = None  # the underlay's value of the headline statistic
    compared: list[dict] = field(default_factory=list)  # against the saved run
    tries: int = 1  # runs of the probe it took
    instrument: dict | None = None  # the instrument's own error on a time (ms), beside the 95 % interval
    # Samples left out because the emulator released late or dropped on their path while
    # they crossed it: n (before), n_excluded, the rule, the path and its windows.
    exclusions: dict = field(default_factory=dict)
    # The measurement window (start, end, UTC) and what the machine did in it: the
    # hypervisor's steal, CPU busy and CPU pressure.
    measured: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # metric-specific detail (samples, packets, ...)

    @property
    def circuit(self) -> str:
        return f"{self.src}-{self.dst}"

    @property
    def key(self) -> tuple:
        return (self.overlay, self.metric, self.src, self.dst, self.concurrency, self.transport, self.fault,
                self.queue_ms, self.cpu, self.noise)

    def value(self, stat: str) -> float:
        """A statistic by name; `total` is the whole run's value where there is one."""
        if stat == "total":
            return self.total if self.total is not None else self.stats.mean
        return getattr(self.stats, stat)

    def to_json(self) -> dict:
        out = asdict(self)
        out["stats"] = self.stats.rounded()
        return out

    @classmethod
    def from_json(cls, data: dict, version: int = SCHEMA_VERSION) -> "Record":
        """A record from a results file, of this schema version or an older readable one."""
        data = dict(data)
        extra = dict(data.pop("extra", None) or {})
        if version == 1:  # typed fields were keys of extra
            for name in ("expected", "datapath", "emulator", "tool", "concurrency", "transport", "vs_host", "compared"):
                if name in extra:
                    data[name] = extra.pop(name)
            if "total_mbit" in extra:
                data["total"] = extra["total_mbit"]
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known and k != "stats"},
                   stats=Stats.from_json(data["stats"]), extra=extra)


def baseline(records: list[Record], record: Record, overlay: str = BASELINE) -> Record | None:
    """The underlay's record of the same metric on the same circuit (and streaming level, link
    buffer and neighbour); at any CPU budget of the overlay's, the underlay's own (it has none)."""
    for other in records:
        if other.overlay == overlay and other.key[1:-2] == record.key[1:-2] and other.cpu is None \
                and other.noise == record.noise:
            return other
    return None


UNKNOWN_OVERHEAD = "unknown: underlay INVALID"


def difference(record: Record, base: Record | None) -> tuple[float, float] | None:
    """The record's mean minus the underlay's, with the 95 % half-width of the difference
    (independent samples); None where there is no underlay or it cannot be vouched for:
    an overhead against an INVALID baseline would be the emulator's, not the overlay's."""
    if base is None or not base.valid or not record.valid:
        return None
    return record.stats.mean - base.stats.mean, math.hypot(record.stats.ci95, base.stats.ci95)


def ratio(record: Record, base: Record | None) -> float | None:
    """The record's whole-run value over the underlay's, where both are valid."""
    if base is None or not base.valid or not record.valid or not base.value("total"):
        return None
    return record.value("total") / base.value("total")


@dataclass
class Missing:
    """A requested measurement that was not made, and why: bring-up failed, skipped (with
    the overlay's reason), deselected, errored, or not run."""

    overlay: str
    metric: str
    src: str
    dst: str
    reason: str
    concurrency: int | None = None
    transport: str | None = None
    test: str = ""
    fault: str | None = None
    queue_ms: float | None = None
    cpu: float | None = None
    noise: str | None = None

    @property
    def key(self) -> tuple:
        return (self.overlay, self.metric, self.src, self.dst, self.concurrency, self.transport, self.fault,
                self.queue_ms, self.cpu, self.noise)

    @property
    def where(self) -> str:
        level = f" ({self.transport}, {self.concurrency} clients)" if self.concurrency is not None else \
            f" ({self.fault})" if self.fault else f" (buffer {self.queue_ms:g} ms)" if self.queue_ms else \
            f" (CPU {self.cpu:g})" if self.cpu else f" (beside {self.noise})" if self.noise else ""
        return f"{self.src} – {self.dst}{level}"


def run_metadata(topology, testbed_description: dict, options: dict, tools: dict) -> dict:
    uname = platform.uname()
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": uname.node,
        "kernel": f"{uname.system} {uname.release}",
        "machine": uname.machine,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "topology": {"name": topology.name, "path": topology.path},
        "testbed": testbed_description,
        "options": options,
        "tools": tools,
    }


def document(run: dict, records: list[Record], missing: list[Missing] = (), comparisons: list = ()) -> dict:
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "run": {**run, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "results": [r.to_json() for r in records],
        "missing": [asdict(m) for m in missing],
        "comparisons": [c.to_json() for c in comparisons],
    }


def dumps(data) -> str:
    """Strict JSON: a non-finite number is null, never Infinity or NaN."""
    return json.dumps(finite(data), indent=2, default=str, allow_nan=False) + "\n"


def finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_atomic(path: str | Path, text: str) -> Path:
    """Write through a temporary file in the same directory, then rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_json(path: str | Path, run: dict, records: list[Record], missing: list[Missing] = (),
               comparisons: list = ()) -> None:
    write_atomic(path, dumps(document(run, records, missing, comparisons)))
