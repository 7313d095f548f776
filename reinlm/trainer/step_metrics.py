"""The metrics of one training step (what ``metrics.jsonl`` holds per step), and their reductions over processes.

:class:`Reducer` sums and averages over the data-parallel processes (itself with one process): every
``reward/*``, ``kl/*`` and ``response/*`` mean is over the whole step's batch, not this process's slice.
:func:`step_metrics` builds the step's dict, in the order ``metrics.jsonl`` shows it; docs/metrics.md
describes each key.

Dimension legend: B = sequences on this process, R = response length (tokens, or latent actions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from reinlm.algorithms.losses import masked_mean
from reinlm.rollout.token import RolloutBatch
from reinlm.textstats import distinct_n
from reinlm.trainer.policy import Policy, PolicyScores
from reinlm.trainer.scoring import Scored
from reinlm.utils.memory import peak_rss_mb


@dataclass
class UpdateStats:
    """The statistics of one update (:meth:`reinlm.trainer.loop.Trainer._update`): the algorithm's ``loss/*``
    shares summed within an optimiser step and averaged over optimiser steps; every other statistic weighted
    by its rows and averaged over the rows."""

    loss_sums: dict[str, float] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    rows: int = 0
    opt_steps: int = 0

    def add(self, key: str, value: float, rows: int) -> None:
        """A statistic of ``rows`` sequences."""
        self.sums[key] = self.sums.get(key, 0.0) + value * rows

    def add_micro_batch(self, loss: float, stats: dict[str, float], rows: int) -> None:
        """A micro-batch's loss and the algorithm's statistics of it."""
        self.loss_sums["loss/total"] = self.loss_sums.get("loss/total", 0.0) + loss
        for k, v in stats.items():
            if k.startswith("loss/"):
                self.loss_sums[k] = self.loss_sums.get(k, 0.0) + v
            else:
                self.add(k, v, rows)
        self.rows += rows

    def means(self) -> dict[str, float]:
        out = {k: v / max(self.rows, 1) for k, v in self.sums.items()}
        out.update({k: v / max(self.opt_steps, 1) for k, v in self.loss_sums.items()})
        return out


def group_distinct_2(completions: list[str], group_size: int) -> float:
    """Mean over prompts of distinct-2 among that prompt's samples (consecutive groups of ``group_size``)."""
    groups = [completions[i:i + group_size] for i in range(0, len(completions), group_size)]
    return float(np.mean([distinct_n(g, 2) for g in groups])) if groups else 0.0


