"""The link emulator measured, in one run: configured vs measured RTT on idle links, TCP and
UDP throughput with and without emulation on the same path, and the GÉANT testbed's
bring-up and teardown times.

    .venv/bin/python benchmarks/fidelity.py [--samples N] [--duration S] [--udp-rate MBIT] [--only PART]
"""

from __future__ import annotations

import argparse
import re
import statistics

from pytest_overlay.emulation import emulator
from pytest_overlay.inputs import topology
from pytest_overlay.measure import machine, probes
from pytest_overlay.overlays.host import HostOverlay
from pytest_overlay.results import Stats
from pytest_overlay.testbeds.emulated import EmulatedTestbed


def two_sites(rtt_ms: float) -> topology.Topology:
    return topology.parse(
        {"name": f"bench{rtt_ms:g}", "sites": {"A": {}, "B": {}}, "links": [{"between": ["A", "B"], "rtt_ms": rtt_ms}]},
        f"<benchmark {rtt_ms:g} ms>",
    )


def ping_mean(bed: EmulatedTestbed, count: int) -> tuple[float, int]:
    out = bed.run("A", ["ping", "-q", "-n", "-c", str(count), "-i", "0.005", bed.address("B")]).check().stdout
    received = int(re.search(r"(\d+) received", out).group(1))
    return float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1)), received


def probed(a, b, samples: int) -> Stats:
    """The latency probe's round trips as a measurement takes them: the PM QoS request held."""
    with machine.awake(0):
        return Stats.of(probes.LATENCY.run(a, b, samples, 5).rtt_ms)


def latency(args) -> None:
    with EmulatedTestbed(two_sites(0), emulator="none") as bed:
        a, b = HostOverlay(bed).endpoints(["A", "B"])
        base = probed(a, b, args.samples)
        base_ping, _ = ping_mean(bed, args.samples)
    print(f"path with no emulator: irtt mean {base.mean:.3f} ms, p99-min {base.p99 - base.min:.3f} ms (n={base.n}); "
          f"ping mean {base_ping:.3f} ms (n={args.samples})")
    print(f"{'configured':>10} {'n':>5} {'min':>8} {'mean':>8} {'p99':>8} {'mean err':>9} "
          f"{'err - path':>10} {'p99-min':>8} {'ping n':>6} {'ping err':>9}   (ms; irtt unless marked ping)")
    for rtt in (5, 20, 60, 150):
        with EmulatedTestbed(two_sites(rtt)) as bed:
            a, b = HostOverlay(bed).endpoints(["A", "B"])
            s = probed(a, b, args.samples)
            pinged, received = ping_mean(bed, args.samples)
        print(f"{rtt:>10} {s.n:>5} {s.min:8.3f} {s.mean:8.3f} {s.p99:8.3f} {s.mean - rtt:+9.3f} "
              f"{s.mean - rtt - base.mean:+10.3f} {s.p99 - s.min:8.3f} {received:>6} {pinged - rtt:+9.3f}")


def throughput(args) -> None:
    print(f"\nthroughput A -> B, {args.duration:g} s per run after 1 s warm-up (iperf3), "
          f"UDP offered {args.udp_rate:g} Mbit/s:")
    for label, rtt, kind in (("no emulation", 0, "none"), ("36 ms RTT, delay line", 36, "delayline")):
        with EmulatedTestbed(two_sites(rtt), emulator=kind) as bed:
            a, b = HostOverlay(bed).endpoints(["A", "B"])
            before = bed.emulator_counters(reset=True)
            tcp = probes.TCP.run(a, b, args.duration)
            udp = probes.UDP.run(a, b, args.duration, udp_rate_mbit=args.udp_rate)
            accrued = emulator.delta(before, bed.emulator_counters())
        dropped = sum(c.get("dropped", 0) for c in accrued.values())
        late = sum(c.get("late", 0) for c in accrued.values())
        packets = sum(c.get("packets", 0) for c in accrued.values())
        print(f"  {label:>22}: TCP {tcp.total_mbit:7.0f} Mbit/s (n={len(tcp.mbit)} intervals, "
              f"{tcp.retransmits} retransmits); UDP {udp.total_mbit:5.0f} Mbit/s received, loss {udp.lost_pct:.3f} % "
              f"of {udp.extra['packets']} packets; emulator: {dropped} dropped, {late} late of {packets} packets")


def bring_up(args) -> None:
    geant = topology.load("geant")
    ups, downs = [], []
    for _ in range(args.rounds):
        bed = EmulatedTestbed(geant)
        with bed:
            pass
        ups.append(bed.timings["up_s"])
        downs.append(bed.timings["down_s"])
    print(f"\ngeant.yaml testbed (4 sites, 6 links, delay line): bring-up median {statistics.median(ups):.3f} s "
          f"(max {max(ups):.3f}), teardown median {statistics.median(downs):.3f} s (max {max(downs):.3f}), "
          f"n={args.rounds} rounds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000, help="round trips per latency measurement")
    parser.add_argument("--duration", type=float, default=8, help="seconds per throughput run")
    parser.add_argument("--udp-rate", type=float, default=500, help="offered UDP rate, Mbit/s")
    parser.add_argument("--rounds", type=int, default=10, help="bring-up/teardown rounds")
    parser.add_argument("--only", choices=("latency", "throughput", "bring-up"), default=None,
                        help="run one part only (default: all three)")
    args = parser.parse_args()
    for part, run in (("latency", latency), ("throughput", throughput), ("bring-up", bring_up)):
        if args.only in (None, part):
            run(args)


if __name__ == "__main__":
    main()
