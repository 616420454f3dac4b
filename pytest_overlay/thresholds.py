"""Threshold files: the limits each metric's test asserts, per metric, overlay and circuit.

The bundled ``thresholds.yaml`` holds the defaults; a file given with ``--overlay-thresholds``
replaces any of them it sets, and the rest stay. Limits are relative to what the topology promises (its RTT, jitter and rate), so one
file serves every topology. Errors name the file, line and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .topology import Checker, InputError, LineDict, line_of, load_yaml

DEFAULT_PATH = Path(__file__).resolve().parent / "thresholds.yaml"

# metric -> its settings and what each means (shown in errors)
SETTINGS: dict[str, dict[str, str]] = {
    "latency": {
        "mean_tolerance_ms": "mean RTT within this of the topology's RTT (ms)",
        "mean_tolerance_pct": "... or within this share of it (%), whichever is larger",
        "p99_over_rtt_ms": "99th percentile RTT at most the topology's RTT plus this (ms)",
        "max_over_host_pct": "mean RTT at most this much above the underlay's on the circuit (%)",
        "regression_pct": "mean RTT at most this much worse than in the compared run (%)",
    },
    "jitter": {
        "mean_over_topology_ms": "mean IPDV at most the topology's jitter plus this (ms)",
        "max_over_host_pct": "mean IPDV at most this much above the underlay's (%)",
        "regression_pct": "mean IPDV at most this much worse than in the compared run (%)",
    },
    "tcp_throughput": {
        "min_fraction_of_rate": "received at least this share of the circuit's rate (0..1)",
        "min_mbit": "received at least this (Mbit/s) where the circuit has no rate",
        "min_fraction_of_host": "received at least this share of the underlay's (0..1)",
        "regression_pct": "received at most this much less than in the compared run (%)",
    },
    "udp_throughput": {
        "min_fraction_of_offered": "received rate at least this share of the offered rate (0..1)",
        "max_loss_pct": "loss at most the circuit's emulated loss plus this (%)",
        "min_fraction_of_host": "received at least this share of the underlay's (0..1)",
        "regression_pct": "received at most this much less than in the compared run (%)",
    },
}
SETTINGS.update({
    "stream_jitter": {
        "max_p99_ms": "99th percentile of the clients' RFC 3550 jitter at most this (ms)",
        "regression_pct": "p99 jitter at most this much worse than in the compared run (%)",
    },
    "stream_bitrate": {
        "min_fraction_of_nominal": "every client receives at least this share of the clip's bitrate (0..1)",
        "regression_pct": "mean bitrate at most this much lower than in the compared run (%)",
    },
    "stream_loss": {
        "max_pct": "every client's loss at most the circuit's emulated loss plus this (%)",
    },
})
TOP_KEYS = set(SETTINGS) | {"overrides"}


@dataclass(frozen=True)
class Thresholds:
    path: str
    defaults: dict[str, dict[str, float]]
    overrides: list[dict]

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
    defaults = {} if path == DEFAULT_PATH else {m: dict(v) for m, v in load(DEFAULT_PATH).defaults.items()}
    for metric in SETTINGS:
        if metric in data:
            defaults.setdefault(metric, {}).update(_settings(check, data, metric, metric))
    overrides = []
    raw = data.get("overrides", [])
    if not isinstance(raw, list):
        raise check.fail(data, "overrides", "overrides", "must be a list of {metric, overlay?, circuit?, setting: value}")
    for i, item in enumerate(raw):
        where = f"overrides[{i}]"
        check.mapping(item, where, raw)
        metric = item.get("metric")
        if metric not in SETTINGS:
            raise check.fail(item, "metric", f"{where}.metric", f"must be one of {', '.join(SETTINGS)}, got {metric!r}")
        body = LineDict({k: v for k, v in item.items() if k not in ("metric", "overlay", "circuit")})
        body.line, body.key_lines = item.line, item.key_lines
        override = {"metric": metric, "settings": _settings(check, LineDict({metric: body}), metric, where, body)}
        for key in ("overlay", "circuit"):
            if key in item:
                if not isinstance(item[key], str):
                    raise check.fail(item, key, f"{where}.{key}", f"must be a name, got {item[key]!r}")
                override[key] = item[key]
        overrides.append(override)
    return Thresholds(str(path), defaults, overrides)


def _settings(check: Checker, data: Any, metric: str, where: str, body: Any = None) -> dict[str, float]:
    body = body if body is not None else check.mapping(data[metric], where, data, metric)
    allowed = SETTINGS[metric]
    out = {}
    for key in body:
        if key not in allowed:
            raise check.fail(body, key, f"{where}.{key}",
                             "unknown setting; allowed: " + "; ".join(f"{k} ({v})" for k, v in allowed.items()))
        out[key] = check.number(body, key, f"{where}.{key}")
    return out
