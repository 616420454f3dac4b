"""Where the tool keeps things on this machine; each can be moved with an environment variable."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

STATE_ROOT = Path(os.environ.get("PYTEST_OVERLAY_STATE", "/run/pytest-overlay"))  # per run: pids, sockets, logs
DATA_ROOT = Path(os.environ.get("PYTEST_OVERLAY_DATA", "/var/lib/pytest-overlay"))  # per run: Docker data roots
CACHE = Path(os.environ.get("PYTEST_OVERLAY_CACHE", "/var/cache/pytest-overlay"))  # kept: image, clips
# Host keys of real hosts whose topology names no known_hosts: recorded on first contact (ssh's
# accept-new), checked on every later one.
KNOWN_HOSTS = Path(os.environ.get("PYTEST_OVERLAY_KNOWN_HOSTS", Path.home() / ".ssh" / "known_hosts"))
PACKAGE = Path(__file__).resolve().parent
AGENTS = PACKAGE / "agents"  # programs that run inside sites and containers
DATA = PACKAGE / "data"  # thresholds, cities, the study's published tables
# Installed, the bundled topologies are the package's topologies/; in a checkout, the
# top-level topologies/ they are built from.
TOPOLOGY_DIR = next((d for d in (PACKAGE / "topologies", PACKAGE.parent / "topologies") if d.is_dir()),
                    PACKAGE / "topologies")
SUITES = PACKAGE.parent / "suites"  # in a checkout: the suites the study runs
IMAGE_AGENTS = "/opt/pytest-overlay"  # where the measurement image holds the same programs


def find_binary(name: str) -> str | None:
    """An overlay's binary (weaver, flanneld, ...): in $PYTEST_OVERLAY_BIN first, else on PATH."""
    directory = os.environ.get("PYTEST_OVERLAY_BIN")
    if directory and os.access(os.path.join(directory, name), os.X_OK):
        return os.path.join(directory, name)
    return shutil.which(name)
