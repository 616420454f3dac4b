"""Path MTU through each overlay: what breaks overlays between sites (MTU black holes) more
often than any delay does."""

import pytest


@pytest.mark.pmtu
def test_path_mtu(overlay_path):
    record = overlay_path.measure("path_mtu")
    found = record.extra["pmtu"]
    least = overlay_path.limits("path_mtu")["min_bytes"]
    big_enough = record.stats.min >= least
    flows = found["tcp"] != "black hole"
    overlay_path.judge(record, f"largest packet >= {least:g} bytes and a bulk TCP transfer not black-holed",
                       big_enough and flows, min_bytes=least)
    broken = [] if flows else [
        f"a bulk TCP transfer is black-holed: the handshake completed, {found['tcp_detail'].get('bytes_acked', 0)} "
        f"bytes were acknowledged in {found['tcp_detail'].get('seconds', 0):g} s with "
        f"{found['tcp_detail'].get('total_retrans', 0)} retransmissions (the sender's MSS "
        f"{found['tcp_detail'].get('snd_mss')}, path MTU {found['tcp_detail'].get('pmtu')}); path MTU discovery: "
        f"{found['discovery']}, the largest packet carried {found['largest']} bytes"]
    broken += [] if big_enough else [lambda: overlay_path.why(
        record, f"the largest packet carried end to end is {record.stats.min:.0f} bytes, below {least:g}",
        "min_bytes")]
    overlay_path.conclude([record], broken)
