"""Loading rules YAML so that every error can name its file and line.

Security engineers edit these files by hand; "KeyError: 'hosts'" is useless to them, "rules/endpoints.yaml:42:
service 'openai': 'hosts' must be a list" is not. The loader keeps the line of every mapping and of every key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


#: The rules shipped with the gateway (catalog, policy, identity, recognizers): the default rules folder.
SHIPPED_RULES = Path(__file__).resolve().parent.parent / "rules"


class RulesError(ValueError):
    """A rules file is unreadable or wrong. str() is `file:line: message`, the form editors jump to."""

    def __init__(self, file: str | Path, line: int | None, message: str):
        self.file, self.line, self.message = str(file), line, message
        super().__init__(f"{self.file}:{line}: {message}" if line else f"{self.file}: {message}")


class Mapping(dict):
    """A YAML mapping that knows its line (1-based) and the line of each of its keys."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class Sequence(list):
    """A YAML sequence that knows its line and the line of each item (for an item in a flow list `[a, b]`, the
    line where it stands)."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


class _LineLoader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) whose mappings and sequences carry their source lines."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> Mapping:
    loader.flatten_mapping(node)
    m = Mapping()
    m.line = node.start_mark.line + 1
    m.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(None, None, "unhashable key", key_node.start_mark)
        if key in m:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        m[key] = loader.construct_object(value_node, deep=True)
        m.key_lines[str(key)] = key_node.start_mark.line + 1
    return m


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> Sequence:
    s = Sequence(loader.construct_object(child, deep=True) for child in node.value)
    s.line = node.start_mark.line + 1
    s.item_lines = [child.start_mark.line + 1 for child in node.value]
    return s


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load(path: str | Path) -> Any:
    """Parse a YAML file; any I/O or syntax problem becomes a RulesError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError(path, None, f"cannot read: {e.strerror if isinstance(e, OSError) else e}") from None
    try:
        return yaml.load(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise RulesError(path, line, f"{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise RulesError(path, None, str(e)) from None


def check_keys(file: str | Path, m: Any, what: str, required: set[str], optional: set[str]) -> Mapping:
    """Insist on a mapping with these keys and no others: a typo in a security rule must not pass silently."""
    if not isinstance(m, Mapping):
        raise RulesError(file, getattr(m, "line", None), f"{what} must be a mapping")
    for key in m:
        if key not in required and key not in optional:
            known = ", ".join(sorted(required | optional))
            raise RulesError(file, m.line_of(str(key)), f"{what}: unknown key {key!r} (known: {known})")
    for key in sorted(required - set(m)):
        raise RulesError(file, m.line, f"{what}: missing key {key!r}")
    return m


def number(file: str | Path, m: Mapping, key: str, lo: float, hi: float, what: str, integer: bool = False,
           above: bool = False) -> Any:
    """`m[key]`, insisted on being a number (an integer if `integer`; true and false are neither) from `lo` to `hi`
    (above `lo`, not at it, if `above`), else a RulesError at the key's line: `what: key must be ...`."""
    value = m[key]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not (lo < value if above else lo <= value) or not value <= hi:
        kind = "an integer" if integer else "a number"
        bounds = f"above {lo} and at most {hi}" if above else f"between {lo} and {hi}"
        raise RulesError(file, m.line_of(key), f"{what}: {key} must be {kind} {bounds}, not {value!r}")
    return value
