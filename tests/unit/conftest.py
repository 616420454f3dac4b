"""What the unit tests of the documentation and the CI recipes share."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ..conftest import ROOT


@pytest.fixture(scope="session")
def known_options() -> set[str]:
    """Every option pytest knows with this plugin, the command line's commands and the benchmarks."""
    def flags(*command: str) -> set[str]:
        shown = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True,
                               timeout=120).stdout
        return set(re.findall(r"(--[a-z][a-z0-9-]*)", shown))

    found = flags("-m", "pytest", "-p", "pytest_overlay.plugin")
    for command in ("clean", "study", "topology", "overlays", "docs"):
        found |= flags("-m", "pytest_overlay", command)
    found |= flags("-m", "pytest_overlay", "lab", "up")
    for benchmark in sorted((ROOT / "benchmarks").glob("*.py")):
        found |= flags(str(benchmark))
    return found
