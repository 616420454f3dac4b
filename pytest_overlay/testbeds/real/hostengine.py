"""A real host's own Docker engine, reached over TLS and never started or stopped by a run;
and what removes a run from such engines (its containers, networks, and a swarm it made).
Used by the real-host testbed and by `clean --topology`."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import ClassVar

import docker

from ...inputs.model import RemoteHost
from ..engines import LABEL, Engine
from .hosts import remove_networks

MIN_DOCKER = (20, 10)
API_VERSION = "1.41"
GWBRIDGE = "docker_gwbridge"  # Docker's bridge from a swarm's containers to their host
LEAVE_WAIT_S = 90.0  # a swarm leave that timed out is watched and tried again this long



class RemoteError(RuntimeError):
    pass


@dataclass
class RemoteEngine(Engine):
    """A real host's own dockerd, reached over TLS; never started or stopped by this run."""

    host: RemoteHost | None = None
    local: ClassVar[bool] = False

    @property
    def url(self) -> str:
        return self.host.docker

    def docker_command(self) -> list[str]:
        tls = self.host.tls
        return ["docker", "-H", self.url, "--tlsverify", "--tlscacert", tls["ca"], "--tlscert", tls["cert"],
                "--tlskey", tls["key"]]

    def connect(self) -> None:
        tls = docker.tls.TLSConfig(client_cert=(self.host.tls["cert"], self.host.tls["key"]),
                                   ca_cert=self.host.tls["ca"], verify=True)
        # The API version of Docker 20.10, the oldest supported: asking the daemon for its own
        # would happen before trust_env can be turned off, and requests would then verify
        # against $REQUESTS_CA_BUNDLE instead of the host's CA.
        self.client = docker.DockerClient(base_url=self.url.replace("tcp://", "https://"), tls=tls, timeout=120,
                                          version=API_VERSION)
        self.client.api.trust_env = False

    def start(self, timeout: float = 60) -> None:
        raise RemoteError("a remote engine is the host's own; it is not started by this run")

    def stop(self) -> list[str]:
        """Remove this run's containers from the host (its engine keeps running), each on its
        own; returns what could not be removed, and why."""
        if self.client is None:
            return []
        try:
            containers = self.client.containers.list(all=True, filters={"label": f"{LABEL}={self.run_id}"})
        except (docker.errors.DockerException, OSError) as e:
            return [f"host {self.site}: listing the run's containers: {tls_reason(e)}"]
        errors = []
        for container in containers:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except (docker.errors.DockerException, OSError) as e:
                errors.append(f"host {self.site}: container {container.name} not removed: {str(e)[-200:]}")
        return errors


def remove_run(engines: dict[str, RemoteEngine], run_id: str, leave_swarm: set[str],
               gwbridge_made: set[str] = frozenset()) -> list[str]:
    """Remove a run's containers, then its networks (a swarm's only through a manager, once
    nothing is attached), then take the hosts in `leave_swarm` out of the swarm the run made,
    with the docker_gwbridge that swarm made there. Returns what failed."""
    errors = []
    for engine in engines.values():
        engine.run_id = run_id
        errors += engine.stop()
    errors += remove_networks(engines, run_id)
    for name in sorted(leave_swarm & set(engines)):
        left = leave_swarm_of(engines[name])
        if left is not None:
            errors.append(left)
            continue
        try:
            if name in gwbridge_made:
                for network in engines[name].client.networks.list(names=[GWBRIDGE]):
                    network.remove()
        except docker.errors.NotFound:
            pass
        except Exception as e:  # noqa: BLE001
            errors.append(f"host {name}: removing {GWBRIDGE} after leaving the swarm: {e}")
    return errors


def leave_swarm_of(engine: RemoteEngine, wait_s: float = LEAVE_WAIT_S, poll_s: float = 1.0) -> str | None:
    """Take a host out of its swarm: a leave waits on raft, and one that timed out ("context
    deadline exceeded") may still complete, or need another try. Asked again, and its node's
    state watched, for up to `wait_s`; None once the host is out, else what is left there."""
    deadline = time.monotonic() + wait_s
    tries, last, state, node = 0, "", "", ""
    while True:
        try:
            tries += 1
            engine.client.swarm.leave(force=True)
            return None
        except docker.errors.NotFound:
            return None
        except Exception as e:  # noqa: BLE001  (the node's state says whether it left)
            last = str(e)[-200:]
        while True:  # at least once, however late
            try:
                swarm = engine.client.info().get("Swarm", {})
                state, node = swarm.get("LocalNodeState", ""), swarm.get("NodeID", "")
            except Exception as e:  # noqa: BLE001
                state, last = "unknown", str(e)[-200:]
            if state == "inactive":
                return None
            if state != "pending" or time.monotonic() >= deadline:  # not on its way out: ask again
                break
            time.sleep(poll_s)
        if time.monotonic() >= deadline:
            return (f"host {engine.site}: still in the swarm the run made (node {node[:12] or '?'}, state "
                    f"{state or '?'}) after {tries} tries in {wait_s:g} s; the last said: {last}. Left there: its "
                    "membership of that swarm; run `docker swarm leave --force` on it, or `python -m "
                    "pytest_overlay clean --topology FILE`")
        time.sleep(poll_s)


def tls_reason(error: Exception) -> str:
    """What went wrong reaching a Docker API, in a sentence, with the library's own words."""
    text = str(error)
    detail = re.search(r"\[SSL: [^]]*\][^')]*|EOF occurred in violation of protocol|Connection refused|timed out|"
                       r"Name or service not known", text)
    for marker, reason in (("BAD_CERTIFICATE", "the daemon rejected our client certificate (tls.cert/tls.key)"),
                           ("UNKNOWN_CA", "the daemon does not know the CA of our client certificate"),
                           ("EOF occurred in violation of protocol", "the daemon closed the TLS handshake: it most "
                            "likely rejected our client certificate (tls.cert/tls.key not signed by its CA)"),
                           ("CERTIFICATE_VERIFY_FAILED", "the daemon's certificate is not signed by tls.ca"),
                           ("CERTIFICATE_REQUIRED", "the daemon demands a client certificate"),
                           ("Connection refused", "connection refused: nothing listens there"),
                           ("timed out", "timed out")):
        if marker in text:
            return f"{reason} ({detail.group(0).strip() if detail else marker})"
    return text[-300:]

