"""Latency under load (flent's RRUL) through each overlay: the RTT idle and beside TCP flows in
both directions, and the flows' goodput. Runs only when selected (-m load)."""

import pytest


@pytest.mark.load
def test_load(load_path):
    records = load_path.run()
    latency, goodput = records["load_latency"], records["load_goodput"]
    broken = []
    extra = latency.extra
    allowed = load_path.buffer_ms + load_path.limits("load_latency")["max_induced_over_buffer_ms"]
    ok = extra["induced_p50_ms"] <= allowed
    load_path.judge(latency, f"median RTT under load at most {allowed:g} ms over idle", ok, max_induced_ms=allowed)
    if not ok:
        broken.append(load_path.why(latency, f"median RTT under load {latency.stats.p50:.1f} ms is "
                                             f"{extra['induced_p50_ms']:.1f} ms over idle ({extra['idle']['p50']:.1f} ms; "
                                             f"n = {latency.stats.n} and {extra['idle']['n']}), beyond the path's "
                                             f"buffers ({load_path.buffer_ms:g} ms both ways) plus the allowance",
                                    "max_induced_over_buffer_ms"))
    limits = load_path.limits("load_goodput")
    rate = load_path.expected["rate_mbit"]
    floor = limits["min_fraction_of_rate"] * rate if rate else limits["min_mbit"]
    by_direction = goodput.extra["direction_mbit"]
    fair = goodput.extra["fairness"]
    ok = all(v >= floor for v in by_direction.values()) and all(f >= limits["min_fairness"] for f in fair.values())
    load_path.judge(goodput, f"each direction >= {floor:.3g} Mbit/s and Jain's index >= {limits['min_fairness']:g}",
                    ok, min_mbit=floor, min_fairness=limits["min_fairness"])
    for direction, mbit in by_direction.items():
        if mbit < floor:
            broken.append(load_path.why(goodput, f"{direction} flows carried {mbit:.1f} Mbit/s in all, under "
                                                 f"{floor:.3g} Mbit/s", "min_fraction_of_rate" if rate else "min_mbit"))
        if fair[direction] < limits["min_fairness"]:
            broken.append(load_path.why(goodput, f"{direction} flows' Jain's index {fair[direction]:.2f} (flows: "
                                                 f"{goodput.extra['per_flow_mbit'][direction]} Mbit/s) is under "
                                                 f"{limits['min_fairness']:g}", "min_fairness"))
    load_path.conclude(list(records.values()), broken)
