"""The RTSP client's RTP arithmetic: RFC 3550 jitter across a timestamp wrap, and loss and
reordering across a sequence-number wrap."""

from __future__ import annotations

import pytest

from pytest_overlay.agents.rtsp_client import RTP_CLOCK_HZ, Client, extend_sequence, jitter_step, timestamp_delta


def test_timestamp_delta_crosses_the_32_bit_wrap():
    assert timestamp_delta(0xFFFFFF00, 0x100) == 0x200
    assert timestamp_delta(0x100, 0xFFFFFF00) == -0x200
    assert timestamp_delta(5, 3605) == 3600


def _jitter_ms(timestamps: list[int], arrivals: list[float]) -> float:
    jitter, last_arrival, last_timestamp = 0.0, None, None
    for ts, at in zip(timestamps, arrivals):
        jitter, last_arrival, last_timestamp = jitter_step(jitter, last_arrival, last_timestamp, at, ts)
    return jitter / RTP_CLOCK_HZ * 1000


def test_steady_stream_has_no_jitter_even_across_the_wrap():
    step = RTP_CLOCK_HZ // 25  # 25 frames a second
    timestamps = [(0xFFFFFFFF - 10 * step + i * step) & 0xFFFFFFFF for i in range(40)]
    arrivals = [1000.0 + i / 25 for i in range(40)]
    assert _jitter_ms(timestamps, arrivals) == pytest.approx(0, abs=1e-6)


def test_jitter_converges_to_the_mean_deviation():
    """Arrivals alternately 2 ms late and on time: |D| is always 2 ms, so J tends to 2 ms."""
    step = RTP_CLOCK_HZ // 25
    timestamps = [(0xFFFF0000 + i * step) & 0xFFFFFFFF for i in range(400)]  # wraps early on
    arrivals = [i / 25 + (0.002 if i % 2 else 0) for i in range(400)]
    assert _jitter_ms(timestamps, arrivals) == pytest.approx(2.0, rel=1e-3)


def test_sequence_extension_counts_a_wrap_forward_and_a_late_packet_backward():
    assert extend_sequence(65534, 1) == 65537
    assert extend_sequence(65537, 65535) == 65535
    assert extend_sequence(100, 99) == 99
    assert extend_sequence(100, 101) == 101


def _packet(seq: int, timestamp: int, marker: bool = False) -> bytes:
    return bytes([0x80, 0x60 | (0x80 if marker else 0)]) + seq.to_bytes(2, "big") + timestamp.to_bytes(4, "big") \
        + b"\0" * 4 + b"x" * 100


def test_client_report_across_a_sequence_wrap_with_one_loss_and_one_reorder():
    client = Client.__new__(Client)  # no connection: only the RTP bookkeeping is under test
    client.index, client.play_sent, client.first_frame = 0, 99.0, None
    client.packets = client.bytes = client.reordered = 0
    client.base_seq, client.max_ext_seq = None, -1
    client.jitter, client.last_arrival, client.last_timestamp = 0.0, None, None
    client.first_packet = client.last_packet = None
    sequence = [65530, 65531, 65532, 65534, 65533, 65535, 0, 1, 3, 4]  # 2 is lost, 65533 late
    for i, seq in enumerate(sequence):
        client.on_rtp(_packet(seq, (0xFFFFFF00 + i * 3600) & 0xFFFFFFFF, marker=i == 0), 100.0 + i * 0.04)
    report = client.report()
    assert report["packets"] == 10 and report["reordered"] == 1
    assert report["loss_pct"] == pytest.approx(1 / 11 * 100)
    assert report["jitter_ms"] == pytest.approx(0, abs=1e-6)
    assert report["ttff_ms"] == pytest.approx(1000)
