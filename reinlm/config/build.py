"""Building a config: field defaults < YAML layers (flat keys, nested mappings, aliases) < flags given; and back
to a flat dict."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from reinlm.config.coerce import check_field
from reinlm.config.fields import flat_fields, is_config_class, nested_fields, type_hints, unwrap_optional
from reinlm.config.flags import EXPLICIT_NONE
from reinlm.config.keys import key_aliases, normalize_keys
from reinlm.errors import ConfigError

T = TypeVar("T")


def _construct(cls: type[T], values: dict[str, Any]) -> T:
    kwargs: dict[str, Any] = {}
    hints = type_hints(cls)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a config dataclass")
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, _ = unwrap_optional(hints[f.name])
        if is_config_class(tp):
            sub_names = flat_fields(tp)
            if any(n in values for n in sub_names):
                kwargs[f.name] = _construct(tp, values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def build_config(cls: type[T], flags: argparse.Namespace | dict[str, Any] | None = None,
                 yaml_values: dict[str, Any] | list[dict[str, Any]] | None = None, *, also: tuple[type, ...] = (),
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
                known |= set(flat_fields(c)) | set(key_aliases(c)) | set(nested_fields(c))
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
            values[k] = None if v is EXPLICIT_NONE else v
            origin[k] = None
    try:
        return _construct(cls, values)
    except ConfigError as e:
        src = origin.get(getattr(e, "field", None) or "")
        if src:
            raise ConfigError(f"config {src!r}: {e}", field=e.field) from None
        raise


def config_to_dict(cfg: Any) -> dict[str, Any]:
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
