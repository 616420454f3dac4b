"""The package as users get it: its wheel, and a fresh virtualenv that holds it."""

from __future__ import annotations

import subprocess
import sys
import venv

import pytest

from ..conftest import ROOT


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("pytest_overlay-*.whl")
    return str(path)


@pytest.fixture(scope="session")
def installed(wheel, tmp_path_factory) -> str:
    """A fresh virtualenv holding the wheel and its dependencies; its python."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, with_pip=True)
    python = str(env / "bin" / "python")
    # --no-compile: byte-compiling the dependencies (matplotlib, numpy) took half the install's
    # 20 s here; Python compiles what it imports anyway.
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--no-compile", wheel], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return python
