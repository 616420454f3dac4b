"""The house as CONTRIBUTING.md draws it: folders by layer, a layer importing only those
below it, few modules at the top, none over 450 lines, and no code outside overlays/ that
names a particular overlay kind."""

from __future__ import annotations

import ast
import io
import tokenize

from pytest_overlay import kinds

from ..conftest import ROOT

PACKAGE = ROOT / "pytest_overlay"
# The registry's own table, and the study's list of what it runs and compares (and answers).
MAY_NAME_KINDS = {PACKAGE / "kinds.py", PACKAGE / "report" / "study.py", PACKAGE / "report" / "answers.py"}


def test_no_module_is_over_450_lines_and_the_top_stays_small():
    """Past 450 lines a module holds two concerns: split it by concern (never rewrap to fit)."""
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert not {p: n for p, n in sizes.items() if n > 450}
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


# CONTRIBUTING's layers, from the ground up; a module may import its own layer and those below.
LAYERS = {
    "kinds": 0, "paths": 0, "procs": 0,
    "inputs": 1,
    "emulation": 2, "results": 2,
    "testbeds": 3,
    "overlays": 4,
    "measure": 5, "report": 5,
    "session": 6, "options": 6, "fixtures": 6, "plugin": 6, "reference": 6, "__main__": 6,
    "agents": 0,  # programs run inside sites: they import nothing of the package
}


def _imports(path) -> list[tuple[int, str]]:
    """The package modules a module imports (line, dotted name), leaving out those only a type
    checker reads (under `if TYPE_CHECKING:`)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.removesuffix(".__init__") if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    checked_only = {id(n) for node in ast.walk(tree)
                    if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
                    for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in checked_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            if node.module:
                found.append((node.lineno, ".".join(base + [node.module])))
            else:
                found += [(node.lineno, ".".join(base + [alias.name])) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pytest_overlay"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("pytest_overlay")]
    return found


def _layer(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "pytest_overlay"


def test_a_layer_imports_only_its_own_and_those_below_it():
    back_up = []
    for path in PACKAGE.rglob("*.py"):
        own = _layer(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for line, target in _imports(path):
            theirs = _layer(target)
            if theirs in ("pytest_overlay", own):
                continue
            if theirs not in LAYERS or own not in LAYERS:
                back_up.append(f"{path.relative_to(ROOT)}:{line}: {target}: a layer CONTRIBUTING.md does not name")
            elif LAYERS[theirs] > LAYERS[own]:
                back_up.append(f"{path.relative_to(ROOT)}:{line}: {own} imports {target}, a layer above it")
    assert not back_up, "\n".join(back_up)
