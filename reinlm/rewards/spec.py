"""The reward SPEC grammar, shared by every command that takes ``--reward``.

::

    spec   := term ( "+" term )*
    term   := [ weight "*" ] [ "-" ] reward          weight: a number, e.g. 0.5, -1, 2e-3
    reward := NAME [ ":" args ]                       a registered reward, e.g. contains_words:red,blue
            | PATH.py ":" FUNCTION [ ":" args ]       a function in a Python file (with args: a factory)
            | MODULE ":" QUALNAME [ ":" args ]        a function or class in an importable module, e.g.
                                                      trl.rewards:think_format_reward (with args: a factory)
    args   := arg ( "," arg )*
    arg    := value | KEY "=" value                  positional args bind in the factory's order
    value  := text | "quoted text" | 'quoted text'

Rules:

- ``+`` separates terms and ``,`` separates arguments, except inside quotes; a backslash escapes the next
  character anywhere (``\\+``, ``\\,``, ``\\"``). So ``embedding_similarity:target="Hi, there + you"``.
  In a shell, wrap the whole SPEC in single quotes so that the double quotes reach reinlm.
- Unquoted values are stripped of surrounding spaces; quoted values are kept exactly.
- A value is converted to the factory parameter's type: ``int``/``float`` (``target_length:20``), ``bool``
  (``true``/``false``/``yes``/``no``/``1``/``0``), ``str`` (kept as written, so ``contains_words:42`` is the word
  "42"). Where the type is open, unquoted numbers become numbers.
- ``-name`` is ``-1*name``. Components keep their unweighted values in :class:`RewardScores.components`.
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin

from reinlm.errors import ConfigError, ReinlmError
from reinlm.rewards.base import RewardEntry, available_rewards, get_reward_entry, reward_name
from reinlm.rewards.combine import OnError, RewardComponent, RewardSet
from reinlm.rewards.refs import UNREBUILDABLE, import_attribute
from reinlm.rewards.user import load_user_function

_WEIGHT = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\*\s*(.*)$", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z_][\w\-]*$")
_FILE = re.compile(r"^(.+?\.py):([A-Za-z_]\w*)(?::(.*))?$", re.DOTALL)
_MODULE = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?::(.*))?$", re.DOTALL)
_KEY = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(.*)$", re.DOTALL)
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _error(spec: str, why: str) -> ConfigError:
    return ConfigError(
        f"reward: cannot parse {spec!r}: {why}. Allowed: a registered reward ({', '.join(available_rewards())}), "
        f"path/to/file.py:function, or MODULE:QUALNAME of an importable module (trl.rewards:think_format_reward), "
        f"with arguments after ':' (positional or key=value, comma-separated, text "
        f"with ',' or '+' in quotes), joined by '+' with optional weights, e.g. "
        f"0.5*sentiment+contains_words:red,blue or embedding_similarity:target=\"Hi, there!\"."
    )


def split_top(text: str, sep: str, spec: str) -> list[str]:
    """Split ``text`` on ``sep`` outside quotes; backslash escapes and quotes are kept for :func:`unquote`."""
    parts, cur, quote, i = [], [], None, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(ch)
        i += 1
    if quote:
        raise _error(spec, f"the quote {quote} opened in {text!r} is never closed")
    parts.append("".join(cur))
    return parts


def unquote(raw: str) -> tuple[str, bool]:
    """``(text, was_quoted)``: strip spaces, remove one pair of enclosing quotes, resolve backslash escapes."""
    s = raw.strip()
    quoted = len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'"
    if quoted:
        s = s[1:-1]
    return re.sub(r"\\(.)", r"\1", s, flags=re.DOTALL), quoted


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def coerce(text: str, quoted: bool, hint: Any, where: str) -> Any:
    """Convert one SPEC value to the type ``hint`` of the parameter it binds to (see the module docstring)."""
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if str in args:  # text wins: a word "42" stays a word
            return text
        hint = args[0] if len(args) == 1 else Any
    if get_origin(hint) is Literal or hint is str or get_origin(hint) is list:
        return text
    if hint is bool:
        if text.lower() in _TRUE or text.lower() in _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{where}: got {text!r}; allowed: true or false.")
    if hint in (int, float):
        num = _number(text)
        if num is None or (hint is int and not isinstance(num, int)):
            raise ConfigError(f"{where}: got {text!r}; allowed: {'a whole number' if hint is int else 'a number'}.")
        return hint(num)
    if not quoted:
        num = _number(text)
        if num is not None:
            return num
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
    return text


def _bind(entry_name: str, factory: Callable, variadic: str | None, raw_args: list[str], spec: str,
          defaults: dict[str, Any]) -> Callable:
    """Call ``factory`` with the SPEC arguments bound to its parameters (positional in order, or key=value);
    ``defaults`` fill parameters the SPEC leaves unset."""
    sig = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # a user factory with unresolvable annotations: no conversion hints
        hints = {}
    params = list(sig.parameters)
    positional: list[tuple[str, bool]] = []
    keywords: dict[str, tuple[str, bool]] = {}
    for raw in raw_args:
        if not raw.strip():
            raise _error(spec, f"an empty argument in {entry_name}")
        m = _KEY.match(raw)
        if m and not unquote(raw)[1]:
            key = m.group(1)
            if key not in sig.parameters and not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
                raise ConfigError(f"reward {entry_name}: unknown argument {key!r} in {spec!r}; allowed: "
                                  f"{', '.join(params)}.")
            keywords[key] = unquote(m.group(2))
        else:
            if keywords:
                raise _error(spec, f"a positional argument {raw.strip()!r} after a key=value one in {entry_name}")
            positional.append(unquote(raw))

    def conv(name: str, item: tuple[str, bool]) -> Any:
        return coerce(item[0], item[1], hints.get(name, Any), f"reward {entry_name}.{name}")

    kwargs = {k: conv(k, v) for k, v in keywords.items()}
    args: list[Any] = []
    if variadic and positional:
        if variadic in kwargs:
            raise ConfigError(f"reward {entry_name}: {variadic!r} given both positionally and as {variadic}= in {spec!r}.")
        kwargs[variadic] = [t for t, _ in positional]
    else:
        for name, item in zip(params, positional):
            args.append(conv(name, item))
        if len(positional) > len(params):
            raise ConfigError(f"reward {entry_name}: got {len(positional)} positional arguments in {spec!r}; allowed: "
                              f"at most {len(params)} ({', '.join(params)}).")
    for key, val in defaults.items():
        if key in sig.parameters and key not in kwargs and key not in params[: len(args)]:
            kwargs[key] = val
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"reward {entry_name}: {e} in {spec!r}; its arguments are {', '.join(params)}.") from e
    return factory(*args, **kwargs)


def _parse_reward(body: str, spec: str, defaults: dict[str, Any]) -> Callable:
    """One reward (a term without its weight) -> the reward callable; ``defaults`` fill unset parameters."""
    m = _FILE.match(body.strip())
    if m:
        path, func, rest = unquote(m.group(1))[0], m.group(2), m.group(3)
        fn = load_user_function(path, func)
        if rest is None:
            return fn
        built = _bind(f"{path}:{func}", fn, None, split_top(rest, ",", spec), spec, {})
        if not callable(built):
            raise ReinlmError(f"reward {path}:{func}: called with the arguments in {spec!r} it returned a "
                              f"{type(built).__name__}; a function given arguments must be a factory that returns "
                              f"a reward function.")
        return built
    name, sep, rest = body.strip().partition(":")
    name = name.strip()
    m = _MODULE.match(body.strip())
    if m and name not in available_rewards() and not _is_module(name) and Path(f"{name}.py").is_file():
        # rewards:correctness with rewards.py in the working directory (not on sys.path under the console script)
        return _parse_reward(f"{name}.py:{body.strip()[len(name) + 1:]}", spec, defaults)
    if m and name not in available_rewards() and ("." in name or _is_module(name)):
        module, qualname, rest = m.group(1), m.group(2), m.group(3)
        fn = import_attribute(module, qualname, f"{module}:{qualname}")
        if rest is None and not isinstance(fn, type):
            if not callable(fn):
                raise ReinlmError(f"reward {module}:{qualname}: it is a {type(fn).__name__}, not a function.")
            return fn
        built = _bind(f"{module}:{qualname}", fn, None, split_top(rest, ",", spec) if rest else [], spec, {})
        if not callable(built):
            raise ReinlmError(f"reward {module}:{qualname}: called with the arguments in {spec!r} it returned a "
                              f"{type(built).__name__}; a function given arguments must be a factory that returns "
                              f"a reward function.")
        return built
    if body.strip().endswith(".py"):
        raise _error(spec, f"{body.strip()!r} is a Python file: name the function in it, "
                           f"{body.strip()}:FUNCTION{_functions_in(body.strip())}")
    if not _NAME.match(name):
        raise _error(spec, f"{body.strip()!r} is not a reward name")
    if name not in available_rewards():
        near = difflib.get_close_matches(name, available_rewards(), n=1, cutoff=0.6)
        raise _error(spec, f"{name!r} is not a registered reward" + (f" (did you mean {near[0]!r}?)" if near else ""))
    entry: RewardEntry = get_reward_entry(name)
    raw_args = split_top(rest, ",", spec) if sep else []
    return _bind(name, entry.factory, entry.variadic, raw_args, spec, defaults)


def _functions_in(path: str) -> str:
    """`` (functions in it: a, b)`` from the file's top-level definitions (read, not imported), or ''."""
    import ast

    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return ""
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
             and not n.name.startswith("_")]
    return f" (functions in it: {', '.join(names)})" if names else ""


