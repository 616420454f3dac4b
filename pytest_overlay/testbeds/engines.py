"""A real Docker engine per emulated site, and the measurement image, built without a registry.

Each engine is Debian's dockerd started inside its site's namespace (with nsenter: `ip netns
exec` remounts /sys and dockerd then finds no cgroups), with its own data root, exec root,
pidfile, socket and cgroup parent, all named after the run. The image is a real Debian root
filesystem made with mmdebstrap from this machine's own apt sources (no registry), holding
every probe, the RTSP server and client; it is cached by its recipe, so it is built once.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import docker

from .. import procs
from ..paths import AGENTS, CACHE, DATA_ROOT, IMAGE_AGENTS

IMAGE_REPOSITORY = "pytest-overlay/probe"
IMAGE_SUITE = "bookworm"
# Everything the probes and the streaming experiment run, as Debian packages. Keep
# docker/Dockerfile in step: it describes the same image for hosts with a registry.
IMAGE_PACKAGES = ("iperf3", "irtt", "iputils-ping", "iproute2", "procps", "python3-minimal", "python3-gi",
                  "gir1.2-gst-rtsp-server-1.0", "gstreamer1.0-plugins-good")
AGENT_FILES = ("rtsp_server.py", "rtsp_client.py", "bulk.py")
# Files no probe uses, pulled in by GStreamer's dependencies (GL drivers and the compiler
# behind them, documentation): left out, the image is smaller and imports faster. (Icon
# themes stay: their packages' scripts need them.)
IMAGE_EXCLUDED = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
                  "/usr/lib/x86_64-linux-gnu/dri/*", "/usr/lib/x86_64-linux-gnu/libLLVM*",
                  "/usr/lib/x86_64-linux-gnu/libz3.so*")
LABEL = "pytest-overlay.run"
# A swarm a run makes carries the run's id in its spec's labels from its first moment: a run
# killed before it recorded its nodes still leaves a swarm `clean` can tell is its own.
SWARM_LABEL = LABEL
TOOLS = {"dockerd": "docker.io", "containerd": "containerd", "runc": "runc", "docker": "docker.io",
         "mmdebstrap": "mmdebstrap"}


class EngineError(RuntimeError):
    pass


# --- the measurement image ----------------------------------------------------------------
def image_recipe() -> bytes:
    """What the image is made of: suite, packages and the agents' code."""
    parts = [IMAGE_SUITE.encode(), " ".join(IMAGE_PACKAGES).encode()]
    parts += [(AGENTS / name).read_bytes() for name in AGENT_FILES]
    return b"\0".join(parts)


def image_tag() -> str:
    return hashlib.sha256(image_recipe()).hexdigest()[:12]


