"""Environment SPECs -> an :class:`EnvSpec` that makes text environments (:mod:`reinlm.envs.protocol`).

``builtin:NAME``; ``path.py:Class`` or ``package.module:Class`` (a text environment with ``reset``/``step``,
or TRL's ``environment_factory`` contract: ``reset`` plus tool methods and an optional ``get_reward``);
``textarena:ENV_ID``; ``openenv:path.py:Class`` / ``openenv:package.module:Class`` (an OpenEnv Environment
in process, :mod:`reinlm.envs.openenv`); ``verifiers:MODULE`` is refused (not wired, docs/environments.md).
From Python, :func:`from_python` takes TRL's ``environment_factory=`` (a callable or a dict routing rows by
their ``environment`` column) and ``tools=``. Every SPEC is checked when it is resolved, before any model
loads (an unknown id, a class without ``reset``, a tool without annotations: exit 2).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from reinlm.envs.builtins import BUILTINS
from reinlm.envs.protocol import check_env_class
from reinlm.envs.trl import ToolEnv
from reinlm.errors import ReinlmError

__all__ = ["EnvSpec", "resolve_environment", "from_python", "load_object", "ADAPTERS"]

ADAPTERS = {
    "builtin": "built-in environments (always available)",
    "textarena": "TextArena games, in process (pip install textarena)",
    "verifiers": "verifiers environments (not wired: docs/environments.md, \"What the extras add\")",
    "openenv": "OpenEnv Environment classes in process: openenv:path.py:Class (your class imports openenv-core)",
}


@dataclass
class EnvSpec:
    """What the driver needs: a factory per environment name (``None``: the only one) and the game's facts."""

    spec: str
    factories: dict[Any, Callable[[], object]]  # name -> no-argument factory of a text environment
    players: int = 1
    needs_opponent: bool = False
    description: str = ""
    extras: dict = field(default_factory=dict)

    def make(self, row: dict | None = None):
        """A fresh environment for ``row`` (a dict factory routes by the row's ``environment`` column)."""
        if None in self.factories:
            return self.factories[None]()
        name = (row or {}).get("environment")
        if name not in self.factories:
            raise ReinlmError(f"environment: the row's environment column is {name!r}; allowed: "
                              f"{', '.join(map(str, self.factories))} (the keys of environment_factory).")
        return self.factories[name]()


def load_object(ref: str, what: str = "environment"):
    """``path.py:Name`` or ``package.module:Name`` -> the object (``ReinlmError`` naming what is missing)."""
    if ":" not in ref:
        raise ReinlmError(f"{what}: got {ref!r}; allowed: path.py:Name or package.module:Name.")
    mod_ref, name = ref.rsplit(":", 1)
    if mod_ref.endswith(".py"):
        path = Path(mod_ref)
        if not path.is_file():
            raise ReinlmError(f"{what}: {mod_ref!r} is not a file.")
        mod_name = f"reinlm_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ReinlmError(f"{what}: importing {mod_ref!r} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(mod_ref)
        except ImportError as e:
            raise ReinlmError(f"{what}: cannot import {mod_ref!r}: {e}") from e
    if not hasattr(module, name):
        raise ReinlmError(f"{what}: {mod_ref!r} has no {name!r}.")
    return getattr(module, name)


def load_tools(spec: str) -> list[Callable]:
    """``path.py:fn,fn2`` -> the functions (TRL's ``tools=``)."""
    if not spec:
        return []
    mod_ref, names = spec.rsplit(":", 1)
    return [load_object(f"{mod_ref}:{n.strip()}", "tools") for n in names.split(",") if n.strip()]


def _trl_or_text(obj, spec: str, tools: list[Callable], max_iter: int | None) -> Callable[[], object]:
    """A factory of text environments from a user class/factory: text protocol when it has ``step``, else TRL's."""
    probe = obj()
    check_env_class(probe, spec, need_step=False)
    if callable(getattr(probe, "step", None)) and not tools:
        return obj
    ToolEnv(probe, tools, max_iter)  # checks every tool's annotations and docstring now
    return lambda: ToolEnv(obj(), tools, max_iter)


