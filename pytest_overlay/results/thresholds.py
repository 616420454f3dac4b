"""Threshold files: the limits each metric's test asserts, per metric, overlay and circuit.

The bundled ``data/thresholds.yaml`` holds the defaults; a file given with ``--overlay-thresholds``
replaces any of them it sets, and the rest stay. Limits are relative to what the topology
promises (its RTT, jitter and rate), so one file serves every topology. Errors name the
file, line and field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..inputs.model import SITE_NAME
from ..inputs.yamlfile import Checker, InputError, LineDict, line_of, load_yaml
from ..kinds import names as overlay_names
from ..paths import DATA
from .metrics import METRICS

CIRCUIT = re.compile(f"({SITE_NAME.pattern[1:-1]})-({SITE_NAME.pattern[1:-1]})")

DEFAULT_PATH = DATA / "thresholds.yaml"

# metric -> its settings and what each means (shown in errors); every metric takes
# regression_pct, and the point-to-point ones a limit relative to the underlay.
SETTINGS: dict[str, dict[str, str]] = {name: metric.limits() for name, metric in METRICS.items()}
# When a measurement cannot be vouched for (INVALID), per kind of probe.
VALIDITY = "validity"
SETTINGS[VALIDITY] = {
    "max_excluded_share_latency": "share of a latency run's round trips that may be excluded (and are replaced by "
                                  "more) because the emulator released late or "
                                  "dropped on their path while they crossed it (0..1)",
    "max_excluded_share_throughput": "... of a TCP round's intervals; beyond, the round is replaced whole (0..1)",
    "max_excluded_share_udp": "... of a UDP run's intervals; below, they are replaced by more, beyond, the run whole "
                              "(0..1)",
    "max_excluded_share_faults": "... of a WAN fault scenario's round trips, whose figures are gaps and times at "
                                 "the probe's 10 ms resolution (0..1)",
    "max_excluded_share_load": "... of a latency-under-load run's round trips, whose headline is the median (0..1)",
    "max_late_share_load": "share of a latency-under-load run's loaded time the emulator may spend releasing late "
                           "or dropping on the circuit's path before the flows' summed goodput is its doing (0..1)",
    "max_late_share_interval": "a throughput interval is excluded where the emulator's late or drop windows on its "
                               "path cover more than this share of it (0..1)",
    "max_probe_wait_ms": "a round trip is excluded where a thread of its irtt client or server waited longer "
                         "than this for a CPU around the moment it handled it (ms)",
    "max_stall_ms_tcp": "longest late release on a TCP run's path before its congestion control is the "
                        "emulator's doing, not the network's (ms)",
    "max_late_share_stream": "share of the stream's own packets the emulator may release over 1 ms late, judged "
                             "by the lower 95 % bound (0..1)",
    "min_sent_fraction_udp": "share of the offered UDP rate the sender must put on the wire, else the run is the "
                             "sender's limit, not the network's (0..1)",
    "max_receiver_dropped_share_udp": "share of a UDP run's datagrams the receiver's socket may drop (its buffer "
                                      "full while iperf3 waited for a CPU) before the rate is the receiver's, not "
                                      "the path's; any such drop makes the loss figure INVALID (0..1)",
    "max_client_cpu_pct": "CPU share of one core the RTSP clients may use before their delays pass for jitter (%)",
}
TOP_KEYS = set(SETTINGS) | {"overrides"}


@dataclass(frozen=True)
class Thresholds:
    path: str
    defaults: dict[str, dict[str, float]]
    overrides: list[dict]
    sources: dict[tuple[str, str], str] = field(default_factory=dict)  # (metric, setting) -> file:line

    def source(self, metric: str, key: str, overlay: str, circuit: str) -> str:
        """Where the limit in force came from: the last matching override, else the file and
        line that set the metric's default."""
        where = self.sources.get((metric, key), self.path)
        for i, o in enumerate(self.overrides):
            if o["metric"] == metric and key in o["settings"] and o.get("overlay", overlay) == overlay \
                    and o.get("circuit", circuit) == circuit:
                where = f"{self.path}:{o.get('line')} (overrides[{i}])"
        return f"{metric}.{key} in {where}"

    def check_circuits(self, circuits: list[str]) -> None:
        """Overrides may name only circuits the topology has: one that names another is a
        typo whose limit would silently never apply."""
        for o in self.overrides:
            if "circuit" in o and o["circuit"] not in circuits:
                raise InputError(self.path, o.get("line"), "overrides.circuit",
                                 f"the topology has no circuit {o['circuit']!r}; circuits: {', '.join(circuits)}")

    def for_(self, metric: str, overlay: str, circuit: str) -> dict[str, float]:
        """The settings of one metric, with every matching override applied in file order."""
        settings = dict(self.defaults.get(metric, {}))
        for o in self.overrides:
            if o["metric"] == metric and o.get("overlay", overlay) == overlay and o.get("circuit", circuit) == circuit:
                settings.update(o["settings"])
        return settings


