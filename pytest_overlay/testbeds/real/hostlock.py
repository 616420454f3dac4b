"""A run's hold on a real host: one run at a time on each machine, whatever name reaches it,
held through Ctrl-C until teardown is done, and for no longer than the controller renews it.

The hold is a lease, as Kubernetes' node leases, etcd's leases and Consul's sessions are: the
controller renews it every RENEW_S over the lock's ssh session, and the host acknowledges each
renewal. A host that hears nothing for LEASE_S (the controller lost power, was suspended, or
was cut off) does not wait for TCP to notice: it removes what the run put there (its WAN fault
chain, its link emulation, its daemons), marks the lock expired and keeps it taken for
LOCK_DELAY_S more (Consul's lock delay), longer than any command the controller might still
have in flight, which the host then refuses (fencing: every change a run makes on a host
first checks that the run still holds it). A controller that stops hearing the
acknowledgements knows the host is lost, and says so."""

from __future__ import annotations

import calendar
import contextlib
import os
import re
import select
import shlex
import socket
import subprocess
import threading
import time

from ...inputs.model import RemoteHost
from ..runs import RUN_ID
from . import hostlinks
from .hosts import HOST_IDENTITY, HOST_STATE, LOCKS, as_root, end_daemons_script, lock_file, ssh_command

RENEW_S = 5.0  # the controller renews its lease on a host this often
LEASE_S = 20.0  # a host that hears no renewal for this long lets the run go: four renewals missed
# After a lease lapses the lock stays taken this long: longer than any command the controller
# may still have in flight (a host command's 60 s, plus ssh's 10 s to connect).
LOCK_DELAY_S = 75.0
# ssh keeps the session alive from our side, whatever the host's sshd says of TCP keepalive:
# a session that has not answered for 15 s is ended, and the watchdog sees it.
KEEPALIVE = ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
RENEW, BYE = "r", "b"  # what the controller writes: a renewal, and the run's orderly end


