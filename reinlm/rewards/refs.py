"""What a run records about its reward: a SPEC that rebuilds it, for config.yaml and ``reinlm train --resume``.

- a reward built by a registered factory records its SPEC (``contains_words:red,blue``);
- a module-level function of an installed package records ``module:qualname`` (``trl.rewards:...``); one
  from your own files (a script, a module next to it, a file loaded by path) records
  ``/abs/path/file.py:qualname``, which imports in any process whatever the current directory and
  ``sys.path`` (a script is imported under another name than ``__main__``, so code under
  ``if __name__ == "__main__":`` does not run again);
- a callable object whose constructor arguments are all kept as attributes of the same name (TRL's shipped
  reward classes are) records ``module:Class:arg=value,...``;
- anything else (a lambda, a closure, a partial, an object with other state) cannot be rebuilt by name: it
  records ``python:<description>``; such a run resumes from Python only, given the same reward again.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

from reinlm.errors import ReinlmError

UNREBUILDABLE = "python:"  # prefix of a recorded reward or prompt set that cannot be rebuilt from its name


def quote_value(v: Any) -> str:
    """One SPEC argument value: numbers and booleans as written, text quoted when it needs it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    text = str(v)
    if text != text.strip() or any(ch in text for ch in ",+\"'\\=:") or text == "":
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def factory_spec(name: str, factory: Callable, variadic: str | None, args: tuple, kwargs: dict) -> str | None:
    """The SPEC that calls ``factory`` with ``args``/``kwargs`` again (parameters left at their default
    omitted), or ``None`` when a value cannot be written in a SPEC."""
    try:
        bound = inspect.signature(factory).bind(*args, **kwargs)
    except TypeError:
        return None
    parts: list[str] = []
    for pname, value in bound.arguments.items():
        param = inspect.signature(factory).parameters[pname]
        if param.default is not param.empty and _same(value, param.default):
            continue
        if pname == variadic and isinstance(value, (list, tuple)):
            if parts:  # positional values must come first
                return None
            parts += [quote_value(x) for x in value]
            continue
        if not isinstance(value, (str, int, float, bool)):
            return None
        parts.append(f"{pname}={quote_value(value)}")
    return name + (":" + ",".join(parts) if parts else "")


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001 - odd objects compare as different
        return False


def _importable(module: str, qualname: str, obj: Any) -> bool:
    """Whether ``module:qualname`` imports back to ``obj`` (without importing anything new)."""
    mod = sys.modules.get(module)
    if mod is None or module == "__main__" or module.startswith("reinlm_user_reward_"):
        return False
    target: Any = mod
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target is obj


def _file_of(obj: Any) -> str | None:
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        return None
    return str(Path(path).resolve()) if path and Path(path).is_file() else None


def reward_ref(fn: Callable) -> str | None:
    """A SPEC term that rebuilds ``fn`` (see the module docstring), or ``None`` when there is none."""
    spec = getattr(fn, "spec", None)
    if isinstance(spec, str) and spec:
        return spec
    if isinstance(fn, functools.partial):
        return None
    if inspect.isfunction(fn) or inspect.isbuiltin(fn):
        qualname = getattr(fn, "__qualname__", "")
        if "<" in qualname:  # a lambda or a function defined inside another: no name to import it by
            return None
        path = _file_of(fn)
        if _importable(fn.__module__, qualname, fn) and (path is None or _installed(path)):
            return f"{fn.__module__}:{qualname}"
        return f"{path}:{qualname}" if path and "." not in qualname else None
    return _object_ref(fn)


def _installed(path: str) -> bool:
    """Whether ``path`` belongs to an installed package (site-packages, the standard library, reinlm itself)."""
    import sysconfig

    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    roots.add(str(Path(__file__).resolve().parents[1]))  # the reinlm package
    return any(str(Path(path).resolve()).startswith(str(Path(r).resolve()) + "/") for r in roots if r)


def _object_ref(obj: Any) -> str | None:
    """``module:Class:arg=value,...`` for a callable object rebuilt from attributes named as its constructor's
    parameters (all of them simple values); ``None`` otherwise."""
    cls = type(obj)
    if "<" in cls.__qualname__ or not _importable(cls.__module__, cls.__qualname__, cls):
        return None
    try:
        params = [p for p in inspect.signature(cls).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):
        return None
    args = []
    for p in params:
        if not hasattr(obj, p.name):
            return None
        value = getattr(obj, p.name)
        if not isinstance(value, (str, int, float, bool)):
            return None
        args.append(f"{p.name}={quote_value(value)}")
    state = {k for k in vars(obj) if not k.startswith("_")} if hasattr(obj, "__dict__") else set()
    if state - {p.name for p in params}:
        return None  # state the constructor does not set from its arguments: the rebuilt object could differ
    return f"{cls.__module__}:{cls.__qualname__}" + (":" + ",".join(args) if args else "")


def describe_callable(fn: Callable) -> str:
    """A readable name for a reward that cannot be rebuilt (for ``python:<...>`` records and messages)."""
    inner = fn
    while isinstance(inner, functools.partial):
        inner = inner.func
    kind = ("partial of " if inner is not fn else "") + (
        "function" if inspect.isfunction(inner) else f"{type(inner).__name__} object")
    name = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    return f"{kind} {getattr(inner, '__module__', '?')}.{name}"


def reward_set_spec(reward_set) -> str:
    """The SPEC recorded for a :class:`~reinlm.rewards.combine.RewardSet`: its own SPEC when it was parsed from
    one, else one term per component (``weight*ref``; ``python:<description>`` for a reward that cannot be
    rebuilt)."""
    if getattr(reward_set, "spec", ""):
        return reward_set.spec
    terms = []
    for comp in reward_set.components:
        term = reward_ref(comp.fn) or UNREBUILDABLE + describe_callable(comp.fn)
        terms.append(term if comp.weight == 1.0 else f"{comp.weight:g}*{term}")
    return " + ".join(terms)


def import_attribute(module: str, qualname: str, where: str) -> Any:
    """``module:qualname`` -> the object (``ReinlmError`` naming what is missing)."""
    try:
        target: Any = importlib.import_module(module)
    except ImportError as e:
        raise ReinlmError(f"reward {where!r}: cannot import the module {module!r} ({type(e).__name__}: {e}); allowed: "
                          f"an importable module (installed, or on PYTHONPATH) or path/to/file.py:function.") from e
    for part in qualname.split("."):
        if not hasattr(target, part):
            names = sorted(k for k in dir(target) if not k.startswith("_") and callable(getattr(target, k, None)))
            raise ReinlmError(f"reward {where!r}: {module!r} has no {qualname!r}; allowed: one of "
                              f"{', '.join(names[:20]) or '(no callables)'}.")
        target = getattr(target, part)
    return target
