"""Config dataclasses -> command-line flags and YAML, with one validator, so ``--help``, the docs and the
checks cannot drift.

Every component declares one dataclass deriving from :class:`Config`; each field is declared with
:func:`opt`, whose ``help`` is the field's only documentation and whose ``lo``/``hi``/``choices`` are its
only range check. :class:`Config` validates every field when an instance is built (type, finiteness,
range, choices; see :func:`check_field`), before the class's own ``__post_init__`` runs, so a config
built from Python, a flag or a YAML file is checked by the same code.

A field whose type is itself a :class:`Config` dataclass is *nested*: its fields are flattened into the
parent's flags and YAML keys (``--temperature``, not ``--sampling-temperature``), ``config_to_dict``
writes the flat form, and a YAML file may give either the flat keys or a mapping under the nested
field's name. Flat names must therefore be unique across the nesting (checked).

:func:`add_dataclass_args` turns the flat fields into ``--kebab-case`` flags; :func:`build_config` merges,
in increasing priority: field defaults < YAML file (:func:`load_yaml`) < flags given. YAML is strict:
an unknown key is an error naming the closest valid key; aliases (``opt(aliases=...)`` or a class's
``__aliases__``) map other names onto fields; ``__unsupported__`` keys get their own explanation.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import numbers
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

import yaml

from reinlm.errors import ConfigError

T = TypeVar("T")


# ------------------------------------------------------------------------------------------ declaring
def opt(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
        flag: bool = True, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
        hi_open: bool = False, choices: tuple | list | None = None, aliases: tuple[str, ...] = (),
        finite: bool = True, sep: str | None = None, metavar: str | None = None, check: Any = None) -> Any:
    """Declare a config field with its one-line documentation and its allowed values.

    ``lo``/``hi`` bound numbers (and each element of a list of numbers); ``lo_open``/``hi_open`` make
    the bound strict. ``choices`` restricts a non-``Literal`` field to a set of values. ``aliases`` are
    other YAML keys (and hidden flags) for this field. ``finite=False`` lets a float be nan/inf.
    ``sep`` marks a ``str`` field holding a ``sep``-separated list: a YAML list is joined with it.
    ``flag=False`` keeps the field off the command line (still a YAML key). ``check(name, value)``: a
    further check of a non-null value that raises ConfigError (e.g. :func:`check_device`).
    """
    meta = {"help": help, "flag": flag, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
            "choices": tuple(choices) if choices is not None else None, "aliases": tuple(aliases),
            "finite": finite, "sep": sep, "metavar": metavar, "check": check}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Config:
    """Base of every config dataclass: validates each field (:func:`check_field`) when an instance is
    built, before the subclass's own ``__post_init__`` (which keeps the checks that involve several
    fields). Subclasses need not call ``super().__post_init__()``; doing so is harmless.

    Class attributes a subclass may set:
    ``__aliases__``: ``{other key: flat field name}`` accepted in YAML besides ``opt(aliases=...)``;
    ``__unsupported__``: ``{key: why it has no meaning here}``, refused with that explanation;
    :meth:`translate_keys`: derived keys (one key setting others by a rule).
    """

    __aliases__: ClassVar[dict[str, str]] = {}
    __unsupported__: ClassVar[dict[str, str]] = {}

    @classmethod
    def translate_keys(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Hook: rewrite the flat keys of a YAML mapping before aliases are resolved (e.g. keys whose
        value maps onto other fields by a rule). The default returns ``values`` unchanged."""
        return values

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is None or getattr(own, "_validates", False):
            return

        @functools.wraps(own)
        def __post_init__(self, *args, _own=own, **kw):
            if type(self).__post_init__ is wrapper:  # only the outermost call validates
                validate_fields(self)
            _own(self, *args, **kw)

        wrapper = __post_init__
        wrapper._validates = True
        cls.__post_init__ = wrapper

    def __post_init__(self) -> None:
        if type(self).__post_init__ is Config.__post_init__:
            validate_fields(self)

    @classmethod
    def from_dict(cls: type[T], values: dict, *, source: str | None = None) -> T:
        """Build from a dict of flat (or nested) keys, aliases allowed, strictly (unknown keys refused)."""
        return build_config(cls, None, values, source=source)


