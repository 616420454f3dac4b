"""The far end of a run's lease on a host (hostlock.py), run as a host runs it, in a network
namespace of its own: renewals acknowledged; a controller that falls silent loses the host,
which removes the run's link emulation and keeps the lock expired for the lock delay; an
orderly end frees it at once."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from pytest_overlay import procs
from pytest_overlay.inputs.model import RemoteHost
from pytest_overlay.testbeds.real import hostlinks, hostlock, hosts

RUN = "c0ffee"


@pytest.fixture
def host():
    """Name: host. Scope: function. A network namespace standing for a host, with an interface
    (a veth) carrying the run's link emulation (an htb root of the run's handle), recorded on
    the host as the run records it; deleted afterwards, with the run's files."""
    name = f"ovl{uuid.uuid4().hex[:6]}-lease"
    procs.run(["ip", "netns", "add", name]).check()
    try:
        for command in (["ip", "link", "add", "wan0", "type", "veth", "peer", "name", "wan1"],
                        ["ip", "link", "set", "wan0", "up"],
                        ["tc", "qdisc", "replace", "dev", "wan0", "root", "handle",
                         f"{hostlinks.qdisc_handle(RUN)}:", "htb", "default", "1"]):
            procs.run(command, name).check()
        procs.run(["sh", "-ec", hostlinks.record_emulation_script(RUN, "wan0")], name).check()
        yield name
    finally:
        procs.run(["sh", "-c", f'rm -f "{hosts.lock_file()}"; rm -rf {hosts.HOST_STATE}/{RUN}'], name)
        procs.run(["ip", "netns", "del", name])


def far_end(netns: str, lease_s: float, lock_delay_s: float) -> subprocess.Popen:
    lock = hostlock.HostLock(RemoteHost(address="192.0.2.9", ssh="root@192.0.2.9"), RUN, "A", lease_s=lease_s,
                             lock_delay_s=lock_delay_s)
    end = subprocess.Popen(["ip", "netns", "exec", netns, "sh", "-ec", lock.script(f"run {RUN} from a test")],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert end.stdout.readline().strip() == "locked", end.stderr.read()
    return end


def lock_says(netns: str) -> str:
    return procs.run(["sh", "-c", f'cat "{hosts.lock_file()}" 2>/dev/null'], netns).stdout.strip()


def root_qdisc(netns: str) -> str:
    return procs.run(["tc", "qdisc", "show", "dev", "wan0", "root"], netns).check().stdout


def test_a_silent_controller_loses_the_host_which_undoes_the_run_and_holds_the_lock_delay(host):
    end = far_end(host, lease_s=2, lock_delay_s=3)
    try:
        for _ in range(3):  # renewed well within the lease: acknowledged, and held
            time.sleep(1)
            end.stdin.write(hostlock.RENEW)
            end.stdin.flush()
            assert end.stdout.readline().strip() == "renewed"
        silent = time.monotonic()  # no renewal from here on, and the input stays open: a vanished controller
        assert lock_says(host).startswith(f"run {RUN} ") and "htb" in root_qdisc(host)
        deadline = silent + 10
        while not lock_says(host).startswith("expired") and time.monotonic() < deadline:
            time.sleep(0.1)
        lapsed = time.monotonic() - silent
        assert 2 <= lapsed < 7, lapsed  # the lease, and a few seconds for a busy machine
        assert f"expired: run {RUN} lost its controller (lapsed)" in lock_says(host)
        assert "htb" not in root_qdisc(host)  # the run's link emulation is gone
        assert procs.run(["sh", "-c", f"ls {hosts.HOST_STATE}/{RUN}/lapsed-*"], host).ok  # for `clean`
        end.wait(timeout=10)
        freed = time.monotonic() - silent
        assert lapsed + 2.5 <= freed < lapsed + 10 and lock_says(host) == ""  # held the lock delay, then free
    finally:
        end.kill()
        end.wait()


def test_an_orderly_end_frees_the_host_at_once_and_undoes_nothing_more(host):
    end = far_end(host, lease_s=2, lock_delay_s=30)
    end.stdin.write(hostlock.BYE)
    end.stdin.close()
    end.wait(timeout=5)
    assert lock_says(host) == "" and "htb" in root_qdisc(host)  # the run's own teardown removes its emulation


def test_a_controller_whose_process_ended_frees_the_host_after_a_renewal_period(host):
    """Its input closed without a bye (SIGKILL): its commands still in flight are fenced, so
    the lock is held a renewal period, not the whole lock delay."""
    end = far_end(host, lease_s=20, lock_delay_s=60)
    closed = time.monotonic()
    end.stdin.close()
    end.wait(timeout=15)
    took = time.monotonic() - closed
    assert hostlock.RENEW_S - 0.5 <= took < hostlock.RENEW_S + 8, took
    assert "htb" not in root_qdisc(host) and lock_says(host) == ""
