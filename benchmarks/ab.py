"""The A/B method's error rates on this machine: A/A runs of the underlay against itself
(a verdict of different there is a false alarm), and runs with a known change switched on
for B's rounds only (benchmarks/abshift.py: the link's RTT up by --shift-ms): how often the
change is caught, as different with B slower.

    python benchmarks/ab.py [--runs 10] [--shift-ms 0.1] [--samples 300] [--out ab.json]
    python benchmarks/ab.py --metric tcp --rate-pct 2 [--runs 5]   # a link's rate down instead

Every run is a real `pytest suites/ -m latency --overlay-ab=host,host` of the bundled
two-site topology (20 ms), its verdicts read from the run's results JSON. It prints the
false alarms and the catches with their counts, and writes every run's pairs to --out (the
unit tests' captured rounds are taken from it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(work: Path, name: str, change: dict[str, str], samples: int, metric: str) -> dict:
    """One A/B run of `metric` (latency, or tcp) with `change` on B's rounds (abshift's
    variables); its comparison, and how long it took."""
    out = work / f"{name}.json"
    command = [sys.executable, "-m", "pytest", "suites/", "-p", "no:cacheprovider", "-p", "benchmarks.abshift", "-q",
               "-m", metric, "--topology=local", "--overlay-ab=host,host", f"--overlay-samples={samples}",
               f"--overlay-json={out}"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "AB_SHIFT_MS": "0", "AB_RATE_PCT": "0", **change})
    if not out.exists():
        raise RuntimeError(f"{name}: no results (exit {done.returncode}):\n{done.stdout[-2000:]}")
    document = json.loads(out.read_text())
    (comparison,) = [c for c in document["comparisons"] if c["metric"] in ("latency", "tcp_throughput")]
    return {"name": name, "seconds": round(time.monotonic() - started, 1), "exit": done.returncode,
            "unit": comparison["unit"], "verdict": comparison["verdict"], "difference": comparison["difference"],
            "ci95": comparison["ci95"],
            "n_pairs": comparison["n_pairs"], "metric": comparison["metric"], "circuit": comparison["circuit"],
            "pairs": [[p["order"], p["a"], p["b"], p["why"]] for p in comparison["pairs"]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--metric", choices=("latency", "tcp"), default="latency")
    parser.add_argument("--shift-ms", type=float, default=0.1, help="latency: B's RTT up by this")
    parser.add_argument("--rate-pct", type=float, default=2.0, help="tcp: B's link rate down by this")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--out", default="ab.json")
    args = parser.parse_args()
    found: dict[str, list[dict]] = {"aa": [], "shifted": []}
    with tempfile.TemporaryDirectory(prefix="ab-bench-") as tmp:
        for i in range(args.runs):
            change = ({"AB_SHIFT_MS": str(args.shift_ms)} if args.metric == "latency" else
                      {"AB_RATE_PCT": str(args.rate_pct)})
            for kind, given in (("aa", {}), ("shifted", change)):
                result = run(Path(tmp), f"{kind}{i}", given, args.samples, args.metric)
                found[kind].append(result)
                print(f"{kind} {i + 1}/{args.runs}: {result['verdict']} {result['difference']:+.4f} "
                      f"±{result['ci95']:.4f} {result['unit']}, {result['n_pairs']} pairs, {result['seconds']} s",
                      flush=True)
    Path(args.out).write_text(json.dumps({"metric": args.metric, "shift_ms": args.shift_ms, "rate_pct": args.rate_pct,
                                          "samples": args.samples, **found}, indent=1))
    false = sum(r["verdict"] == "different" for r in found["aa"])
    worse = (lambda r: r["difference"] > 0) if args.metric == "latency" else (lambda r: r["difference"] < 0)
    caught = sum(r["verdict"] == "different" and worse(r) for r in found["shifted"])
    seconds = sorted(r["seconds"] for r in found["aa"] + found["shifted"])
    def verdicts(runs: list[dict]) -> str:
        return ", ".join(f"{v} {sum(r['verdict'] == v for r in runs)}" for v in ("same", "unknown", "different"))

    print(f"A/A: {false} false alarm(s) in {args.runs}; verdicts: {verdicts(found['aa'])}")
    what = f"+{args.shift_ms:g} ms" if args.metric == "latency" else f"-{args.rate_pct:g} % of the rate"
    print(f"{what} on B's rounds: caught {caught} of {args.runs}; verdicts: {verdicts(found['shifted'])}")
    print(f"median run {seconds[len(seconds) // 2]} s (testbed, pairs and teardown)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