class HostLock:
    """The run's hold on a host: an flock on a file named after the machine (HOST_IDENTITY: an
    address and a hostname reach the same lock) in a directory only root may write, held by a
    shell at the far end of an ssh session whose stdin is ours. The session has a process group
    of its own, so a Ctrl-C reaches pytest but not it: the lock is held until teardown releases
    it. The controller renews the hold over that stdin, and `lost()` says when the host stopped
    acknowledging. A second run is refused with the holder named (the file says which run,
    where, since when), or with when an expired lock frees itself."""

    def __init__(self, host: RemoteHost, run_id: str, site: str = "", lease_s: float = LEASE_S,
                 lock_delay_s: float = LOCK_DELAY_S) -> None:
        self.host, self.run_id, self.site = host, run_id, site
        self.lease_s, self.lock_delay_s = lease_s, lock_delay_s
        self.session: subprocess.Popen | None = None
        self.acknowledged = 0.0  # monotonic time of the host's last acknowledgement
        self.lost_at: float | None = None  # wall clock at which the host was found lost
        self.why_lost = ""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def script(self, holder: str) -> str:
        """The far end: say which of its tools the host lacks, refuse a lock directory anyone
        but root may write, take the machine's lock or name its holder; then acknowledge each
        renewal until the controller says bye. On any end it removes the run's fault chain; on a
        closed input or a lapse it also removes what else the run put there (lapse_script),
        marks the lock expired and keeps it a while more: RENEW_S after a closed input (the
        controller's process is gone), `lock_delay_s` after a lapse. The lock's file goes while
        still held (the directory stays, as /run/lock does)."""
        run = RUN_ID.match(self.run_id)
        removal = hostlinks.remove_script(self.run_id) if run else ":"
        lapse = lapse_script(self.run_id, self.site) if run else ":"
        return ("for t in flock timeout dd; do command -v $t >/dev/null || { echo missing; echo $t; exit 0; }; done\n"
                f"umask 077; mkdir -p {LOCKS}\n"
                f'for d in {HOST_STATE} {LOCKS}; do case "$(stat -c %u:%A $d)" in 0:d????-??-?) ;; '
                '*) echo unsafe; stat -c "%n belongs to %U with mode %a" $d; exit 0 ;; esac; done\n'
                f'f={lock_file()}\nexec 9>>"$f"\n'
                'if ! flock -n 9; then echo busy; cat "$f"; exit 0; fi\n'
                # the holder before us removes the file as it lets go: ours must still be the one there
                'if [ "$(stat -c %i "$f" 2>/dev/null)" != "$(stat -L -c %i /proc/self/fd/9)" ]; then '
                'echo busy; echo "a run that was letting it go"; exit 0; fi\n'
                f'echo {shlex.quote(holder)} > "$f"\necho locked\n'
                "trap '' HUP PIPE INT TERM\nended=lapsed\n"
                f"while c=$(timeout {self.lease_s:g} dd bs=1 count=1 2>/dev/null); do\n"
                f'  case "$c" in {RENEW}) echo renewed || : ;; {BYE}) ended=; break ;; *) ended=closed; break ;; esac\n'
                "done\n"
                f'{{\n{removal}\n}} >/dev/null 2>&1 || true\n'
                # Closed: the controller's process is gone, and its commands in flight are fenced.
                # Lapsed: it may be only suspended or cut off, and may still send: the full delay.
                f'case "$ended" in closed) delay={RENEW_S:.0f} ;; lapsed) delay={self.lock_delay_s:.0f} ;; '
                '*) delay= ;; esac\n'
                'if [ -n "$delay" ]; then\n'
                f'  echo "expired: run {self.run_id} lost its controller ($ended) at $(date -u +%FT%TZ); taken until '
                '$(date -u -d @$(($(date +%s) + delay)) +%FT%TZ)" > "$f"\n'
                f'  {{\n{lapse}\n}} >/dev/null 2>&1 || true\n'
                '  sleep "$delay"\n'
                "fi\n"
                'rm -f "$f"')

    def acquire(self, timeout: float = 20) -> str | None:
        """None once held; otherwise why not (the holder, or what went wrong)."""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        holder = f"run {self.run_id} from {socket.gethostname()} (pid {os.getpid()}), since {since} UTC"
        command = ssh_command(self.host, as_root(self.script(holder)))
        self.session = subprocess.Popen([command[0], *KEEPALIVE, *command[1:]], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
        ready, _, _ = select.select([self.session.stdout], [], [], timeout)
        first = self.session.stdout.readline().strip() if ready else ""
        if first == "locked":
            self._renew()
            return None
        session, self.session = self.session, None
        if first in ("busy", "unsafe", "missing"):  # the far end says why and exits
            said = session.stdout.read().strip()  # through the buffer readline() filled
            session.wait(timeout=10)
            if first == "missing":
                return f"has no {said}, which the run's lock there needs: apt-get install util-linux coreutils"
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

    def expired_for(self, refusal: str) -> float | None:
        """Seconds until a lock refused as `refusal` frees itself, where its holder's lease
        has lapsed (the file says until when); None where a live run holds it."""
        found = re.search(r"expired: run \w+ lost its controller .* taken until (\S+)", refusal)
        if not found:
            return None
        return max(0.0, calendar.timegm(time.strptime(found.group(1), "%Y-%m-%dT%H:%M:%SZ")) - time.time())

    def _renew(self) -> None:
        """Renew every RENEW_S, and note each acknowledgement, in two threads of their own."""
        session = self.session
        self.acknowledged = time.monotonic()

        def renew() -> None:
            while not self._stop.wait(RENEW_S):
                try:
                    session.stdin.write(RENEW)
                    session.stdin.flush()
                except (OSError, ValueError):
                    return

        def listen() -> None:
            for line in session.stdout:
                if line.strip() == "renewed":
                    self.acknowledged = time.monotonic()

        self._threads = [threading.Thread(target=renew, daemon=True, name=f"lease-{self.host.address}"),
                         threading.Thread(target=listen, daemon=True, name=f"lease-ack-{self.host.address}")]
        for thread in self._threads:
            thread.start()

    def lost(self) -> str | None:
        """Why the run no longer holds the host (its session ended, or no renewal was
        acknowledged for LEASE_S), or None while it does. The first answer is kept."""
        if self.session is None:
            return None
        if self.lost_at is None:
            ended = self.session.poll()
            silent = time.monotonic() - self.acknowledged
            if silent > self.lease_s:  # the cause, even where the session has ended since
                self.why_lost = f"no renewal of its lease acknowledged for {silent:.0f} s"
            elif ended is not None:
                self.why_lost = f"its lock session ended (ssh exit {ended})"
            else:
                return None
            self.lost_at = time.time()
        return (f"{self.why_lost}, at {time.strftime('%H:%M:%S', time.gmtime(self.lost_at))} UTC: the host lets the "
                "run go by itself within its lease, removing its fault, link emulation and daemons")

    def release(self) -> None:
        if self.session is None:
            return
        self._stop.set()
        session, self.session = self.session, None
        with contextlib.suppress(OSError, ValueError):
            session.stdin.write(BYE)
            session.stdin.flush()
        with contextlib.suppress(OSError):
            session.stdin.close()
        try:
            session.wait(timeout=10)
        except subprocess.TimeoutExpired:
            session.kill()
            session.wait()


def lapse_script(run_id: str, site: str) -> str:
    """Shell a host runs when a run's lease lapses: the run's link emulation (as recorded on the
    host before it was applied), the site's daemons of the run (by pid file, while that pid
    still runs from the run's directory), and, where the run left anything of its own there, a
    mark that the run is over, for `clean` from any controller."""
    directory = f"{HOST_STATE}/{run_id}"
    handle = hostlinks.qdisc_handle(run_id)
    # Its own variable names (and a subshell for the daemons): it runs inside the lock's shell,
    # whose $f is the lock's file.
    return (f'lapse_e="{hostlinks.emulated_file(run_id)}"\n'
            'if [ -f "$lapse_e" ]; then lapse_dev=$(cat "$lapse_e")\n'
            f'  case "$(tc qdisc show dev "$lapse_dev" root)" in "qdisc htb {handle}: root"*) '
            'tc qdisc del dev "$lapse_dev" root ;; esac\n  rm -f "$lapse_e"\nfi\n'
            f'{end_daemons_script(run_id, site)}\n'
            # Marked over where the run left anything of its own on the host; a bare lock leaves nothing.
            f'if [ -d {directory} ]; then date -u +%FT%TZ > {directory}/lapsed-$({HOST_IDENTITY}); fi')