def build_image_tar(cache: Path | None = None, progress: Callable[[str], None] = lambda m: None) -> tuple[Path, str]:
    """The image's root filesystem as a tar, built once per recipe; returns it and its tag.

    Two runs that need it at once build it once: the second waits on the first's lock.
    """
    tag = image_tag()
    cache = cache or CACHE
    tar_path = cache / f"probe-{tag}.tar"
    if tar_path.exists():
        return tar_path, tag
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"probe-{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tar_path.exists():
            return tar_path, tag
        progress(f"building the measurement image (Debian {IMAGE_SUITE} with {', '.join(IMAGE_PACKAGES)}); "
                 "once, then cached in " + str(cache))
        tmp = cache / f".probe-{tag}.{os.getpid()}.tar"
        agents = " ".join(f'"{AGENTS / name}"' for name in AGENT_FILES)
        excluded = [f"--dpkgopt=path-exclude={path}" for path in IMAGE_EXCLUDED]
        result = procs.run(["mmdebstrap", "--variant=essential", "--quiet", '--aptopt=APT::Install-Recommends "false"',
                            *excluded, f"--include={','.join(IMAGE_PACKAGES)}",
                            f'--customize-hook=mkdir -p "$1{IMAGE_AGENTS}" && cp {agents} "$1{IMAGE_AGENTS}/"',
                            IMAGE_SUITE, str(tmp)], timeout=1800)
        if not result.ok:
            tmp.unlink(missing_ok=True)
            raise EngineError(f"cannot build the measurement image with mmdebstrap (exit {result.rc}):\n"
                              + "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:]))
        tmp.replace(tar_path)
    return tar_path, tag


# --- engines --------------------------------------------------------------------------------
@dataclass
class Engine:
    site: str
    netns: str
    address: str
    run_id: str
    state_dir: Path
    extra_args: list[str] = field(default_factory=list)  # what an overlay needs of dockerd (flannel: --bip, --mtu)
    daemon: procs.Daemon | None = None
    containerd: procs.Daemon | None = None
    client: docker.DockerClient | None = field(default=None, repr=False)
    local: ClassVar[bool] = True  # its processes are this machine's

    @property
    def data_root(self) -> Path:
        return DATA_ROOT / self.run_id / self.site

    @property
    def exec_root(self) -> Path:
        return self.state_dir / "exec"

    @property
    def socket(self) -> Path:
        return self.state_dir / "docker.sock"

    @property
    def containerd_socket(self) -> Path:
        """Where the engine's own containerd listens: where dockerd would put its managed one."""
        return self.exec_root / "containerd" / "containerd.sock"

    @property
    def cgroup_parent(self) -> str:
        return f"ovl{self.run_id}-{self.site}"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 60) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.data_root.parent.mkdir(parents=True, exist_ok=True)
        # Our own (empty) configuration: a host's /etc/docker/daemon.json must not apply to
        # the testbed's engines. The cgroupfs driver: under systemd's driver (the default on
        # cgroup v2 hosts with systemd) dockerd refuses a --cgroup-parent that is not a .slice.
        config = self.state_dir / "daemon.json"
        config.write_text("{}\n")
        self._start_containerd(timeout)
        command = [
            "dockerd", "--config-file", str(config), "--exec-opt", "native.cgroupdriver=cgroupfs",
            "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
            "--pidfile", str(self.state_dir / "dockerd.pid"), "-H", self.url,
            "--containerd", str(self.containerd_socket), "--cgroup-parent", self.cgroup_parent,
            "--userland-proxy=false", "--log-level=warn", *self.extra_args,
        ]
        self.daemon = procs.start(f"dockerd-{self.site}", command, self.state_dir / "dockerd.log", self.netns)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.daemon.alive():
                raise EngineError(f"Docker engine of site {self.site} exited during start "
                                  f"(exit {self.daemon.popen.returncode}); its log:\n{self.daemon.log_tail()}")
            try:
                self.client = docker.DockerClient(base_url=self.url, timeout=120)
                return
            except (docker.errors.APIError, docker.errors.DockerException, OSError):
                time.sleep(0.05)
        raise EngineError(f"Docker engine of site {self.site} did not answer on {self.socket} within "
                          f"{timeout:g} s; its log:\n{self.daemon.log_tail()}")

    def _start_containerd(self, timeout: float) -> None:
        """The engine's own containerd, configured as dockerd configures its managed one. Left
        to itself, dockerd uses /run/containerd/containerd.sock wherever a containerd listens
        there (the host's own), and a killed run's containers would live on in it."""
        config = self.state_dir / "containerd.toml"
        config.write_text(f'version = 2\nroot = "{self.data_root}/containerd/daemon"\n'
                          f'state = "{self.exec_root}/containerd/daemon"\n'
                          'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                          f'[grpc]\n  address = "{self.containerd_socket}"\n'
                          f'[debug]\n  address = "{self.exec_root}/containerd/containerd-debug.sock"\n')
        self.containerd_socket.parent.mkdir(parents=True, exist_ok=True)
        self.containerd = procs.start(f"containerd-{self.site}", ["containerd", "--config", str(config)],
                                      self.state_dir / "containerd.log", self.netns)
        deadline = time.monotonic() + timeout
        while not self.containerd_socket.is_socket():
            if not self.containerd.alive() or time.monotonic() > deadline:
                raise EngineError(f"Docker engine of site {self.site}: its containerd did not start; its log:\n"
                                  f"{self.containerd.log_tail()}")
            time.sleep(0.02)

    def load_image(self, tar_path: Path, tag: str) -> bool:
        """Import the image where the engine lacks it; True if it had to."""
        try:
            self.client.images.get(f"{IMAGE_REPOSITORY}:{tag}")
            return False
        except docker.errors.ImageNotFound:
            self.client.api.import_image_from_file(str(tar_path), repository=IMAGE_REPOSITORY, tag=tag,
                                                   changes=['CMD ["/bin/sleep", "infinity"]'])
            return True

    def log_tail(self, lines: int = 8) -> str:
        return self.daemon.log_tail(lines) if self.daemon else "(no log: not started by this run)"

    def docker_command(self) -> list[str]:
        """The docker command line that reaches this engine."""
        return ["docker", "-H", self.url]

    def cli(self, *args: str, timeout: float | None = 60) -> procs.CommandResult:
        return procs.run([*self.docker_command(), *args], timeout=timeout)

    def halt(self) -> None:
        """Stop dockerd, keeping its data root (it starts again from it)."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.daemon is not None:
            self.daemon.stop(timeout=20)
            self.daemon = None
        unmount_below(self.exec_root)
        unmount_below(self.data_root)

    def stop(self) -> list[str]:
        """Remove this run's containers, leave the swarm, stop dockerd and delete its roots and
        cgroups; the cgroups it could not remove (still holding a process), said."""
        if self.client is not None:
            try:
                for container in self.client.containers.list(all=True, filters={"label": LABEL}):
                    container.remove(force=True)
                self.client.swarm.leave(force=True)
            except (docker.errors.APIError, docker.errors.DockerException, OSError):
                pass
            self.client.close()
            self.client = None
        if self.daemon is not None:
            self.daemon.stop(timeout=20)
        if self.containerd is not None:  # after dockerd, which stops its containers through it
            self.containerd.stop(timeout=10)
        unmount_below(self.exec_root)
        unmount_below(self.data_root)
        shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return procs.remove_cgroups(self.cgroup_parent)


def unmount_below(path: Path) -> None:
    """Detach whatever is still mounted under path (after an unclean engine exit)."""
    prefix = str(path).rstrip("/") + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return
    for mount in sorted((m for m in mounts if m.startswith(prefix) or m == prefix[:-1]), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)


def remove_run_files(run_id: str, state_dir: Path) -> None:
    """What a run's engines leave once stopped (or killed): mounts under their roots, the
    sockets their containers' shims left, and the data roots."""
    unmount_below(state_dir)
    unmount_below(DATA_ROOT / run_id)
    remove_shim_sockets(state_dir, DATA_ROOT / run_id)
    shutil.rmtree(DATA_ROOT / run_id, ignore_errors=True)


SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 1.6 puts every shim's socket here, whose containerd it is


def shim_socket(exec_root: Path, container_id: str) -> Path:
    """Where containerd 1.6 puts the shim socket of a container of dockerd's own containerd
    (runtime/v2/shim SocketAddress: sha256 of its address, namespace and the container's id)."""
    address = exec_root / "containerd" / "containerd.sock"
    return SHIM_SOCKETS / hashlib.sha256(os.path.join(str(address), "moby", container_id).encode()).hexdigest()


def remove_shim_sockets(state_dir: Path, data_roots: Path) -> list[Path]:
    """The sockets a killed run's shims left: found by the run's own containers (their ids in
    each site's data root) and its engines' addresses, so never another's; removed where
    nothing listens. Returns what was removed."""
    removed = []
    for containers in data_roots.glob("*/containers"):
        exec_root = state_dir / f"docker-{containers.parent.name}" / "exec"
        for container in containers.iterdir():
            path = shim_socket(exec_root, container.name)
            if path.is_socket() and not _listening(path):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


# --- one image store for every engine ------------------------------------------------------
# The image is imported once, by the first engine that needs it; its store (image metadata
# copied, layer files hard-linked) is kept in the cache. Every later engine's data root starts
# from it with the metadata copied and each layer's files given as a link to the store's
# folder: no per-site copy of the image on disk, no import per bring-up, and a few syscalls per
# layer however many files the image has (17 000 here: hard-linking them took 1.4 s per site).
# Overlayfs never writes to a lower layer, so engines that share a layer cannot change it;
# removing a data root removes the links, never what they point to.
STORE_PARTS = ("image", "overlay2")
LAYER_FILES = "diff"  # in a layer's folder of overlay2/: its files; the rest is per-engine metadata


def image_store(tag: str) -> Path:
    return CACHE / f"engine-store-{tag}"


def seed(engine: Engine, store: Path) -> bool:
    """Give an engine that has not started yet the image, from the store: True if done.
    Only into an empty data root."""
    root = engine.data_root
    if not all((store / part).is_dir() for part in STORE_PARTS) or root.exists():
        return False
    root.parent.mkdir(parents=True, exist_ok=True)
    return _whole(root, root.with_name(f".{root.name}.seeding"), lambda work: _link_layers(store, work))


