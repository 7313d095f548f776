"""YAML and dict keys -> flat field names: nested mappings flattened, aliases (``opt(aliases=...)`` and a class's
``__aliases__``) resolved, ``__unsupported__`` keys explained, unknown keys refused naming the closest valid key."""

from __future__ import annotations

import difflib
from typing import Any

from reinlm.config.fields import FlatField, flat_fields, nested_fields
from reinlm.errors import ConfigError


def key_aliases(cls: type) -> dict[str, str]:
    """Every alias -> flat field name of ``cls`` and its nested configs."""
    out: dict[str, str] = {}
    for sub in (cls, *nested_fields(cls).values()):
        out.update(getattr(sub, "__aliases__", {}) or {})
    for name, ff in flat_fields(cls).items():
        for a in ff.meta.get("aliases", ()):
            out[a] = name
    return out


def _unsupported(cls: type) -> dict[str, str]:
    out: dict[str, str] = {}
    for sub in (cls, *nested_fields(cls).values()):
        out.update(getattr(sub, "__unsupported__", {}) or {})
    return out


def normalize_keys(classes: tuple[type, ...], values: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """YAML/dict keys -> flat field names: nested mappings flattened, aliases resolved, unknown and
    unsupported keys refused (naming the closest valid key). ``classes`` share the mapping."""
    where = f"config {source!r}: " if source else "config: "
    flat: dict[str, FlatField] = {}
    nested: dict[str, type] = {}
    aliases: dict[str, str] = {}
    unsupported: dict[str, str] = {}
    for cls in classes:
        flat.update(flat_fields(cls))
        nested.update(nested_fields(cls))
        aliases.update(key_aliases(cls))
        unsupported.update(_unsupported(cls))
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def flatten(key: str, value: Any, shown: str) -> None:
        key = key.replace("-", "_")
        if key in nested and isinstance(value, dict):
            for k, v in value.items():
                flatten(str(k), v, f"{shown}.{k}")
            return
        if key in nested:
            raise ConfigError(f"{where}{shown}: got {value!r}; allowed: a mapping of the fields of "
                              f"{nested[key].__name__} (or give those fields as top-level keys).")
        if key in raw:
            raise ConfigError(f"{where}{key!r} is given twice (as {origin[key]!r} and {shown!r}); keep one.")
        raw[key] = value
        origin[key] = shown

    for k, v in values.items():
        flatten(str(k), v, str(k))
    for cls in classes:
        translate = getattr(cls, "translate_keys", None)
        if translate is not None:
            try:
                raw = translate(raw)
            except ConfigError as e:
                raise ConfigError(f"{where}{e}") from None

    out: dict[str, Any] = {}
    chosen: dict[str, str] = {}
    for key, value in raw.items():
        shown = origin.get(key, key)
        name = key if key in flat else aliases.get(key)
        if name is None:
            if key in unsupported:
                raise ConfigError(f"{where}the key {shown!r} has no meaning in reinlm: {unsupported[key]}")
            valid = sorted(set(flat) | set(aliases))
            near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = (f"did you mean {near[0]!r}" + (f" (= {aliases[near[0]]})" if near[0] in aliases else "") + "?"
                    if near else "valid keys are the long flag names with _ for - (see --help).")
            raise ConfigError(f"{where}unknown key {shown!r}; {hint}")
        if name in out:
            raise ConfigError(f"{where}{name!r} is given twice (as {chosen[name]!r} and {shown!r}); keep one.")
        out[name] = value
        chosen[name] = shown
    return out
