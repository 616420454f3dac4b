"""Commands and daemons inside network namespaces, with results that show what went wrong.

Every daemon is a child of this process, in its own session (so a terminal's Ctrl-C reaches
pytest, which then tears down in order), and is ended by its pid and waited for.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


def apt(tools: dict[str, str]) -> dict[str, str]:
    """Binaries (name -> Debian package) with what to say where one is missing."""
    return {tool: f"apt-get install {package}" for tool, package in tools.items()}


def missing(tools: dict[str, str]) -> list[str]:
    """Which of these binaries (name -> Debian package) are not installed, with what to install."""
    return [f"{tool} ({install})" for tool, install in apt(tools).items() if not shutil.which(tool)]


def in_netns(netns: str | None, command: list[str]) -> list[str]:
    """Prefix a command so it runs in a named network namespace.

    nsenter, not `ip netns exec`: the latter remounts /sys, which dockerd cannot live with.
    """
    return ["nsenter", f"--net=/run/netns/{netns}", *command] if netns else list(command)


CLONE_NEWNET = 0x40000000


def cgroup_roots() -> list[Path]:
    """Where the cgroup hierarchies are mounted (one per controller in v1, one in v2)."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    return [Path(f[1]) for f in (line.split() for line in lines) if len(f) > 2 and f[2] in ("cgroup", "cgroup2")]


def cgroup_dirs(prefix: str) -> list[Path]:
    """Every cgroup folder at the top of a hierarchy whose name starts with prefix (the
    cgroup parents our engines are given: ovl<run>-<site>)."""
    return sorted(d for root in cgroup_roots() for d in root.glob(f"{prefix}*") if d.is_dir())


def remove_cgroups(prefix: str, attempts: int = 10) -> list[str]:
    """Remove the cgroup folders named prefix* (and the ones inside them, deepest first); a
    folder still holding a process stays. What could not be removed, said."""
    left: list[str] = []
    for attempt in range(attempts):
        left = []
        for top in cgroup_dirs(prefix):
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    left.append(f"{d}: {e.strerror}")
        if not left:
            return []
        time.sleep(0.1 * (attempt + 1))  # a container's last process may still be exiting
    return left


def process_tree(pid: int) -> list[int]:
    """A process and every descendant of it (a daemon started through unshare forks the real
    one), from each thread's children in /proc."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                pass  # the thread or the process ended meanwhile
    return out


def connect_in_netns(netns: str, host: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection made from inside a network namespace, without starting a process: a
    short-lived thread enters the namespace (setns applies to the calling thread only) and
    opens the socket, which stays in that namespace for whoever uses it."""
    made: dict = {}

    def enter_and_connect() -> None:
        try:
            with open(f"/run/netns/{netns}") as ns:
                if ctypes.CDLL(None, use_errno=True).setns(ns.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns}")
            made["socket"] = socket.create_connection((host, port), timeout)
        except OSError as e:
            made["error"] = e

    thread = threading.Thread(target=enter_and_connect, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]
    return made["socket"]


@dataclass(frozen=True)
class CommandResult:
    command: list[str]
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self) -> "CommandResult":
        if self.rc != 0:
            raise CommandError(self)
        return self


