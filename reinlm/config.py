"""Config dataclasses -> command-line flags and YAML, so ``--help`` and the docs cannot drift.

Every component declares one dataclass; each field is declared with :func:`opt`, whose ``help`` is the
field's only documentation. :func:`add_dataclass_args` turns the fields into ``--kebab-case`` flags and
:func:`build_config` merges, in increasing priority: field defaults < YAML file < flags given.
Validation lives in each dataclass's ``__post_init__``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from reinlm.errors import ConfigError

T = TypeVar("T")


def opt(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
        flag: bool = True) -> Any:
    """Declare a config field with its one-line documentation (``flag=False`` keeps it off the CLI)."""
    meta = {"help": help, "flag": flag}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _unwrap_optional(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_bool(text: str) -> bool:
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _list_parser(inner):
    def parse(text: str):
        return [inner(x) for x in str(text).split(",") if x != ""]
    return parse


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, group: str | None = None,
                       exclude: type | None = None) -> None:
    """Add one ``--flag`` per field of the dataclass ``cls``; defaults stay ``None`` (= not given).

    ``exclude``: a dataclass whose fields are left out (a base class whose flags go in a group of their own).
    """
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    skip = {f.name for f in dataclasses.fields(exclude)} if exclude is not None else set()
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("flag", True):
            continue
        tp = _unwrap_optional(hints[f.name])
        name = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})" if default not in (None, "") else help_text
        kwargs: dict[str, Any] = {"default": None, "help": help_text, "dest": f.name}
        if get_origin(tp) is Literal:
            kwargs["choices"] = list(get_args(tp))
            kwargs["type"] = type(get_args(tp)[0])
        elif tp is bool:
            kwargs["type"] = _parse_bool
            kwargs["nargs"] = "?"
            kwargs["const"] = True
            kwargs["metavar"] = "BOOL"
        elif get_origin(tp) in (list, tuple):
            inner = get_args(tp)[0] if get_args(tp) else str
            kwargs["type"] = _list_parser(inner)
            kwargs["metavar"] = "A,B,..."
        elif tp in (int, float, str):
            kwargs["type"] = tp
        elif tp is Path:
            kwargs["type"] = Path
        else:
            kwargs["type"] = str
        target.add_argument(name, **kwargs)


def load_yaml(path: str | Path | None) -> dict:
    """Read a YAML config file into a dict (``{}`` for ``None``)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file {str(path)!r} does not exist; pass a YAML file with --config.")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {str(path)!r} must hold a mapping of field: value, got {type(data).__name__}.")
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_config(cls: type[T], flags: argparse.Namespace | dict | None = None, yaml_values: dict | None = None,
                 *, strict_yaml: bool = False) -> T:
    """Instantiate ``cls`` from defaults < ``yaml_values`` < given ``flags`` (``None`` = not given)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for k, v in (yaml_values or {}).items():
        if k in names:
            values[k] = v
        elif strict_yaml:
            raise ConfigError(f"config: unknown field {k!r}; known fields: {', '.join(sorted(names))}.")
    given = vars(flags) if isinstance(flags, argparse.Namespace) else (flags or {})
    for k, v in given.items():
        if k in names and v is not None:
            values[k] = v
    return cls(**values)


def config_to_dict(cfg: Any) -> dict:
    """A plain, YAML/JSON-serialisable dict of a config dataclass (paths become strings)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = config_to_dict(v)
        elif isinstance(v, Path):
            v = str(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def check_choice(field: str, value: Any, allowed) -> None:
    """Raise a :class:`ConfigError` naming ``field`` unless ``value`` is in ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{field}: got {value!r}; allowed: {', '.join(map(str, allowed))}.")


def check_range(field: str, value: float, lo: float | None = None, hi: float | None = None,
                *, lo_open: bool = False) -> None:
    """Raise a :class:`ConfigError` naming ``field`` unless ``lo <= value <= hi`` (``lo < value`` if open)."""
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi)
    if bad:
        lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        hi_s = "" if hi is None else f"<= {hi}"
        raise ConfigError(f"{field}: got {value!r}; allowed: a number {' and '.join(s for s in (lo_s, hi_s) if s)}.")