class Reducer:
    """Sums and means over the processes of a data-parallel run (an ``accelerate.Accelerator``'s)."""

    def __init__(self, accelerator: Any, world: int, device: torch.device):
        self.accelerator = accelerator
        self.world = world
        self.device = device

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of a tensor over processes (itself with one process)."""
        if self.world == 1:
            return t
        out: torch.Tensor = self.accelerator.reduce(t.detach().float().clone(), reduction="sum")
        return out

    def masked_mean(self, x: torch.Tensor, weights: torch.Tensor) -> float:
        """Mean of x (B,) over the entries with weight 1 (B,), over every process (NaN entries left out)."""
        w = weights.float() * (~torch.isnan(x)).float()
        tot = self.sum(torch.stack([(torch.nan_to_num(x) * w).sum(), w.sum()]))
        return float(tot[0] / tot[1]) if float(tot[1]) > 0 else float("nan")

    def mean(self, value: float) -> float:
        """Mean of a number over processes."""
        if self.world == 1:
            return value
        t = torch.tensor([value], device=self.device)
        return float(self.accelerator.reduce(t, reduction="mean"))


@dataclass
class StepTimes:
    """``time.perf_counter()`` at the step's start, after rollouts and rewards, after the reference and values
    pass (advantages ready) and after the update; ``generate_s``: seconds of it spent in rollouts."""

    start: float
    rewarded: float
    prepared: float
    updated: float
    generate_s: float


def step_metrics(red: Reducer, *, batch: RolloutBatch, scored: Scored, flat: torch.Tensor, valid: torch.Tensor,
                 mask: torch.Tensor, kl: torch.Tensor | None, truncated: torch.Tensor, beta: float,
                 group_size: int, update: dict[str, float], mismatch: dict[str, float],
                 batch_stats: dict[str, float], lr: float, times: StepTimes) -> dict[str, Any]:
    """The step's metrics: rewards (raw scores (B,), ``valid`` (B,)), groups without a spread (``flat`` (B,)),
    KL (``kl`` (B, R) per step, masked by ``mask`` (B, R)) and its coefficient ``beta``, responses (``truncated``
    (B,)), the update's statistics, the sampler/trainer mismatch, dynamic sampling, learning rate and timings.
    ``kl/mean`` is the batch's mean summed KL per sequence, what the KL controller is updated with."""
    B = len(batch)
    n = len(batch.completions) * red.world
    lengths = batch.response_mask.float().sum(-1)
    vf = valid.float()
    kl_seq = (kl * mask).sum(-1) if kl is not None else torch.zeros(B, device=red.device)
    n_valid = red.sum(vf.sum())
    mean_kl = float(red.sum((kl_seq * vf).sum()) / n_valid.clamp(min=1))
    reward_mean = red.sum((scored.scores * vf).sum()) / n_valid.clamp(min=1)
    reward_sq = red.sum(((scored.scores - reward_mean).square() * vf).sum())
    elapsed = times.updated - times.start
    return {
        "reward/mean": float(reward_mean),
        "reward/std": float((reward_sq / (n_valid - 1).clamp(min=1)).sqrt()),
        **{f"reward/{k}/mean": red.masked_mean(v, vf) for k, v in scored.components.items()},
        **scored.extra,
        "reward/invalid_frac": 1.0 - float(n_valid) / n,
        "reward/frac_zero_std": red.mean(float(flat.float().mean())),
        "kl/mean": mean_kl,
        "kl/per_token": float(red.sum((kl * mask).sum()) / red.sum(mask.sum()).clamp(min=1))
        if kl is not None else 0.0,
        "kl/beta": beta,
        "response/length_mean": red.masked_mean(lengths, vf),
        "response/truncated_frac": red.mean(float(truncated.float().mean())),
        "response/invalid": int((~valid).sum()),
        "response/distinct_2": group_distinct_2(batch.completions, group_size),
        **update,
        **mismatch,
        **batch_stats,
        "lr": lr,
        "perf/completions_per_s": n / elapsed,
        "perf/tokens_per_s": float(lengths.sum()) * red.world / elapsed,
        "perf/step_s": elapsed,
        "perf/generate_s": times.generate_s,
        "perf/reward_s": times.rewarded - times.start - times.generate_s,
        "perf/ref_and_values_s": times.prepared - times.rewarded,
        "perf/update_s": times.updated - times.prepared,
        "perf/peak_rss_mb": peak_rss_mb(),
    }


def perplexity_metrics(policy: Policy, batch: RolloutBatch, ref: PolicyScores | None, mask: torch.Tensor,
                       log_frozen: bool) -> dict[str, float]:
    """``response/perplexity_ref`` (when the reference pass gives it for free) and, with
    ``--log-frozen-perplexity``, ``response/perplexity_frozen`` of the samples (mask (B, R)); in latent space the
    ``latent/*`` action statistics."""
    out = {}
    ppl = policy.reference_perplexity(batch, ref, mask)
    if ppl is not None:
        out["response/perplexity_ref"] = ppl
    out.update(policy.action_stats(batch))  # latent space: how many of the K actions the batch used
    if log_frozen:
        with torch.no_grad():
            frozen = policy.frozen_logprobs(batch)
        out["response/perplexity_frozen"] = float(torch.exp(-masked_mean(frozen, mask)))
    return out