# ------------------------------------------------------------------------------------------ field types
def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], len(rest) != len(args)
    return tp, False


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_config_class(tp: Any) -> bool:
    """Whether ``tp`` is a config dataclass (its fields are flattened into a parent's)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@dataclasses.dataclass(frozen=True)
class FlatField:
    """One leaf field of a (possibly nested) config class, under its flat name."""

    name: str
    path: tuple[str, ...]  # attribute names from the top config down to the field
    field: dataclasses.Field
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
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
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
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        if is_config_class(tp):
            out[f.name] = tp
            out.update(nested_fields(tp))
    return out


# ------------------------------------------------------------------------------------------ validation
def _type_word(value: Any) -> str:
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


def _bad(name: str, value: Any, tp: Any, meta, optional: bool, extra: str = "") -> ConfigError:
    shown = "null" if value is None else repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    plain = value is None or isinstance(value, (str, numbers.Real))
    kind = "" if plain else f" ({_type_word(value)})"
    return ConfigError(f"{name}: got {shown}{kind}; allowed: {describe_allowed(tp, meta, optional)}{extra}.",
                       field=name)


def _as_bool(text: str) -> bool | None:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    return None


def _coerce_scalar(name: str, value: Any, tp: Any, meta, optional: bool) -> Any:
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
            return int(value)
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
    value = _check_type_and_range(name, value, tp, meta or {}, optional)
    if value is not None and (meta or {}).get("check") is not None:
        meta["check"](name, value)
    return value


def check_device(name: str, value: str) -> None:
    """A device field's check: ``cpu``, ``cpu:N``, ``cuda``, ``cuda:N`` or ``auto``, and present on this machine
    (``--device cuda`` without a GPU is refused, not silently run on the CPU)."""
    from reinlm.utils.devices import resolve_device

    try:
        resolve_device(value)
    except ConfigError as e:
        raise ConfigError(str(e).replace("device:", f"{name}:", 1), field=name) from None


def device_opt(default: str = "auto", help: str = "cpu, cuda, cuda:N or auto", **kw) -> Any:
    """:func:`opt` for a device field (checked by :func:`check_device`)."""
    return opt(default, help, check=check_device, **kw)


DTYPE_CHOICES = ("float32", "bfloat16", "float16")


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
    if origin in (list, tuple):
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
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise _bad(name, value, tp, meta, optional)
    if isinstance(value, (list, tuple, dict)) and not (tp is str and meta.get("sep") and not isinstance(value, dict)):
        if tp in (bool, int, float, str, Path):
            raise _bad(name, value, tp, meta, optional)
    value = _coerce_scalar(name, value, tp, meta, optional)
    if tp in (int, float):
        if tp is float and meta.get("finite", True) and not math.isfinite(value):
            raise _bad(name, value, tp, meta, optional)
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
            raise _bad(name, value, tp, meta, optional)
        if hi is not None and (value >= hi if meta.get("hi_open") else value > hi):
            raise _bad(name, value, tp, meta, optional)
    return value


def validate_fields(cfg: Any) -> None:
    """Check (and coerce in place) every field of the config dataclass instance ``cfg``.

    A nested config field given as a mapping is built into its dataclass (validated in turn).
    """
    cls = type(cfg)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
        value = getattr(cfg, f.name)
        if is_config_class(tp):
            if isinstance(value, dict):
                setattr(cfg, f.name, build_config(tp, None, value))
            elif value is None and optional:
                pass
            elif not isinstance(value, tp):
                raise ConfigError(f"{f.name}: got {value!r}; allowed: a {tp.__name__} or a mapping of its fields.",
                                  field=f.name)
            continue
        setattr(cfg, f.name, check_field(f.name, value, tp, f.metadata, optional))


# ------------------------------------------------------------------------------------------ flags
def _flag_type(name: str, tp: Any, meta, optional: bool):
    """An argparse ``type`` that reads the text with :func:`check_field`'s coercion (ranges are checked
    when the config is built, so that the flag and YAML give the same message)."""
    type_only = {k: v for k, v in meta.items() if k in ("sep",)}

    def parse(text: str):
        if optional and text.strip().lower() in ("none", "null"):
            return _EXPLICIT_NONE
        try:
            return check_field(name, text, tp, {**type_only, "finite": False}, optional)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = getattr(tp, "__name__", "value")
    return parse


class _ExplicitNone:
    """What a flag given as ``none`` parses to (``None`` itself means "flag not given")."""

    def __repr__(self) -> str:
        return "None"


_EXPLICIT_NONE = _ExplicitNone()


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, group: str | None = None,
                       exclude: type | None = None) -> None:
    """Add one ``--flag`` per flat field of the dataclass ``cls``; defaults stay ``None`` (= not given).

    ``exclude``: a dataclass whose fields are left out (a base class whose flags go in a group of their own).
    Aliases become hidden flags. An optional field takes ``none`` to mean null.
    """
    target = parser.add_argument_group(group) if group else parser
    skip = set(flat_fields(exclude)) if exclude is not None else set()
    class_aliases: dict[str, list[str]] = {}
    for alias, name in _key_aliases(cls).items():
        class_aliases.setdefault(name, []).append(alias)
    for name, ff in flat_fields(cls).items():
        if name in skip or not ff.meta.get("flag", True):
            continue
        tp = ff.type
        default = ff.default
        help_text = ff.meta.get("help", "")
        if default not in (None, "", [], ()):
            help_text = f"{help_text} (default: {','.join(map(str, default)) if isinstance(default, (list, tuple)) else default})"
        help_text = help_text.replace("%%", "%").replace("%", "%%")  # argparse formats help with %
        kwargs: dict[str, Any] = {"default": None, "help": help_text, "dest": name}
        if get_origin(tp) is Literal:
            kwargs["choices"] = list(get_args(tp))
            kwargs["type"] = type(get_args(tp)[0])
        elif tp is bool:
            kwargs.update(type=_flag_type(name, bool, ff.meta, ff.optional), nargs="?", const=True, metavar="BOOL")
        elif get_origin(tp) in (list, tuple):
            kwargs.update(type=_flag_type(name, tp, ff.meta, ff.optional), metavar="A,B,...")
        else:
            kwargs["type"] = _flag_type(name, tp if tp in (int, float, str, Path) else str, ff.meta, ff.optional)
        if ff.meta.get("metavar"):
            kwargs["metavar"] = ff.meta["metavar"]
        target.add_argument("--" + name.replace("_", "-"), **kwargs)
        for alias in dict.fromkeys(class_aliases.get(name, [])):  # opt(aliases=...) and the class's __aliases__
            spellings = dict.fromkeys(["--" + alias.replace("_", "-"), "--" + alias])  # TRL's CLI: --learning_rate
            target.add_argument(*spellings, **{**kwargs, "help": argparse.SUPPRESS})


# ------------------------------------------------------------------------------------------ YAML
class YamlValues(dict):
    """The mapping read from a YAML file, remembering the file (``source``) for error messages."""

    source: str | None = None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
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
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


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
        raise ConfigError(f"{what}: {source!r} must hold a mapping of `field: value` lines, got {_type_word(data)} "
                          f"({str(data)[:60]!r}).")
    out = YamlValues()
    for k, v in data.items():
        if not isinstance(k, str):
            raise ConfigError(f"{what}: {source!r} has the key {k!r} ({_type_word(k)}); keys are field names "
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
    from reinlm.utils.textfile import read_text

    text = read_text(path, what=what, hint="pass a YAML file of `field: value` lines")
    return parse_yaml_text(text, str(path), what)


# ------------------------------------------------------------------------------------------ building
def _key_aliases(cls: type) -> dict[str, str]:
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


def normalize_keys(classes: tuple[type, ...], values: dict, source: str | None = None) -> dict:
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
        aliases.update(_key_aliases(cls))
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


def _construct(cls: type[T], values: dict[str, Any]) -> T:
    kwargs: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        if is_config_class(tp):
            sub_names = flat_fields(tp)
            if any(n in values for n in sub_names):
                kwargs[f.name] = _construct(tp, values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def build_config(cls: type[T], flags: argparse.Namespace | dict | None = None,
                 yaml_values: dict | list[dict] | None = None, *, also: tuple[type, ...] = (),
                 extra: tuple[str, ...] = (), source: str | None = None, strict_yaml: bool = True) -> T:
    """Instantiate ``cls`` from defaults < ``yaml_values`` < given ``flags`` (``None`` = not given).

    ``yaml_values`` (e.g. from :func:`load_yaml`, which remembers its file as ``source``) may use flat
    keys, nested mappings and aliases; a list of such mappings is layered, later ones winning (a run's
    saved config.yaml, then ``--config``). Keys that are no field of ``cls`` (or of the classes in
    ``also``, which share the same file) are an error unless ``strict_yaml=False``; ``extra`` names keys
    the caller reads itself (left out here). An error about a value that came from a file names the file.
    """
    classes = (cls, *also)
    layers = yaml_values if isinstance(yaml_values, (list, tuple)) else [yaml_values or {}]
    mine = flat_fields(cls)
    values: dict[str, Any] = {}
    origin: dict[str, str | None] = {}  # field -> the file its value came from
    for layer in layers:
        src = getattr(layer, "source", None) or (source if len(layers) == 1 else None)
        layer = {k: v for k, v in dict(layer).items() if str(k).replace("-", "_") not in extra}
        if not strict_yaml:
            known = set()
            for c in classes:
                known |= set(flat_fields(c)) | set(_key_aliases(c)) | set(nested_fields(c))
            layer = {k: v for k, v in layer.items() if k.replace("-", "_") in known}
        for k, v in normalize_keys(classes, layer, src).items():
            if k in mine:
                ff = mine[k]
                try:  # each file's own values are checked, even those a flag overrides
                    v = check_field(k, v, ff.type, ff.meta, ff.optional)
                except ConfigError as e:
                    raise ConfigError(f"config {src!r}: {e}" if src else str(e), field=k) from None
                values[k] = v
                origin[k] = src
    given = vars(flags) if isinstance(flags, argparse.Namespace) else (flags or {})
    for k, v in given.items():
        if k in mine and v is not None:
            values[k] = None if v is _EXPLICIT_NONE else v
            origin[k] = None
    try:
        return _construct(cls, values)
    except ConfigError as e:
        src = origin.get(getattr(e, "field", None) or "")
        if src:
            raise ConfigError(f"config {src!r}: {e}", field=e.field) from None
        raise


def config_to_dict(cfg: Any) -> dict:
    """A plain, YAML/JSON-serialisable, *flat* dict of a config dataclass (nested configs flattened;
    paths become strings, tuples lists), which :func:`build_config` reads back."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.update(config_to_dict(v))
            continue
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


# ------------------------------------------------------------------------------------------ legacy helpers
def check_choice(field: str, value: Any, allowed) -> None:
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
