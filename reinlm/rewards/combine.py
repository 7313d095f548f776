"""``RewardSet``: several weighted rewards scored together, called with TRL's convention and checked.

Letters: B = batch size (number of completions), T_i = number of tokens of completion i.

Calling convention (TRL's, see :mod:`reinlm.rewards.call`): every reward is called with keyword arguments
``prompts``, ``completions``, ``completion_ids``, every column, ``trainer_state``, ``log_extra`` and
``log_metric``; ``async def`` rewards are awaited concurrently. Rewards made with ``@reward_function``
(reinlm's built-ins) get text; plain callables get TRL's forms (message lists for conversational data).

None semantics (TRL's ``nansum``): a reward returns ``None`` for a sample it does not apply to; the
weighted total of a sample sums the rewards that did score it. A sample is invalid when *every* reward
returned ``None`` for it (TRL: "unscorable"; a warning, it leaves the baselines and the means) or when a
reward had a *problem* with it. Problems: the wrong number of values, a value that is NaN, infinite, beyond
the float32 range or not a number, and an exception. With ``on_error="fail"`` (default) the first problem
raises a :class:`ReinlmError` naming the reward and the sample (index and text); with ``on_error="skip"`` the
sample is marked invalid and counted. When a reward raises on a batch it is re-run one sample at a time to
find the samples at fault. A batch in which nothing scores any sample is an error with ``on_error="fail"``.
A reward that calls ``sys.exit`` is always an error (it would end the run with no message).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from reinlm.config.coerce import check_choice
from reinlm.errors import ConfigError, ReinlmError
from reinlm.rewards.base import is_token_level, reward_name, wants_text
from reinlm.rewards.call import (RESERVED_KWARGS, Outcome, RewardLog, RewardTrainerState, run_calls,
                                 select_kwargs)

log = logging.getLogger(__name__)

OnError = Literal["fail", "skip"]
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: rewards become float32 tensors
_NOT_PER_SAMPLE = ("trainer_state", "log_extra", "log_metric")


@dataclass
class RewardComponent:
    """One term of a reward sum: ``weight * fn(...)``."""

    name: str  # unique within its RewardSet; metric names use it (reward/<name>/mean)
    fn: Callable  # a sequence reward, or a token-level one (fn.is_token_level)
    weight: float = 1.0  # multiplies the component in the total
    spec: str = ""  # the SPEC text it was parsed from ("" when built in Python)
    message_completions: bool = False  # set once the reward indexed text completions as messages (see _call)

    @property
    def token_level(self) -> bool:
        """Whether this component returns one value per completion token."""
        return is_token_level(self.fn)


@dataclass
class RewardScores:
    """Result of :meth:`RewardSet.score`."""

    total: torch.Tensor  # (B,) float32: nansum of weight * component; 0 where invalid
    components: dict[str, torch.Tensor]  # name -> (B,) float32, unweighted; NaN where it returned None or failed
    valid: torch.Tensor  # (B,) bool: scored by at least one reward, and no reward had a problem with it
    problems: list[str] = field(default_factory=list)  # one line per skipped (component, sample)
    unscorable: int = 0  # samples for which every reward returned None
    metrics: dict[str, float] = field(default_factory=dict)  # log_metric: name -> mean over the batch
    extras: dict[str, list] = field(default_factory=dict)  # log_extra: column -> one value per sample

    @property
    def n_invalid(self) -> int:
        """Number of samples marked invalid (unscorable, or skipped with ``on_error="skip"``)."""
        return int((~self.valid).sum())

    @property
    def invalid_frac(self) -> float:
        """Share of the batch that is invalid (logged as ``reward/invalid_frac``)."""
        return self.n_invalid / max(1, len(self.valid))

    def component_means(self) -> dict[str, float]:
        """Mean of each component over the samples it scored (TRL's nanmean; NaN when it scored none)."""
        return {k: float(torch.nanmean(v)) if len(v) else float("nan") for k, v in self.components.items()}

    def valid_mean(self) -> float:
        """Mean total over the valid samples (NaN when none is valid)."""
        return float(self.total[self.valid].mean()) if bool(self.valid.any()) else float("nan")


def _short(text: Any, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _as_number(v: Any) -> tuple[float | None, str | None]:
    """``(value, None)`` for a finite number within the float32 range, else ``(None, problem)``.

    Accepts Python numbers and bools, numpy scalars and one-element torch tensors / numpy arrays.
    """
    if v is None:
        return None, "returned None"
    if isinstance(v, (str, bytes)):
        return None, f"returned {_short(repr(v), 30)} ({type(v).__name__}), not a number"
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            return None, f"returned a tensor of shape {tuple(v.shape)}, not one number"
        v = v.detach().reshape(()).cpu().item()
    elif hasattr(v, "shape") and hasattr(v, "item") and getattr(v, "size", 1) == 1:  # numpy scalar / 1-elt array
        v = v.item()
    try:
        x = float(v)
    except OverflowError:
        digits = len(str(abs(int(v)))) if isinstance(v, int) else None
        return None, (f"returned an integer with {digits} digits, beyond the float32 range (|x| <= 3.4e38)"
                      if digits else f"returned {_short(repr(v), 30)}, beyond the float32 range (|x| <= 3.4e38)")
    except (TypeError, ValueError):
        return None, f"returned a {type(v).__name__}, not a number"
    if not math.isfinite(x):
        return None, f"returned {x}"
    if abs(x) > FLOAT32_MAX:
        return None, f"returned {x:g}, beyond the float32 range (|x| <= 3.4e38) rewards are computed in"
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


def _as_list(out: Any) -> list | None:
    """A reward's output as a list (lists, tuples, arrays, tensors, other iterables), ``None`` if not iterable."""
    if isinstance(out, (str, bytes, dict)) or out is None:
        return None
    if isinstance(out, torch.Tensor):
        return list(out.reshape(-1)) if out.dim() <= 1 else list(out)
    try:
        return list(out)
    except TypeError:
        return None


def completion_text(c: Any) -> str:
    """A completion as text: a string as is; TRL's message form ``[{"role": "assistant", "content": t}]``
    as the contents of its messages, joined."""
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        return str(c.get("content", ""))
    if isinstance(c, (list, tuple)):
        return "".join(completion_text(m) for m in c)
    return str(c)


def is_conversational(prompts: list) -> bool:
    """Whether ``prompts`` are message lists (TRL's conversational format) rather than strings."""
    return bool(prompts) and isinstance(prompts[0], (list, tuple))


def _message_prompt(p: Any) -> list[dict]:
    return list(p) if isinstance(p, (list, tuple)) else [{"role": "user", "content": str(p)}]


def _last_content(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    return str(messages[-1].get("content", "")) if messages else ""


class RewardSet:
    """Weighted sum of rewards. Sequence components feed :meth:`score`; token-level ones :meth:`score_tokens`.

    A RewardSet is itself a TRL-style reward (``rs(prompts=..., completions=..., **kwargs) -> list[float |
    None]``, the weighted total with ``None`` for invalid samples), so it can be nested or handed to TRL.
    """

    name = "weighted"
    is_token_level = False
    text_inputs = False  # receives TRL's forms (message lists for conversational data) and passes them on

    def __init__(self, components: list[RewardComponent], on_error: OnError = "fail", spec: str = ""):
        check_choice("on_error", on_error, ("fail", "skip"))
        if not components:
            raise ConfigError(f"reward: got {spec!r}, which holds no reward; allowed: at least one reward.")
        self.on_error, self.spec = on_error, spec
        self.components: list[RewardComponent] = []
        seen: dict[str, int] = {}
        for comp in components:  # unique names: a second contains_words becomes contains_words_2
            if not callable(comp.fn):
                raise ConfigError(f"reward {comp.name!r}: got a {type(comp.fn).__name__}; allowed: a callable "
                                  f"reward (a function, or an object with __call__).")
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
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ConfigError(f"reward_weights: got {w!r}; allowed: finite numbers, one per reward function.")
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
    def score(self, prompts: list, completions: list, columns: dict[str, list] | None = None, *,
              completion_ids: list[list[int]] | None = None, trainer_state: Any = None,
              prompt_texts: list[str] | None = None) -> RewardScores:
        """Score every completion with every sequence component (see the module docstring).

        ``prompts``: strings, or message lists (conversational data: TRL-style rewards then get completions
        as ``[{"role": "assistant", "content": text}]``). ``completions``: strings (or TRL's message form).
        ``columns``: dataset columns, one value per completion. ``completion_ids``: token ids per completion
        (not passed to the rewards when ``None``). ``trainer_state``: passed to the rewards (a zero
        :class:`RewardTrainerState` when not given). ``prompt_texts``: the prompts as the model saw them,
        for text rewards (default: the prompt, or the last message's content).
        """
        B = len(completions)
        texts = [completion_text(c) for c in completions]
        cols = self._check_inputs(prompts, texts, columns)
        logger = RewardLog()
        batch = self._batch(prompts, texts, cols, completion_ids, trainer_state, prompt_texts, logger)
        valid = torch.ones(B, dtype=torch.bool)
        comps: dict[str, torch.Tensor] = {}
        problems: list[str] = []
        seq = self.sequence
        outcomes = run_calls([lambda c=c: self._call(c, batch, None) for c in seq])
        for comp, outcome in zip(seq, outcomes):
            values, bad = self._checked(comp, outcome, batch, _as_number)
            comps[comp.name] = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)
            for i, problem in bad.items():
                valid[i] = False
                problems.append(self._describe(comp, i, texts, problem))
        total = torch.zeros(B, dtype=torch.float32)
        scored = torch.zeros(B, dtype=torch.bool)
        for comp in seq:
            vec = comps[comp.name]  # (B,)
            ok = ~torch.isnan(vec)
            total += torch.where(ok, comp.weight * vec, torch.zeros_like(vec))  # nansum, as TRL
            scored |= ok
        for i in (~torch.isfinite(total) & valid).nonzero().flatten().tolist():  # finite values, overflowing weights
            problems.append(self._overflow(i, comps, total, texts))
            valid[i] = False
        unscorable = int((~scored & valid).sum()) if seq else 0
        if seq:
            self._report_unscorable(scored, valid, texts, cols)
            valid &= scored
        total[~valid] = 0.0
        self._warn_skipped(problems, B)
        return RewardScores(total, comps, valid, problems, unscorable, logger.metrics(),
                            self._extras(logger, B))

    def score_tokens(self, prompts: list, completions: list, spans: list[list[tuple[int, int]]],
                     columns: dict[str, list] | None = None, *, completion_ids: list[list[int]] | None = None,
                     trainer_state: Any = None, prompt_texts: list[str] | None = None) -> list[list[float]]:
        """Weighted sum of the token-level components: one list of T_i floats per completion.

        ``spans[i][j]`` = (char start, char end) of token j in ``completions[i]`` (passed as
        ``completion_token_spans``). A skipped sample's row from a failing component is zeros. Without
        token-level components, all zeros.
        """
        texts = [completion_text(c) for c in completions]
        cols = self._check_inputs(prompts, texts, columns)
        if len(spans) != len(texts):
            raise ConfigError(f"completion_token_spans: got {len(spans)} span lists for {len(texts)} "
                              f"completions; allowed: one list of (start, end) per completion.")
        batch = self._batch(prompts, texts, cols, completion_ids, trainer_state, prompt_texts, RewardLog())
        batch["completion_token_spans"] = [list(s) for s in spans]
        out = [[0.0] * len(s) for s in spans]  # B rows of T_i
        problems: list[str] = []
        tok = self.token_level
        outcomes = run_calls([lambda c=c: self._call(c, batch, None) for c in tok])
        for comp, outcome in zip(tok, outcomes):
            rows, bad = self._checked(comp, outcome, batch, None, row_lengths=[len(s) for s in spans])
            for i, row in enumerate(rows):
                if row is not None:
                    out[i] = [a + comp.weight * b for a, b in zip(out[i], row)]
            problems += [self._describe(comp, i, texts, p) for i, p in bad.items()]
        self._warn_skipped(problems, len(texts))
        return out

    def __call__(self, prompts: list | None = None, completions: list | None = None, completion_ids=None,
                 trainer_state=None, log_extra=None, log_metric=None, **columns) -> list[float | None]:
        """TRL-style call: the weighted total per completion, ``None`` where a sample is invalid.

        Keyword arguments that are not one value per completion are not forwarded as columns; metrics and
        extras the components log are passed on to ``log_metric`` / ``log_extra`` when given.
        """
        completions = list(completions or [])
        prompts = list(prompts) if prompts is not None else [""] * len(completions)
        per_sample = {k: v for k, v in columns.items()
                      if isinstance(v, (list, tuple)) and len(v) == len(completions) and k not in RESERVED_KWARGS}
        res = self.score(prompts, completions, per_sample, completion_ids=completion_ids, trainer_state=trainer_state)
        if log_metric is not None:
            for k, v in res.metrics.items():
                log_metric(k, v)
        if log_extra is not None:
            for k, v in res.extras.items():
                log_extra(k, v)
        return [t if ok else None for t, ok in zip(res.total.tolist(), res.valid.tolist())]

    # ------------------------------------------------------------------------------------------ internals
    @staticmethod
    def _check_inputs(prompts: list, completions: list[str], columns: dict[str, list] | None) -> dict:
        B = len(completions)
        if len(prompts) != B:
            raise ConfigError(f"reward: got {len(prompts)} prompts for {B} completions; allowed: one prompt per "
                              f"completion (repeat a prompt for each of its samples).")
        cols = dict(columns or {})
        for key, val in cols.items():
            if key in RESERVED_KWARGS:
                raise ConfigError(f"reward column {key!r}: the name is taken by an argument every reward gets "
                                  f"({', '.join(RESERVED_KWARGS)}); allowed: another column name (rename it).")
            if not hasattr(val, "__len__") or isinstance(val, str) or len(val) != B:
                got = f"{len(val)} values" if hasattr(val, "__len__") and not isinstance(val, str) else repr(val)
                raise ConfigError(f"reward column {key!r}: got {got} for {B} completions; allowed: a list with "
                                  f"one value per completion.")
        return cols

    @staticmethod
    def _batch(prompts, texts, cols, completion_ids, trainer_state, prompt_texts, logger: RewardLog) -> dict:
        """Everything a reward may receive, in both forms (TRL's and text)."""
        B = len(texts)
        conv = is_conversational(prompts)
        if completion_ids is not None and len(completion_ids) != B:
            raise ConfigError(f"completion_ids: got {len(completion_ids)} lists for {B} completions; allowed: one "
                              f"list of token ids per completion.")
        if prompt_texts is None:
            prompt_texts = [_last_content(p) for p in prompts] if conv else [str(p) for p in prompts]
        return {
            "conversational": conv,
            "prompts": list(prompts),
            "prompt_texts": list(prompt_texts),
            "texts": texts,
            "messages": [[{"role": "assistant", "content": t}] for t in texts],
            "completion_ids": [list(map(int, ids)) for ids in completion_ids] if completion_ids is not None else None,
            "columns": cols,
            "trainer_state": trainer_state if trainer_state is not None else RewardTrainerState(),
            "log_extra": logger.log_extra,
            "log_metric": logger.log_metric,
        }

    def _kwargs(self, comp: RewardComponent, batch: dict, rows: list[int] | None) -> dict[str, Any]:
        """The keyword arguments for ``comp`` (all samples, or only ``rows``)."""
        if wants_text(comp.fn):
            prompts, completions = batch["prompt_texts"], batch["texts"]
        elif batch["conversational"] or comp.message_completions:
            prompts = batch["prompts"] if batch["conversational"] else [_message_prompt(p) for p in batch["prompts"]]
            completions = batch["messages"]
        else:
            prompts, completions = batch["prompts"], batch["texts"]
        per_sample = {"prompts": prompts, "completions": completions, **batch["columns"]}
        if batch["completion_ids"] is not None:
            per_sample["completion_ids"] = batch["completion_ids"]
        if "completion_token_spans" in batch:
            per_sample["completion_token_spans"] = batch["completion_token_spans"]
        if rows is not None:
            per_sample = {k: [v[i] for i in rows] for k, v in per_sample.items()}
        kwargs = {**per_sample, **{k: batch[k] for k in _NOT_PER_SAMPLE}}
        return select_kwargs(comp.fn, comp.name, kwargs)

    def _call(self, comp: RewardComponent, batch: dict, rows: list[int] | None):
        """Call ``comp`` by keyword (TRL's convention); may return an awaitable (async rewards)."""
        return comp.fn(**self._kwargs(comp, batch, rows))

    def _checked(self, comp: RewardComponent, outcome: Outcome, batch: dict,
                 check: Callable[[Any], tuple[Any, str | None]] | None,
                 row_lengths: list[int] | None = None) -> tuple[list, dict[int, str]]:
        """Validate a batch call's outcome; returns the values (None where absent or bad) and {index: problem}."""
        B = len(batch["texts"])

        def check_one(i: int, v: Any):
            return _as_row(v, row_lengths[i]) if row_lengths is not None else check(v)

        error = outcome.error
        if error is not None and self._indexes_messages(comp, batch, error):
            outcome = run_calls([lambda: self._call(comp, batch, None)])[0]  # retried with message completions
            error = outcome.error
        if error is not None:
            self._reraise_fatal(comp, error, B)
            return self._run_per_sample(comp, batch, check_one, error)
        out = _as_list(outcome.value)
        n = None if out is None else len(out)
        if n != B:
            got = f"{n} values" if n is not None else f"a {type(outcome.value).__name__}"
            msg = (f"reward {comp.name!r} returned {got} for a batch of {B} samples; allowed: a list with one value "
                   f"per sample.")
            if self.on_error == "fail":
                raise ReinlmError(msg + " Fix the reward, or pass on_error='skip' to skip the samples it cannot "
                                        "score.")
            log.warning("%s Re-running it one sample at a time.", msg)
            return self._run_per_sample(comp, batch, check_one, None)
        values, bad = [], {}
        for i, v in enumerate(out):
            if v is None and row_lengths is None:  # None: "does not apply to this sample" (TRL)
                values.append(None)
                continue
            val, problem = check_one(i, v)
            if problem:
                self._fail_or_record(comp, i, batch["texts"], problem, bad)
            values.append(val)
        return values, bad

    def _indexes_messages(self, comp: RewardComponent, batch: dict, error: BaseException) -> bool:
        """TRL's shipped format rewards read ``completion[0]["content"]`` (conversational data only). On text
        data such a reward raises ``TypeError: string indices must be integers``; it is then given completions
        as ``[{"role": "assistant", "content": text}]`` (and prompts as one user message) from now on."""
        if (comp.message_completions or batch["conversational"] or wants_text(comp.fn)
                or not isinstance(error, TypeError) or "string indices must be integers" not in str(error)):
            return False
        comp.message_completions = True
        log.info("reward %r indexes completions as messages (completion[0]['content']), as TRL's conversational "
                 "rewards do; it gets completions as [{'role': 'assistant', 'content': text}] from now on.", comp.name)
        return True

    @staticmethod
    def _reraise_fatal(comp: RewardComponent, error: BaseException, B: int) -> None:
        if isinstance(error, SystemExit):
            raise ReinlmError(f"reward {comp.name!r} called sys.exit({error.code!r}) while scoring a batch of {B} "
                              f"samples, which would end the run without a message; allowed: a reward that returns "
                              f"one value per sample (None where it does not apply) and raises an exception on "
                              f"errors.") from error
        if isinstance(error, ReinlmError):  # a configuration problem (e.g. a missing column): the same for all
            raise error

    def _run_per_sample(self, comp, batch: dict, check_one, batch_error) -> tuple[list, dict]:
        B = len(batch["texts"])
        outcomes = run_calls([lambda i=i: self._call(comp, batch, [i]) for i in range(B)])
        values, bad = [], {}
        for i, outcome in enumerate(outcomes):
            val, problem = None, None
            if outcome.error is not None:
                self._reraise_fatal(comp, outcome.error, 1)
                problem = f"raised {type(outcome.error).__name__}: {_short(str(outcome.error), 200)}"
            else:
                out = _as_list(outcome.value)
                if out is None or len(out) != 1:
                    problem = f"returned {'a ' + type(outcome.value).__name__ if out is None else len(out)} values for 1 sample"
                elif out[0] is not None or "completion_token_spans" in batch:
                    val, problem = check_one(i, out[0])
            if problem:
                self._fail_or_record(comp, i, batch["texts"], problem, bad, batch_error)
            values.append(val)
        if B and len(bad) == B and all(p.startswith("raised") for p in bad.values()):
            raise ReinlmError(f"reward {comp.name!r} failed on every one of the {B} samples (sample 0: "
                              f"{bad[0]}), so it scores nothing; fix the reward (is a column it needs missing?).")
        if batch_error is not None and not bad and self.on_error == "fail":
            raise ReinlmError(f"reward {comp.name!r} raised {type(batch_error).__name__}: {_short(str(batch_error), 200)} "
                              f"on a batch of {B} samples (but on none of them alone); fix the reward.") from batch_error
        return values, bad

    def _fail_or_record(self, comp, i, completions, problem, bad, cause=None) -> None:
        if self.on_error == "fail":
            raise ReinlmError(self._describe(comp, i, completions, problem) + "; fix the reward, or pass "
                              "on_error='skip' (CLI: --on-error skip, training: --reward-on-error skip) to skip the "
                              "samples it cannot score.") from cause
        bad[i] = problem

    def _overflow(self, i: int, comps: dict[str, torch.Tensor], total: torch.Tensor, texts: list[str]) -> str:
        """Sample ``i``'s weighted total left the float32 range though every value was in it: refused with
        ``on_error="fail"`` (as training would otherwise stop on a NaN loss), else described for the warning."""
        terms = " + ".join(f"{c.weight:g} * {comps[c.name][i].item():g} ({c.name})" for c in self.sequence
                           if not math.isnan(comps[c.name][i].item()))
        msg = (f"reward: the weighted total of sample {i} (completion {_short(texts[i])!r}) is "
               f"{total[i].item():g}: {terms} overflows the float32 range (|total| <= 3.4e38) rewards are "
               f"computed in")
        if self.on_error == "fail":
            raise ReinlmError(msg + "; allowed: weights whose weighted sum stays within that range (use smaller "
                                    "weights), or on_error='skip' (CLI: --on-error skip, training: "
                                    "--reward-on-error skip) to skip such samples.")
        return msg

    @staticmethod
    def _describe(comp, i, completions, problem) -> str:
        return f"reward {comp.name!r} {problem} on sample {i} (completion {_short(completions[i])!r})"

    def _report_unscorable(self, scored: torch.Tensor, valid: torch.Tensor, texts: list[str], cols: dict) -> None:
        """Every reward returned None for some samples: TRL warns and drops them; nothing scored at all is an
        error with on_error='fail' (a missing column, or rewards that do not fit this data)."""
        B = len(texts)
        idle = (~scored & valid).nonzero().flatten().tolist()
        if not idle:
            return
        i = idle[0]
        row = {k: _short(v[i], 40) for k, v in cols.items()}
        names = ", ".join(c.name for c in self.sequence)
        if len(idle) == B and self.on_error == "fail":
            raise ReinlmError(f"every reward ({names}) returned None for every one of the {B} samples, so nothing "
                              f"scores this batch (None means 'does not apply to this sample'); sample 0: completion "
                              f"{_short(texts[0])!r}, columns {row or 'none'}. Check that the columns the rewards "
                              f"need are in the data and that the rewards fit these completions, or pass "
                              f"--reward-on-error skip to train on batches some reward scores.")
        log.warning("reward: every reward (%s) returned None for %d of %d samples; they are left out of the "
                    "baselines, the loss and the means (first: sample %d, completion %r, columns %s)",
                    names, len(idle), B, i, _short(texts[i]), row or "none")

    @staticmethod
    def _extras(logger: RewardLog, B: int) -> dict[str, list]:
        out = {}
        for k, v in logger.extras.items():
            if len(v) == B:
                out[k] = v
            else:
                log.warning("log_extra(%r): got %d values for a batch of %d samples; not written (allowed: one "
                            "value per sample)", k, len(v), B)
        return out

    def _warn_skipped(self, problems: list[str], B: int) -> None:
        if problems:
            log.warning("reward: skipped %d problem(s) in a batch of %d; first: %s", len(problems), B, problems[0])


def parse_reward_weights(name: str, text: str | None) -> list[float] | None:
    """``reward_weights`` ("1.0,0.5": one number per reward term, TRL's ``reward_weights``) -> floats, or None."""
    if text is None or str(text).strip() == "":
        return None
    out = []
    for part in str(text).split(","):
        try:
            v = float(part.strip())
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            raise ConfigError(f"{name}: got {text!r}; allowed: finite numbers separated by commas (a YAML list), one "
                              f"per reward term, e.g. 1.0,0.5.", field=name)
        out.append(float(v))
    return out


def apply_reward_weights(reward_set: RewardSet, weights: list[float]) -> RewardSet:
    """A RewardSet whose i-th term's weight is multiplied by ``weights[i]`` (TRL's ``reward_weights``: one weight
    per reward function, here per term of the SPEC; a SPEC weight such as 0.5*sentiment multiplies too)."""
    comps = reward_set.components
    if len(weights) != len(comps):
        raise ConfigError(f"reward_weights: got {len(weights)} weights for {len(comps)} reward terms "
                          f"({', '.join(c.name for c in comps)}); allowed: one weight per term.", field="reward_weights")
    return RewardSet([RewardComponent(c.name, c.fn, c.weight * w, c.spec) for c, w in zip(comps, weights)],
                     on_error=reward_set.on_error)


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
