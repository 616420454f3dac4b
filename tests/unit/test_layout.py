"""The house as CONTRIBUTING.md draws it: folders by layer, few modules at the top, none over
500 lines, and no code outside overlays/ that names a particular overlay kind."""

from __future__ import annotations

import io
import tokenize

from pytest_overlay import kinds

from ..conftest import ROOT

PACKAGE = ROOT / "pytest_overlay"
# The registry's own table, and the study's list of what it runs and compares.
MAY_NAME_KINDS = {PACKAGE / "kinds.py", PACKAGE / "report" / "study.py"}


def test_no_module_is_over_500_lines_and_the_top_stays_small():
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert not {p: n for p, n in sizes.items() if n > 500}
    assert len(list(PACKAGE.glob("*.py"))) <= 12
    assert len([d for d in PACKAGE.iterdir() if (d / "__init__.py").exists()]) >= 4


def test_no_code_outside_the_overlays_names_a_kind():
    names = set(kinds.names())
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path in MAY_NAME_KINDS or PACKAGE / "overlays" in path.parents:
            continue
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if token.type == tokenize.STRING and token.string.strip("'\"") in names - {kinds.BASELINE}:
                found.append(f"{path.relative_to(ROOT)}:{token.start[0]}: {token.string}")
    assert not found, found
