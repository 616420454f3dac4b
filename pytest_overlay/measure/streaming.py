"""The streaming experiment's probe: a real RTSP server at one site, N concurrent clients at
another, the clip encoded once beforehand (and cached)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import procs
from ..paths import CACHE
from ..testbeds.contract import host_port
from .probes import STREAM, Endpoint, ProbeError

SYSTEM_PYTHON = "/usr/bin/python3"  # python3-gi lives there, not in the virtualenv
PORT = 8554
# GStreamer scans its plugins on its first start in a fresh container: seconds, more on a busy machine.
SERVER_READY_S = 60.0


def missing() -> list[str]:
    """What the streaming experiment needs and this machine lacks, with the package to install."""
    out = STREAM.check()
    check = procs.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                       "from gi.repository import GstRtspServer"], timeout=30)
    if not check.ok:
        out.append("GStreamer's RTSP server for Python (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0)")
    for element, package in (("x264enc", "gstreamer1.0-plugins-ugly"), ("rtph264pay", "gstreamer1.0-plugins-good"),
                             ("qtdemux", "gstreamer1.0-plugins-good")):
        if shutil.which("gst-inspect-1.0") and not procs.run(["gst-inspect-1.0", element], timeout=30).ok:
            out.append(f"GStreamer element {element} (apt-get install {package})")
    return out


@dataclass(frozen=True)
class Clip:
    path: Path
    seconds: int

    @property
    def kbit(self) -> float:
        """What the clip really carries (its size over its length), not what the encoder was asked for."""
        return self.path.stat().st_size * 8 / self.seconds / 1000


def encode_clip(kbit: int, seconds: int, cache: Path | None = None) -> Clip:
    """An H.264 test clip at `kbit` kbit/s lasting `seconds`, encoded once and kept. Noise,
    so the encoder spends the whole bitrate on every frame."""
    cache = cache or CACHE
    clip = Clip(cache / f"clip-snow-{kbit}kbit-{seconds}s.mp4", seconds)
    if clip.path.exists():
        return clip
    cache.mkdir(parents=True, exist_ok=True)
    tmp = clip.path.with_name(f".{clip.path.stem}.{os.getpid()}.tmp.mp4")  # two runs may encode at once
    procs.run(["gst-launch-1.0", "-q", "-e", "videotestsrc", f"num-buffers={seconds * 25}", "pattern=snow",
               "!", "video/x-raw,width=640,height=360,framerate=25/1", "!",
               "x264enc", f"bitrate={kbit}", "speed-preset=ultrafast", "key-int-max=50", "pass=cbr", "!",
               "video/x-h264,profile=baseline", "!", "mp4mux", "!", "filesink", f"location={tmp}"],
              timeout=600).check()
    tmp.replace(clip.path)
    return clip


@dataclass
class StreamServer:
    daemon: procs.Daemon
    url: str
    site: str
    clip: Clip


@dataclass
class StreamSamples:
    """What the clients of one level reported, and their CPU use."""

    reports: list[dict]
    cpu_pct: float
    seconds: float
    tool: str = "rtsp_client (RTSP/RTP, RFC 3550) against GStreamer's RTSP server"


def start_server(endpoint: Endpoint, clip: Clip) -> StreamServer:
    daemon = endpoint.start("rtsp-server", [SYSTEM_PYTHON, endpoint.agent("rtsp_server.py"), "--clip",
                                            endpoint.file(clip.path), "--address", endpoint.address,
                                            "--port", str(PORT)], ready="ready",
                            timeout=SERVER_READY_S)
    return StreamServer(daemon, f"rtsp://{host_port(endpoint.address, PORT)}/stream", endpoint.name, clip)


def watch(endpoint: Endpoint, server: StreamServer, clients: int, seconds: float, transport: str) -> StreamSamples:
    """Run `clients` concurrent viewers at the endpoint; their per-client reports and CPU use."""
    result = endpoint.run([SYSTEM_PYTHON, endpoint.agent("rtsp_client.py"), server.url, "--clients", str(clients), "--seconds",
                           str(seconds), "--transport", transport, "--bind", endpoint.address],
                          timeout=seconds + 60 + clients)
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise ProbeError(f"RTSP clients at {endpoint.name} for {server.url} failed (exit {result.rc}): "
                         f"{(result.stderr or result.stdout).strip()[-500:]}\nserver log: {server.daemon.log_tail(5)}")
    if data.get("errors"):
        shown = "; ".join(data["errors"][:5]) + (f" (and {len(data['errors']) - 5} more)" if len(data["errors"]) > 5 else "")
        raise ProbeError(f"stream {server.url} from {server.site} to {endpoint.name}: {shown}\n"
                         f"server log: {server.daemon.log_tail(5)}")
    return StreamSamples(data["reports"], data["cpu_pct"], data["seconds"])