class CommandError(RuntimeError):
    def __init__(self, result: CommandResult) -> None:
        self.result = result
        output = "\n".join(s for s in (result.stderr.strip(), result.stdout.strip()) if s)
        super().__init__(
            f"command failed (exit {result.rc}): {shlex.join(result.command)}"
            + (f"\n{_tail(output, 20)}" if output else "")
        )


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run(command: list[str], netns: str | None = None, timeout: float | None = 60, input: str | None = None) -> CommandResult:
    full = in_netns(netns, command)
    try:
        done = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as e:
        return CommandResult(full, -1, _text(e.stdout), _text(e.stderr) + f"\ntimed out after {timeout} s")
    except FileNotFoundError as e:
        return CommandResult(full, 127, "", str(e))
    return CommandResult(full, done.returncode, done.stdout, done.stderr)


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """The kernel's start time of a process: with the pid, it names one process for good."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


@dataclass
class Daemon:
    """A long-running child process: its pid, start time and log file."""

    name: str
    command: list[str]
    log: Path
    popen: subprocess.Popen = field(repr=False)
    started: int | None = None

    own_pid_namespace: bool = False  # started under `unshare --pid --fork`: the daemon is its child

    @property
    def pid(self) -> int:
        return self.popen.pid

    def inner_pid(self) -> int | None:
        """The daemon itself, where unshare forked it into its own PID namespace."""
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return _tail(self.log.read_text(errors="replace"), lines)
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def log_from(self, offset: int) -> str:
        """What the daemon logged after the first `offset` bytes."""
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def interrupt(self, timeout: float = 5.0) -> int | None:
        """SIGINT, as Ctrl-C would (some tools write their results only then), then stop()."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.stop(timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait, SIGKILL if it must: the process is reaped either way."""
        if self.popen.poll() is None:
            try:
                # unshare waits for its child, which is the daemon: end that, and unshare follows.
                inner = self.inner_pid() if self.own_pid_namespace else None
                if inner is not None:
                    os.kill(inner, signal.SIGTERM)
                else:
                    self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.popen.stdout:
            self.popen.stdout.close()
        return self.popen.returncode

    def record(self) -> dict:
        return {"name": self.name, "pid": self.pid, "start_time": self.started}


class DaemonError(RuntimeError):
    pass


OWN_PID_NAMESPACE = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]  # the daemon becomes PID 1


def start(name: str, command: list[str], log: Path, netns: str | None = None,
          ready: str | None = None, timeout: float = 10.0, cwd: Path | None = None,
          env: dict[str, str] | None = None, own_pid_namespace: bool = False,
          preexec: Callable[[], None] | None = None) -> Daemon:
    """Start a daemon; with `ready`, wait until it prints that line on stdout.

    `own_pid_namespace` runs it as PID 1 of a new PID namespace (weaver needs that here:
    it opens /proc/1/ns/net, which this VM refuses to the host's PID 1). `env` is added to
    this process's environment (secrets go there, never on the command line). `preexec` runs
    in the child before it executes the command (e.g. to enter a cgroup before it forks).
    """
    if own_pid_namespace:
        command = [*OWN_PID_NAMESPACE, *command]
    full = in_netns(netns, command)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as log_file:
        popen = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if ready else log_file,
            stderr=log_file,
            start_new_session=True,
            cwd=cwd,
            env={**os.environ, **env} if env else None,
            preexec_fn=preexec,
        )
    daemon = Daemon(name, full, log, popen, start_time(popen.pid), own_pid_namespace)
    if ready:
        _wait_ready(daemon, ready, timeout)
    return daemon


def _wait_ready(daemon: Daemon, ready: str, timeout: float) -> None:
    import selectors

    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(daemon.popen.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(max(0.0, deadline - time.monotonic())):
                line = daemon.popen.stdout.readline().decode(errors="replace").strip()
                if line == ready:
                    return
                if not line and daemon.popen.poll() is not None:
                    break
    rc = daemon.stop()
    raise DaemonError(
        f"{daemon.name} did not become ready within {timeout:g} s (exit {rc}): {shlex.join(daemon.command)}\n"
        f"{daemon.log_tail()}"
    )


def wait_exited(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait until each (killed) process has exited or is a zombie its parent has not reaped:
    kill() returns before a SIGKILL is done, and a dying daemon can still finish a mount
    after it. Returns those still running at the timeout."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while True:
        left = [pid for pid in left if (_stat(pid) or ["Z"])[0] != "Z"]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def kill_recorded(pid: int, started: int | None) -> bool:
    """Kill a process recorded by an earlier run, only if it is still that very process."""
    if started is None or start_time(pid) != started:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def pids_where(matches: Callable[[Path], bool]) -> list[int]:
    """Processes whose /proc entry matches (those that vanish meanwhile are skipped)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if matches(entry):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids
