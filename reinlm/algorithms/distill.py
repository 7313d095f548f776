"""The per-token divergence of on-policy distillation (Agarwal et al. 2024, "On-Policy Distillation of Language
Models: Learning from Self-Generated Mistakes", eq. 1; TRL 1.16's ``DistillationTrainer`` and GKD).

Dimension legend: B = sequences, R = response tokens, V = vocabulary. The student samples a completion, the
teacher scores the student's tokens, and at every response position t the loss compares the two next-token
distributions p_S = softmax(z_S / T) and p_T = softmax(z_T / T) with the generalized Jensen-Shannon divergence

    D_beta(p_T, p_S) = beta KL(p_T || M) + (1 - beta) KL(p_S || M),     M = beta p_T + (1 - beta) p_S

    beta = 0: the forward KL(p_T || p_S)  (the limit, computed exactly)
    beta = 1: the reverse KL(p_S || p_T)  (the limit; TRL's DistillationConfig default)

Reduction as TRL's: the sum over the loss tokens divided by their number (``num_items``: the tokens of the
whole optimiser step, so that micro-batch shares add up), the gradient flowing into the student only.

``top_k`` (reinlm's option; 0: off) keeps, at each position, the teacher's k most likely tokens and renormalises
both distributions over them, so only k teacher logits per token need to be kept.

In training (``--teacher``; the teacher and GKD's lambda mix live in :mod:`reinlm.trainer.teacher`):
:func:`distill_share` is one micro-batch's share of the step's distillation loss, with TRL's normaliser (the
loss tokens of the whole optimiser step on every process: ``loss_type`` dapo's). ``--algo distill``
(:class:`Distill`) trains on it alone; every other algorithm adds ``distill_coef`` times it to its own loss
(:meth:`reinlm.algorithms.base.Algorithm.loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reinlm.algorithms.config import DistillConfig
from reinlm.algorithms.losses import LossNorm, aggregate, masked_mean


def _restrict_to_teacher_top_k(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both logits (B, R, V) -> (B, R, k) gathered at the teacher's top-k token ids."""
    idx = teacher_logits.topk(k, dim=-1).indices
    return student_logits.gather(-1, idx), teacher_logits.gather(-1, idx)


def per_token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0,
                         temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """D_beta at every position (module docstring): (B, R, V) logits -> (B, R). The teacher is detached."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    teacher_logits = teacher_logits.detach()
    if top_k:
        student_logits, teacher_logits = _restrict_to_teacher_top_k(student_logits, teacher_logits, top_k)
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.to(s.dtype) / temperature, dim=-1)
    if beta == 0.0:
        return (t.exp() * (t - s)).sum(-1)
    if beta == 1.0:
        return (s.exp() * (s - t)).sum(-1)
    b = torch.tensor(beta, dtype=s.dtype, device=s.device)
    m = torch.logsumexp(torch.stack([s + torch.log1p(-b), t + torch.log(b)]), dim=0)  # log M
    return b * (t.exp() * (t - m)).sum(-1) + (1 - b) * (s.exp() * (s - m)).sum(-1)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, beta: float = 1.0,
                 temperature: float = 1.0, top_k: int = 0, num_items: float | None = None) -> torch.Tensor:
    """sum over the loss tokens of D_beta / ``num_items`` (default: this batch's loss tokens, at least 1).

    student_logits, teacher_logits: (B, R, V); mask: (B, R) 1 on the loss tokens. Returns a scalar.
    """
    d = per_token_divergence(student_logits, teacher_logits, beta, temperature, top_k)
    m = mask.to(d.dtype)
    denom = float(m.sum()) if num_items is None else float(num_items)
    return (d * m).sum() / max(denom, 1.0)


def distill_share(dist: torch.Tensor | None, teacher_dist: torch.Tensor | None, mask: torch.Tensor, norm: LossNorm,
                  cfg: DistillConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's share of the step's distillation loss (unweighted) and its statistics.

    ``dist`` (b, R, V): the student's log-distributions at the sampling temperature, with gradients;
    ``teacher_dist`` (b, R, V): the teacher's on the same tokens; ``mask`` (b, R): the loss tokens (a micro-batch's
    ``LossInputs`` fields). Both distributions are already temperature-scaled, so the divergence is taken at
    temperature 1 here. Returns (scalar, {"loss/distill": share, "distill/divergence": the mean per-token
    divergence of this micro-batch}).
    """
    if dist is None or teacher_dist is None:
        raise ValueError("distillation needs the student's and the teacher's log-distributions (dist, teacher_dist)")
    d = per_token_divergence(dist, teacher_dist, cfg.distill_beta, 1.0, cfg.distill_top_k)  # (b, R)
    share = aggregate(d, mask, "dapo", norm)
    return share, {"loss/distill": float(share.detach()),
                   "distill/divergence": float(masked_mean(d.detach(), mask))}
