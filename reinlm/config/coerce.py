"""One value against its declared type and :func:`~reinlm.config.schema.opt` constraints: coerced where nothing
is lost (``"1e-5"`` -> 1e-05, ``2.0`` -> 2), else a ConfigError naming the field, the value and what is allowed."""

from __future__ import annotations

import difflib
import json
import math
import numbers
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from reinlm.errors import ConfigError


def type_word(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, numbers.Integral):
        return "an integer"
    if isinstance(value, numbers.Real):
        return "a number"
    return f"a {type(value).__name__}"


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe_allowed(tp: Any, meta: typing.Mapping[str, Any] | None = None, optional: bool = False) -> str:
    """The words for what a field accepts, e.g. ``"an integer >= 1"`` or ``"one of grpo, ppo"``."""
    meta = meta or {}
    if get_origin(tp) is Literal or meta.get("choices"):
        values = meta.get("choices") or get_args(tp)
        text = "one of " + ", ".join(str(v) for v in values)
    elif tp is bool:
        text = "true or false"
    elif get_origin(tp) in (list, tuple):
        inner = (get_args(tp) or (str,))[0]
        text = f"a list of {_noun(inner, plural=True)} (a YAML list or comma-separated)"
    elif tp in (int, float):
        bounds = []
        if meta.get("lo") is not None:
            bounds.append(f"{'>' if meta.get('lo_open') else '>='} {_fmt(meta['lo'])}")
        if meta.get("hi") is not None:
            bounds.append(f"{'<' if meta.get('hi_open') else '<='} {_fmt(meta['hi'])}")
        noun = "an integer" if tp is int else ("a finite number" if meta.get("finite", True) else "a number")
        text = noun + (" " + " and ".join(bounds) if bounds else "")
    elif tp is str:
        text = "a string" + (f" ({meta['sep']!r}-separated values or a YAML list)" if meta.get("sep") else "")
    elif tp is Path:
        text = "a path"
    else:
        text = f"a {getattr(tp, '__name__', str(tp))}"
    return text + (", or null" if optional else "")


def _noun(tp: Any, plural: bool = False) -> str:
    words = {int: "integer", float: "number", str: "string", bool: "boolean"}
    w = words.get(tp, getattr(tp, "__name__", "value"))
    return w + "s" if plural else w


def _bad(name: str, value: Any, tp: Any, meta: typing.Mapping[str, Any], optional: bool, extra: str = "") -> ConfigError:
    shown = "null" if value is None else repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    plain = value is None or isinstance(value, (str, numbers.Real))
    kind = "" if plain else f" ({type_word(value)})"
    return ConfigError(f"{name}: got {shown}{kind}; allowed: {describe_allowed(tp, meta, optional)}{extra}.",
                       field=name)


def _as_bool(text: str) -> bool | None:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    return None


def _coerce_scalar(name: str, value: Any, tp: Any, meta: typing.Mapping[str, Any], optional: bool) -> Any:
    """``value`` converted to ``tp`` where the conversion loses nothing; raises ConfigError otherwise."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and _as_bool(value) is not None:
            return _as_bool(value)
        raise _bad(name, value, tp, meta, optional)
    if tp is int:
        if isinstance(value, bool):
            raise _bad(name, value, tp, meta, optional)
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, str):
            text = value.strip().replace("_", "")
            try:
                return int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    raise _bad(name, value, tp, meta, optional) from None
        if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
            return math.trunc(value)
        raise _bad(name, value, tp, meta, optional)
    if tp is float:
        if isinstance(value, bool):
            raise _bad(name, value, tp, meta, optional)
        if isinstance(value, numbers.Real):
            try:
                return float(value)
            except OverflowError:  # an integer beyond float range
                raise _bad(name, value, tp, meta, optional) from None
        if isinstance(value, str):
            try:
                return float(value.strip().replace("_", ""))
            except ValueError:
                raise _bad(name, value, tp, meta, optional) from None
        raise _bad(name, value, tp, meta, optional)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and meta.get("sep"):
            return meta["sep"].join(str(_coerce_scalar(name, v, str, {}, False)) for v in value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return str(value)  # YAML reads `reward: 5` or `critic_values: 0.5` as numbers
        raise _bad(name, value, tp, meta, optional)
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _bad(name, value, tp, meta, optional)
    return value


def check_field(name: str, value: Any, tp: Any, meta: typing.Mapping[str, Any] | None = None,
                optional: bool = False) -> Any:
    """Check one value against its declared type and :func:`opt` constraints; returns it coerced (see
    :func:`_check_type_and_range`), then runs the field's own ``check``."""
    meta = meta or {}
    value = _check_type_and_range(name, value, tp, meta, optional)
    if value is not None and meta.get("check") is not None:
        meta["check"](name, value)
    return value


