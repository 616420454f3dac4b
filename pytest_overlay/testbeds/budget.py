"""CPU budgets for a site's overlay: a CFS quota on the cgroup its userspace runs in (the
site engine's containers, which Docker puts under the engine's cgroup parent, and the
overlay's daemons, moved into a child of it), and the CPU that cgroup used.

The kernel's own datapath work (VXLAN, routing, the softirqs that carry the packets) is not
charged to any of these cgroups: a budget caps what an overlay does in userspace, which is
what tells Weave's sleeve from a kernel datapath. The link emulator is never in them. Works
on cgroup v1 (cpu and cpuacct hierarchies) and v2 (cpu.max, cpu.stat).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PERIOD_US = 100_000
DAEMONS = "daemons"  # the child cgroup an overlay's daemons are moved into


def _mounts() -> list[tuple[str, str, set[str]]]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] in ("cgroup", "cgroup2"):
            out.append((fields[1], fields[2], set(fields[3].split(","))))
    return out


def roots() -> dict[str, Path]:
    """Where CPU limits ("cpu") and CPU accounting ("acct") are, and which version ("v1"/"v2",
    as a key); empty where neither is available."""
    for mount, kind, options in _mounts():
        if kind == "cgroup" and "cpu" in options:
            acct = next((Path(m) for m, k, o in _mounts() if k == "cgroup" and "cpuacct" in o), None)
            if acct is not None:
                return {"cpu": Path(mount), "acct": acct, "v1": Path(mount)}
    for mount, kind, _ in _mounts():
        if kind == "cgroup2":
            root = Path(mount)
            try:
                if "cpu" in (root / "cgroup.controllers").read_text().split():
                    return {"cpu": root, "acct": root, "v2": root}
            except OSError:
                continue
    return {}


def unavailable() -> str:
    """Why CPU budgets cannot be applied here ("" where they can)."""
    found = roots()
    if not found:
        return "no cgroup hierarchy with the cpu controller is mounted"
    quota = found["cpu"] / ("cpu.cfs_quota_us" if "v1" in found else "cpu.max")
    if "v1" in found and not quota.exists():
        return f"the kernel has no CFS bandwidth control ({quota} missing)"
    if os.geteuid() != 0:
        return "changing cgroups needs root"
    return ""


@dataclass
class Usage:
    """CPU a site's overlay cgroup used, in seconds, and how long its quota held it back."""

    total_s: float
    daemons_s: float
    throttled_s: float
    throttled_periods: int
    periods: int

    def minus(self, before: "Usage") -> "Usage":
        return Usage(self.total_s - before.total_s, self.daemons_s - before.daemons_s,
                     self.throttled_s - before.throttled_s, self.throttled_periods - before.throttled_periods,
                     self.periods - before.periods)

    def to_json(self, seconds: float) -> dict:
        return {"cpu_s": round(self.total_s, 3), "daemons_cpu_s": round(self.daemons_s, 3),
                "cores_used": round(self.total_s / seconds, 3) if seconds > 0 else None,
                "throttled_s": round(self.throttled_s, 3),
                "throttled_share": round(self.throttled_periods / self.periods, 3) if self.periods else 0.0}


class SiteBudget:
    """The cgroup of one site's overlay, named like the engine's cgroup parent (ovl<run>-<site>),
    in each hierarchy that limits or accounts CPU."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.roots = roots()

    def _dir(self, key: str, child: str = "") -> Path:
        return self.roots[key] / self.name / child if child else self.roots[key] / self.name

    def apply(self, cores: float | None, pids: list[int]) -> None:
        """Limit the cgroup to `cores` (None: no limit) and move `pids` (the site's overlay
        daemons, every thread) into its daemons child; made where missing."""
        for key in ("cpu", "acct"):
            for child in ("", DAEMONS):
                self._dir(key, child).mkdir(exist_ok=True)
        if "v1" in self.roots:
            (self._dir("cpu") / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self._dir("cpu") / "cpu.cfs_quota_us").write_text(str(int(cores * PERIOD_US)) if cores else "-1")
        else:
            parent = self.roots["cpu"] / self.name
            (parent / "cgroup.subtree_control").write_text("+cpu")
            (parent / "cpu.max").write_text(f"{int(cores * PERIOD_US)} {PERIOD_US}" if cores else f"max {PERIOD_US}")
        for pid in pids:
            for procs_file in self.procs_files():
                try:
                    procs_file.write_text(str(pid))
                except ProcessLookupError:
                    pass  # exited since it was listed

    def procs_files(self) -> list[Path]:
        """Where a pid is written to put it in the daemons child, in each hierarchy."""
        keys = ("cpu", "acct") if self.roots["cpu"] != self.roots["acct"] else ("cpu",)
        return [self._dir(key, DAEMONS) / "cgroup.procs" for key in keys]

    def usage(self) -> Usage | None:
        """What the cgroup used so far (None where it does not exist yet)."""
        if not self.roots:
            return None
        try:
            if "v1" in self.roots:
                total = int((self._dir("acct") / "cpuacct.usage").read_text()) / 1e9
                daemons_file = self._dir("acct", DAEMONS) / "cpuacct.usage"
                daemons = int(daemons_file.read_text()) / 1e9 if daemons_file.exists() else 0.0
                stat = _stat(self._dir("cpu") / "cpu.stat")
                return Usage(total, daemons, stat.get("throttled_time", 0) / 1e9, stat.get("nr_throttled", 0),
                             stat.get("nr_periods", 0))
            stat = _stat(self._dir("cpu") / "cpu.stat")
            daemons_stat = self._dir("cpu", DAEMONS) / "cpu.stat"
            daemons = _stat(daemons_stat).get("usage_usec", 0) / 1e6 if daemons_stat.exists() else 0.0
            return Usage(stat.get("usage_usec", 0) / 1e6, daemons, stat.get("throttled_usec", 0) / 1e6,
                         stat.get("nr_throttled", 0), stat.get("nr_periods", 0))
        except (OSError, ValueError):
            return None


def _stat(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out
