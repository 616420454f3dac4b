"""The one registry of what the suites measure.

Every other layer (thresholds, gates, saved-run comparisons, tables, plots) asks this module
what a metric is called, its unit, which statistic is its headline, which direction is
worse and which limits a thresholds file may set for it, instead of spelling names out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Statistics a gate or comparison can name. ``total`` is the whole run's value, where a
# metric has one (throughput); elsewhere it is the mean.
STATS = ("min", "mean", "p50", "p99", "max", "total")

REGRESSION_PCT = "regression_pct"
MAX_OVER_HOST_PCT = "max_over_host_pct"
MIN_FRACTION_OF_HOST = "min_fraction_of_host"
RELATIVE_TO_HOST = (MAX_OVER_HOST_PCT, MIN_FRACTION_OF_HOST)


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    title: str
    headline: str  # the statistic tables, gates and comparisons use unless told otherwise
    higher_is_worse: bool
    settings: dict[str, str] = field(default_factory=dict)  # threshold keys -> what each means
    # A percentage change from a saved 0 is undefined; it is taken from this value instead
    # (in the metric's unit): "udp_loss:50%" against a saved 0 % fires beyond 0.5 %.
    zero_base: float = 1.0
    streaming: bool = False
    fault: bool = False  # measured under a WAN fault scenario (the faults suite)
    load: bool = False  # measured under load (the latency-under-load suite)
    test: str = ""  # the suite's test function that measures it
    probe: str = ""  # the kind of probe whose run makes it (probes.PROBES), where one run does
    # A/B (--overlay-ab): the change of its headline too small to matter, the equivalence margin
    # ("0.25%" of A's value, or "0.05" in its unit); "" where A/B does not compare it.
    ab_margin: str = ""

    def __post_init__(self) -> None:
        if not self.test:
            test = ("test_streaming" if self.streaming else "test_fault" if self.fault else
                    "test_load" if self.load else f"test_{self.name}")
            object.__setattr__(self, "test", test)

    @property
    def worse(self) -> str:
        return "higher" if self.higher_is_worse else "lower"

    def limits(self) -> dict[str, str]:
        """Every limit a thresholds file may set for this metric, with what it means."""
        out = dict(self.settings)
        out[REGRESSION_PCT] = f"{self.headline} at most this much worse ({self.worse}) than in the compared run (%)"
        if not (self.streaming or self.fault or self.load) and self.unit != "%":
            if self.higher_is_worse:
                out[MAX_OVER_HOST_PCT] = f"{self.headline} at most this much above the underlay's on the circuit (%)"
            else:
                out[MIN_FRACTION_OF_HOST] = f"{self.headline} at least this share of the underlay's (0..1)"
        return out

    def worse_by(self, before: float, now: float) -> float:
        """How much worse `now` is than `before`, in the metric's unit (negative: better)."""
        return now - before if self.higher_is_worse else before - now


