"""GRPO: group-relative advantages and the clipped ratio loss (Shao et al. 2024, "DeepSeekMath", section 4.1.2,
outcome supervision; eq. 3 for the loss).

Dimension legend: B = sequences (prompts x samples), G = valid samples per prompt, R = response length.

Needs: at least two samples per prompt; a frozen reference only for the KL anchor (``--kl-in loss`` puts it
in the loss as in the paper, ``reward`` subtracts it from the return). Runs in both spaces.

For the G valid samples of one prompt with returns R_1..R_G (:meth:`AdvantageInputs.returns`):

    A_i = (R_i - mean_g R) / (std + eps)      eps = 1e-4 (TRL), std the unbiased sample std of
                                               the group        (--scale-rewards group; the paper)
                                               the whole batch  (--scale-rewards batch; "PPO Lite", Liu et al. 2025)
    A_i =  R_i - mean_g R                      (--scale-rewards none; Dr. GRPO, Liu et al. 2025)

Every token of sample i gets A_i. A group whose valid returns are all equal gets A = 0 (no signal: see
``--dynamic-sampling``); invalid samples get A = 0 and are left out of the means and stds. The loss is the
clipped surrogate of :func:`reinlm.algorithms.losses.policy_loss`, always (the first pass has ratio 1),
aggregated by ``--loss-type``, with the ratio per token or per sequence (``--importance-sampling-level
sequence`` is GSPO, Zheng et al. 2025).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

from reinlm.algorithms.base import AdvantageInputs, Algorithm, Needs, Targets, register_algorithm
from reinlm.algorithms.groups import group_mean_std
from reinlm.config.coerce import check_choice

ScaleRewards = Literal["group", "batch", "none"]


def batch_std(x: torch.Tensor, valid: torch.Tensor | None = None,
              reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """Unbiased std of the valid entries of x over the whole batch, on every process (two all-reduces). -> ()."""
    w = torch.ones_like(x) if valid is None else valid.to(x.dtype)
    n_sum = reduce_sum(torch.stack([w.sum(), (x * w).sum()]))
    n, mean = n_sum[0], n_sum[1] / n_sum[0].clamp(min=1)
    sq = reduce_sum(((x - mean).square() * w).sum())
    return (sq / (n - 1)).sqrt() if float(n) > 1 else torch.zeros((), dtype=x.dtype, device=x.device)


def group_advantages(scores: torch.Tensor, group_ids: torch.Tensor, scale_rewards: ScaleRewards = "group",
                     valid: torch.Tensor | None = None, eps: float = 1e-4,
                     reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """Group-normalised advantages (B,) from returns (B,) and group ids (B,) (module docstring); 0 where invalid."""
    check_choice("scale_rewards", scale_rewards, ("group", "batch", "none"))
    scores = scores.float()
    mean, std, _ = group_mean_std(scores, group_ids, valid)
    centred = scores - mean
    if scale_rewards == "group":
        centred = centred / (std + eps)
    elif scale_rewards == "batch":
        centred = centred / (batch_std(scores, valid, reduce_sum) + eps)
    return centred if valid is None else centred * valid.to(centred.dtype)


@register_algorithm("grpo")
class GRPO(Algorithm):
    """Group Relative Policy Optimization (module docstring)."""

    needs = Needs(min_group_size=2, always_clipped=True)

    def advantages(self, batch: AdvantageInputs) -> Targets:
        # normalize_then_sum: the terms were group-normalised before the sum (trainer: algorithms.groups), whose
        # group means are then 0 like its batch mean, so TRL's (R - batch mean) / batch std is this with "batch"
        scale = "batch" if self.cfg.multi_objective_aggregation == "normalize_then_sum" else self.cfg.scale_rewards
        adv = group_advantages(batch.returns(), batch.group_ids, scale, batch.valid,
                               reduce_sum=batch.reduce_sum)  # (B,)
        return Targets(batch.broadcast(adv))
