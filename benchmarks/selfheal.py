"""How long a WAN fault outlives its controller on real hosts: a lab of `local` (two real
hosts on this machine), a run that cuts A-B for 300 s, SIGKILLed mid-cut, and the time until
A and B reach each other again (one ping a 0.2 s, no `clean`); N tries, each from a fresh run.

    python benchmarks/selfheal.py [--tries 5]

Prints every try and the median and worst, in seconds from the SIGKILL to the first reply.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CUTTER = """
import dataclasses, sys, time
from pytest_overlay.inputs import topology
from pytest_overlay.testbeds.real.remote import RemoteTestbed
topo = topology.load(sys.argv[1])
bed = RemoteTestbed(topo)
bed.up()
cut = topo.links[0]
bed.impair({f"{d.src}->{d.dst}": dataclasses.replace(d, loss_pct=100) for d in (cut.forward, cut.reverse)},
           hold_s=330)
print("cut", flush=True)
time.sleep(600)
"""


def python(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kwargs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5, help="runs killed mid-cut. Default: %(default)r")
    args = parser.parse_args()
    from pytest_overlay.inputs import topology
    from pytest_overlay.testbeds.real import hosts

    with tempfile.TemporaryDirectory() as work:
        lab = Path(work) / "lab.yaml"
        made = python("-m", "pytest_overlay", "lab", "up", "local", "--out", str(lab))
        if made.returncode:
            print(made.stdout + made.stderr, file=sys.stderr)
            return 1
        try:
            a, b = (topology.load(lab).sites[s].host for s in "AB")
            ping = f"ping -c 1 -W 1 {b.address}"
            took = []
            for n in range(args.tries):
                run = subprocess.Popen([sys.executable, "-c", CUTTER, str(lab)], cwd=ROOT, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
                if run.stdout.readline().strip() != "cut":
                    run.kill()
                    print(run.communicate()[1][-2000:], file=sys.stderr)
                    return 1
                assert not hosts.host_run(a, ping, 30).ok, "the cut did not cut"
                run.kill()
                run.wait()
                killed = time.monotonic()
                while not hosts.host_run(a, ping, 30).ok and time.monotonic() - killed < 120:
                    time.sleep(0.2)
                took.append(time.monotonic() - killed)
                print(f"try {n + 1}: A reached B again {took[-1]:.2f} s after SIGKILL", flush=True)
            python("-m", "pytest_overlay", "clean", "--topology", str(lab))
            print(f"{len(took)} tries: median {statistics.median(took):.2f} s, worst {max(took):.2f} s "
                  "(from SIGKILL to A's first reply from B; includes one ssh round of ping)")
        finally:
            python("-m", "pytest_overlay", "lab", "down", str(lab))
    return 0


if __name__ == "__main__":
    sys.exit(main())
