"""Controllers that vanish, over the lab: each trial starts a run that holds a cut between the
lab's two hosts (the product's own lease: hostlock.LEASE_S, LOCK_DELAY_S), then makes its
controller vanish in one way, and measures

- heal: from the failure until the hosts reach each other again (the fault gone),
- gave up: until the controller's process ended by itself, and whether it named the lost hosts,
- free: until another run could take the hosts,
- diff: lines of the hosts' fingerprint that differ from before the trial, after one
  `clean --topology` (iptables and ip6tables, every table, without counters; ipsets; links;
  v4 and v6 routes of every table; rules; qdiscs; net.* sysctls; listening sockets; the
  tool's state on the host; Docker's containers, networks and swarm state).

    python benchmarks/vanish.py [--tries 2] [--kinds kill,stop,cut45,cut120]

kill: SIGKILL. stop: SIGSTOP for 30 s, then SIGCONT (a suspended laptop). cutN: the lab's
management network down for N s, cutting the controller off from every host while it keeps
running (its ssh and Docker API connections stall).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_overlay import procs  # noqa: E402
from pytest_overlay.inputs import topology  # noqa: E402
from pytest_overlay.testbeds.real import hostlock, hosts, lab  # noqa: E402

CONTROLLER = """
import dataclasses, sys, time
from pathlib import Path
from pytest_overlay.inputs import topology
from pytest_overlay.testbeds.real.remote import RemoteTestbed
topo = topology.load(sys.argv[1])
bed = RemoteTestbed(topo, state_root=Path(sys.argv[2]), progress=lambda m: print(m, flush=True) if " lost" in m else 0)
with bed:
    cut = topo.links[0]
    bed.impair({f"{d.src}->{d.dst}": dataclasses.replace(d, loss_pct=100) for d in (cut.forward, cut.reverse)},
               hold_s=330)
    print("cut", bed.run_id, flush=True)
    time.sleep(600)
