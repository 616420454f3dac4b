"""A real RTSP media server (GStreamer's RTSP server) streaming a pre-encoded H.264 clip.

The clip is encoded once, before anything is measured, so what the clients see is the
network and not the server's encoder. Every client gets its own media pipeline, as a VOD
server does. Runs with the system Python (python3-gi), in a site namespace or in a
measurement container:

    /usr/bin/python3 rtsp_server.py --clip FILE --address ADDR --port 8554

Prints ``ready`` once it listens; SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

MOUNT = "/stream"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=8554)
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( filesrc location={args.clip} ! qtdemux ! "
                       "rtph264pay name=pay0 pt=96 config-interval=1 mtu=1400 )")
    factory.set_shared(False)
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.address}:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