def _is_module(name: str) -> bool:
    """Whether ``name`` (no dots) is an importable top-level module (looked up, not imported)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def parse_reward_spec(spec: str, *, on_error: OnError = "fail", device: str | None = None) -> RewardSet:
    """Parse a reward SPEC (grammar in this module's docstring and docs/rewards.md) into a :class:`RewardSet`.

    ``on_error``: what :meth:`RewardSet.score` does with a bad value (``fail`` | ``skip``). ``device``: default
    device for rewards that run a model and take a ``device`` argument (a ``device=`` in the SPEC wins).
    Models are loaded lazily, on the first score call.

    >>> rs = parse_reward_spec("0.5*contains_words:red,blue + -1*target_length:5")
    >>> [(c.name, c.weight) for c in rs.components]
    [('contains_words', 0.5), ('target_length', -1.0)]
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _error(str(spec), "the SPEC is empty")
    if UNREBUILDABLE in spec and any(t.strip().split("*")[-1].strip().startswith(UNREBUILDABLE)
                                     for t in split_top(spec, "+", spec)):
        raise ReinlmError(f"reward: {spec!r} records a Python reward that cannot be rebuilt from its name (a lambda, a "
                          f"closure or an object with state); resume this run from Python, passing the same reward "
                          f"again: reinlm.Trainer(config, reward=...).train(resume=True). To make it resumable from "
                          f"the command line, define the reward as a module-level function.")
    comps = []
    for term in split_top(spec, "+", spec):
        if not term.strip():
            raise _error(spec, "an empty term (two '+' in a row, or a '+' at either end)")
        weight, body = 1.0, term
        m = _WEIGHT.match(term)
        if m:
            weight, body = float(m.group(1)), m.group(2)
        elif term.strip().startswith("-"):
            weight, body = -1.0, term.strip()[1:]
        if not body.strip():
            raise _error(spec, f"the term {term.strip()!r} has a weight but no reward")
        fn = _parse_reward(body, spec, {} if device is None else {"device": device})
        comps.append(RewardComponent(reward_name(fn), fn, weight, term.strip()))
    return RewardSet(comps, on_error=on_error, spec=spec)
