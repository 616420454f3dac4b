"""The streaming experiment: a real GStreamer RTSP server, real RTSP/RTP clients, over UDP
and TCP-interleaved, and clear errors when the stream cannot be had."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pytest_overlay.inputs import topology
from pytest_overlay.measure import streaming, validity
from pytest_overlay.measure.probes import ProbeError
from pytest_overlay.overlays.host import HostOverlay
from pytest_overlay.testbeds.emulated import EmulatedTestbed

from ..conftest import QUICK, run_suites


def test_levels_over_udp_and_tcp(tmp_path, clean_machine):
    out = tmp_path / "stream.json"
    run = run_suites("suites/", *QUICK, "-m", "streaming", "--overlay-concurrency=1,5",
                     "--overlay-stream-transport=udp,tcp", f"--overlay-json={out}", "-rA")
    run.passed()
    for test_id in ("host-udp-1", "host-udp-5", "host-tcp-1", "host-tcp-5"):
        assert f"PASSED suites/test_streaming.py::test_streaming[{test_id}]" in run.output
    assert "Streaming: H.264 over RTSP/RTP from A to B" in run.output
    records = json.loads(out.read_text())["results"]
    bitrate = [r for r in records if r["metric"] == "stream_bitrate" and r["concurrency"] == 5]
    assert {r["transport"] for r in bitrate} == {"udp", "tcp"}
    for r in bitrate:
        assert r["stats"]["n"] == 5  # one sample per client
        assert r["stats"]["min"] >= 0.9 * r["extra"]["nominal_kbit"]
        assert r["extra"]["client_cpu_pct"] < validity.CPU_BOUND_PCT
    ttff = [r for r in records if r["metric"] == "stream_ttff" and r["transport"] == "udp"]
    assert all(r["stats"]["min"] >= 20 for r in ttff)  # at least the 20 ms round trip of PLAY


def test_rtsp_error_names_the_stream_and_site(clean_machine):
    clip = streaming.encode_clip(1000, 22)
    with EmulatedTestbed(topology.load("local")) as bed:
        a, b = HostOverlay(bed).endpoints(["A", "B"])
        server = streaming.start_server(b, clip)
        try:
            wrong = dataclasses.replace(server, url=server.url.replace("/stream", "/nothing"))
            with pytest.raises(ProbeError) as error:
                streaming.watch(a, wrong, 2, 2, "udp")
        finally:
            server.daemon.stop()
    message = str(error.value)
    assert f"stream {wrong.url} from B to A" in message
    assert "DESCRIBE" in message and "404 Not Found" in message


def test_no_server_is_a_clear_error(clean_machine):
    clip = streaming.encode_clip(1000, 22)
    with EmulatedTestbed(topology.load("local")) as bed:
        a, b = HostOverlay(bed).endpoints(["A", "B"])
        server = streaming.start_server(b, clip)
        server.daemon.stop()
        with pytest.raises(ProbeError, match="cannot connect to rtsp://198.18.0.2:8554/stream: .*Connection refused"):
            streaming.watch(a, server, 1, 2, "udp")
