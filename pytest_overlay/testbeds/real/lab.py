"""A local lab of real hosts: a topology's sites on this machine, each reachable like a remote
Docker host (its own sshd and its own dockerd on TLS TCP 2376), while the WAN between them
is emulated as on the embedded testbed.

    python -m pytest_overlay lab up TOPOLOGY --out FILE
    python -m pytest_overlay lab down FILE

`up` starts a keeper process that builds the lab, holds the run's lock for the lab's whole
life and tears it down on SIGTERM; FILE is the topology with every site's `host:` filled in
(FILE.lab.json says which keeper to stop). Security: sshd (dropbear) accepts keys only, made
for the lab; dockerd demands a client certificate signed by the lab's CA; the management
network joins this machine and each site, and the sites' ports on it are isolated from each
other, so sites reach each other only over the emulated WAN.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ... import kinds, procs
from ...emulation import emulator
from ...inputs import topology
from ...paths import find_binary
from .. import emulated, engines, runs
from ..engines import Engine, remove_run_files
from ..pki import PKI

TOOLS = {"dropbear": "dropbear-bin", "dropbearkey": "dropbear-bin", "ssh-keygen": "openssh-client",
         "ssh": "openssh-client", "dockerd": "docker.io", "openssl": "openssl", "bridge": "iproute2",
         "unshare": "util-linux"}
MANAGEMENT_RANGE = ipaddress.IPv4Network("198.19.128.0/17")  # one /24 per lab, the first free one
SSH_PORT, DOCKER_PORT = 22, 2376
READY = "lab ready"


# The measurement image on the lab's hosts: already loaded (from the image store), or not.
IMAGE_CHOICES = ("loaded", "missing")


class LabError(RuntimeError):
    pass


def bridge_name(run_id: str) -> str:
    return f"ovl{run_id}-mgmt"


def _free_subnet() -> ipaddress.IPv4Network:
    routes = procs.run(["ip", "-4", "route", "show", "table", "all"]).stdout
    used = [ipaddress.ip_network(r.split()[0], strict=False) for r in routes.splitlines()
            if r and r.split()[0][0].isdigit()]
    for subnet in MANAGEMENT_RANGE.subnets(new_prefix=24):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise LabError(f"no free /24 for the management network in {MANAGEMENT_RANGE}")


def _wait_for_port(address: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise LabError(f"{what} did not listen on {address}:{port} within {timeout:g} s")


class Lab:
    """The lab's sites, built on an EmulatedTestbed; up() and down() run in the keeper."""

    def __init__(self, topo: topology.Topology, image: str = "loaded") -> None:
        self.topology = topo
        self.image = image
        self.bed = emulated.EmulatedTestbed(topo)
        self.engines: list[Engine] = []
        self.management: dict[str, str] = {}
        self.bridge: str | None = None

    @property
    def directory(self) -> Path:
        return self.bed.run_dir / "lab"

    def up(self) -> dict[str, dict]:
        """Build the lab; return every site's `host:` entry."""
        self.bed.up()
        for site in self.topology.sites:  # a site's address sits on its loopback: give it a real interface's MTU
            procs.run(["ip", "link", "set", "lo", "mtu", str(emulator.MTU)], self.bed.netns_of(site)).check()
        self.directory.mkdir(mode=0o700)
        pki = PKI(self.directory / "pki", self.bed.run_id).create()
        key = self.directory / "id_ed25519"
        procs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"pytest-overlay lab {self.bed.run_id}",
                   "-f", str(key)]).check()
        client = pki.issue("lab-client", client=True)
        self._management_network()
        known_hosts, hosts = [], {}
        for site in self.topology.sites:
            address = self.management[site]
            site_dir = self.directory / site
            site_dir.mkdir(mode=0o700)
            host_key = site_dir / "ssh_host_ed25519"
            procs.run(["dropbearkey", "-t", "ed25519", "-f", str(host_key)]).check()
            public = procs.run(["dropbearkey", "-y", "-f", str(host_key)]).check().stdout
            line = next(x for x in public.splitlines() if x.startswith("ssh-ed25519 "))
            known_hosts.append(f"{address} {' '.join(line.split()[:2])}")
            engine = self._engine(site, pki.issue(f"dockerd-{site}", [address]))
            self._sshd(site, key.with_suffix(".pub").read_text(), host_key, engine)
            hosts[site] = {"ssh": f"root@{address}", "docker": f"tcp://{address}:{DOCKER_PORT}",
                           "tls": {"ca": str(client.ca), "cert": str(client.cert), "key": str(client.key)},
                           "address": self.bed.address(site), "identity": str(key),
                           "known_hosts": str(self.directory / "known_hosts")}
        (self.directory / "known_hosts").write_text("\n".join(known_hosts) + "\n")
        return hosts

    def _management_network(self) -> None:
        subnet = _free_subnet()
        gateway = subnet[1]
        self.bridge = bridge_name(self.bed.run_id)
        procs.run(["ip", "link", "add", self.bridge, "type", "bridge"]).check()
        procs.run(["ip", "addr", "add", f"{gateway}/{subnet.prefixlen}", "dev", self.bridge]).check()
        procs.run(["ip", "link", "set", self.bridge, "up"]).check()
        for index, site in enumerate(self.topology.sites):
            port, address = f"ovl{self.bed.run_id}-m{index}", subnet[index + 2]
            netns = self.bed.netns_of(site)
            procs.run(["ip", "link", "add", port, "type", "veth", "peer", "name", "mgmt0", "netns", netns]).check()
            procs.run(["ip", "link", "set", port, "master", self.bridge, "up"]).check()
            procs.run(["bridge", "link", "set", "dev", port, "isolated", "on"]).check()
            procs.run(["ip", "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "mgmt0"], netns).check()
            procs.run(["ip", "link", "set", "mgmt0", "up"], netns).check()
            self.management[site] = str(address)

    def _engine(self, site: str, server) -> Engine:
        address = self.management[site]
        engine = Engine(site, self.bed.netns_of(site), self.bed.address(site), self.bed.run_id,
                        self.bed.run_dir / f"docker-{site}",
                        ["-H", f"tcp://{address}:{DOCKER_PORT}", "--tlsverify", "--tlscacert", str(server.ca),
                         "--tlscert", str(server.cert), "--tlskey", str(server.key)])
        self.engines.append(engine)
        if self.image == "loaded":
            engines.seed(engine, engines.image_store(engines.image_tag()))
        engine.start()
        self.bed.track(engine.daemon)
        _wait_for_port(address, DOCKER_PORT, 30, f"dockerd of site {site}")
        return engine

    def _sshd(self, site: str, public_key: str, host_key: Path, engine: Engine) -> None:
        """dropbear, keys only, in its own mount namespace where /root is the lab's home for
        the site; sessions get the site's engine as DOCKER_HOST."""
        home = self.directory / site / "home"
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        home.chmod(0o700)
        authorized = home / ".ssh" / "authorized_keys"
        authorized.write_text(public_key)
        authorized.chmod(0o600)
        address = self.management[site]
        # The overlays' daemons this machine has, installed on the site as a user installs
        # them by hand: in /usr/local/bin.
        local_bin = self.directory / site / "bin"
        local_bin.mkdir()
        for name in kinds.shipped():
            if find_binary(name):
                (local_bin / name).symlink_to(find_binary(name))
        # The copied mount table pins every namespace mounted at the time (other runs' too):
        # unmount them in this copy so their owners can remove them. /sys is mounted anew, as
        # `ip netns exec` does, so that /sys/class/net shows the site's own interfaces.
        script = ("for m in $(awk '$3 == \"nsfs\" {print $2}' /proc/self/mounts); do umount -l \"$m\"; done; "
                  'umount -l /sys && mount -t sysfs sysfs /sys && '
                  'mount --bind "$1" /root && mount --bind "$4" /usr/local/bin && '
                  f'exec dropbear -F -E -s -e -m -j -k -p {address}:{SSH_PORT} -r "$2" -P "$3"')
        daemon = procs.start(
            f"sshd-{site}", ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sshd",
                             str(home), str(host_key), str(self.directory / site / "dropbear.pid"), str(local_bin)],
            self.directory / site / "sshd.log", self.bed.netns_of(site),
            env={"DOCKER_HOST": engine.url, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})
        self.bed.track(daemon)
        _wait_for_port(address, SSH_PORT, 15, f"sshd of site {site}")

    def down(self) -> None:
        errors = []

        def stop(engine: Engine) -> None:
            try:
                engine.stop()
            except Exception as e:  # noqa: BLE001  (best effort: the rest still comes down)
                errors.append(f"engine {engine.site}: {e}")

        with concurrent.futures.ThreadPoolExecutor(max(1, len(self.engines))) as pool:
            list(pool.map(stop, self.engines))  # each dockerd takes seconds to stop: all at once
        try:
            self.bed.down()
        except emulated.TestbedError as e:
            errors.append(str(e))
        remove_run_files(self.bed.run_id, self.bed.run_dir)
        if self.bridge:
            remove_bridge(self.bed.run_id)
        if errors:
            raise LabError("lab teardown finished with errors:\n" + "\n".join(errors))


def remove_bridge(run_id: str, state_dir: Path | None = None) -> None:
    """A cleaner for `clean`: the management bridge and its ports are what a lab makes
    outside its namespaces."""
    shown = procs.run(["ip", "-o", "link", "show"]).stdout
    ours = re.compile(rf"^\d+: (ovl{run_id}-(?:mgmt|m\d+))[@:]")
    for name in sorted(m.group(1) for m in map(ours.match, shown.splitlines()) if m):
        procs.run(["ip", "link", "del", name])


def _lab_file(topo: topology.Topology, hosts: dict[str, dict]) -> str:
    raw = yaml.safe_load(Path(topo.path).read_text())
    for site, host in hosts.items():
        raw["sites"][site] = {**(raw["sites"][site] or {}), "host": host}
    raw["name"] = raw.get("name", Path(topo.path).stem)
    return ("# Written by `python -m pytest_overlay lab up`; removed by `lab down` with the lab.\n"
            + yaml.safe_dump(raw, sort_keys=False))


def keep(topology_spec: str, out: Path, image: str = "loaded") -> int:
    """The keeper: build the lab, write FILE, say READY, then wait for SIGTERM and tear down."""
    topo = topology.load(topology_spec)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    lab = Lab(topo, image)
    try:
        hosts = lab.up()
        out.write_text(_lab_file(topo, hosts))
        Path(f"{out}.lab.json").write_text(json.dumps(
            {"run_id": lab.bed.run_id, "keeper_pid": os.getpid(), "keeper_start": procs.start_time(os.getpid())}))
        print(f"{READY} {lab.bed.run_id}", flush=True)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # noqa: BLE001  (the keeper's last word goes to `lab up`)
        print(f"lab: {type(e).__name__}: {e}", flush=True)
        return 1
    finally:
        lab.down()


def up(topology_spec: str, out: Path, timeout: float = 300, image: str = "loaded") -> int:
    topo = topology.load(topology_spec)  # bad input ends here, before anything exists
    if any(s.host for s in topo.sites.values()):
        raise LabError(f"{topo.path}: its sites already name real hosts; give a topology of sites to emulate")
    missing = procs.missing(TOOLS)
    if missing:
        raise LabError("cannot build the lab; missing: " + "; ".join(missing))
    if os.geteuid() != 0:
        raise LabError("the lab needs root (namespaces, dockerd)")
    started = time.monotonic()
    keeper = subprocess.Popen([sys.executable, "-m", "pytest_overlay", "lab", "keep", topology_spec,
                               "--out", str(out), "--image", image], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    said = []
    for line in keeper.stdout:
        said.append(line.rstrip())
        if line.startswith(READY):
            print(f"lab {line.split()[-1]} up in {time.monotonic() - started:.1f} s: {len(topo.sites)} sites; "
                  f"topology with their hosts in {out}")
            return 0
        if time.monotonic() - started > timeout:
            keeper.terminate()
            break
    keeper.wait()
    raise LabError("the lab did not come up:\n" + "\n".join(said[-20:]))


def down(out: Path, timeout: float = 120) -> int:
    sidecar = Path(f"{out}.lab.json")
    try:
        lab = json.loads(sidecar.read_text())
    except (OSError, ValueError) as e:
        raise LabError(f"{sidecar}: not a lab's file ({e}); nothing was touched") from None
    started = time.monotonic()
    pid = lab["keeper_pid"]
    if procs.start_time(pid) == lab["keeper_start"]:
        os.kill(pid, signal.SIGTERM)
        while procs.start_time(pid) == lab["keeper_start"] and time.monotonic() - started < timeout:
            time.sleep(0.1)
    # A keeper that was killed leaves its run to the sweep: its lock is free, so it is over.
    runs.sweep(report=lambda m: None, cleaners=[remove_run_files, remove_bridge], only=lab["run_id"])
    out.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    print(f"lab {lab['run_id']} down in {time.monotonic() - started:.1f} s")
    return 0

