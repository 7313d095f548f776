"""REINFORCE: the sequence return minus a baseline, times the score function (Williams 1992).

Dimension legend: B = sequences (prompts x samples), G = samples in a sequence's group, R = response length.

Needs: a reward; a frozen reference only for the KL anchor; nothing else. Runs in both spaces.

Gradient estimator: grad J = E[ (R(y) - b) grad log pi(y | x) ], unbiased for any b that does not depend on y;
a good b lowers its variance. R_i = score_i - beta sum_t kl_it (+ dense rewards), see
:meth:`~reinlm.algorithms.base.AdvantageInputs.returns`. Baselines (``--baseline``), over the valid samples:

- ``none``:          A_i = R_i
- ``batch_mean``:    A_i = R_i - mean_j R_j                    (every valid sequence of the batch)
- ``group_mean``:    A_i = R_i - mean_{j in g(i)} R_j          (the prompt's G samples, the notebook's seed;
                                                                 slightly biased: it includes R_i itself)
- ``leave_one_out``: A_i = R_i - 1/(G-1) sum_{j in g(i), j != i} R_j      (RLOO, see :mod:`reinlm.algorithms.rloo`)

Every token of sample i gets A_i. Loss: -A_i log pi(x_it), aggregated by ``--loss-type``; when one batch
feeds several optimiser steps (``--update-epochs`` > 1 or minibatches) the clipped ratio surrogate replaces
it, since plain REINFORCE would ignore that the policy has moved.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

from reinlm.algorithms.base import AdvantageInputs, Algorithm, Needs, Targets, register_algorithm
from reinlm.algorithms.groups import group_sum
from reinlm.algorithms.rloo import leave_one_out_baseline
from reinlm.config.coerce import check_choice

Baseline = Literal["none", "batch_mean", "group_mean", "leave_one_out"]


def no_baseline(scores: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """A_i = R_i."""
    return scores.clone()


def batch_mean_baseline(scores: torch.Tensor, group_ids: torch.Tensor,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """A_i = R_i - mean of the valid R_j of the batch."""
    w = torch.ones_like(scores) if valid is None else valid.to(scores.dtype)
    return scores - (scores * w).sum() / w.sum().clamp(min=1)


def group_mean_baseline(scores: torch.Tensor, group_ids: torch.Tensor,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """A_i = R_i - mean of the valid R_j of i's group (i included)."""
    sums, counts = group_sum(scores, group_ids, valid)
    return scores - sums / counts.clamp(min=1)


BASELINES: dict[str, Callable[..., torch.Tensor]] = {
    "none": no_baseline,
    "batch_mean": batch_mean_baseline,
    "group_mean": group_mean_baseline,
    "leave_one_out": leave_one_out_baseline,
}


def reinforce_advantages(scores: torch.Tensor, group_ids: torch.Tensor, baseline: Baseline = "group_mean",
                         valid: torch.Tensor | None = None) -> torch.Tensor:
    """Sequence advantages A (B,) for returns (B,), group ids (B,) and the chosen ``baseline``; 0 where invalid."""
    check_choice("baseline", baseline, BASELINES)
    adv = BASELINES[baseline](scores.float(), group_ids, valid)
    return adv if valid is None else adv * valid.to(adv.dtype)


@register_algorithm("reinforce")
class Reinforce(Algorithm):
    """REINFORCE with the baseline chosen by ``--baseline`` (module docstring)."""

    needs = Needs(reads_baseline=True)

    def advantages(self, batch: AdvantageInputs) -> Targets:
        adv = reinforce_advantages(batch.returns(), batch.group_ids, self.cfg.baseline, batch.valid)  # (B,)
        return Targets(batch.broadcast(adv))
