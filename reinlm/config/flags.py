"""Config dataclasses -> ``--kebab-case`` flags: one per flat field, read with the same coercion as YAML (ranges
are checked when the config is built, so a flag and a YAML key give the same message)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from reinlm.config.coerce import check_field
from reinlm.config.fields import flat_fields
from reinlm.config.keys import key_aliases
from reinlm.errors import ConfigError


def _flag_type(name: str, tp: Any, meta: Mapping[str, Any], optional: bool) -> Callable[[str], Any]:
    """An argparse ``type`` that reads the text with :func:`check_field`'s coercion (ranges are checked
    when the config is built, so that the flag and YAML give the same message)."""
    type_only = {k: v for k, v in meta.items() if k in ("sep",)}

    def parse(text: str) -> Any:
        if optional and text.strip().lower() in ("none", "null"):
            return EXPLICIT_NONE
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


EXPLICIT_NONE = _ExplicitNone()


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, group: str | None = None,
                       exclude: type | None = None, switches: bool = False) -> None:
    """Add one ``--flag`` per flat field of the dataclass ``cls``; defaults stay ``None`` (= not given).

    ``exclude``: a dataclass whose fields are left out (a base class whose flags go in a group of their own).
    Aliases become hidden flags. An optional field takes ``none`` to mean null. A boolean field's flag takes an
    optional value (``--overwrite``, ``--overwrite false``); with ``switches=True`` it takes none (``--group-seeds``
    alone), for a command whose positional arguments may follow it.
    """
    target = parser.add_argument_group(group) if group else parser
    skip = set(flat_fields(exclude)) if exclude is not None else set()
    class_aliases: dict[str, list[str]] = {}
    for alias, name in key_aliases(cls).items():
        class_aliases.setdefault(name, []).append(alias)
    for name, ff in flat_fields(cls).items():
        if name in skip or not ff.meta.get("flag", True):
            continue
        tp = ff.type
        default = ff.default
        help_text = ff.meta.get("help", "")
        if ff.meta.get("required"):
            help_text = f"{help_text} (required)"
        elif default not in (None, "", [], ()) and not (switches and tp is bool):
            help_text = f"{help_text} (default: {','.join(map(str, default)) if isinstance(default, (list, tuple)) else default})"
        help_text = help_text.replace("%%", "%").replace("%", "%%")  # argparse formats help with %
        kwargs: dict[str, Any] = {"default": None, "help": help_text, "dest": name}
        if get_origin(tp) is Literal:
            kwargs["choices"] = list(get_args(tp))
            kwargs["type"] = type(get_args(tp)[0])
        elif tp is bool and switches:
            kwargs.update(action="store_const", const=True)
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
