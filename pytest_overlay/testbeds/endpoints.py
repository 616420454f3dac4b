"""A measurement container as the place where probes run (ContainerEndpoint), on either
backend; a site's own namespace (emulated.SiteEndpoint) is the other such place. A probe asks
an endpoint to run a command, start a server, name an agent and hand it a file, and nothing
else."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import docker

from .. import procs
from ..paths import IMAGE_AGENTS

if TYPE_CHECKING:
    from .engines import Engine


@dataclass
class ContainerEndpoint:
    """A measurement container: commands run in it with `docker exec`."""

    name: str
    address: str
    engine: Engine
    container: str

    def run(self, command: list[str], timeout: float | None = 60) -> procs.CommandResult:
        return self.engine.cli("exec", self.container, *command, timeout=timeout)

    def start(self, name: str, command: list[str], ready: str | None = None, timeout: float = 10.0) -> procs.Daemon:
        # The server writes its pid inside the container, so stop() can end it there.
        script = f"echo $$ > /tmp/{name}.pid; exec {shlex.join(command)}"
        daemon = procs.start(name, [*self.engine.docker_command(), "exec", self.container, "sh", "-c", script],
                             self.engine.state_dir / f"{name}.log", ready=ready, timeout=timeout)
        return ContainerDaemon(daemon.name, daemon.command, daemon.log, daemon.popen, daemon.started, self)

    def agent(self, name: str) -> str:
        return f"{IMAGE_AGENTS}/{name}"

    def netns_inode(self) -> int | None:
        """Its namespace's inode where its engine runs on this machine (a real host's: None)."""
        if not self.engine.local:
            return None
        try:
            pid = self.engine.client.containers.get(self.container).attrs["State"]["Pid"]
        except docker.errors.DockerException:
            return None
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino if pid else None
        except OSError:
            return None

    def file(self, path: Path) -> str:
        """Copy the file into the container's /tmp (over the Docker API: works on remote hosts too)."""
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            tar.add(str(path), arcname=path.name)
        self.engine.client.containers.get(self.container).put_archive("/tmp", data.getvalue())
        return f"/tmp/{path.name}"


class ContainerDaemon(procs.Daemon):
    def __init__(self, name, command, log, popen, started, endpoint: ContainerEndpoint) -> None:
        super().__init__(name, command, log, popen, started)
        self.endpoint = endpoint

    def _signal_inside(self, signal_name: str, timeout: float) -> None:
        """Signal the process inside the container (its pid is there) and wait for it."""
        if self.alive():
            self.endpoint.run(["sh", "-c", f"kill -{signal_name} $(cat /tmp/{self.name}.pid)"], timeout=timeout)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

    def interrupt(self, timeout: float = 5.0) -> int | None:
        self._signal_inside("INT", timeout)
        return self.stop(timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        self._signal_inside("TERM", timeout)
        return super().stop(timeout)


