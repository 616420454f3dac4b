"""A run's life on this machine: its id, the lock it holds while it lives, and the sweep of
what runs that are over left (their processes, namespaces, cgroups and files), and nothing
else. Every testbed and every host backend asks this module whether a run is over.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import signal
from pathlib import Path
from typing import Callable

from .. import procs
from ..paths import DATA_ROOT, STATE_ROOT

NETNS_DIR = Path("/run/netns")
RUN_ID = re.compile(r"^[0-9a-f]{6}$")
OUR_NETNS = re.compile(r"^ovl([0-9a-f]{6})-")
LOCK = "lock"


def new_run_id(state_root: Path | None = None) -> str:
    """An id no run on this machine has left a trace of (state, Docker data, namespaces).
    Ids are 24 bits so that every name built on them fits an interface name (15 characters:
    "ovl" + id + "-" + a site) and a MAC; passing over those in use makes a collision on one
    machine impossible rather than unlikely."""
    roots = (state_root or STATE_ROOT, DATA_ROOT)
    taken = {p.name for root in roots if root.is_dir() for p in root.iterdir()}
    namespaces = os.listdir(NETNS_DIR) if NETNS_DIR.is_dir() else []
    taken |= {m.group(1) for name in namespaces if (m := OUR_NETNS.match(name))}
    while (candidate := secrets.token_hex(3)) in taken:
        pass
    return candidate


def remove_netns(name: str) -> None:
    if (NETNS_DIR / name).exists():
        procs.run(["ip", "netns", "delete", name]).check()


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except OSError:
        return None


def pids_in_netns(inode: int) -> list[int]:
    return procs.pids_where(lambda proc: os.stat(proc / "ns/net").st_ino == inode)


def _pids_in_cgroup(marker: str) -> list[int]:
    return procs.pids_where(lambda proc: marker in (proc / "cgroup").read_text())


def kill_pids(pids: list[int], why: str, report: Callable[[str], None] | None) -> list[int]:
    """SIGKILL each of pids (never this process) and wait until they have exited (a dying
    daemon can still finish a mount that whatever comes next would leave behind); those
    still running 10 s later."""
    killed = []
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            if report:
                report(f"killed pid {pid} {why}")
        except ProcessLookupError:
            pass
    return procs.wait_exited(killed)


def hold_lock(path: Path):
    """Take a run's lock and keep it open: the kernel lets it go when the process dies,
    zombie or not, so a lock that can be taken is a run that is over."""
    lock = open(path, "w")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return lock


def run_is_over(run_dir: Path) -> bool | None:
    """True if nobody holds the run's lock; None if there is no lock to ask."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)  # never creates one
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def may_remove(run_id: str, run_dir: Path, force: bool, report: Callable[[str], None], what: str = "") -> bool:
    """A run's leftovers may go when its lock proves it over, or with `force` when nothing
    here can prove it either way; otherwise say why it is left alone."""
    over = run_is_over(run_dir) if run_dir.exists() else None
    if over is False:
        report(f"left alone: run {run_id} is live (its lock is held)")
        return False
    if over is None and not force:
        report(f"left alone: run {run_id}{f' ({what})' if what else ''} cannot be proven over (no lock in "
               "this state directory); --force removes it")
        return False
    return True


def sweep(state_root: Path | None = None, report: Callable[[str], None] = print,
          cleaners: list[Callable[[str, Path], None]] = (), force: bool = False, only: str | None = None,
          keep: set[str] = frozenset()) -> int:
    """Remove what runs that are over left: their processes, namespaces and files.

    A run is over when its lock (held for the run's whole life) can be taken: the kernel
    releases it when the owner dies, zombie or not. A run that cannot be proven over (no
    lock: another state directory, an older version, or a foreign name that merely looks
    like ours) is left alone unless `force`. Its processes are those it recorded, those in
    its namespaces and those in cgroups named after it; `cleaners` (from the layers above)
    remove the rest of what they made for a run id. `only` limits the sweep to one run;
    the runs in `keep` are left with their state (their hosts are not clean yet).
    """
    root = state_root or STATE_ROOT
    run_dirs = {d.name: d for d in (sorted(root.glob("*")) if root.exists() else []) if RUN_ID.match(d.name)}
    namespaces: dict[str, list[str]] = {}
    for name in sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.exists() else []:
        match = OUR_NETNS.match(name)
        if match:
            namespaces.setdefault(match.group(1), []).append(name)
    cgroups = {m.group(1) for m in (OUR_NETNS.match(d.name) for d in procs.cgroup_dirs("ovl")) if m}
    removed = 0
    for run_id in sorted(set(run_dirs) | set(namespaces) | cgroups):
        if (only is not None and run_id != only) or run_id in keep:
            continue
        what = ", ".join(namespaces.get(run_id, [])) or ("files only" if run_id in run_dirs else "cgroups only")
        if not may_remove(run_id, root / run_id, force, report, what):
            continue
        try:
            state = json.loads((run_dirs[run_id] / "state.json").read_text()) if run_id in run_dirs else {}
        except (OSError, ValueError):
            state = {}
        recorded = []
        for daemon in state.get("daemons", []):
            if procs.kill_recorded(daemon["pid"], daemon.get("start_time")):
                recorded.append(daemon["pid"])
                report(f"killed {daemon['name']} (pid {daemon['pid']}) of run {run_id}")
        # The cleaners unmount: they start once every killed process is gone.
        running = procs.wait_exited(recorded)
        for name in namespaces.get(run_id, []):
            inode = netns_inode(name)
            running += kill_pids(pids_in_netns(inode) if inode else [], f"left in namespace {name}", report)
        running += kill_pids(_pids_in_cgroup(f"/ovl{run_id}-"), f"left in a cgroup of run {run_id}", report)
        for pid in running:
            report(f"pid {pid} of run {run_id} still runs 10 s after SIGKILL")
        for cleaner in cleaners:
            cleaner(run_id, root / run_id)
        for name in namespaces.get(run_id, []):
            remove_netns(name)
            report(f"removed namespace {name}")
            removed += 1
        if run_id in cgroups:
            left = procs.remove_cgroups(f"ovl{run_id}-", attempts=3)
            report(f"removed the cgroups of run {run_id}" + (f"; left: {'; '.join(left[:3])}" if left else ""))
        remove_run_dir(root / run_id, report)
    return removed


def remove_run_dir(run_dir: Path, report: Callable[[str], None]) -> None:
    """Remove a run's state directory, its lock last: what cannot go (a mount still held)
    stays with the lock, so the next clean can prove the run over and try again."""
    if not run_dir.exists():
        return
    for entry in run_dir.iterdir():
        if entry.name == LOCK:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as e:
            report(f"left {run_dir} and its lock for a later clean: {e.filename or entry}: {e.strerror}")
            return
    shutil.rmtree(run_dir, ignore_errors=True)
