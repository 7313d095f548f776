"""Degeneration alarm: notice when RL samples collapse into repeated punctuation or loops.

The REINFORCE notebook seed (DESIGN.md section 3) shows the failure this watches for: without a KL
anchor, within a few steps the samples turn into ``,"!!!!!,"!,"!`` / ``iiiiiiiiii`` / ``you you you``.
Each training step the trainer hands the batch's completions (and, when it has one, their perplexity under
the frozen reference) to :meth:`DegenerationMonitor.observe`. Four signals are checked against the first
observed step (the "start"):

=================  =========================================================  ======================
signal             a step is bad when                                         default
=================  =========================================================  ======================
``distinct_2``     distinct-2 of the batch < ``distinct2_relative_floor`` x   0.5 x start, or < 0.2
                   start, or < ``distinct2_floor`` (absolute)
``repetition``     mean repeated char 4-gram fraction > ``repeat_ceiling``    0.35
``punctuation``    mean punctuation fraction > ``punctuation_ceiling``        0.30
``perplexity``     perplexity / start perplexity > ``perplexity_ratio``       4.0
=================  =========================================================  ======================

A ceiling is raised to ``relative_ceiling`` x the start value when the start value is already above
``ceiling / relative_ceiling`` (a model that starts with much punctuation, e.g. code, alarms only when it
gets clearly worse); the absolute distinct-2 floor is ignored when the start batch was already below it
(e.g. completions of one or two words). The alarm fires when ``patience`` consecutive steps are bad, and
again on every further bad step; one good step resets the count. Thresholds were set from natural
English (DESIGN.md in 100-800 character chunks: repeated char 4-gram fraction mean 0.03-0.13, 95th
percentile <= 0.16; punctuation mean 0.07, 95th percentile <= 0.17) against the notebook's collapsed
samples (repetition about 0.57, punctuation about 0.57 on average).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reinlm.config.schema import Config, opt
from reinlm.textstats import distinct_n, punctuation_fraction, repeated_ngram_fraction

SIGNALS = ("distinct_2", "repetition", "punctuation", "perplexity")


@dataclass
class DegenerationConfig(Config):
    """Thresholds of the degeneration alarm (docs/evaluation.md, "Degeneration alarm")."""

    distinct2_floor: float = opt(0.2, "absolute floor on distinct-2 of a step's completions", lo=0, hi=1)
    distinct2_relative_floor: float = opt(0.5, "distinct-2 below this fraction of its start value is bad", lo=0, hi=1)
    repeat_n: int = opt(4, "n of the repeated character n-gram fraction (whitespace removed)", lo=1)
    repeat_ceiling: float = opt(0.35, "mean repeated char n-gram fraction above this is bad", lo=0, hi=1)
    punctuation_ceiling: float = opt(0.3, "mean share of punctuation/symbol characters above this is bad", lo=0, hi=1)
    perplexity_ratio: float = opt(4.0, "reference perplexity above this multiple of its start value is bad", lo=1, lo_open=True)
    relative_ceiling: float = opt(2.0, "a ceiling is raised to this multiple of the start value when needed", lo=1)
    patience: int = opt(2, "consecutive bad steps before the alarm fires", lo=1)
    n_examples: int = opt(3, "example completions kept in an alarm", flag=False, lo=0)


@dataclass
class DegenerationAlarm:
    """What fired: ``signals`` names, their ``values`` and ``thresholds`` this step, and ``examples``."""

    step: int
    signals: list[str]
    values: dict[str, float]
    thresholds: dict[str, float]
    examples: list[str]
    bad_steps: int = 1  # consecutive bad steps so far, this one included

    def __str__(self) -> str:
        parts = []
        for s in self.signals:
            op = "<" if s == "distinct_2" else ">"
            parts.append(f"{s} {self.values[s]:.3f} {op} {self.thresholds[s]:.3f}")
        ex = " | ".join(repr(e[:80]) for e in self.examples)
        return f"step {self.step}, {self.bad_steps} bad steps in a row: {'; '.join(parts)}; examples: {ex}"

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "signals": list(self.signals), "values": dict(self.values),
                "thresholds": dict(self.thresholds), "examples": list(self.examples), "bad_steps": self.bad_steps}


def batch_signals(completions: list[str], repeat_n: int = 4, perplexity: float | None = None) -> dict[str, float]:
    """The alarm's measurements on one batch: distinct-2 (pooled), mean repetition and punctuation fractions."""
    out = {
        "distinct_2": distinct_n(completions, 2),
        "repetition": float(np.mean([repeated_ngram_fraction(c, repeat_n, unit="char") for c in completions]))
        if completions else 0.0,
        "punctuation": float(np.mean([punctuation_fraction(c) for c in completions])) if completions else 0.0,
    }
    if perplexity is not None and math.isfinite(perplexity):
        out["perplexity"] = float(perplexity)
    return out


@dataclass
class DegenerationMonitor:
    """Watches each step's completions; :meth:`observe` returns a :class:`DegenerationAlarm` or ``None``."""

    cfg: DegenerationConfig = field(default_factory=DegenerationConfig)
    start: dict[str, float] = field(default_factory=dict)  # signal values at the first observed step
    bad_steps: int = 0  # consecutive bad steps
    last_values: dict[str, float] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        """True when the last observed step was not bad."""
        return self.bad_steps == 0

    def thresholds(self) -> dict[str, float]:
        """The effective threshold of each signal, given the start values (see the module docstring)."""
        c, s = self.cfg, self.start
        th: dict[str, float] = {}
        if "distinct_2" in s:
            d0 = s["distinct_2"]
            th["distinct_2"] = max(c.distinct2_relative_floor * d0, c.distinct2_floor if d0 >= c.distinct2_floor else 0.0)
        for name, ceiling in (("repetition", c.repeat_ceiling), ("punctuation", c.punctuation_ceiling)):
            th[name] = max(ceiling, c.relative_ceiling * s.get(name, 0.0))
        if s.get("perplexity"):
            th["perplexity"] = c.perplexity_ratio * s["perplexity"]
        return th

    def observe(self, step: int, completions: list[str], perplexity: float | None = None) -> DegenerationAlarm | None:
        """Measure this step's completions; return an alarm when ``patience`` consecutive steps were bad."""
        values = batch_signals(list(completions), self.cfg.repeat_n, perplexity)
        self.last_values = values
        for k, v in values.items():
            self.start.setdefault(k, v)  # the first observation of each signal is its start value
        th = self.thresholds()
        fired = [s for s in SIGNALS if s in values and s in th and
                 (values[s] < th[s] if s == "distinct_2" else values[s] > th[s])]
        if not fired:
            self.bad_steps = 0
            return None
        self.bad_steps += 1
        if self.bad_steps < self.cfg.patience:
            return None
        return DegenerationAlarm(step=step, signals=fired, values=values, thresholds=th,
                                 examples=worst_examples(completions, self.cfg.n_examples, self.cfg.repeat_n),
                                 bad_steps=self.bad_steps)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, for checkpoints (the config is not included)."""
        return {"start": dict(self.start), "bad_steps": self.bad_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start = dict(state.get("start", {}))
        self.bad_steps = int(state.get("bad_steps", 0))


def worst_examples(completions: list[str], k: int = 3, repeat_n: int = 4) -> list[str]:
    """The ``k`` completions with the highest repetition + punctuation score (most degenerate first)."""
    scored = sorted(completions, key=lambda c: -(repeated_ngram_fraction(c, repeat_n, unit="char")
                                                 + punctuation_fraction(c)))
    return scored[:k]
