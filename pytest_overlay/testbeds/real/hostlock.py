"""A run's hold on a real host: one run at a time on each machine, whatever name reaches it,
held for as long as the controller's process lives, through Ctrl-C until teardown is done."""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import socket
import subprocess
import time

from ...inputs.model import RemoteHost
from ..runs import RUN_ID
from . import hostlinks
from .hosts import HOST_IDENTITY, HOST_STATE, as_root, ssh_command

LOCKS = f"{HOST_STATE}/locks"


class HostLock:
    """The run's hold on a host for as long as this process lives: an flock on a file named
    after the machine (HOST_IDENTITY: an address and a hostname reach the same lock) in a
    directory only root may write, held by a `cat` at the far end of an ssh session whose
    stdin is ours. The session has a process group of its own, so a Ctrl-C reaches pytest but
    not it: the lock is held until teardown releases it. When this process ends, even by
    SIGKILL, the session's input closes: the far end removes the run's WAN fault chain (a
    fault never outlives its controller) and the lock goes. A second run is refused with the
    holder named (the file says which run, where, since when)."""

    def __init__(self, host: RemoteHost, run_id: str) -> None:
        self.host, self.run_id = host, run_id
        self.session: subprocess.Popen | None = None

    def script(self, holder: str) -> str:
        """The far end: refuse a lock directory anyone but root may write, take the machine's lock or
        name its holder, then wait for our input to close, remove the run's fault chain, and
        the lock's file while still holding it (the directory stays, as /run/lock does)."""
        removal = hostlinks.remove_script(self.run_id) if RUN_ID.match(self.run_id) else ":"
        return (f"umask 077; mkdir -p {LOCKS}\n"
                f'for d in {HOST_STATE} {LOCKS}; do case "$(stat -c %u:%A $d)" in 0:d????-??-?) ;; '
                '*) echo unsafe; stat -c "%n belongs to %U with mode %a" $d; exit 0 ;; esac; done\n'
                f'f={LOCKS}/$({HOST_IDENTITY}).lock\nexec 9>>"$f"\n'
                'if ! flock -n 9; then echo busy; cat "$f"; exit 0; fi\n'
                # the holder before us removes the file as it lets go: ours must still be the one there
                'if [ "$(stat -c %i "$f" 2>/dev/null)" != "$(stat -L -c %i /proc/self/fd/9)" ]; then '
                'echo busy; echo "a run that was letting it go"; exit 0; fi\n'
                f'echo {shlex.quote(holder)} > "$f"\necho locked\n'
                "trap '' HUP PIPE INT TERM\ncat > /dev/null || true\n"
                f'{{\n{removal}\n}} >/dev/null 2>&1 || true\nrm -f "$f"')

    def acquire(self, timeout: float = 20) -> str | None:
        """None once held; otherwise why not (the holder, or what went wrong)."""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        holder = f"run {self.run_id} from {socket.gethostname()} (pid {os.getpid()}), since {since} UTC"
        self.session = subprocess.Popen(ssh_command(self.host, as_root(self.script(holder))), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
        ready, _, _ = select.select([self.session.stdout], [], [], timeout)
        first = self.session.stdout.readline().strip() if ready else ""
        if first == "locked":
            return None
        session, self.session = self.session, None
        if first in ("busy", "unsafe"):  # the far end says why and exits
            said = session.stdout.read().strip()  # through the buffer readline() filled
            session.wait(timeout=10)
            if first == "unsafe":
                return (f"its lock directory is not root's alone ({said}): another user could hold or "
                        f"forge the lock; remove it, or chown root and chmod go-w it")
            if f"run {self.run_id} " in said:
                return (f"is the machine another site of this run holds already ({said}): one machine "
                        "can be one site only")
            return f"in use by another pytest-overlay: {said or 'a run that did not say which'}"
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
