"""A noisy neighbour: a bounded CPU or memory-bandwidth hog (stress-ng) beside the overlay at
each site the measured path crosses, while a probe runs (``--overlay-noise cpu,memory``).

The study's future work asks how the overlays fare "in a heavily shared environment": there
another tenant's work shares the host's cores and memory bus with the overlay's daemons and
the kernel's datapath. The hog runs in its own cgroup (ovl<run>-noise-<site>), held to a CPU
quota, so it is bounded whatever the machine, and its CPU use is measured, not assumed. It
is not part of the overlay's budget: it is a neighbour, not the overlay.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from .. import procs
from ..testbeds import budget

TOOLS = {"stress-ng": "stress-ng"}
DEFAULT_CORES = 0.5
GUARD_S = 3600  # stress-ng ends itself after this, whatever happens to us
# stress-ng's stressors: one worker each, a fixed method so runs compare.
KINDS = {
    "cpu": ["--cpu", "1", "--cpu-method", "matrixprod"],
    "memory": ["--stream", "1"],  # STREAM copy/scale/add/triad: memory bandwidth
}
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Noise:
    """One kind of neighbour and the cores its hog may use at each site."""

    kind: str
    cores: float = DEFAULT_CORES

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.cores:g}"

    @property
    def id(self) -> str:
        return f"noise-{self.kind}{self.cores:g}"

    def describe(self) -> str:
        return f"a {self.kind} hog held to {self.cores:g} cores per site"


def parse(value: str) -> list[Noise]:
    """--overlay-noise: KIND[:CORES][,KIND[:CORES]...] with KIND of cpu, memory."""
    out: list[Noise] = []
    cores_here = os.cpu_count() or 1
    for item in (v.strip() for v in value.split(",") if v.strip()):
        kind, _, cores = item.partition(":")
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(f"{item!r}: allowed kinds: {', '.join(KINDS)} (e.g. cpu,memory:0.25)")
        try:
            amount = float(cores) if cores else DEFAULT_CORES
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: cores must be a number, e.g. {kind}:0.5") from None
        if not 0.05 <= amount <= cores_here:
            raise argparse.ArgumentTypeError(f"{item!r}: cores from 0.05 to {cores_here} (this machine's)")
        out.append(Noise(kind, amount))
    if not out or len({n.label for n in out}) != len(out):
        raise argparse.ArgumentTypeError(f"{value!r}: distinct neighbours, e.g. cpu or cpu,memory:0.25")
    return out


def _die_with_parent() -> None:
    """In the child before exec: end (SIGTERM) if the process that started it dies, so a
    killed run leaves no hog behind even before `clean` runs."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Neighbour:
    """The hogs of one measurement: started at the sites given, ended (by pid) when it ends."""

    def __init__(self, noise: Noise, prefix: str, netns: dict[str, str], log_dir: Path) -> None:
        self.noise, self.prefix, self.netns, self.log_dir = noise, prefix, netns, log_dir
        self.hogs: dict[str, procs.Daemon] = {}
        self.cgroups = {site: budget.SiteBudget(f"{prefix}-noise-{site}") for site in netns}
        self.started = 0.0

    def __enter__(self) -> "Neighbour":
        self.started = time.monotonic()
        try:
            for site, netns in self.netns.items():
                group = self.cgroups[site]
                group.apply(self.noise.cores, [])
                files = group.procs_files()

                def enter(files: list[Path] = files) -> None:
                    for f in files:
                        f.write_text(str(os.getpid()))
                    _die_with_parent()

                self.hogs[site] = procs.start(
                    f"noise-{site}", ["stress-ng", *KINDS[self.noise.kind], "--timeout", f"{GUARD_S}s",
                                      "--metrics-brief"],
                    self.log_dir / f"noise-{site}.log", netns, preexec=enter)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for hog in self.hogs.values():
            hog.stop()
        for site in self.hogs:
            procs.remove_cgroups(self.cgroups[site].name)

    def used(self) -> dict[str, dict]:
        """The CPU each site's hog used since it started (read before __exit__ removes its cgroup)."""
        seconds, out = time.monotonic() - self.started, {}
        for site, group in self.cgroups.items():
            usage = group.usage()
            if usage is not None:
                out[site] = usage.to_json(seconds)
        return out

    def dead(self) -> list[str]:
        """Hogs that ended before the measurement did: the neighbour was not there throughout."""
        return [f"the {self.noise.kind} hog at {site} ended early (exit {hog.returncode}): {hog.log_tail(3)}"
                for site, hog in self.hogs.items() if not hog.alive()]
