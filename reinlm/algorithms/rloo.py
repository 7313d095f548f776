"""RLOO: REINFORCE with the leave-one-out baseline (Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline
for Free!"; Ahmadian et al. 2024, "Back to Basics", eq. 7).

Dimension legend: B = sequences, G = valid samples in a sequence's group, R = response length.

Needs: at least two samples per prompt; a frozen reference only for the KL anchor. Runs in both spaces.

For the G valid samples of one prompt with returns R_1..R_G (score minus the KL penalty, see
:meth:`~reinlm.algorithms.base.AdvantageInputs.returns`):

    A_i = R_i - 1/(G-1) sum_{j != i} R_j  =  G/(G-1) (R_i - mean_j R_j)

an unbiased baseline (it does not depend on y_i). A group with fewer than two valid samples has no baseline and
gets A = 0. Every token of sample i gets A_i; the loss is REINFORCE's (clipped ratio when one batch feeds
several optimiser steps), aggregated by ``--loss-type``.
"""

from __future__ import annotations

import torch

from reinlm.algorithms.base import AdvantageInputs, Algorithm, Needs, Targets, register_algorithm
from reinlm.algorithms.groups import group_sum
from reinlm.errors import ReinlmError


def leave_one_out_baseline(scores: torch.Tensor, group_ids: torch.Tensor,
                           valid: torch.Tensor | None = None) -> torch.Tensor:
    """A_i = R_i - (sum_{j in g(i)} R_j - R_i) / (G - 1) over the valid members; 0 in groups with fewer than
    two valid samples. Raises when a group has a single member at all (a configuration error: G = 1)."""
    _, members = group_sum(scores, group_ids)
    if bool((members < 2).any()):
        raise ReinlmError("baseline: leave_one_out needs at least 2 samples per prompt (group); got a group of 1. "
                          "Use samples_per_prompt >= 2, or baseline batch_mean / none.")
    w = torch.ones_like(scores) if valid is None else valid.to(scores.dtype)
    sums, counts = group_sum(scores, group_ids, valid)
    adv = scores - (sums - scores * w) / (counts - 1).clamp(min=1)
    return torch.where(counts >= 2, adv, torch.zeros_like(adv)) * w


@register_algorithm("rloo")
class RLOO(Algorithm):
    """REINFORCE Leave-One-Out (module docstring)."""

    needs = Needs(min_group_size=2)

    def advantages(self, batch: AdvantageInputs) -> Targets:
        adv = leave_one_out_baseline(batch.returns(), batch.group_ids, batch.valid)  # (B,)
        return Targets(batch.broadcast(adv))
