"""WAN faults: how each overlay survives a cut, a partition, a flap, a loss burst and a
reroute, and how fast it recovers. Runs only when selected (-m faults, --overlay-faults)."""

import pytest


@pytest.mark.faults
def test_fault(fault_path):
    records = fault_path.run()
    fault = fault_path.fault
    outage, first, level = records["outage_ms"], records["recovery_ms"], records["recovery_level_ms"]
    broken = []
    down_ms = fault.seconds * 1e3 if fault.kind in ("cut", "partition", "flap") else 0.0
    outage_max = down_ms + fault_path.limits("outage_ms")["max_over_down_ms"]
    outage_ok = outage.stats.max <= outage_max
    fault_path.judge(outage, f"longest outage <= {outage_max:g} ms", outage_ok, max_ms=outage_max)
    if not outage_ok:
        broken.append(fault_path.why(outage, f"longest outage {outage.stats.max:.0f} ms (of {outage.extra['outcome']['sent']} "
                                              f"requests, one per {outage.extra['interval_ms']:g} ms) exceeds "
                                              f"{outage_max:g} ms", "max_over_down_ms"))
    for record in (first, level):
        limit = fault_path.limits(record.metric)["max_ms"]
        ok = not record.extra["censored"] and record.stats.max <= limit
        fault_path.judge(record, f"{record.metric} <= {limit:g} ms", ok, max_ms=limit)
        if not ok:
            seen = (f"not seen within {record.extra['bound_s']:g} s (censored)" if record.extra["censored"]
                    else f"{record.stats.max:.0f} ms")
            broken.append(fault_path.why(record, f"{record.metric} {seen} exceeds {limit:g} ms", "max_ms"))
    goodput = records.get("fault_goodput")
    if goodput is not None and not goodput.extra["before_mbit"]:
        fault_path.judge(goodput, "goodput before the fault to compare with", False)
        broken.append(f"{goodput.overlay} {goodput.circuit} fault_goodput: the TCP transfer carried nothing in "
                      f"the {goodput.extra['before_n']} intervals before the fault, so its goodput during the fault "
                      "has nothing to be a share of: the transfer never got going")
    elif goodput is not None:
        share = fault_path.limits("fault_goodput")["min_fraction_of_before"]
        floor = goodput.extra["before_mbit"] * share
        ok = goodput.stats.mean >= floor
        fault_path.judge(goodput, f"mean goodput during the fault >= {floor:.3g} Mbit/s", ok, min_mbit=floor)
        if not ok:
            broken.append(fault_path.why(goodput, f"mean goodput {goodput.stats.mean:.1f} Mbit/s over "
                                                  f"{goodput.stats.n} intervals is under {floor:.3g} Mbit/s",
                                         "min_fraction_of_before"))
    fault_path.conclude(list(records.values()), broken)
