"""Field introspection of config dataclasses: type hints, ``X | None`` unwrapped, nested configs flattened
into flat names (unique across the nesting: checked)."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, get_args, get_origin


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], len(rest) != len(args)
    return tp, False


def type_hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of ``cls`` (cached: classes do not change)."""
    return _type_hints(cls)


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_config_class(tp: Any) -> bool:
    """Whether ``tp`` is a config dataclass (its fields are flattened into a parent's)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@dataclasses.dataclass(frozen=True)
class FlatField:
    """One leaf field of a (possibly nested) config class, under its flat name."""

    name: str
    path: tuple[str, ...]  # attribute names from the top config down to the field
    field: dataclasses.Field[Any]
    type: Any  # the declared type, Optional unwrapped
    optional: bool
    owner: type  # the dataclass declaring it

    @property
    def meta(self) -> typing.Mapping[str, Any]:
        return self.field.metadata

    @property
    def default(self) -> Any:
        f = self.field
        if f.default is not dataclasses.MISSING:
            return f.default
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return None


@functools.lru_cache(maxsize=None)
def _flat_fields(cls: type) -> tuple[FlatField, ...]:
    out: list[FlatField] = []
    hints = type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = unwrap_optional(hints[f.name])
        if is_config_class(tp):
            out.extend(dataclasses.replace(sub, path=(f.name, *sub.path)) for sub in _flat_fields(tp))
        else:
            out.append(FlatField(f.name, (f.name,), f, tp, optional, cls))
    seen: dict[str, FlatField] = {}
    for ff in out:
        if ff.name in seen:
            raise TypeError(f"{cls.__name__}: the flat name {ff.name!r} is declared twice "
                            f"({'.'.join(seen[ff.name].path)} and {'.'.join(ff.path)}); nested config fields "
                            "become flat flags and YAML keys, so their names must be unique.")
        seen[ff.name] = ff
    return tuple(out)


def flat_fields(cls: type) -> dict[str, FlatField]:
    """Every leaf field of ``cls`` by flat name (nested config dataclasses flattened), in declaration order."""
    return {ff.name: ff for ff in _flat_fields(cls)}


def nested_fields(cls: type) -> dict[str, type]:
    """``{field name: config class}`` of the nested config fields of ``cls`` (all depths)."""
    out: dict[str, type] = {}
    hints = type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = unwrap_optional(hints[f.name])
        if is_config_class(tp):
            out[f.name] = tp
            out.update(nested_fields(tp))
    return out