def _link_layers(store: Path, work: Path) -> bool:
    if subprocess.run(["cp", "-a", str(store / "image"), str(work / "image")], capture_output=True).returncode:
        return False
    (work / "overlay2").mkdir()
    for entry in (store / "overlay2").iterdir():
        if not entry.is_dir() or not (entry / LAYER_FILES).is_dir():  # l/ (short names), anything else: copied
            if subprocess.run(["cp", "-a", str(entry), str(work / "overlay2")], capture_output=True).returncode:
                return False
            continue
        layer = work / "overlay2" / entry.name
        layer.mkdir()
        shutil.copystat(entry, layer)
        for part in entry.iterdir():
            if part.name == LAYER_FILES:
                (layer / part.name).symlink_to(part)
            elif subprocess.run(["cp", "-a", str(part), str(layer)], capture_output=True).returncode:
                return False
    return True


def _whole(target: Path, work: Path, fill: Callable[[Path], bool]) -> bool:
    """`fill` builds the folder in work, then work is renamed to target: whole, or not at all
    (a target that appeared meanwhile wins)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        if not fill(work):
            return False
        work.rename(target)
        return True
    except OSError:
        return False
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _hard_link_copy(source: Path, work: Path) -> bool:
    return not (subprocess.run(["cp", "-a", str(source / "image"), str(work / "image")], capture_output=True).returncode
                or subprocess.run(["cp", "-al", str(source / "overlay2"), str(work / "overlay2")],
                                  capture_output=True).returncode)


def keep_store(engine: Engine, tag: str) -> None:
    """Keep the image store of an engine that has just imported the image (nothing else is
    in it yet) for every engine after it. Two runs may race: the first rename wins."""
    store = image_store(tag)
    root = engine.data_root
    if store.exists() or not all((root / part).is_dir() for part in STORE_PARTS):
        return
    if os.stat(root).st_dev != os.stat(CACHE).st_dev:
        return
    _whole(store, CACHE / f".engine-store-{tag}.{os.getpid()}", lambda work: _hard_link_copy(root, work))


def start_all(engines: list[Engine], progress: Callable[[str], None]) -> tuple[str, float]:
    """Start every engine in parallel with the image; returns the image reference.

    Engines start from the image store where it exists; otherwise the first engine imports
    the image and the store is kept from it before the others start.
    """
    started = time.monotonic()
    missing = procs.missing(TOOLS)
    if missing:
        raise EngineError("cannot start Docker engines; missing: " + "; ".join(missing))
    tar_path, tag = build_image_tar(None, progress)
    store = image_store(tag)
    if not store.exists() and engines:
        progress(f"importing the measurement image into engine {engines[0].site}; kept as the image store "
                 f"{store} for every engine after it")
        first = engines[0]
        first.start()
        import_image([first], tar_path, tag)
        first.halt()  # while it runs, its overlay2 is a mount of its own: no hard links across it
        keep_store(first, tag)
    seeded = [e.site for e in engines if seed(e, store)]
    progress(f"starting {len(engines)} Docker engines: " + ", ".join(e.site for e in engines)
             + (f" (the image from the store: {', '.join(seeded)})" if seeded else ""))
    _start_in_parallel(engines, progress)
    reference = import_image(engines, tar_path, tag)
    progress(f"image {reference} in every engine")
    return reference, time.monotonic() - started


def _start_in_parallel(engines: list[Engine], progress: Callable[[str], None]) -> None:
    if not engines:
        return
    with concurrent.futures.ThreadPoolExecutor(len(engines)) as pool:
        errors = []
        for engine, future in [(e, pool.submit(e.start)) for e in engines]:
            try:
                future.result()
                progress(f"engine {engine.site} up ({engine.socket})")
            except EngineError as e:
                errors.append(str(e))
        if errors:
            raise EngineError("\n".join(errors))


def import_image(engines: list[Engine], tar_path: Path, tag: str) -> str:
    """The image into every engine that lacks it, in parallel (over the Docker API, so remote
    engines too); returns its reference."""
    with concurrent.futures.ThreadPoolExecutor(max(1, len(engines))) as pool:
        imported = list(pool.map(lambda e: e.load_image(tar_path, tag), engines))
    if any(imported):
        # An import leaves hundreds of MB of dirty pages per engine on this machine (the
        # embedded testbed, the lab): written back now, not while the first probes run
        # (the writeback stalls the delay line).
        os.sync()
    return f"{IMAGE_REPOSITORY}:{tag}"
