"""The regression gates' error rates on this machine: runs of the same commit compared with a
saved one (a gate that says "regressed" there is a false alarm), and runs with a change
injected into the links of a triangle (A-B's RTT up and B-C's rate down, in the same run): how
often each change is caught, on exactly its circuit, through each overlay.

    python benchmarks/gates.py [--runs 20] [--overlays host,libnetwork] [--rtt-ms 0.1,0.3] [--rate-pct 2,6]

Every run is a real `pytest suites/ -m "latency or tcp"` of the triangle, gated as a CI would
(`latency:0.5%`, `tcp_throughput:3%`); the verdicts are read from each run's results JSON. It
prints the false-alarm rate per metric and overlay, and per injected change how many runs
caught it, and writes gates.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GATES = ["--overlay-compare-fail=latency:0.5%", "--overlay-compare-fail=tcp_throughput:3%"]
TRIANGLE = """\
name: triangle
sites: {{A: {{}}, B: {{}}, C: {{}}}}
manager: A
links:
  - {{between: [A, B], rtt_ms: {ab}, rate_mbit: 500}}
  - {{between: [B, C], rtt_ms: 10, rate_mbit: {bc}}}
  - {{between: [A, C], rtt_ms: 30, rate_mbit: 500}}
"""


def run(work: Path, name: str, overlays: str, ab: float = 20.0, bc: float = 500.0, save: bool = False) -> dict:
    """One gated run of the triangle; its records by (metric, overlay, circuit): the gate's verdict."""
    topo = work / f"{name}.yaml"
    topo.write_text(TRIANGLE.format(ab=ab, bc=bc))
    out = work / f"{name}.json"
    command = [sys.executable, "-m", "pytest", "suites/", "-p", "no:cacheprovider", "-q", "-m", "latency or tcp",
               f"--topology={topo}", f"--overlay={overlays}", f"--benchmark-storage=file://{work / 'storage'}",
               f"--overlay-json={out}", "--overlay-samples=300", "--overlay-duration=3"]
    command += ["--overlay-save=base"] if save else ["--overlay-compare=base", *GATES]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if not out.exists():
        raise RuntimeError(f"{name}: no results (exit {done.returncode}):\n{done.stdout[-2000:]}")
    verdicts = {}
    for record in json.loads(out.read_text())["results"]:
        gated = [c for c in record["compared"] if c.get("gate")]
        key = (record["metric"], record["overlay"], f"{record['src']}-{record['dst']}")
        verdicts[key] = "invalid" if not record["valid"] else gated[0]["verdict"] if gated else "not compared"
    flagged = [f"{m} {o} {c}: {v}" for (m, o, c), v in sorted(verdicts.items()) if v not in ("ok", "not compared")]
    print(f"{name}: exit {done.returncode}; " + ", ".join(flagged), flush=True)
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="runs per condition")
    parser.add_argument("--overlays", default="host,libnetwork")
    parser.add_argument("--rtt-ms", default="0.1,0.3", help="RTTs added to A-B, comma-separated")
    parser.add_argument("--rate-pct", default="2,6", help="B-C's rate cut by these percentages")
    args = parser.parse_args()
    rtts, rates = list(map(float, args.rtt_ms.split(","))), list(map(float, args.rate_pct.split(",")))
    if len(rtts) != len(rates):
        parser.error("--rtt-ms and --rate-pct pair up: give as many of each")
    work = Path(tempfile.mkdtemp(prefix="gates-"))
    run(work, "base", args.overlays, save=True)
    # Each changed run carries one RTT change on A-B and one rate change on B-C: neither moves
    # the other's metric (a probe's packets are too small for 500 against 470 Mbit/s to show,
    # and the buffers have room for 0.3 ms more), so one run tests both and A-C neither. The
    # conditions take turns, so a drift of the machine over the hour touches them alike.
    same: list[dict] = []
    changed: dict[tuple[float, float], list[dict]] = {pair: [] for pair in zip(rtts, rates)}
    for i in range(args.runs):
        same.append(run(work, f"same-{i}", args.overlays))
        for (d, p), runs in changed.items():
            runs.append(run(work, f"rtt{d:g}-rate{p:g}-{i}", args.overlays, ab=20 + d, bc=500 * (1 - p / 100)))
    summary: dict = {"runs": args.runs, "false_alarms": {}, "caught": {}}
    for key in sorted(same[0]):
        metric, overlay, circuit = key
        fired = sum(s.get(key) == "regressed" for s in same)
        undecided = sum(s.get(key) in ("inconclusive", "invalid") for s in same)
        summary["false_alarms"][f"{metric} {overlay} {circuit}"] = {"regressed": fired, "undecided": undecided}
    for (d, p), runs in changed.items():
        for metric, circuit, label in (("latency", "A-B", f"A-B RTT +{d:g} ms"),
                                       ("tcp_throughput", "B-C", f"B-C rate -{p:g} %")):
            for overlay in args.overlays.split(","):
                key = (metric, overlay, circuit)
                caught = sum(r.get(key) == "regressed" for r in runs)
                undecided = sum(r.get(key) in ("inconclusive", "invalid") for r in runs)
                elsewhere = sum(any(v == "regressed" for k, v in r.items() if k[0] == metric and k[2] != circuit)
                                for r in runs)
                summary["caught"][f"{label} through {overlay}"] = {"caught": caught, "undecided": undecided,
                                                                   "elsewhere": elsewhere}
    print(f"\nGates latency:0.5% and tcp_throughput:3%, {args.runs} runs per condition (this machine):")
    for name, counts in summary["false_alarms"].items():
        print(f"  same commit, {name}: regressed {counts['regressed']}/{args.runs}, "
              f"inconclusive or INVALID {counts['undecided']}/{args.runs}")
    for name, counts in summary["caught"].items():
        print(f"  {name}: caught {counts['caught']}/{args.runs} on its circuit "
              f"({counts['undecided']} inconclusive or INVALID), {counts['elsewhere']}/{args.runs} runs also "
              "flagged another circuit")
    (Path.cwd() / "gates.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