def _check_type_and_range(name: str, value: Any, tp: Any, meta: typing.Mapping[str, Any],
                          optional: bool) -> Any:
    """Check one value against its declared type and :func:`opt` constraints; returns it coerced.

    Numeric strings become numbers (``"1e-5"``); an integral float becomes an int (``2.0``, ``1e3``);
    ``2.5`` for an int, ``"abc"`` for a number, a boolean for a number (or a number for a boolean),
    a list for a scalar, ``None`` for a non-optional field, nan/inf (unless ``finite=False``), values
    out of ``lo``/``hi`` and values outside the ``Literal``/``choices`` are refused with a ConfigError
    naming the field, the value and what is allowed.
    """
    if value is None:
        if optional:
            return None
        raise _bad(name, value, tp, meta, optional)
    origin = get_origin(tp)
    if origin is Literal or meta.get("choices"):
        return _check_choice_value(name, value, tp, meta, optional)
    if origin in (list, tuple):
        return _check_sequence(name, value, tp, meta, optional)
    if origin is dict or tp is dict:
        return _check_mapping(name, value, tp, meta, optional)
    if isinstance(value, (list, tuple, dict)) and not (tp is str and meta.get("sep") and not isinstance(value, dict)):
        if tp in (bool, int, float, str, Path):
            raise _bad(name, value, tp, meta, optional)
    value = _coerce_scalar(name, value, tp, meta, optional)
    if tp in (int, float):
        _check_range(name, value, tp, meta, optional)
    return value


def _check_choice_value(name: str, value: Any, tp: Any, meta: typing.Mapping[str, Any], optional: bool) -> Any:
    """A ``Literal`` / ``choices`` field: the value (a numeric string read as the choices' number type) if it is
    one of them, else a ConfigError with the closest choice."""
    allowed = tuple(meta.get("choices") or get_args(tp))
    kinds = {type(a) for a in allowed}
    if isinstance(value, str) and not isinstance(value, bool) and str not in kinds and kinds <= {int, float}:
        try:
            value = _coerce_scalar(name, value, kinds.pop(), meta, optional)
        except ConfigError:
            pass
    if value in allowed and not (isinstance(value, bool) and bool not in kinds):
        return value
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    raise _bad(name, value, tp, meta, optional, f" (did you mean {near[0]!r}?)" if near else "")


def _check_sequence(name: str, value: Any, tp: Any, meta: typing.Mapping[str, Any], optional: bool) -> Any:
    """A list / tuple field (a comma-separated string too): each item checked as the item type, with the field's
    range."""
    origin = get_origin(tp)
    inner = (get_args(tp) or (str,))[0]
    if isinstance(value, str):
        items = [x.strip() for x in value.split(",") if x.strip() != ""]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise _bad(name, value, tp, meta, optional)
    inner_meta = {k: v for k, v in meta.items() if k in ("lo", "hi", "lo_open", "hi_open", "finite")}
    try:
        out = [_check_type_and_range(name, x, inner, inner_meta, False) for x in items]
    except ConfigError:
        raise _bad(name, value, tp, meta, optional) from None
    return tuple(out) if origin is tuple else out


def _check_mapping(name: str, value: Any, tp: Any, meta: typing.Mapping[str, Any], optional: bool) -> Any:
    """A dict field (a JSON object string from a flag too)."""
    if isinstance(value, str):  # a command-line flag: a JSON object
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"{name}: got {value!r}, which is not JSON; allowed: a JSON object, e.g. "
                              "'{\"key\": true}'.", field=name) from None
    if isinstance(value, dict):
        return value
    raise _bad(name, value, tp, meta, optional)


def _check_range(name: str, value: Any, tp: Any, meta: typing.Mapping[str, Any], optional: bool) -> None:
    """A number: finite (unless ``finite=False``) and within ``lo``/``hi`` (open or closed)."""
    if tp is float and meta.get("finite", True) and not math.isfinite(value):
        raise _bad(name, value, tp, meta, optional)
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        raise _bad(name, value, tp, meta, optional)
    if hi is not None and (value >= hi if meta.get("hi_open") else value > hi):
        raise _bad(name, value, tp, meta, optional)


def check_choice(field: str, value: Any, allowed: typing.Collection[Any]) -> None:
    """Raise a :class:`ConfigError` naming ``field`` unless ``value`` is in ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{field}: got {value!r}; allowed: {', '.join(map(str, allowed))}.", field=field)


def check_range(field: str, value: float, lo: float | None = None, hi: float | None = None,
                *, lo_open: bool = False) -> None:
    """Raise a :class:`ConfigError` naming ``field`` unless ``value`` is a finite number with
    ``lo <= value <= hi`` (``lo < value`` if open). For arguments that are not config fields; fields
    declare their range with :func:`opt` instead."""
    check_field(field, value, float if isinstance(value, float) else int if isinstance(value, int) and not isinstance(value, bool) else float,
                {"lo": lo, "hi": hi, "lo_open": lo_open})
