"""The documentation cannot drift: the pages made from the code are what the code makes now,
and every option a command in the README, CONTRIBUTING or docs/ names exists."""

from __future__ import annotations

import re

import pytest

from pytest_overlay import reference
from pytest_overlay.results import records

from ..conftest import ROOT

PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("name", sorted(reference.PAGES))
def test_a_made_page_is_what_the_code_makes_now(name):
    made = reference.options_page() if reference.PAGES[name] == "options" else reference.schema_page()
    assert (ROOT / "docs" / name).read_text() == made, f"docs/{name} is stale: run python -m pytest_overlay docs"


def test_every_field_of_a_record_is_documented():
    for cls in (records.Record, records.Stats):
        assert set(records.FIELD_DOCS[cls.__name__]) == set(cls.__dataclass_fields__), cls.__name__


def test_every_option_the_docs_name_exists(known_options):
    named = {}
    for page in PAGES:
        for flag in re.findall(r"(?<![\w-])(--(?:overlay|topology|benchmark|junit)[a-z0-9-]*)", page.read_text()):
            named.setdefault(flag, page.name)
    assert named, "no option named anywhere"
    unknown = {flag: page for flag, page in named.items() if flag not in known_options}
    assert not unknown, f"options named that do not exist: {unknown}"
