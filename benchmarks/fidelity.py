"""Emulator fidelity and throughput, as the issue's benchmark asks: configured vs measured RTT
on idle links, and TCP/UDP throughput with and without emulation on the same path, in one run.

    python benchmarks/fidelity.py [--samples N] [--duration S]
"""

from __future__ import annotations

import argparse
import statistics

from pytest_overlay import probes, topology
from pytest_overlay.overlays import HostOverlay
from pytest_overlay.results import Stats
from pytest_overlay.testbed import EmulatedTestbed


def two_sites(rtt_ms: float) -> topology.Topology:
    return topology.parse(
        {"name": f"bench{rtt_ms:g}", "sites": {"A": {}, "B": {}}, "links": [{"between": ["A", "B"], "rtt_ms": rtt_ms}]},
        f"<benchmark {rtt_ms:g} ms>",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--udp-rate", type=float, default=500)
    args = parser.parse_args()
    print(f"{'configured RTT ms':>18} {'n':>5} {'min':>8} {'mean':>8} {'p99':>8} {'mean err':>9} {'p99-min':>8}")
    for rtt in (5, 20, 60, 150):
        with EmulatedTestbed(two_sites(rtt)) as bed:
            a, b = HostOverlay(bed).endpoints(["A", "B"])
            s = Stats.of(probes.latency(a, b, args.samples, 5).rtt_ms)
            print(f"{rtt:>18} {s.n:>5} {s.min:8.3f} {s.mean:8.3f} {s.p99:8.3f} {s.mean - rtt:+9.3f} {s.p99 - s.min:8.3f}")
    print(f"\nthroughput over A-B, {args.duration:g} s per run after 1 s warm-up (iperf3):")
    for rtt in (0, 36):
        with EmulatedTestbed(two_sites(rtt)) as bed:
            a, b = HostOverlay(bed).endpoints(["A", "B"])
            before = bed.emulator_counters()
            tcp = probes.throughput(a, b, "tcp", args.duration)
            udp = probes.throughput(a, b, "udp", args.duration, udp_rate_mbit=args.udp_rate)
            after = bed.emulator_counters()
            dropped = sum(v.get("dropped", 0) for k, v in after.items()) - sum(v.get("dropped", 0) for v in before.values())
            print(f"  RTT {rtt:>3} ms: TCP {tcp.total_mbit:8.0f} Mbit/s (mean of {len(tcp.mbit)} intervals "
                  f"{statistics.mean(tcp.mbit):.0f}, {tcp.retransmits} retransmits); "
                  f"UDP {udp.total_mbit:6.0f} Mbit/s received of {args.udp_rate:g} offered, "
                  f"loss {udp.lost_pct:.3f} % of {udp.extra['packets']} packets; emulator drops {dropped}")


if __name__ == "__main__":
    main()
