"""Bad input never crashes the loaders: the bundled topology and thresholds files, mutated
(values replaced by other kinds, keys dropped or renamed, lists nested, huge numbers, odd
text), either load or raise the tool's own InputError naming the file."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_overlay.inputs import topology
from pytest_overlay.inputs.topology import InputError
from pytest_overlay.results import thresholds

BUNDLED = {p.stem: yaml.safe_load(p.read_text()) for p in topology.TOPOLOGY_DIR.glob("*.yaml")}
THRESHOLDS = yaml.safe_load(thresholds.DEFAULT_PATH.read_text())

odd_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["AMS", "BRA", "geant", "latency", "weave", "A-B", "AMS-MIL", "-1", "1e999", "", "\x00", "é"]),
)
odd_values = st.recursive(odd_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=3)),
    max_leaves=6)


def paths(data, prefix=()):
    """Every place in a nested structure: (path of keys/indices, value)."""
    yield prefix, data
    if isinstance(data, dict):
        for k, v in data.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from paths(v, prefix + (i,))


@st.composite
def mutated(draw, original):
    import copy

    data = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 4))):
        places = [p for p, _ in paths(data) if p]
        if not places:
            break
        where = draw(st.sampled_from(places))
        parent = data
        for key in where[:-1]:
            parent = parent[key]
        last = where[-1]
        action = draw(st.sampled_from(["replace", "drop", "rename", "nest", "list-key"]))
        if action == "replace":
            parent[last] = draw(odd_values)
        elif action == "drop":
            del parent[last]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = parent.pop(last)
        elif action == "nest":
            parent[last] = [parent[last]]
        elif action == "list-key" and isinstance(parent, dict):
            parent.pop(last)
            parent["__list_key__"] = None
    return data


def dump(data) -> str:
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    return text.replace("__list_key__: null", "? [a, b]\n: 1")  # a list used as a mapping key


def check_loads(load, text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "input.yaml"
        path.write_text(text)
        try:
            load(path)
        except InputError as e:
            assert str(e).startswith(str(path)), e


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.sampled_from(sorted(BUNDLED)).flatmap(lambda name: mutated(BUNDLED[name])))
def test_a_mutated_topology_loads_or_says_where_it_is_wrong(data):
    check_loads(topology.load, dump(data))


@SETTINGS
@given(mutated(THRESHOLDS | {"overrides": [{"metric": "latency", "overlay": "weave", "circuit": "A-B",
                                            "p99_over_rtt_ms": 80}]}))
def test_mutated_thresholds_load_or_say_where_they_are_wrong(data):
    check_loads(thresholds.load, dump(data))
