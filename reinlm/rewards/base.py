"""The reward protocol, the ``@reward_function`` decorator and the registry of built-in reward factories.

Protocol (TRL's reward-function convention, so TRL rewards work unchanged; see :mod:`reinlm.rewards.call`):

- a **sequence reward** is a callable called with keyword arguments ``prompts``, ``completions``,
  ``completion_ids``, every dataset column, ``trainer_state``, ``log_extra`` and ``log_metric``, returning
  ``list[float | None]``, one value per completion (``None``: the reward does not apply to that sample). It
  may be ``async def``; a signature without ``**kwargs`` receives only the arguments it names;
- a **token-level reward** has ``fn.is_token_level = True`` and also receives ``completion_token_spans``;
  it returns ``list[list[float]]``: one value per completion token, where ``spans[i][j] = (start, end)``
  are the character offsets of token ``j`` in ``completions[i]``.

Rewards made with :func:`reward_function` (reinlm's built-ins) get ``prompts`` and ``completions`` as text
even on conversational data (``text_inputs=True``); plain callables get TRL's forms (message lists).

Every reward carries a ``name`` (used for metric names, ``reward/<name>/mean``). Parameterised rewards are
built by *factories* (``contains_words(["red"])`` returns a reward); :func:`register_reward` maps the CLI
name used in a reward SPEC to its factory (see :mod:`reinlm.rewards.spec`).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from reinlm.errors import ConfigError


@runtime_checkable
class RewardFunction(Protocol):
    """A sequence reward: ``fn(prompts, completions, **columns) -> list[float | None]``."""

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]: ...


def reward_function(name: str | None = None, *, token_level: bool = False,
                    text_inputs: bool = True) -> Callable[[Callable], Callable]:
    """Decorator marking ``fn`` as a reward: sets ``fn.name``/``fn.__name__``, ``fn.is_token_level`` and
    ``fn.text_inputs`` (True: ``prompts`` and ``completions`` arrive as text even for conversational data;
    False: TRL's message lists, as plain callables get them).

    >>> @reward_function("shout")
    ... def f(prompts, completions, **columns):
    ...     return [float(c.isupper()) for c in completions]
    >>> f.name, f.is_token_level, f([""], ["HI"])
    ('shout', False, [1.0])
    """

    def wrap(fn: Callable) -> Callable:
        label = name or getattr(fn, "__name__", None) or type(fn).__name__
        try:
            fn.name, fn.is_token_level, fn.text_inputs = label, token_level, text_inputs
        except AttributeError:  # e.g. a bound method: wrap it in a function that can carry attributes
            inner = fn

            @functools.wraps(inner)
            def fn(*args, **kwargs):
                return inner(*args, **kwargs)

            fn.name, fn.is_token_level, fn.text_inputs = label, token_level, text_inputs
        try:
            fn.__name__ = label
        except (AttributeError, TypeError):  # callable objects without a settable __name__
            pass
        return fn

    return wrap


def reward_name(fn: Callable) -> str:
    """The display name of a reward: its ``name``, else ``__name__`` (through ``functools.partial``, as TRL's
    ``get_callable_name``), else its class name."""
    inner = fn
    while isinstance(inner, functools.partial):
        inner = inner.func
    return str(getattr(fn, "name", None) or getattr(inner, "__name__", None) or type(inner).__name__)


def wants_text(fn: Callable) -> bool:
    """Whether ``fn`` takes prompts and completions as text on conversational data (``fn.text_inputs``)."""
    return bool(getattr(fn, "text_inputs", False))


def is_token_level(fn: Callable) -> bool:
    """Whether ``fn`` is a token-level reward (``fn.is_token_level`` is true)."""
    return bool(getattr(fn, "is_token_level", False))


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RewardEntry:
    """A registered reward factory: the CLI ``name``, the ``factory`` and how SPEC arguments bind to it."""

    name: str  # name used in a reward SPEC, e.g. "contains_words"
    factory: Callable[..., Callable]  # builds the reward from its arguments
    variadic: str | None = None  # parameter that collects every positional SPEC argument as a list
    summary: str = ""  # one line for `reinlm reward --help` and error messages

    def parameters(self) -> list[str]:
        """Names of the factory's parameters, in order."""
        return list(inspect.signature(self.factory).parameters)


REWARDS: dict[str, RewardEntry] = {}


def register_reward(name: str, *, variadic: str | None = None, summary: str = "") -> Callable[[Callable], Callable]:
    """Decorator registering a reward factory under the SPEC name ``name``. The rewards the factory returns
    carry ``spec``, the SPEC that rebuilds them (``contains_words:red,blue``).

    ``variadic`` names a list parameter that collects all positional SPEC arguments, so that
    ``contains_words:red,blue`` calls ``contains_words(words=["red", "blue"])``.
    """

    def wrap(factory: Callable) -> Callable:
        doc = summary or (inspect.getdoc(factory) or "").split("\n")[0]

        @functools.wraps(factory)
        def build(*args, **kwargs):
            from reinlm.rewards.refs import factory_spec

            reward = factory(*args, **kwargs)
            if not getattr(reward, "spec", None):
                try:  # the SPEC that rebuilds this reward: recorded in config.yaml by the Python API
                    reward.spec = factory_spec(name, factory, variadic, args, kwargs)
                except AttributeError:
                    pass
            return reward

        REWARDS[name] = RewardEntry(name, build, variadic, doc)
        return build

    return wrap


def available_rewards() -> list[str]:
    """Sorted SPEC names of every registered reward factory (built-ins are registered on import)."""
    import reinlm.rewards.builtins  # noqa: F401  (registers the built-ins)

    return sorted(REWARDS)


def get_reward_entry(name: str) -> RewardEntry:
    """The registry entry for ``name``; :class:`ConfigError` listing the registered names otherwise."""
    names = available_rewards()
    if name not in REWARDS:
        raise ConfigError(f"reward: unknown reward {name!r}; allowed: one of {', '.join(names)}, or a Python "
                          f"function given as path/to/file.py:function.")
    return REWARDS[name]
