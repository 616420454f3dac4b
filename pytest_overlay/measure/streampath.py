"""One streaming level through one overlay: N RTSP clients at the circuit's destination,
the server at its source, judged whole (each client's jitter is over the whole run)."""

from __future__ import annotations

from ..results import Record
from . import streaming, validity
from .path import OverlayPath


class StreamPath(OverlayPath):
    """One streaming level: N clients at the circuit's destination, the server at its source."""

    def __init__(self, overlay, circuit, state, test, server: streaming.StreamServer, concurrency: int,
                 transport: str) -> None:
        super().__init__(overlay, circuit, state, test)
        self.server, self.concurrency, self.transport = server, concurrency, transport

    @property
    def nominal_kbit(self) -> float:
        return self.server.clip.kbit

    def stream(self) -> tuple[Record, Record, Record, Record]:
        seconds = self.state.settings.stream_seconds
        kind = f"stream-{self.transport}-{self.concurrency}"
        # A level is judged whole (its statistic is each client's jitter over the whole run): taken again, not topped up.
        measured = self._measure(kind, lambda _: None, once=lambda: self._once(
            kind, lambda: streaming.watch(self.dst, self.server, self.concurrency, seconds, self.transport),
            lambda data: validity.cpu_faults(data.cpu_pct, self.concurrency, self.rules["max_client_cpu_pct"])))
        data = measured.samples
        reports = data.reports
        common = {"nominal_kbit": self.nominal_kbit, "client_cpu_pct": data.cpu_pct, "clients": len(reports),
                  "seconds": data.seconds, "reordered": sum(r["reordered"] for r in reports), "url": self.server.url}
        level = {"concurrency": self.concurrency, "transport": self.transport}
        ttffs = [r["ttff_ms"] for r in reports if r["ttff_ms"] is not None] or [float("nan")]
        return (
            self.record("stream_jitter", [r["jitter_ms"] for r in reports], measured,
                        {**common, "definition": "RFC 3550 interarrival jitter at the end of the run, per client"},
                        **level),
            self.record("stream_bitrate", [r["bitrate_kbit"] for r in reports], measured, common, **level),
            self.record("stream_loss", [r["loss_pct"] for r in reports], measured, common, **level),
            self.record("stream_ttff", ttffs, measured, {**common, "definition": "PLAY to the first frame's last packet"},
                        **level),
        )
