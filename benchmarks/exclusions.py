"""Do the round trips a busy machine leaves in bias the figure? The latency suite through the
underlay on the GÉANT mesh, quiet and then beside other processes keeping cores busy
(stress-ng), each run's records read back: per record, the share of round trips excluded
for the machine (the emulator late, the probe waiting for a CPU), and the kept round trips'
mean and 99th percentile against the quiet run's on the same circuit, beside what all round
trips (the excluded ones put back) would have given.

    .venv/bin/python benchmarks/exclusions.py [--busy 1,2] [--cpu-latency 0|off] [--out DIR] [--checkout DIR]

With the probes given a CPU they do not wait for, a busy machine leaves few round trips to
exclude; --checkout runs another checkout's suites (one from before that, say: `git worktree
add /tmp/before 345bab8`), where exclusions reach 5 to 20 %, and whose records keep only
the round trips kept ("all" is then not known).

Run as root from the checkout; it starts stress-ng itself, as its own child, and ends it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUCKETS = ((0.0, 0.0), (0.0, 0.05), (0.05, 0.10), (0.10, 0.20), (0.20, 1.0))


def run(label: str, out: Path, busy: int, cpu_latency: str, checkout: Path = ROOT) -> Path:
    """One latency run, with `busy` cores kept busy beside it; its results file."""
    results = out / f"{label}.json"
    hog = subprocess.Popen(["stress-ng", "--cpu", str(busy), "--quiet"]) if busy else None
    try:
        mine = ([f"--overlay-cpu-latency={cpu_latency}", "--overlay-undecided-status=0"] if checkout == ROOT
                else ["--overlay-retries=0"])
        subprocess.run([sys.executable, "-m", "pytest", "suites/", "--topology=geant", "--overlay=host", "-m", "latency",
                        f"--overlay-json={results}", "-q", "-p", "no:cacheprovider", *mine], cwd=checkout,
                       check=False, stdout=subprocess.DEVNULL)
    finally:
        if hog is not None:
            hog.terminate()
            hog.wait()
    return results


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def latency(path: Path) -> dict[str, dict]:
    """Per circuit: the kept and the excluded round trips, and the share excluded."""
    out = {}
    for r in json.loads(path.read_text())["results"]:
        if r["metric"] != "latency":
            continue
        kept, left = r["extra"]["samples"], r["extra"].get("excluded_samples")
        share = r["exclusions"]["n_excluded"] / r["exclusions"]["n"]
        out[f"{r['src']}-{r['dst']}"] = {"kept": kept, "left": left, "share": share, "valid": r["valid"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", default="1,2", help="cores kept busy, one run each (default 1,2)")
    parser.add_argument("--cpu-latency", default="0", help="--overlay-cpu-latency of every run (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="where the runs' results go (default a temp dir)")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the checkout whose suites run (default this one)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="exclusions-"))
    out.mkdir(parents=True, exist_ok=True)
    quiet = latency(run("quiet", out, 0, args.cpu_latency, args.checkout.resolve()))
    rows = []
    for busy in (int(b) for b in args.busy.split(",")):
        for circuit, r in latency(run(f"busy{busy}", out, busy, args.cpu_latency, args.checkout.resolve())).items():
            q = quiet[circuit]["kept"]
            every = None if r["left"] is None else r["kept"] + r["left"]
            rows.append((busy, circuit, r["share"], len(r["kept"]), statistics.fmean(r["kept"]) - statistics.fmean(q),
                         math.nan if every is None else statistics.fmean(every) - statistics.fmean(q),
                         p99(r["kept"]) - p99(q), math.nan if every is None else p99(every) - p99(q), r["valid"]))
    print(f"results in {out}; differences against the quiet run on the same circuit, ms")
    print(f"{'busy':>4} {'circuit':>8} {'excl %':>7} {'kept n':>6} {'Δmean kept':>10} {'Δmean all':>10} "
          f"{'Δp99 kept':>10} {'Δp99 all':>9} valid")
    for busy, circuit, share, n, dm, dma, dp, dpa, valid in rows:
        print(f"{busy:>4} {circuit:>8} {share * 100:7.1f} {n:>6} {dm:+10.3f} {dma:+10.3f} {dp:+10.3f} {dpa:+9.3f} {valid}")
    print("\nby share excluded (records; mean |Δmean| and |Δp99| of the kept, and of all round trips):")
    for low, high in BUCKETS:
        inside = [r for r in rows if (r[2] == 0 if high == 0 else low < r[2] <= high)]
        if inside:
            print(f"  {low * 100:>4.0f}-{high * 100:<3.0f}%: {len(inside):>2} records; kept "
                  f"{statistics.fmean(abs(r[4]) for r in inside):.3f} / {statistics.fmean(abs(r[6]) for r in inside):.3f}"
                  f", all {statistics.fmean(abs(r[5]) for r in inside):.3f} / "
                  f"{statistics.fmean(abs(r[7]) for r in inside):.3f}")


if __name__ == "__main__":
    main()
