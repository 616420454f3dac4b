"""A real Docker engine per emulated site, and the measurement image, built without a registry.

Each engine is Debian's dockerd started inside its site's namespace (with nsenter: `ip netns
exec` remounts /sys and dockerd then finds no cgroups), with its own data root, exec root,
pidfile, socket and cgroup parent, all named after the run. The image is a root filesystem
of this host's own probe binaries and the libraries they load, imported into each engine;
it is cached by content, so it is built once.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import docker

from . import procs

DATA_ROOT = Path(os.environ.get("PYTEST_OVERLAY_DATA", "/var/lib/pytest-overlay"))
IMAGE_CACHE = Path(os.environ.get("PYTEST_OVERLAY_CACHE", "/var/cache/pytest-overlay"))
IMAGE_REPOSITORY = "pytest-overlay/probe"
IMAGE_TOOLS = ("sh", "sleep", "cat", "iperf3", "irtt", "ping", "ss", "ip")
LABEL = "pytest-overlay.run"
TOOLS = {"dockerd": "docker.io", "containerd": "containerd", "runc": "runc", "docker": "docker.io"}


class EngineError(RuntimeError):
    pass


# --- the measurement image ----------------------------------------------------------------
def _libraries(binary: str) -> list[str]:
    """The shared objects a binary loads, from ldd (nothing for a static binary)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            libs.append(match.group(1))
    return libs


def _inside(path: str) -> str:
    """Where a host file goes in the image: its directory resolved, as the host lays it out."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def image_files() -> dict[str, str]:
    """Path in the image -> file on this host, for every tool and library the probes need."""
    files: dict[str, str] = {}
    for tool in IMAGE_TOOLS:
        path = shutil.which(tool)
        if path is None:
            raise EngineError(f"cannot build the measurement image: {tool} is not installed")
        for needed in [path, *_libraries(path)]:
            files[_inside(needed)] = os.path.realpath(needed)
    return files


def _top_level_links() -> dict[str, str]:
    """The host's merged-/usr links (/bin -> usr/bin, ...), so the image resolves paths alike."""
    return {d: os.readlink(f"/{d}") for d in ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
            if os.path.islink(f"/{d}")}


def build_image_tar(cache: Path | None = None) -> tuple[Path, str]:
    """The image's root filesystem as a tar, built once per content; returns it and its tag."""
    files = image_files()
    digest = hashlib.sha256()
    digest.update(repr(sorted(_top_level_links().items())).encode())
    for inside, real in sorted(files.items()):
        digest.update(inside.encode())
        digest.update(Path(real).read_bytes())
    tag = digest.hexdigest()[:12]
    cache = cache or IMAGE_CACHE
    tar_path = cache / f"probe-{tag}.tar"
    if tar_path.exists():
        return tar_path, tag
    cache.mkdir(parents=True, exist_ok=True)
    tmp = tar_path.with_suffix(f".tmp{os.getpid()}")
    with tarfile.open(tmp, "w") as tar:
        for directory in ("tmp", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        passwd = b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
        for name, target in _top_level_links().items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        for inside, real in sorted(files.items()):
            tar.add(real, arcname=inside.lstrip("/"), recursive=False)
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
    daemon: procs.Daemon | None = None
    client: docker.DockerClient | None = field(default=None, repr=False)

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
    def cgroup_parent(self) -> str:
        return f"ovl{self.run_id}-{self.site}"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 60) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.data_root.parent.mkdir(parents=True, exist_ok=True)
        command = [
            "dockerd", "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
            "--pidfile", str(self.state_dir / "dockerd.pid"), "-H", self.url,
            "--cgroup-parent", self.cgroup_parent, "--userland-proxy=false", "--log-level=warn",
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

    def load_image(self, tar_path: Path, tag: str) -> str:
        reference = f"{IMAGE_REPOSITORY}:{tag}"
        try:
            self.client.images.get(reference)
        except docker.errors.ImageNotFound:
            self.client.api.import_image_from_file(str(tar_path), repository=IMAGE_REPOSITORY, tag=tag,
                                                   changes=['CMD ["/bin/sleep", "infinity"]'])
        return reference

    def cli(self, *args: str, timeout: float | None = 60) -> procs.CommandResult:
        """The docker command line against this engine."""
        return procs.run(["docker", "-H", self.url, *args], timeout=timeout)

    def stop(self) -> None:
        """Remove this run's containers, leave the swarm, stop dockerd and delete its roots."""
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
        unmount_below(self.exec_root)
        unmount_below(self.data_root)
        shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)


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
    """What a run's engines leave once stopped (or killed): mounts under their roots, and
    the data roots."""
    unmount_below(state_dir)
    unmount_below(DATA_ROOT / run_id)
    shutil.rmtree(DATA_ROOT / run_id, ignore_errors=True)


def start_all(engines: list[Engine], progress: Callable[[str], None]) -> tuple[str, float]:
    """Start every engine in parallel and load the image; returns the image reference."""
    started = time.monotonic()
    missing = procs.missing(TOOLS)
    if missing:
        raise EngineError("cannot start Docker engines; missing: " + "; ".join(missing))
    progress(f"starting {len(engines)} Docker engines: " + ", ".join(e.site for e in engines))
    with concurrent.futures.ThreadPoolExecutor(len(engines) + 1) as pool:
        image = pool.submit(build_image_tar)
        errors = []
        for engine, future in [(e, pool.submit(e.start)) for e in engines]:
            try:
                future.result()
                progress(f"engine {engine.site} up ({engine.socket})")
            except EngineError as e:
                errors.append(str(e))
        if errors:
            raise EngineError("\n".join(errors))
        tar_path, tag = image.result()
        references = list(pool.map(lambda e: e.load_image(tar_path, tag), engines))
    progress(f"image {references[0]} loaded into every engine")
    return references[0], time.monotonic() - started
