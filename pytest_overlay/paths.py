"""Where the tool keeps things on this machine; each can be moved with an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

STATE_ROOT = Path(os.environ.get("PYTEST_OVERLAY_STATE", "/run/pytest-overlay"))  # per run: pids, sockets, logs
DATA_ROOT = Path(os.environ.get("PYTEST_OVERLAY_DATA", "/var/lib/pytest-overlay"))  # per run: Docker data roots
CACHE = Path(os.environ.get("PYTEST_OVERLAY_CACHE", "/var/cache/pytest-overlay"))  # kept: image, clips
AGENTS = Path(__file__).resolve().parent / "agents"  # programs that run inside sites and containers
IMAGE_AGENTS = "/opt/pytest-overlay"  # where the measurement image holds the same programs