"""
FINGERPRINT = (
    "iptables-save | grep -v '^#' | sed 's/ \\[[0-9]*:[0-9]*\\]$//'; ip6tables-save | grep -v '^#' | "
    "sed 's/ \\[[0-9]*:[0-9]*\\]$//'; ipset list -n 2>/dev/null; ip -d -o link | sed 's/ link\\/.*//'; "
    "ip -4 route show table all; ip -6 route show table all; ip rule; ip -6 rule; tc -j qdisc show; "
    "sysctl -a --pattern '^net\\.' 2>/dev/null | grep -v -e conntrack_count -e '\\.stable_secret' "
    "-e '^net.core.random'; "
    f"ss -Hltnu | sort; ls -R {hosts.HOST_STATE} 2>/dev/null | grep -v '^locks'")


def netns(out: Path, site: str) -> str:
    return f"ovl{json.loads(Path(f'{out}.lab.json').read_text())['run_id']}-{site}"


def reach(out: Path, a: str, b_address: str) -> bool:
    return procs.run(["ping", "-c", "1", "-W", "1", b_address], netns(out, a), timeout=10).ok


def fingerprint(out: Path, host: topology.RemoteHost, site: str) -> list[str]:
    lines = procs.run(["sh", "-c", FINGERPRINT], netns(out, site), timeout=60).stdout.splitlines()
    # A table the kernel makes, empty, on its first use is no change: its header, default policies and COMMIT.
    lines = [line for line in lines if not (line.startswith("*") or line == "COMMIT" or
                                            re.fullmatch(r":[A-Z]+ ACCEPT", line))]
    tls = ["--tlsverify", "--tlscacert", host.tls["ca"], "--tlscert", host.tls["cert"], "--tlskey", host.tls["key"]]
    for what in (["ps", "-a", "--format", "{{.Names}}"], ["network", "ls", "--format", "{{.Name}}"],
                 ["info", "--format", "{{.Swarm.LocalNodeState}}"]):
        lines += procs.run(["docker", "-H", host.docker, *tls, *what], timeout=60).stdout.splitlines()
    return lines


def free_after(host: topology.RemoteHost, since: float, bound: float = 300) -> float:
    """Seconds from `since` until another run can take the host."""
    while time.monotonic() - since < bound:
        lock = hostlock.HostLock(host, "f00d99")
        if lock.acquire() is None:
            lock.release()
            return time.monotonic() - since
        time.sleep(1)
    return float("inf")


def trial(out: Path, kind: str, work: Path) -> dict:
    topo = topology.load(out)
    a, b = topo.sites["A"].host, topo.sites["B"].host
    before = {s: fingerprint(out, h, s) for s, h in (("A", a), ("B", b))}
    run = subprocess.Popen([sys.executable, "-c", CONTROLLER, str(out), str(work)], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    said = run.stdout.readline().split()
    if said[:1] != ["cut"] or reach(out, "A", b.address):
        run.kill()
        raise RuntimeError(f"the controller did not cut: {said} {run.communicate()[0][-2000:]}")
    bridge = lab.bridge_name(json.loads(Path(f"{out}.lab.json").read_text())["run_id"])
    began = time.monotonic()
    if kind == "kill":
        run.kill()
    elif kind == "stop":
        run.send_signal(signal.SIGSTOP)
    else:
        procs.run(["ip", "link", "set", bridge, "down"]).check()
    heal = gave_up = None
    back_at = float(kind[3:]) if kind.startswith("cut") else 30.0 if kind == "stop" else 0.0
    back = kind == "kill"  # the controller resumed, or the path restored
    while time.monotonic() - began < back_at + 240:
        now = time.monotonic() - began
        if heal is None and reach(out, "A", b.address):
            heal = now
        if gave_up is None and run.poll() is not None:
            gave_up = now
        if not back and now >= back_at:
            if kind == "stop":
                run.send_signal(signal.SIGCONT)
            else:
                procs.run(["ip", "link", "set", bridge, "up"]).check()
            back = True
        if heal is not None and back and (gave_up is not None or kind == "kill"):
            break
        time.sleep(0.2)
    if kind.startswith("cut"):
        procs.run(["ip", "link", "set", bridge, "up"])
    if run.poll() is None:
        run.send_signal(signal.SIGCONT)
        run.kill()
    output = run.communicate(timeout=60)[0]
    free = free_after(a, began)
    cleaned = subprocess.run([sys.executable, "-m", "pytest_overlay", "clean", "--topology", str(out)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    after = {s: fingerprint(out, h, s) for s, h in (("A", a), ("B", b))}
    diff = sum(len(set(before[s]) ^ set(after[s])) for s in before)
    return {"kind": kind, "heal_s": heal, "gave_up_s": gave_up if kind != "kill" else None,
            "named": sorted({line.split()[1] for line in output.splitlines() if " lost: " in line}),
            "free_s": round(free, 1), "diff": diff, "clean_exit": cleaned.returncode,
            "diff_lines": sorted(set(before["A"]) ^ set(after["A"]))[:10]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tries", type=int, default=2)
    parser.add_argument("--kinds", default="kill,stop,cut45,cut120")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="vanish-") as tmp:
        out = Path(tmp) / "lab.yaml"
        made = subprocess.run([sys.executable, "-m", "pytest_overlay", "lab", "up", "local", "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        if made.returncode:
            raise SystemExit(made.stdout + made.stderr)
        try:
            for kind in args.kinds.split(","):
                for i in range(args.tries):
                    work = Path(tmp) / f"{kind}{i}"
                    work.mkdir()
                    result = trial(out, kind, work)
                    results.append(result)
                    print(json.dumps(result), flush=True)
        finally:
            subprocess.run([sys.executable, "-m", "pytest_overlay", "lab", "down", str(out)], cwd=ROOT, timeout=300)
    print("\n| failure | trials | diff 0 after one clean | worst heal (s) | worst gave up (s) | worst free (s) |")
    print("|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        these = [r for r in results if r["kind"] == kind]

        def worst(key: str) -> str:
            values = [r[key] for r in these if r[key] is not None]
            return f"{max(values):.1f}" if values else "-"
        print(f"| {kind} | {len(these)} | {sum(r['diff'] == 0 for r in these)} | {worst('heal_s')} | "
              f"{worst('gave_up_s')} | {worst('free_s')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