def from_python(environment_factory=None, tools: list[Callable] | None = None,
                max_tool_calling_iterations: int | None = None, spec: str = "environment_factory") -> EnvSpec:
    """TRL's ``environment_factory=`` (callable or dict of callables) and ``tools=`` -> :class:`EnvSpec`."""
    tools = list(tools or [])
    if environment_factory is None:
        if not tools:
            raise ReinlmError("environment: give environment_factory= or tools=.")
        ToolEnv(None, tools)
        return EnvSpec(spec, {None: lambda: ToolEnv(None, tools, max_tool_calling_iterations)})
    if isinstance(environment_factory, dict):
        facs = {k: _trl_or_text(f, f"{spec}[{k!r}]", tools, max_tool_calling_iterations)
                for k, f in environment_factory.items()}
        return EnvSpec(spec, facs)
    return EnvSpec(spec, {None: _trl_or_text(environment_factory, spec, tools, max_tool_calling_iterations)})


def _check_opponent_model(opponent: str) -> None:
    """``--opponent MODEL``: a model name or path the hub resolves (``ReinlmError`` naming it otherwise)."""
    from reinlm.hub import resolve_model_dir

    if opponent.startswith(("http://", "https://")):
        raise ReinlmError(f"opponent: got {opponent!r}; an HTTP chat endpoint is not wired yet; allowed: frozen, "
                          "random, or a model name or path (a frozen causal LM).")
    try:
        resolve_model_dir(opponent)
    except ReinlmError as e:
        raise ReinlmError(f"opponent: got {opponent!r}; allowed: frozen, random, or a model name or path. {e}") from e


def resolve_environment(spec: str, *, tools: str = "", max_tool_calling_iterations: int | None = None,
                        opponent: str | None = None) -> EnvSpec:
    """A SPEC string -> :class:`EnvSpec` (module docstring). Bad input raises ``ReinlmError`` (exit 2)."""
    if not isinstance(spec, str) or not spec:
        raise ReinlmError(f"environment: got {spec!r}; allowed: builtin:NAME, path.py:Class, textarena:ENV_ID, "
                          "openenv:path.py:Class (verifiers:MODULE is not wired yet).")
    kind, _, rest = spec.partition(":")
    tool_fns = load_tools(tools)
    out: EnvSpec
    if kind == "builtin":
        if rest not in BUILTINS:
            raise ReinlmError(f"environment: got {spec!r}; built-ins: "
                              f"{', '.join('builtin:' + n for n in BUILTINS)}.")
        out = EnvSpec(spec, {None: BUILTINS[rest]}, description=BUILTINS[rest].description)
    elif kind == "textarena":
        from reinlm.envs.textarena import TextArenaEnv, probe_players

        players = probe_players(rest)
        if players == 1 and opponent:
            raise ReinlmError(f"opponent: got {opponent!r} for textarena:{rest}, a one-player game; leave "
                              "--opponent out.")
        if players > 1 and opponent not in (None, "random", "frozen"):
            _check_opponent_model(opponent)
        opp = opponent or ("frozen" if players > 1 else None)
        out = EnvSpec(spec, {None: lambda: TextArenaEnv(rest, players, "random" if opp == "random" else None)},
                      players=players, needs_opponent=opp not in (None, "random"), description=f"TextArena {rest}")
        out.extras["opponent"] = opp
        return out
    elif kind == "openenv":
        from reinlm.envs.openenv import openenv_factory

        cls = load_object(rest, "environment") if rest else None
        if not callable(cls):
            raise ReinlmError(f"environment: got {spec!r}; allowed: openenv:path.py:Class or "
                              "openenv:package.module:Class (an OpenEnv Environment class).")
        out = EnvSpec(spec, {None: openenv_factory(cls, spec)}, description=f"OpenEnv {rest}")
    elif kind == "verifiers":
        raise ReinlmError(f"environment: {kind}: the adapter is not wired yet in this version; wrap the environment "
                          "in a class with reset(**row) -> str and step(text) -> (observation, reward, done, info) "
                          "and pass path.py:Class (docs/environments.md).")
    elif ":" in spec and (kind.endswith(".py") or "." in kind or kind.isidentifier()):
        obj = load_object(spec)
        if not callable(obj):
            raise ReinlmError(f"environment: {spec!r} is not a class or factory.")
        out = EnvSpec(spec, {None: _trl_or_text(obj, spec, tool_fns, max_tool_calling_iterations)})
        tool_fns = []
    else:
        raise ReinlmError(f"environment: got {spec!r}; allowed: builtin:NAME, path.py:Class, textarena:ENV_ID, "
                          "openenv:path.py:Class (verifiers:MODULE is not wired yet).")
    if opponent:
        raise ReinlmError(f"opponent: got {opponent!r} for {spec}, a one-player environment; leave --opponent out.")
    if tool_fns:
        raise ReinlmError(f"tools: --tools goes with a TRL environment class (path.py:Class) or alone; {spec} "
                          "has no tool calls.")
    return out
