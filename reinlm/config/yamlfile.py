"""Strict YAML config files: a key given twice, a file that is not a mapping, empty or not UTF-8 is refused in
one paragraph naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reinlm.config.coerce import type_word
from reinlm.errors import ConfigError
from reinlm.utils.textfile import read_text


class YamlValues(dict[str, Any]):
    """The mapping read from a YAML file, remembering the file (``source``) for error messages."""

    source: str | None = None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
        except TypeError:
            dup = False
        if dup:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice (first on line {seen[key].line + 1})",
                key_node.start_mark)
        try:
            seen[key] = key_node.start_mark
        except TypeError:
            pass
    mapping: dict[Any, Any] = yaml.SafeLoader.construct_mapping(loader, node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml_text(text: str, source: str, what: str = "config") -> YamlValues:
    """Parse YAML text that must hold a mapping of ``field: value`` (``source`` names it in errors)."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what}: {source!r} is not valid YAML{where}: {problem}; write one `field: value` per "
                          "line (flag names with _ for -).") from None
    if data is None:
        raise ConfigError(f"{what}: {source!r} is empty (or only comments); write one `field: value` per line "
                          "(flag names with _ for -), or leave the file out.")
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {source!r} must hold a mapping of `field: value` lines, got {type_word(data)} "
                          f"({str(data)[:60]!r}).")
    out = YamlValues()
    for k, v in data.items():
        if not isinstance(k, str):
            raise ConfigError(f"{what}: {source!r} has the key {k!r} ({type_word(k)}); keys are field names "
                              "such as `steps` or `lr`.")
        out[k.replace("-", "_")] = v
    out.source = source
    return out


def load_yaml(path: str | Path | None, what: str = "config") -> YamlValues:
    """Read a YAML config file into a mapping (empty for ``None``), with one-paragraph errors for a missing,
    unreadable, non-UTF-8, malformed, empty or non-mapping file. The result remembers the file name, so
    :func:`build_config` names it in its errors."""
    if path is None:
        return YamlValues()
    text = read_text(path, what=what, hint="pass a YAML file of `field: value` lines")
    return parse_yaml_text(text, str(path), what)
