"""Declaring a config: :func:`opt` for each field (its one-line help and its allowed values) and :class:`Config`,
the base of every config dataclass, which validates every field when an instance is built."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

from reinlm.config.build import build_config
from reinlm.config.coerce import check_field
from reinlm.config.fields import is_config_class, type_hints, unwrap_optional
from reinlm.errors import ConfigError
from reinlm.utils.devices import resolve_device

T = TypeVar("T")


def opt(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
        flag: bool = True, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
        hi_open: bool = False, choices: tuple[Any, ...] | list[Any] | None = None, aliases: tuple[str, ...] = (),
        finite: bool = True, sep: str | None = None, metavar: str | None = None, check: Any = None,
        required: bool = False) -> Any:
    """Declare a config field with its one-line documentation and its allowed values.

    ``lo``/``hi`` bound numbers (and each element of a list of numbers); ``lo_open``/``hi_open`` make
    the bound strict. ``choices`` restricts a non-``Literal`` field to a set of values. ``aliases`` are
    other YAML keys (and hidden flags) for this field. ``finite=False`` lets a float be nan/inf.
    ``sep`` marks a ``str`` field holding a ``sep``-separated list: a YAML list is joined with it.
    ``flag=False`` keeps the field off the command line (still a YAML key). ``check(name, value)``: a
    further check of a non-null value that raises ConfigError (e.g. :func:`check_device`). ``required=True``:
    the field must be given (flag, YAML or Python) a value other than null or empty; ``--help`` says so.
    """
    meta = {"help": help, "flag": flag, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
            "choices": tuple(choices) if choices is not None else None, "aliases": tuple(aliases),
            "finite": finite, "sep": sep, "metavar": metavar, "check": check, "required": required}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Config:
    """Base of every config dataclass: :meth:`__post_init__` validates each field (:func:`check_field`) when an
    instance is built. A subclass that checks several fields together defines its own ``__post_init__``
    and calls ``super().__post_init__()`` first, so that it sees checked, coerced values.

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

    def __post_init__(self) -> None:
        validate_fields(self)

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any], *, source: str | None = None) -> T:
        """Build from a dict of flat (or nested) keys, aliases allowed, strictly (unknown keys refused)."""
        return build_config(cls, None, values, source=source)


def validate_fields(cfg: Any) -> None:
    """Check (and coerce in place) every field of the config dataclass instance ``cfg``.

    A nested config field given as a mapping is built into its dataclass (validated in turn). A field declared
    ``opt(required=True)`` left null or empty is refused after every value has been checked.
    """
    cls = type(cfg)
    hints = type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = unwrap_optional(hints[f.name])
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
    for f in dataclasses.fields(cls):  # after every value's own check, so a bad value is reported first
        if f.metadata.get("required") and getattr(cfg, f.name) in (None, "", [], ()):
            flag = f"--{f.name.replace('_', '-')}" + (f" {f.metadata['metavar']}" if f.metadata.get("metavar") else "")
            raise ConfigError(f"{f.name}: required, but not given; pass {flag}: {f.metadata.get('help', '')}.",
                              field=f.name)


def check_device(name: str, value: str) -> None:
    """A device field's check: ``cpu``, ``cpu:N``, ``cuda``, ``cuda:N`` or ``auto``, and present on this machine
    (``--device cuda`` without a GPU is refused, not silently run on the CPU)."""
    try:
        resolve_device(value)
    except ConfigError as e:
        raise ConfigError(str(e).replace("device:", f"{name}:", 1), field=name) from None


def device_opt(default: str = "auto", help: str = "cpu, cuda, cuda:N or auto", **kw: Any) -> Any:
    """:func:`opt` for a device field (checked by :func:`check_device`)."""
    return opt(default, help, check=check_device, **kw)


DTYPE_CHOICES = ("float32", "bfloat16", "float16")
