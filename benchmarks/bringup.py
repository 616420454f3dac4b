"""Bring an overlay up and down N times on one testbed, quiet or with one core kept busy by
an unrelated process, and report the bring-up and teardown times and every failure.

    python benchmarks/bringup.py [--overlay libnetwork] [--topology geant-star] [--runs 10] [--busy]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from pytest_overlay import overlays
from pytest_overlay.inputs import topology
from pytest_overlay.testbeds.emulated import EmulatedTestbed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overlay", default="libnetwork", choices=overlays.names())
    parser.add_argument("--topology", default="geant-star")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--busy", action="store_true", help="keep one core busy with an unrelated process")
    args = parser.parse_args()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    ups, downs, failures, retries = [], [], [], []

    def retried(message: str) -> None:
        """Show what bring-up had to try again (Docker's own timeouts), and count it."""
        if "trying again" in message or "restarting" in message:
            retries.append(message)
            print(f"  {message}", flush=True)
    try:
        with EmulatedTestbed(topology.load(args.topology), progress=retried) as bed:
            for i in range(1, args.runs + 1):
                overlay = overlays.get(args.overlay)(bed)
                started = time.monotonic()
                try:
                    overlay.up()
                    ups.append(time.monotonic() - started)
                    result = f"up in {ups[-1]:.1f} s"
                except Exception as e:  # noqa: BLE001  (counted and shown, the next run goes on)
                    failures.append(f"run {i}: {type(e).__name__}: {str(e).splitlines()[0]}")
                    result = f"FAILED after {time.monotonic() - started:.1f} s: {failures[-1]}"
                started = time.monotonic()
                overlay.down()
                downs.append(time.monotonic() - started)
                print(f"run {i}/{args.runs}: {result}; down in {downs[-1]:.1f} s", flush=True)
    finally:
        if hog:
            hog.kill()
            hog.wait()
    condition = "one core busy" if args.busy else "quiet"
    print(f"{args.overlay} on {args.topology}, {condition}: {len(ups)} of {args.runs} bring-ups succeeded")
    if ups:
        q = statistics.quantiles(ups, n=4) if len(ups) > 1 else [ups[0]] * 3
        print(f"bring-up s: min {min(ups):.1f}, median {statistics.median(ups):.1f}, q1-q3 {q[0]:.1f}-{q[2]:.1f}, "
              f"max {max(ups):.1f} (n={len(ups)})")
    print(f"teardown s: median {statistics.median(downs):.1f}, max {max(downs):.1f} (n={len(downs)})")
    print(f"steps tried again within a bring-up: {len(retries)}")
    for failure in failures:
        print(failure)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
