"""A real RTSP server streaming to a growing number of clients: the study's "Concurrency
Jitter" and "Concurrency Bitrate" charts."""

import pytest


@pytest.mark.streaming
def test_streaming(stream_path):
    jitter, bitrate, loss, _ttff = stream_path.stream()  # time to first frame: recorded, not judged
    max_jitter = stream_path.limits("stream_jitter")["max_p99_ms"]
    min_bitrate = stream_path.nominal_kbit * stream_path.limits("stream_bitrate")["min_fraction_of_nominal"]
    max_loss = stream_path.expected["loss_pct"] + stream_path.limits("stream_loss")["max_pct"]
    jitter_ok, bitrate_ok, loss_ok = jitter.stats.p99 <= max_jitter, bitrate.stats.min >= min_bitrate, \
        loss.stats.max <= max_loss
    stream_path.judge(jitter, f"p99 of clients' jitter <= {max_jitter:g} ms", jitter_ok, max_p99_ms=max_jitter)
    stream_path.judge(bitrate, f"every client >= {min_bitrate:.0f} kbit/s", bitrate_ok, min_kbit=min_bitrate)
    stream_path.judge(loss, f"every client's loss <= {max_loss:g} %", loss_ok, max_pct=max_loss)
    broken = [] if jitter_ok else [lambda: stream_path.why(
        jitter, f"p99 jitter {jitter.stats.p99:.2f} ms over {jitter.stats.n} clients exceeds {max_jitter:g} ms",
        "max_p99_ms")]
    broken += [] if bitrate_ok else [lambda: stream_path.why(
        bitrate, f"slowest of {bitrate.stats.n} clients got {bitrate.stats.min:.0f} kbit/s, below "
                 f"{min_bitrate:.0f} of the clip's {stream_path.nominal_kbit:.0f}", "min_fraction_of_nominal")]
    broken += [] if loss_ok else [lambda: stream_path.why(
        loss, f"worst of {loss.stats.n} clients lost {loss.stats.max:.2f} %, over {max_loss:g} %", "max_pct")]
    stream_path.conclude([jitter, bitrate, loss], broken)
