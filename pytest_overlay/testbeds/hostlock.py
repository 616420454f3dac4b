"""A run's hold on a real host: one run at a time on each host, held for as long as the
controller's process lives."""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import socket
import subprocess
import time

from ..inputs.model import RemoteHost
from .hosts import as_root, ssh_command


class HostLock:
    """The run's hold on a host for as long as this process lives: an flock on a file in the
    host's /run/lock, held by a `cat` at the far end of an ssh session whose stdin is ours.
    When this process ends, even by SIGKILL, the session closes and the lock goes with it; a
    second run is refused with the holder named (the file says which run, where, since when)."""

    def __init__(self, host: RemoteHost, run_id: str) -> None:
        self.host, self.run_id = host, run_id
        self.path = f"/run/lock/pytest-overlay-host-{host.address}.lock"
        self.session: subprocess.Popen | None = None

    def acquire(self, timeout: float = 20) -> str | None:
        """None once held; otherwise why not (the holder, or what went wrong)."""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        holder = f"run {self.run_id} from {socket.gethostname()} (pid {os.getpid()}), since {since} UTC"
        script = (f"exec 9>>{self.path}\nif ! flock -n 9; then echo busy; cat {self.path}; exit 0; fi\n"
                  f"echo {shlex.quote(holder)} > {self.path}\necho locked\nexec cat > /dev/null")
        self.session = subprocess.Popen(ssh_command(self.host, as_root(script)), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.session.stdout], [], [], timeout)
        first = self.session.stdout.readline().strip() if ready else ""
        if first == "locked":
            return None
        session, self.session = self.session, None
        if first == "busy":  # the far end names the holder and exits
            said = session.stdout.read()  # through the buffer readline() filled
            session.wait(timeout=10)
            return f"in use by another pytest-overlay: {said.strip() or 'a run that did not say which'}"
        try:
            _, error = session.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            session.kill()
            _, error = session.communicate()
        why = (error.strip().splitlines() or [first or "no answer"])[-1]  # ssh's own last word
        return f"could not take the run's lock on it over ssh ({why})"

    def release(self) -> None:
        if self.session is None:
            return
        session, self.session = self.session, None
        with contextlib.suppress(OSError):
            session.stdin.close()
        try:
            session.wait(timeout=10)
        except subprocess.TimeoutExpired:
            session.kill()
            session.wait()
