"""REINFORCE++: token-level returns, normalised over the whole global batch (Hu 2025, "REINFORCE++: A Simple and
Efficient Approach for Aligning Large Language Models"; OpenRLHF's ``reinforce`` and ``reinforce_baseline``).

Dimension legend: B = sequences on this process, R = response length; "global" = every process.

Needs: a reward; a frozen reference for the per-token KL penalty. No critic, no group size requirement (the
group baseline needs two samples per prompt). Runs in both spaces.

1. Per-token rewards (Ziegler et al. 2019 eq. 2; :func:`reinlm.algorithms.shaping.per_token_rewards`), with the
   sequence score first centred by ``--baseline`` (``none``: REINFORCE++; ``group_mean``: REINFORCE++-baseline,
   the score minus its prompt's mean; ``batch_mean`` / ``leave_one_out`` also accepted):

       r_t = -beta kl_t  (+ s_i - b_i at the last token)  (+ dense_t)

2. Returns-to-go (gamma = 1, no critic):  G_t = sum_{t' >= t} r_t'
3. Global advantage normalisation over every valid response token of the global batch (population std, as in
   OpenRLHF):  A_t = (G_t - mean(G)) / sqrt(var(G) + 1e-8)

The loss is the clipped surrogate (the paper's PPO-style clipping), aggregated by ``--loss-type``.
"""

from __future__ import annotations

import torch

from reinlm.algorithms.base import AdvantageInputs, Algorithm, Needs, Targets, register_algorithm
from reinlm.algorithms.losses import masked_whiten
from reinlm.algorithms.reinforce import reinforce_advantages
from reinlm.algorithms.shaping import per_token_rewards


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t = sum_{t' >= t} r_t' over the real tokens (gamma = 1). (B, R) -> (B, R), 0 on padding."""
    r = rewards * mask
    return r.flip(-1).cumsum(-1).flip(-1) * mask


@register_algorithm("reinforce_pp")
class ReinforcePP(Algorithm):
    """REINFORCE++ and REINFORCE++-baseline (module docstring)."""

    needs = Needs(always_clipped=True, reads_baseline=True)

    def advantages(self, batch: AdvantageInputs) -> Targets:
        centred = reinforce_advantages(batch.scores.float(), batch.group_ids, self.cfg.baseline, batch.valid)  # (B,)
        kl = batch.kl if batch.kl is not None else torch.zeros_like(batch.mask, dtype=torch.float32)
        rewards = per_token_rewards(centred, kl, batch.mask.float(), batch.beta, dense=batch.dense)  # (B, R)
        mask = batch.mask.float()
        adv = masked_whiten(returns_to_go(rewards, mask), mask, unbiased=False, reduce_sum=batch.reduce_sum)
        return Targets(adv * mask)
