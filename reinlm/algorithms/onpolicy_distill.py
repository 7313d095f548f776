"""``--algo distill``: on-policy distillation alone (Agarwal et al. 2024; TRL's ``DistillationTrainer``).

The student samples, a frozen teacher (``--teacher``) scores the student's tokens, and the update minimises the
per-token generalized JSD of :mod:`reinlm.algorithms.distill` (``--distill-beta``; reverse KL by default) with
GKD's ``--lmbda`` share of on-policy steps. Rewards are still computed and logged (the run shows what the
student earns) but do not enter the loss: the advantages are zero and the loss is the distillation term, plus
the KL anchor when ``--kl-in loss``.

Dimension legend: B = sequences, R = response tokens.
"""

from __future__ import annotations

import torch

from reinlm.algorithms.base import AdvantageInputs, Algorithm, LossInputs, Needs, Targets, register_algorithm
from reinlm.algorithms.distill import distill_share
from reinlm.algorithms.losses import LossNorm, aggregate


@register_algorithm("distill")
class Distill(Algorithm):
    """The distillation loss times ``--distill-coef`` (+ the k3 KL term with ``--kl-in loss``); no policy
    gradient."""

    needs = Needs(spaces=("token",), min_group_size=1)

    def advantages(self, batch: AdvantageInputs) -> Targets:
        """Zero advantages (B, R): the reward is logged, not optimised."""
        return Targets(torch.zeros_like(batch.mask, dtype=torch.float32))

    def loss(self, mb: LossInputs, norm: LossNorm) -> tuple[torch.Tensor, dict[str, float]]:
        share, stats = distill_share(mb.dist, mb.teacher_dist, mb.mask, norm, self.distill)
        loss = self.distill.distill_coef * share
        if mb.kl is not None and mb.kl_coef > 0:
            kl_term = aggregate(mb.kl, mb.mask, "dapo", norm)
            loss = loss + mb.kl_coef * kl_term
            stats["loss/kl"] = float(kl_term.detach())
        return loss, stats
