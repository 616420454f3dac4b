"""How bring-up, teardown, memory and measuring grow with the number of sites: full meshes of
4 to 20 sites (generated over real cities), the underlay and each overlay asked for.

    python benchmarks/scale.py [--sites 4,8,12,16,20] [--overlays host,libnetwork]
                               [--circuits 10] [--samples 100] [--out scale]

Per size and overlay: the testbed's bring-up and teardown, the overlay's, the memory the
machine used with it up (MemTotal - MemAvailable, over what it used before), and the time to
measure the latency of `--circuits` sampled circuits (0: every pair), with how many of them
the emulator could vouch for. Prints a table, the time each added site costs, and where it
grows faster than linearly; writes scale.json and scale.png to --out.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from pytest_overlay import overlays
from pytest_overlay.emulation import emulator as emu
from pytest_overlay.inputs import generate, topology
from pytest_overlay.measure import probes, validity
from pytest_overlay.results import thresholds
from pytest_overlay.testbeds.emulated import EmulatedTestbed


def used_mib() -> float:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])
    return kib / 1024


def measure(bed: EmulatedTestbed, overlay, pairs: list[topology.Circuit], samples: int) -> tuple[float, int]:
    """Latency of each circuit through the overlay, one after another; how long it took and
    how many the emulator's per-sample accounting (the suites' rules) kept valid."""
    limits = thresholds.load(None)
    started, valid = time.monotonic(), 0
    for circuit in pairs:
        src, dst = overlay.endpoints([circuit.src, circuit.dst])
        t0 = time.time_ns()
        before = bed.emulator_counters(reset=True)
        result = probes.LATENCY.run(src, dst, samples, 10.0, 1, 10)
        accrued = emu.delta(before, bed.emulator_counters(since=t0))
        there = bed.topology.path_between(circuit.src, circuit.dst)

        def hops(sites: list[str]) -> list[validity.Hop]:
            return [validity.Hop(f"{a}->{b}", d.delay_ms, d.jitter_ms)
                    for a, b in zip(sites, sites[1:]) for d in [bed.topology.link_between(a, b).direction(a)]]

        rules = limits.for_(thresholds.VALIDITY, overlay.name, circuit.id)
        valid += not validity.account("latency", accrued, hops(there), hops(there[::-1]), result, rules).faults
    return time.monotonic() - started, valid


def run_size(sites: int, names: list[str], circuits: int, samples: int, directory: Path) -> list[dict]:
    path = directory / f"mesh{sites}.yaml"
    generate.write(generate.Spec("mesh", sites), path, f"benchmarks/scale.py --sites {sites}")
    topo = topology.load(path)
    pairs = [topology.Circuit(a, b) for i, a in enumerate(topo.sites) for b in list(topo.sites)[i + 1:]]
    if circuits:
        pairs = random.Random(sites).sample(pairs, min(circuits, len(pairs)))
    rows = []
    base = used_mib()
    started = time.monotonic()
    bed = EmulatedTestbed(topo)
    bed.__enter__()
    testbed_up = time.monotonic() - started
    try:
        for name in names:
            overlay = overlays.get(name)(bed)
            before = used_mib()
            started = time.monotonic()
            try:
                overlay.up()
                up_s, error = time.monotonic() - started, ""
                memory = used_mib() - base
                measure_s, valid = measure(bed, overlay, pairs, samples)
            except Exception as e:  # noqa: BLE001  (shown in its row; the next overlay goes on)
                up_s, memory, measure_s, valid = time.monotonic() - started, used_mib() - before, 0.0, 0
                error = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            started = time.monotonic()
            overlay.down()
            rows.append({"sites": sites, "links": len(topo.links), "overlay": name, "testbed_up_s": round(testbed_up, 2),
                         "up_s": round(up_s, 2), "down_s": round(time.monotonic() - started, 2),
                         "memory_mib": round(memory), "circuits": len(pairs), "valid": valid,
                         "measure_s": round(measure_s, 1), "error": error})
            print(_line(rows[-1]), flush=True)
    finally:
        started = time.monotonic()
        bed.__exit__(None, None, None)
        for row in rows:
            row["testbed_down_s"] = round(time.monotonic() - started, 2)
    return rows


def _line(r: dict) -> str:
    return (f"{r['sites']:>5} {r['links']:>5}  {r['overlay']:<11} testbed {r['testbed_up_s']:>5.1f} s  up {r['up_s']:>6.1f} s"
            f"  down {r['down_s']:>5.1f} s  memory {r['memory_mib']:>6} MiB  {r['circuits']} circuits in "
            f"{r['measure_s']:>6.1f} s ({r['valid']} valid)" + (f"  {r['error']}" if r["error"] else ""))


def growth(rows: list[dict], key: str) -> str:
    """Seconds (or MiB) per added site between successive sizes, and whether the last step
    costs more than twice the first per site: faster than linear."""
    points = sorted((r["sites"], r[key]) for r in rows)
    if len(points) < 2:
        return "-"
    slopes = [(b - a) / (m - n) for (n, a), (m, b) in zip(points, points[1:])]
    shape = "faster than linear" if slopes[-1] > 2 * max(slopes[0], 1e-9) and slopes[-1] > 0.5 else "about linear"
    return ", ".join(f"{s:+.2f}" for s in slopes) + f" per site ({shape})"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for name in dict.fromkeys(r["overlay"] for r in rows):
        mine = sorted((r for r in rows if r["overlay"] == name and not r["error"]), key=lambda r: r["sites"])
        x = [r["sites"] for r in mine]
        axes[0].plot(x, [r["up_s"] for r in mine], "o-", label=name)
        axes[1].plot(x, [r["memory_mib"] for r in mine], "o-", label=name)
        axes[2].plot(x, [r["measure_s"] / max(r["circuits"], 1) for r in mine], "o-", label=name)
    for ax, what in zip(axes, ("bring-up (s)", "memory used with it up (MiB)", "latency per circuit (s)")):
        ax.set_xlabel("sites (full mesh)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Scale: full meshes of generated sites, one machine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", default="4,8,12,16,20")
    parser.add_argument("--overlays", default="host,libnetwork")
    parser.add_argument("--circuits", type=int, default=10, help="sampled circuits to measure (0: every pair)")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("scale"))
    args = parser.parse_args()
    names = args.overlays.split(",")
    unknown = [n for n in names if n not in overlays.names()]
    if unknown:
        print(f"--overlays: unknown {', '.join(unknown)}; known: {', '.join(overlays.names())}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    print("sites links  overlay", flush=True)
    with tempfile.TemporaryDirectory() as directory:
        for n in (int(s) for s in args.sites.split(",")):
            rows += run_size(n, names, args.circuits, args.samples, Path(directory))
    (args.out / "scale.json").write_text(json.dumps(rows, indent=1))
    for name in names:
        mine = [r for r in rows if r["overlay"] == name and not r["error"]]
        print(f"{name}: bring-up {growth(mine, 'up_s')}; memory MiB {growth(mine, 'memory_mib')}")
    testbed = {r["sites"]: r for r in rows}
    print("underlay testbed up: " + ", ".join(f"{n} sites {r['testbed_up_s']:.1f} s" for n, r in testbed.items()))
    plot(rows, args.out / "scale.png")
    print(f"written: {args.out / 'scale.json'}, {args.out / 'scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
