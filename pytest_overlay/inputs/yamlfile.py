"""Input files in YAML (topologies, thresholds): values that remember the line they came
from, and a reader of typed fields whose every error names the file, the line and the field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

MAX_NUMBER = 1e12  # no setting of ours is larger; a longer number is a typo, not a value
MAX_BYTES = 4 << 20  # the 200-site mesh the generator writes is 60 kB
MAX_DEPTH = 32  # our files nest 6 deep; Python's own stack ends near 1000


class InputError(ValueError):
    """Bad input, located: file, line and field."""

    def __init__(self, path: str | Path, line: int | None, field_name: str, message: str) -> None:
        self.path, self.line, self.field, self.message = str(path), line, field_name, message
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {field_name}: {message}" if field_name else f"{where}: {message}")


class _LineLoader(yaml.SafeLoader):
    """A YAML loader whose mappings remember the line of every key, and that refuses
    aliases (a few nested ones expand to billions of nodes: an alias bomb) and nesting deeper
    than MAX_DEPTH (a RecursionError otherwise, with no line)."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise InputError(self.name, event.start_mark.line + 1, "",
                             f"YAML alias *{event.anchor} is not allowed here: write the value out")
        if self.depth >= MAX_DEPTH:
            raise InputError(self.name, self.peek_event().start_mark.line + 1, "",
                             f"nested deeper than {MAX_DEPTH} levels: not a file of ours")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class LineDict(dict):
    line: int = 0
    key_lines: dict


class LineList(list):
    line: int = 0


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (dict, list)):
            raise InputError(loader.name, key_node.start_mark.line + 1, "",
                             f"a key must be a name, got {kind_of(key)}")
        if key in result:
            raise InputError(loader.name, key_node.start_mark.line + 1, str(key), "duplicate key")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file into dicts and lists that know their line numbers."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise InputError(path, None, "", f"cannot read: {e.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise InputError(path, None, "", f"larger than {MAX_BYTES >> 20} MiB: not a file of ours")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise InputError(path, line, "", f"not UTF-8 text (byte {e.start} is {raw[e.start]:#04x})") from None
    loader = _LineLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise InputError(path, mark.line + 1 if mark else None, "", f"malformed YAML: {e.problem}") from None
    finally:
        loader.dispose()


def line_of(container: Any, key: Any = None) -> int | None:
    if key is not None and isinstance(container, LineDict):
        return container.key_lines.get(key, container.line)
    return getattr(container, "line", None)


class Checker:
    """Reads typed fields out of a LineDict, raising InputError on the first bad one."""

    def __init__(self, path: str | Path) -> None:
        self.path = path

    def fail(self, container: Any, key: Any, field_name: str, message: str) -> InputError:
        return InputError(self.path, line_of(container, key), field_name, message)

    def mapping(self, value: Any, field_name: str, parent: Any = None, key: Any = None) -> LineDict:
        if not isinstance(value, dict):
            raise self.fail(parent if parent is not None else value, key, field_name, f"must be a mapping, got {kind_of(value)}")
        return value

    def keys(self, data: LineDict, allowed: set[str], field_name: str) -> None:
        for key in data:
            if key not in allowed:
                raise self.fail(data, key, f"{field_name}.{key}" if field_name else str(key),
                                f"unknown key; allowed: {', '.join(sorted(allowed))}")

    def number(self, data: LineDict, key: str, field_name: str, default: float | None = None,
               minimum: float = 0.0, maximum: float = math.inf, positive: bool = False) -> float | None:
        if key not in data:
            return default
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or abs(value) > MAX_NUMBER \
                or not math.isfinite(value):
            huge = isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_NUMBER
            shown = f"a number of {len(str(abs(value)))} digits (at most {MAX_NUMBER:g})" if huge else repr(value)
            raise self.fail(data, key, field_name, f"must be a finite number, got {shown}")
        if value < minimum or (positive and value <= 0) or value > maximum:
            bound = f"> {minimum:g}" if positive else f">= {minimum:g}"
            if maximum != math.inf:
                bound += f" and <= {maximum:g}"
            raise self.fail(data, key, field_name, f"must be {bound}, got {value!r}")
        return float(value)


def kind_of(value: Any) -> str:
    for kind, name in ((dict, "a mapping"), (list, "a list"), (str, "a string"), (type(None), "nothing")):
        if isinstance(value, kind):
            return name
    return type(value).__name__
