"""TRL's reward calling convention: keyword arguments, trainer state, logging callbacks, sync and async rewards.

A reward is called exactly as TRL's ``GRPOTrainer._calculate_rewards`` calls it::

    fn(prompts=..., completions=..., completion_ids=..., **columns,
       trainer_state=..., log_extra=..., log_metric=...)

- ``prompts``: one per completion (strings, or message lists for conversational data);
- ``completions``: strings, or ``[{"role": "assistant", "content": text}]`` for conversational data;
- ``completion_ids``: the completion's token ids (``list[list[int]]``, the EOS token included when sampled);
- every dataset column, one value per completion (a prompt's value repeated for each of its samples);
- ``trainer_state``: a :class:`RewardTrainerState` (``global_step``, ``max_steps``, ``epoch``, ...);
- ``log_extra(column, values)`` / ``log_metric(name, value)``: collected by a :class:`RewardLog`.

A reward whose signature has no ``**kwargs`` receives only the arguments it names (TRL would raise
"unexpected keyword argument"); a required argument that is not available is a :class:`ReinlmError`
naming it. ``async def`` rewards (and callable objects with an ``async def __call__``) are awaited
concurrently on one event loop that lives in a daemon thread for the whole process, so clients bound to
a loop (e.g. an ``httpx.AsyncClient``) keep working from one step to the next.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable

from reinlm.errors import ReinlmError

#: Keyword arguments reinlm passes to every reward besides the dataset columns (TRL's names).
RESERVED_KWARGS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                   "completion_token_spans")


@dataclass
class RewardTrainerState:
    """What a reward sees as ``trainer_state`` (the fields of ``transformers.TrainerState`` that TRL rewards read).

    ``global_step``: optimiser steps finished before this batch (0 on the first batch); ``max_steps``: the
    run's total; ``epoch``: passes over the training prompts so far (fractional).
    """

    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    num_train_epochs: float = 0.0
    is_world_process_zero: bool = True
    is_local_process_zero: bool = True


class RewardLog:
    """Collects what rewards report through ``log_metric`` and ``log_extra`` while one batch is scored.

    ``metrics()``: name -> mean of the values logged for that name (TRL averages per logging step);
    ``extras``: column -> values, one per sample when the reward logged one per sample.
    """

    def __init__(self) -> None:
        self._metrics: dict[str, list[float]] = {}
        self.extras: dict[str, list] = {}

    def log_metric(self, name: str, value: float) -> None:
        """TRL's ``log_metric``: a scalar for this batch (a number; NaN and infinities are dropped)."""
        try:
            v = float(value)
        except (TypeError, ValueError) as e:
            raise ReinlmError(f"log_metric({name!r}, {value!r}): the value is a {type(value).__name__}; allowed: "
                              f"a number.") from e
        if math.isfinite(v):
            self._metrics.setdefault(str(name), []).append(v)

    def log_extra(self, column: str, values: list) -> None:
        """TRL's ``log_extra``: one value per sample, written beside the samples (samples.jsonl)."""
        self.extras.setdefault(str(column), []).extend(list(values))

    def metrics(self) -> dict[str, float]:
        """Mean of each logged metric over this batch."""
        return {k: sum(v) / len(v) for k, v in self._metrics.items() if v}


def unwrap_partial(fn: Callable) -> Callable:
    """The function inside (nested) ``functools.partial`` objects."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def is_async_reward(fn: Callable) -> bool:
    """Whether calling ``fn`` returns a coroutine: ``async def`` functions, partials of them, and callable
    objects whose ``__call__`` is ``async def`` (TRL's ``is_async_callable``)."""
    inner = unwrap_partial(fn)
    return inspect.iscoroutinefunction(inner) or inspect.iscoroutinefunction(getattr(inner, "__call__", None))


@functools.lru_cache(maxsize=256)
def _signature(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and some C callables have none: pass everything
        return None


def _signature_of(fn: Callable) -> inspect.Signature | None:
    try:
        return _signature(fn)
    except TypeError:  # unhashable callable object
        try:
            return inspect.signature(fn)
        except (TypeError, ValueError):
            return None


def select_kwargs(fn: Callable, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``fn`` accepts: all of them when it takes ``**kwargs``, else those it names.

    Raises :class:`ReinlmError` when ``fn`` requires an argument that is not in ``kwargs`` (a dataset column it
    needs is missing, most often), or takes positional-only parameters (rewards are called by keyword).
    """
    sig = _signature_of(fn)
    if sig is None:
        return kwargs
    params = sig.parameters.values()
    pos_only = [p.name for p in params if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    if pos_only:
        raise ReinlmError(f"reward {name!r}: its parameters {', '.join(pos_only)} are positional-only, but rewards are "
                          f"called with keyword arguments (TRL's convention); allowed: a signature such as "
                          f"def {name}(completions, **kwargs).")
    accepted = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and p.default is p.empty and p.name not in kwargs]
    if missing:
        columns = sorted(k for k in kwargs if k not in RESERVED_KWARGS)
        given = [k for k in RESERVED_KWARGS if k in kwargs]
        hint = (" (reinlm reward: pass --tokenizer MODEL so that the texts are tokenized)"
                if "completion_ids" in missing else "")
        raise ReinlmError(f"reward {name!r} requires the argument(s) {', '.join(map(repr, missing))}, which this data "
                          f"does not provide{hint}; it gets {', '.join(given)} and the dataset columns "
                          f"({', '.join(columns) or 'none'}). Add the column to the prompt data (or map one with "
                          f"--rename-columns), or give the parameter a default.")
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in accepted}


class _LoopThread:
    """One asyncio event loop running forever in a daemon thread (created on first use)."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def loop(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                threading.Thread(target=run, name="reinlm-async-rewards", daemon=True).start()
                ready.wait()
                cls._loop = loop
            return cls._loop


@dataclass
class Outcome:
    """What one reward call gave: its ``value``, or the exception it raised (``error``)."""

    value: Any = None
    error: BaseException | None = None


async def _guarded(awaitable) -> Outcome:
    # SystemExit raised inside a task would stop the loop thread and leave the caller waiting forever:
    # catch it here, with every other exception, and hand it back as a value.
    try:
        return Outcome(await awaitable)
    except (Exception, SystemExit) as e:  # noqa: BLE001 (reported to the caller, who names the reward)
        return Outcome(error=e)


def run_calls(calls: list[Callable[[], Any]]) -> list[Outcome]:
    """Run zero-argument thunks; those returning awaitables are awaited concurrently (``asyncio.gather``).

    Synchronous calls run one after another in this thread. Exceptions (``SystemExit`` included) are returned
    in the :class:`Outcome`, never raised; ``KeyboardInterrupt`` passes through.
    """
    outcomes: list[Outcome] = [Outcome() for _ in calls]
    pending: list[tuple[int, Any]] = []
    for i, thunk in enumerate(calls):
        try:
            out = thunk()
        except (Exception, SystemExit) as e:  # noqa: BLE001
            outcomes[i] = Outcome(error=e)
            continue
        if inspect.isawaitable(out):
            pending.append((i, out))
        else:
            outcomes[i] = Outcome(out)
    if pending:
        async def gather() -> list[Outcome]:
            return await asyncio.gather(*(_guarded(aw) for _, aw in pending))

        results = asyncio.run_coroutine_threadsafe(gather(), _LoopThread.loop()).result()
        for (i, _), res in zip(pending, results):
            outcomes[i] = res
    return outcomes


__all__ = ["RESERVED_KWARGS", "Outcome", "RewardLog", "RewardTrainerState", "is_async_reward", "run_calls",
           "select_kwargs", "unwrap_partial"]