def load(path: str | Path | None = None) -> Thresholds:
    path = Path(path) if path else DEFAULT_PATH
    data = load_yaml(path)
    check = Checker(path)
    if not isinstance(data, dict):
        raise InputError(path, line_of(data), "", "a thresholds file must be a mapping of metric names")
    check.keys(data, TOP_KEYS, "")
    bundled = None if path == DEFAULT_PATH else load(DEFAULT_PATH)
    defaults = {m: dict(v) for m, v in bundled.defaults.items()} if bundled else {}
    sources = dict(bundled.sources) if bundled else {}
    for metric in SETTINGS:
        if metric in data:
            defaults.setdefault(metric, {}).update(_settings(check, data, metric, metric))
            sources.update({(metric, key): f"{path}:{line_of(data[metric], key)}" for key in data[metric]})
    overrides = []
    raw = data.get("overrides", [])
    if not isinstance(raw, list):
        raise check.fail(data, "overrides", "overrides", "must be a list of {metric, overlay?, circuit?, setting: value}")
    for i, item in enumerate(raw):
        where = f"overrides[{i}]"
        check.mapping(item, where, raw)
        metric = item.get("metric")
        if not isinstance(metric, str) or metric not in SETTINGS:
            raise check.fail(item, "metric", f"{where}.metric", f"must be one of {', '.join(SETTINGS)}, got {metric!r}")
        body = LineDict({k: v for k, v in item.items() if k not in ("metric", "overlay", "circuit")})
        body.line, body.key_lines = item.line, item.key_lines
        override = {"metric": metric, "settings": _settings(check, LineDict({metric: body}), metric, where, body)}
        for key in ("overlay", "circuit"):
            if key in item:
                if not isinstance(item[key], str):
                    raise check.fail(item, key, f"{where}.{key}", f"must be a name, got {item[key]!r}")
                override[key] = item[key]
        if "overlay" in override and override["overlay"] not in overlay_names():
            raise check.fail(item, "overlay", f"{where}.overlay",
                             f"unknown overlay {override['overlay']!r}; overlays: {', '.join(overlay_names())}")
        if "circuit" in override and not CIRCUIT.fullmatch(override["circuit"]):
            raise check.fail(item, "circuit", f"{where}.circuit", f"must be SRC-DST (two site names), "
                                                                  f"got {override['circuit']!r}")
        override["line"] = line_of(item)
        overrides.append(override)
    return Thresholds(str(path), defaults, overrides, sources)


def _settings(check: Checker, data: Any, metric: str, where: str, body: Any = None) -> dict[str, float]:
    body = body if body is not None else check.mapping(data[metric], where, data, metric)
    allowed = SETTINGS[metric]
    out = {}
    for key in body:
        if key not in allowed:
            raise check.fail(body, key, f"{where}.{key}",
                             "unknown setting; allowed: " + "; ".join(f"{k} ({v})" for k, v in allowed.items()))
        share = metric == VALIDITY and allowed[key].endswith("(0..1)")
        out[key] = check.number(body, key, f"{where}.{key}", maximum=1.0 if share else math.inf)
    return out