_ALL = [
    Metric("latency", "ms", "round-trip time", "mean", True, {
        "mean_tolerance_ms": "mean RTT within this of the topology's RTT (ms)",
        "mean_tolerance_pct": "... or within this share of it (%), whichever is larger",
        "p99_over_rtt_ms": "99th percentile RTT at most the topology's RTT plus this (ms)",
    }, zero_base=0.001, probe="latency", ab_margin="0.25%"),
    Metric("jitter", "ms", "IPDV |RTT[i] - RTT[i-1]|", "mean", True, {
        "mean_over_topology_ms": "mean IPDV at most the topology's jitter plus this (ms)",
    }, zero_base=0.001, probe="latency", ab_margin="0.05"),
    Metric("tcp_throughput", "Mbit/s", "TCP throughput received", "total", False, {
        "min_fraction_of_rate": "received at least this share of the circuit's rate (0..1)",
        "min_mbit": "received at least this (Mbit/s) where the circuit has no rate",
    }, probe="tcp", ab_margin="1%"),
    Metric("udp_throughput", "Mbit/s", "UDP throughput received", "total", False, {
        "min_fraction_of_offered": "received rate at least this share of the offered rate (0..1)",
        "max_loss_pct": "loss at most the circuit's emulated loss plus this (%)",
    }, probe="udp", ab_margin="1%"),
    Metric("udp_loss", "%", "UDP packets lost", "mean", True, test="test_udp_throughput", probe="udp",
           ab_margin="0.5"),
    Metric("stream_jitter", "ms", "RFC 3550 interarrival jitter per client", "p99", True, {
        "max_p99_ms": "99th percentile of the clients' RFC 3550 jitter at most this (ms)",
    }, zero_base=0.001, streaming=True, probe="stream"),
    Metric("stream_bitrate", "kbit/s", "bitrate received per client", "mean", False, {
        "min_fraction_of_nominal": "every client receives at least this share of the clip's bitrate (0..1)",
    }, streaming=True, probe="stream"),
    Metric("stream_loss", "%", "RTP packets lost per client", "mean", True, {
        "max_pct": "every client's loss at most the circuit's emulated loss plus this (%)",
    }, streaming=True, probe="stream"),
    Metric("stream_ttff", "ms", "time to first frame per client", "mean", True, zero_base=0.001, streaming=True,
           probe="stream"),
]
FAULT_METRICS = [
    Metric("outage_ms", "ms", "longest time without a reply on the affected circuit", "max", True, {
        "max_over_down_ms": "the longest outage at most the fault's longest down time plus this (ms)",
    }, fault=True),
    Metric("detour_rtt", "ms", "RTT of round trips begun and answered while the fault was on", "mean", True,
           fault=True),
    Metric("fault_lost", "requests", "probe requests lost while the fault was on", "max", True, fault=True),
    Metric("recovery_ms", "ms", "from the last heal to the first reply", "max", True, {
        "max_ms": "the first reply at most this long after the heal (ms)",
    }, fault=True),
    Metric("recovery_level_ms", "ms", "from the last heal to RTT back within 1 ms of its level before the fault",
           "max", True, {"max_ms": "RTT back to its level at most this long after the heal (ms)"}, fault=True),
    Metric("fault_goodput", "Mbit/s", "TCP goodput per interval while the fault was on", "mean", False, {
        "min_fraction_of_before": "mean goodput during the fault at least this share of before it (0..1)",
    }, fault=True),
]
_ALL += FAULT_METRICS
LOAD_METRICS = [
    Metric("load_latency", "ms", "RTT under load (TCP flows both ways on the circuit)", "p50", True, {
        "max_induced_over_buffer_ms": "median RTT under load at most the idle median plus the path's link buffers "
                                      "(both ways) plus this (ms): latency beyond the links' own queues",
    }, zero_base=0.001, load=True),
    Metric("load_goodput", "Mbit/s", "TCP goodput of the flows under load, summed", "total", False, {
        "min_fraction_of_rate": "each direction's summed goodput at least this share of the circuit's rate (0..1)",
        "min_mbit": "where the circuit has no rate: each direction's summed goodput at least this (Mbit/s)",
        "min_fairness": "Jain's fairness index of the flows of each direction at least this (1/n..1)",
    }, load=True),
]
_ALL += LOAD_METRICS
PMTU_METRICS = [
    Metric("path_mtu", "bytes", "largest IP packet carried end to end with DF set", "min", False, {
        "min_bytes": "the largest packet carried at least this (bytes); a bulk TCP transfer that black-holes "
                     "fails whatever its size",
    }, zero_base=1.0, probe="pmtu", test="test_path_mtu"),
]
_ALL += PMTU_METRICS
METRICS: dict[str, Metric] = {m.name: m for m in _ALL}


def measured_by(test: str) -> list[str]:
    """The metrics a suite test measures, by the test function's name."""
    return [m.name for m in _ALL if m.test == test]


def get(name: str) -> Metric:
    return METRICS[name]
