"""The one protocol every environment is turned into, and the guarded calls the driver makes through it.

An environment, for reinlm, is any object with two methods (Gymnasium's shape, text in and text out):

- ``reset(**row) -> str``: start an episode; ``row`` holds the dataset row's columns (and ``seed`` when the
  method accepts it), the result is the first observation the model reads;
- ``step(text) -> (observation, reward, done, info)``: the model's turn as text; ``observation`` is the text
  the model reads next (``None`` or ``""`` when there is nothing to say), ``reward`` a number for this turn,
  ``done`` whether the episode ended, ``info`` a dict (``invalid_move: True`` counts in
  ``env/invalid_move_frac``; ``tool_calls`` / ``tool_failures`` counts feed ``tools/*``).

:class:`TextEnv` writes that down as an optional base class: no environment has to derive from it.
Adapters (:mod:`reinlm.envs.trl`, :mod:`reinlm.envs.textarena`, ...) turn other contracts into it.

Faults never stop a run: :func:`guarded_call` runs one environment call with a wall-clock limit
(``--env-timeout``) and turns an exception, a timeout or a result of the wrong type into an
:class:`EnvFault`; the driver then marks that episode invalid (left out of the baselines, counted in
``env/invalid_frac`` / ``env/timeout_frac``).
"""

from __future__ import annotations

import copy
import inspect
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from reinlm.errors import ReinlmError

__all__ = ["TextEnv", "StepResult", "EnvFault", "EnvTimeout", "guarded_call", "check_env_class", "call_reset",
           "as_step_result", "fork_env"]


class TextEnv:
    """Documented base class of the text protocol (optional: any class with ``reset`` and ``step`` works)."""

    def reset(self, **row) -> str:
        """Start an episode from a dataset row (its columns as keywords; ``seed`` when accepted) -> first observation."""
        raise NotImplementedError

    def step(self, text: str) -> tuple[str | None, float, bool, dict]:
        """Take the model's turn ``text`` -> (next observation, this turn's reward, done, info)."""
        raise NotImplementedError


@dataclass
class StepResult:
    """One environment step, checked."""

    observation: str  # "" when the environment said nothing
    reward: float
    done: bool
    info: dict = field(default_factory=dict)


class EnvFault(Exception):
    """An environment call failed (raised, returned a wrong type): the episode becomes invalid."""


class EnvTimeout(EnvFault):
    """An environment call took longer than ``--env-timeout`` seconds."""


def guarded_call(fn: Callable[..., Any], *args, timeout: float | None = None, what: str = "environment call",
                 **kwargs) -> Any:
    """Run ``fn(*args, **kwargs)``; an exception becomes :class:`EnvFault`, more than ``timeout`` seconds
    :class:`EnvTimeout` (the call is left running in a daemon thread: Python cannot stop a thread, so a hung
    environment costs a thread, never the run). ``timeout`` None or 0: no limit, run in this thread."""
    if not timeout:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 (any fault of user code ends the episode, not the run)
            raise EnvFault(f"{what} raised {type(e).__name__}: {e}") from e
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name="reinlm-env-call")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise EnvTimeout(f"{what} did not return within --env-timeout {timeout:g} s")
    if "error" in box:
        e = box["error"]
        raise EnvFault(f"{what} raised {type(e).__name__}: {e}") from e
    return box.get("value")


def as_step_result(value: Any) -> StepResult:
    """Check what ``step`` returned: a 4-tuple (observation str|None, reward number, done bool-like, info dict|None)
    or a 5-tuple in Gymnasium's (obs, reward, terminated, truncated, info) shape. Anything else: :class:`EnvFault`."""
    if not isinstance(value, tuple) or len(value) not in (4, 5):
        raise EnvFault(f"step returned {type(value).__name__} {value!r:.80}; expected a tuple (observation, reward, "
                       "done, info)")
    if len(value) == 5:
        obs, reward, terminated, truncated, info = value
        done = bool(terminated) or bool(truncated)
    else:
        obs, reward, done, info = value
    if obs is not None and not isinstance(obs, str):
        raise EnvFault(f"step returned an observation of type {type(obs).__name__} ({obs!r:.80}); expected text "
                       "(str) or None")
    if reward is None:
        reward = 0.0
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(float(reward)):
        raise EnvFault(f"step returned the reward {reward!r:.80}; expected a finite number")
    if info is not None and not isinstance(info, dict):
        raise EnvFault(f"step returned info of type {type(info).__name__}; expected a dict or None")
    return StepResult(obs or "", float(reward), bool(done), dict(info or {}))


def call_reset(env, row: dict, seed: int) -> Any:
    """``env.reset(**row)``, with ``seed=seed`` added when ``reset`` takes a ``seed`` (or ``**kwargs``) and the row
    has none. The row's columns are passed as TRL passes them (every column, the prompt included)."""
    kwargs = dict(row)
    try:
        params = inspect.signature(env.reset).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "seed" not in kwargs and ("seed" in params or takes_any):
        kwargs["seed"] = seed
    if not takes_any:  # a reset(self) or reset(self, a, b): only the columns it names
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return env.reset(**kwargs)


def check_env_class(obj, spec: str, need_step: bool = True) -> None:
    """``ReinlmError`` (exit 2) when ``obj`` (a class or factory result) lacks a callable ``reset`` (or ``step``)."""
    missing = [m for m in (("reset", "step") if need_step else ("reset",)) if not callable(getattr(obj, m, None))]
    if missing:
        raise ReinlmError(f"environment: {spec!r} has no {' or '.join(missing)} method; an environment needs "
                          "reset(**row) -> str and step(text) -> (observation, reward, done, info), or (TRL's "
                          "contract) reset(**row) plus tool methods (docs/environments.md).")


def fork_env(env: Any, make: Callable[[], Any]) -> Any:
    """A second environment in the state of ``env`` (tree search branches an episode): a new one from ``make()``
    restored to ``env.snapshot()`` when ``env`` has ``snapshot()`` and ``restore(state)``, else ``copy.deepcopy(env)``.
    ``ReinlmError`` (exit 2) for an environment that neither snapshots nor copies."""
    if callable(getattr(env, "snapshot", None)) and callable(getattr(env, "restore", None)):
        other = make()
        other.restore(env.snapshot())
        return other
    try:
        return copy.deepcopy(env)
    except Exception as e:  # noqa: BLE001 (locks, open files, sockets, ...)
        raise ReinlmError(f"environment: {type(env).__name__} cannot be copied to branch the search "
                          f"({type(e).__name__}: {e}); give it snapshot() -> state and restore(state) methods.") from e
