"""ReMax: REINFORCE with the greedy rollout's reward as the baseline (Li et al. 2023, "ReMax: A Simple, Effective,
and Efficient Reinforcement Learning Method for Aligning Large Language Models", Algorithm 1).

Dimension legend: B = sequences, R = response length.

Needs: the reward of one greedy rollout per prompt (``needs.greedy_baseline``: the trainer rolls out each prompt
once with greedy decoding through the policy, scores it with the same rewards, and passes the result as
``baseline_scores``); a frozen reference only for the KL anchor. Runs in both spaces (latent space: greedy
actions).

    A_i = R_i - r(x, y_greedy(x))            R_i = score_i - beta sum_t kl_it (+ dense rewards)

The baseline does not depend on the sampled y_i, so the estimator stays unbiased, and needs no critic and no
extra samples per prompt (one greedy decode each). Every token of sample i gets A_i; the loss is REINFORCE's
(the clipped ratio when one batch feeds several optimiser steps), aggregated by ``--loss-type``.
"""

from __future__ import annotations

from reinlm.algorithms.base import AdvantageInputs, Algorithm, Needs, Targets, register_algorithm


@register_algorithm("remax")
class ReMax(Algorithm):
    """REINFORCE with a greedy-rollout baseline (module docstring)."""

    needs = Needs(greedy_baseline=True)

    def advantages(self, batch: AdvantageInputs) -> Targets:
        if batch.baseline_scores is None:
            raise ValueError("remax needs the greedy rollout's reward as baseline_scores")
        adv = (batch.returns() - batch.baseline_scores.float()) * batch.valid.float()  # (B,)
        return Targets(batch.broadcast(adv))
