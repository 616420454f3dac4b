"""TCP and UDP throughput from site to site: the study's "AMS to BRA Throughput" charts."""

import pytest


@pytest.mark.throughput
@pytest.mark.tcp
def test_tcp_throughput(overlay_path):
    tcp = overlay_path.tcp()
    limits = overlay_path.limits("tcp_throughput")
    rate = overlay_path.expected["rate_mbit"]
    floor = rate * limits["min_fraction_of_rate"] if rate else limits["min_mbit"]
    ok = tcp.total >= floor
    overlay_path.judge(tcp, f"total received >= {floor:g} Mbit/s", ok, min_mbit=floor)
    broken = [] if ok else [lambda: overlay_path.why(
        tcp, f"TCP received {tcp.total:.0f} Mbit/s over the run (intervals: mean {tcp.stats.mean:.0f}, "
             f"n={tcp.stats.n}), below {floor:g} Mbit/s", "min_fraction_of_rate" if rate else "min_mbit")]
    overlay_path.conclude([tcp], broken)


@pytest.mark.throughput
@pytest.mark.udp
def test_udp_throughput(overlay_path):
    rate, loss = overlay_path.udp()
    limits = overlay_path.limits("udp_throughput")
    floor = overlay_path.udp_rate * limits["min_fraction_of_offered"]
    max_loss = overlay_path.expected["loss_pct"] + limits["max_loss_pct"]
    rate_ok = rate.total >= floor
    loss_ok = loss.stats.mean <= max_loss
    overlay_path.judge(rate, f"total received >= {floor:g} Mbit/s", rate_ok, min_mbit=floor)
    overlay_path.judge(loss, f"loss <= {max_loss:g} %", loss_ok, max_pct=max_loss)
    broken = [] if rate_ok else [lambda: overlay_path.why(
        rate, f"UDP received {rate.total:.0f} Mbit/s over the run (intervals: mean {rate.stats.mean:.0f}, "
              f"n={rate.stats.n}), below {floor:g} Mbit/s of {overlay_path.udp_rate:g} offered",
        "min_fraction_of_offered")]
    broken += [] if loss_ok else [lambda: overlay_path.why(
        loss, f"UDP loss {loss.stats.mean:.3f} % of {loss.extra['packets']} packets exceeds {max_loss:g} %",
        "max_loss_pct", "udp_throughput")]
    overlay_path.conclude([rate, loss], broken)
