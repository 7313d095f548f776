"""``RewardSet``: several weighted rewards scored together, with validation of what each one returns.

Letters: B = batch size (number of completions), T_i = number of tokens of completion i.

Validation (every component, every call): the reward must return one value per sample; a value that is
``None``, not a number, NaN or infinite, and an exception, are *problems*. With ``on_error="fail"`` (default)
the first problem raises a :class:`ReinlmError` naming the component and the sample (index and text); with
``on_error="skip"`` the sample is marked invalid (``valid=False``, total 0) and counted. When a component
raises on a batch, it is re-run one sample at a time to find the samples at fault. A component that returns
``None`` for every sample, or raises on every sample, is an error in both modes: it scores nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from reinlm.config import check_choice
from reinlm.errors import ConfigError, ReinlmError
from reinlm.rewards.base import is_token_level, reward_name

log = logging.getLogger(__name__)

OnError = Literal["fail", "skip"]


@dataclass
class RewardComponent:
    """One term of a reward sum: ``weight * fn(...)``."""

    name: str  # unique within its RewardSet; metric names use it (reward/<name>/mean)
    fn: Callable  # a sequence reward, or a token-level one (fn.is_token_level)
    weight: float = 1.0  # multiplies the component in the total
    spec: str = ""  # the SPEC text it was parsed from ("" when built in Python)

    @property
    def token_level(self) -> bool:
        """Whether this component returns one value per completion token."""
        return is_token_level(self.fn)


@dataclass
class RewardScores:
    """Result of :meth:`RewardSet.score`."""

    total: torch.Tensor  # (B,) float32: sum of weight * component; 0 where invalid
    components: dict[str, torch.Tensor]  # name -> (B,) float32, unweighted; 0 where that component failed
    valid: torch.Tensor  # (B,) bool: every component gave a finite number
    problems: list[str] = field(default_factory=list)  # one line per skipped (component, sample)

    @property
    def n_invalid(self) -> int:
        """Number of samples marked invalid (only non-zero with ``on_error="skip"``)."""
        return int((~self.valid).sum())


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _as_number(v: Any) -> tuple[float | None, str | None]:
    """``(value, None)`` for a finite number, else ``(None, problem)``."""
    if v is None:
        return None, "returned None"
    if isinstance(v, (str, bytes)):
        return None, f"returned {_short(repr(v), 30)} ({type(v).__name__}), not a number"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None, f"returned a {type(v).__name__}, not a number"
    if not math.isfinite(x):
        return None, f"returned {x}"
    return x, None


def _as_row(v: Any, n_tokens: int) -> tuple[list[float] | None, str | None]:
    """``(row, None)`` for ``n_tokens`` finite numbers, else ``(None, problem)``."""
    if v is None:
        return None, "returned None"
    try:
        row = list(v)
    except TypeError:
        return None, f"returned a {type(v).__name__}, not a list of per-token values"
    if len(row) != n_tokens:
        return None, f"returned {len(row)} token values for {n_tokens} tokens"
    out = []
    for j, x in enumerate(row):
        num, problem = _as_number(x)
        if problem:
            return None, f"{problem} at token {j}"
        out.append(num)
    return out, None


class RewardSet:
    """Weighted sum of rewards. Sequence components feed :meth:`score`; token-level ones :meth:`score_tokens`.

    A RewardSet is itself a TRL-style reward (``rs(prompts, completions, **columns) -> list[float | None]``,
    the weighted total with ``None`` for invalid samples), so it can be nested or handed to TRL.
    """

    name = "weighted"
    is_token_level = False

    def __init__(self, components: list[RewardComponent], on_error: OnError = "fail", spec: str = ""):
        check_choice("on_error", on_error, ("fail", "skip"))
        if not components:
            raise ConfigError(f"reward: got {spec!r}, which holds no reward; allowed: at least one reward.")
        self.on_error, self.spec = on_error, spec
        self.components: list[RewardComponent] = []
        seen: dict[str, int] = {}
        for comp in components:  # unique names: a second contains_words becomes contains_words_2
            seen[comp.name] = seen.get(comp.name, 0) + 1
            name = comp.name if seen[comp.name] == 1 else f"{comp.name}_{seen[comp.name]}"
            self.components.append(RewardComponent(name, comp.fn, float(comp.weight), comp.spec))

    @classmethod
    def from_functions(cls, fns: list[Callable], weights: list[float] | None = None,
                       on_error: OnError = "fail") -> "RewardSet":
        """A RewardSet of plain reward callables (TRL's ``reward_funcs`` + ``reward_weights``)."""
        weights = [1.0] * len(fns) if weights is None else list(weights)
        if len(weights) != len(fns):
            raise ConfigError(f"reward_weights: got {len(weights)} weights for {len(fns)} reward functions; "
                              f"allowed: one weight per function.")
        return cls([RewardComponent(reward_name(f), f, w) for f, w in zip(fns, weights)], on_error)

    # ------------------------------------------------------------------------------------------ views
    @property
    def sequence(self) -> list[RewardComponent]:
        """The sequence-level components (one value per completion)."""
        return [c for c in self.components if not c.token_level]

    @property
    def token_level(self) -> list[RewardComponent]:
        """The token-level components (one value per completion token)."""
        return [c for c in self.components if c.token_level]

    @property
    def has_token_level(self) -> bool:
        """Whether any component is token-level (then call :meth:`score_tokens` too)."""
        return bool(self.token_level)

    @property
    def names(self) -> list[str]:
        """Component names, in order."""
        return [c.name for c in self.components]

    def __repr__(self) -> str:
        terms = " + ".join(f"{c.weight:g}*{c.name}" for c in self.components)
        return f"RewardSet({terms}, on_error={self.on_error!r})"

    # ------------------------------------------------------------------------------------------ scoring
    def score(self, prompts: list[str], completions: list[str],
              columns: dict[str, list] | None = None) -> RewardScores:
        """Score every completion with every sequence component; see the module docstring for validation."""
        B = len(completions)
        cols = self._check_inputs(prompts, completions, columns)
        total = torch.zeros(B, dtype=torch.float32)
        valid = torch.ones(B, dtype=torch.bool)
        comps: dict[str, torch.Tensor] = {}
        problems: list[str] = []
        for comp in self.sequence:
            values, bad = self._run(comp, prompts, completions, cols, {}, lambda i, v: _as_number(v))
            vec = torch.tensor([0.0 if v is None else v for v in values], dtype=torch.float32)  # (B,)
            comps[comp.name] = vec
            total += comp.weight * vec
            for i, problem in bad.items():
                valid[i] = False
                problems.append(self._describe(comp, i, completions, problem))
        total[~valid] = 0.0
        self._warn_skipped(problems, B)
        return RewardScores(total, comps, valid, problems)

    def score_tokens(self, prompts: list[str], completions: list[str], spans: list[list[tuple[int, int]]],
                     columns: dict[str, list] | None = None) -> list[list[float]]:
        """Weighted sum of the token-level components: one list of T_i floats per completion.

        ``spans[i][j]`` = (char start, char end) of token j in ``completions[i]``. A skipped sample's row
        from a failing component is zeros. Without token-level components, all zeros.
        """
        cols = self._check_inputs(prompts, completions, columns)
        if len(spans) != len(completions):
            raise ConfigError(f"completion_token_spans: got {len(spans)} span lists for {len(completions)} "
                              f"completions; allowed: one list of (start, end) per completion.")
        out = [[0.0] * len(s) for s in spans]  # B rows of T_i
        problems: list[str] = []
        for comp in self.token_level:
            rows, bad = self._run(comp, prompts, completions, cols, {"completion_token_spans": spans},
                                  lambda i, v: _as_row(v, len(spans[i])))
            for i, row in enumerate(rows):
                if row is not None:
                    out[i] = [a + comp.weight * b for a, b in zip(out[i], row)]
            problems += [self._describe(comp, i, completions, p) for i, p in bad.items()]
        self._warn_skipped(problems, len(completions))
        return out

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> list[float | None]:
        """TRL-style call: the weighted total per completion, ``None`` where a sample was skipped.

        Keyword arguments that are not one value per completion (TRL also passes e.g. ``trainer_state``) are
        not forwarded to the components.
        """
        per_sample = {k: v for k, v in columns.items()
                      if isinstance(v, (list, tuple)) and len(v) == len(completions)}
        res = self.score(prompts, completions, per_sample)
        return [t if ok else None for t, ok in zip(res.total.tolist(), res.valid.tolist())]

    # ------------------------------------------------------------------------------------------ internals
    @staticmethod
    def _check_inputs(prompts: list[str], completions: list[str], columns: dict[str, list] | None) -> dict:
        B = len(completions)
        if len(prompts) != B:
            raise ConfigError(f"reward: got {len(prompts)} prompts for {B} completions; allowed: one prompt per "
                              f"completion (repeat a prompt for each of its samples).")
        cols = dict(columns or {})
        for key, val in cols.items():
            if not hasattr(val, "__len__") or isinstance(val, str) or len(val) != B:
                got = f"{len(val)} values" if hasattr(val, "__len__") and not isinstance(val, str) else repr(val)
                raise ConfigError(f"reward column {key!r}: got {got} for {B} completions; allowed: a list with "
                                  f"one value per completion.")
        return cols

    def _run(self, comp: RewardComponent, prompts, completions, cols: dict, extra: dict,
             check: Callable[[int, Any], tuple[Any, str | None]]) -> tuple[list, dict[int, str]]:
        """Call ``comp`` on the batch; returns the checked values (None where bad) and {index: problem}."""
        B = len(completions)
        try:
            out = comp.fn(prompts, completions, **extra, **cols)
        except ReinlmError:
            raise  # a configuration problem (e.g. a missing column): the same for every sample
        except Exception as e:  # find the samples at fault by re-running one at a time
            return self._run_per_sample(comp, prompts, completions, cols, extra, check, e)
        try:
            n = len(out)
        except TypeError:
            n = None
        if n != B:
            got = f"{n} values" if n is not None else f"a {type(out).__name__}"
            msg = f"reward {comp.name!r} returned {got} for a batch of {B} samples; allowed: a list with one value per sample."
            if self.on_error == "fail":
                raise ReinlmError(msg + " Fix the reward, or pass on_error='skip' to skip the samples it cannot score.")
            log.warning("%s Re-running it one sample at a time.", msg)
            return self._run_per_sample(comp, prompts, completions, cols, extra, check, None)
        if B and all(v is None for v in out):
            raise ReinlmError(f"reward {comp.name!r} returned None for every one of the {B} samples, so it scores "
                              f"nothing (None means 'cannot score this sample'); allowed: a number for at least "
                              f"one sample. Check that its columns are passed and that it fits these completions.")
        values, bad = [], {}
        for i, v in enumerate(out):
            val, problem = check(i, v)
            if problem:
                self._fail_or_record(comp, i, completions, problem, bad)
            values.append(val)
        return values, bad

    def _run_per_sample(self, comp, prompts, completions, cols, extra, check, batch_error) -> tuple[list, dict]:
        B = len(completions)
        values, bad = [], {}
        for i in range(B):
            one_extra = {k: [v[i]] for k, v in extra.items()}
            one_cols = {k: [v[i]] for k, v in cols.items()}
            try:
                out = comp.fn([prompts[i]], [completions[i]], **one_extra, **one_cols)
                val, problem = (None, f"returned {len(out)} values for 1 sample") if len(out) != 1 else check(i, out[0])
            except ReinlmError:
                raise
            except Exception as e:
                val, problem = None, f"raised {type(e).__name__}: {_short(str(e), 200)}"
            if problem:
                self._fail_or_record(comp, i, completions, problem, bad, batch_error)
            values.append(val)
        if B and len(bad) == B and all(p.startswith("raised") or p == "returned None" for p in bad.values()):
            raise ReinlmError(f"reward {comp.name!r} failed on every one of the {B} samples (sample 0: "
                              f"{bad[0]}), so it scores nothing; fix the reward (is a column it needs missing?).")
        if batch_error is not None and not bad and self.on_error == "fail":
            raise ReinlmError(f"reward {comp.name!r} raised {type(batch_error).__name__}: {_short(str(batch_error), 200)} "
                              f"on a batch of {B} samples (but on none of them alone); fix the reward.") from batch_error
        return values, bad

    def _fail_or_record(self, comp, i, completions, problem, bad, cause=None) -> None:
        if self.on_error == "fail":
            raise ReinlmError(self._describe(comp, i, completions, problem) + "; fix the reward, or pass "
                              "on_error='skip' (CLI: --on-error skip) to skip the samples it cannot score.") from cause
        bad[i] = problem

    @staticmethod
    def _describe(comp, i, completions, problem) -> str:
        return f"reward {comp.name!r} {problem} on sample {i} (completion {_short(completions[i])!r})"

    def _warn_skipped(self, problems: list[str], B: int) -> None:
        if problems:
            log.warning("reward: skipped %d problem(s) in a batch of %d; first: %s", len(problems), B, problems[0])


def weighted(*terms: Callable | tuple[float, Callable], on_error: OnError = "fail") -> RewardSet:
    """A weighted sum of rewards: each term is a reward or a ``(weight, reward)`` pair (weight 1 if bare).

    >>> from reinlm.rewards.text import contains_words, target_length
    >>> r = weighted(contains_words(["red"]), (0.5, target_length(4)))
    >>> r([""], ["red!"]), r.names
    ([1.0], ['contains_words', 'target_length'])
    """
    comps = []
    for t in terms:
        w, fn = t if isinstance(t, tuple) else (1.0, t)
        if not callable(fn) or isinstance(w, bool) or not isinstance(w, (int, float)):
            raise ConfigError(f"weighted: got {t!r}; allowed: a reward callable or a (weight, reward) pair.")
        comps.append(RewardComponent(reward_name(fn), fn, float(w)))
    return RewardSet(comps, on_error)
