"""OpenEnv environments (``openenv:path.py:Class`` or ``openenv:package.module:Class``) in process, as text
environments.

An OpenEnv ``Environment`` (openenv-core, ``openenv.core.env_server.interfaces.Environment``) is served over
HTTP/WebSocket in its own container in OpenEnv's own deployments; reinlm runs the class in this process instead,
no container and no server: ``reset(seed=..., **row)`` (only the arguments it accepts) and ``step(action)``, each
returning an ``Observation`` (a pydantic model with ``done``, ``reward`` and ``metadata`` plus the environment's
own fields). The adapter needs nothing from openenv-core itself (it reads these fields), so a class written
against OpenEnv's base classes runs wherever they import.

- **Action.** The environment's ``Action`` subclass, from the type annotation of ``step``'s first argument or
  else from the ``Environment[ActT, ObsT, StateT]`` base the class declares, must have exactly one ``str``
  field besides ``metadata``: the model's decoded turn goes into it (e.g. ``EchoAction(message=text)``).
  Anything else is refused when the SPEC is resolved (exit 2, naming the fields).
- **Observation -> text.** Its fields other than ``done``, ``reward`` and ``metadata``: the value of the only
  one, else one ``name: value`` line per field.
- **Reward and end.** ``reward`` (``None`` counts 0) is the turn's reward, ``done`` ends the episode; an
  observation without them (not an OpenEnv observation) makes the episode invalid, as any wrong type does.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable

from reinlm.envs.protocol import call_reset
from reinlm.errors import ReinlmError

__all__ = ["OpenEnvEnv", "openenv_factory", "action_type", "text_field", "render_observation"]

_BASE_FIELDS = ("done", "reward", "metadata")


def _fields(model_cls) -> dict[str, Any]:
    """A pydantic model class's fields -> their annotations."""
    fields = getattr(model_cls, "model_fields", None)
    if fields is None:
        return {}
    return {name: getattr(f, "annotation", None) for name, f in fields.items()}


def action_type(env) -> type | None:
    """The ``Action`` class ``env.step`` takes: its first argument's annotation, else ``Environment[ActT, ...]``."""
    try:
        hints = typing.get_type_hints(type(env).step)
    except Exception:
        hints = {}
    params = [p for p in inspect.signature(type(env).step).parameters.values() if p.name != "self"]
    if params and isinstance(hints.get(params[0].name), type):
        return hints[params[0].name]
    for klass in type(env).__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            args = typing.get_args(base)
            if args and isinstance(args[0], type):
                return args[0]
    return None


def text_field(action_cls: type, spec: str) -> str:
    """The one ``str`` field of ``action_cls`` (``metadata`` aside); ``ReinlmError`` (exit 2) otherwise."""
    fields = {n: a for n, a in _fields(action_cls).items() if n != "metadata"}
    strs = [n for n, a in fields.items() if a is str]
    if len(strs) != 1:
        listed = ", ".join(f"{n}: {getattr(a, '__name__', a)}" for n, a in fields.items()) or "none"
        raise ReinlmError(f"environment: {spec}: the action class {action_cls.__name__} has fields {listed}; "
                          "allowed: exactly one str field, which gets the model's text.")
    return strs[0]


def render_observation(obs) -> str:
    """An OpenEnv observation's own fields as text: the value of its only field, else ``name: value`` lines."""
    values = {n: getattr(obs, n) for n in _fields(type(obs)) if n not in _BASE_FIELDS}
    if len(values) == 1:
        (value,) = values.values()
        return "" if value is None else str(value)
    return "\n".join(f"{n}: {v}" for n, v in values.items())


def _check_observation(obs, what: str):
    if not all(hasattr(obs, f) for f in ("done", "reward")):
        raise TypeError(f"{what} returned {type(obs).__name__}, not an OpenEnv Observation (no done/reward)")
    return obs


class OpenEnvEnv:
    """One OpenEnv ``Environment`` instance behind the text protocol (``reset(**row) -> str``, ``step(text)``)."""

    def __init__(self, env, action_cls: type, field: str):
        self.env, self.action_cls, self.field = env, action_cls, field

    def reset(self, seed: int = 0, **row) -> str:
        return render_observation(_check_observation(call_reset(self.env, row, seed), "reset"))

    def step(self, text: str):
        obs = _check_observation(self.env.step(self.action_cls(**{self.field: text})), "step")
        reward = 0.0 if obs.reward is None else float(obs.reward)
        return render_observation(obs), reward, bool(obs.done), {"metadata": getattr(obs, "metadata", {})}


def openenv_factory(cls: Callable[[], Any], spec: str) -> Callable[[], OpenEnvEnv]:
    """A factory of :class:`OpenEnvEnv` from an OpenEnv ``Environment`` class (built once now to find its action
    class and text field: an unusable class is refused before any model loads)."""
    probe = cls()
    for name in ("reset", "step"):
        if not callable(getattr(probe, name, None)):
            raise ReinlmError(f"environment: {spec}: {getattr(cls, '__name__', cls)} has no {name}(); an OpenEnv "
                              "Environment has reset() and step(action).")
    act = action_type(probe)
    if act is None or not _fields(act):
        raise ReinlmError(f"environment: {spec}: cannot tell which Action class step() takes; annotate step's "
                          "argument with it (step(self, action: MyAction)) or subclass Environment[MyAction, ...].")
    field = text_field(act, spec)
    return lambda: OpenEnvEnv(cls(), act, field)
