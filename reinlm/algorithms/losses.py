"""Masked reductions, loss aggregation (``loss_type``) and the policy-gradient surrogate every algorithm uses.

Dimension legend: B = sequences in a micro-batch, R = response tokens. ``mask`` (B, R) is 1 on the tokens that
enter the loss. Advantages are per sequence (B,) (broadcast over the tokens) or per token (B, R).

**The surrogate** (:func:`policy_loss`), per token t of sequence i, with w the importance ratio:

    w_it = exp(log pi(x_it) - log pi_old(x_it))                          level "token" (PPO, Schulman et al. 2017)
    w_i  = exp(1/|y_i| sum_t (log pi(x_it) - log pi_old(x_it)))         level "sequence" (GSPO, Zheng et al. 2025)

    clipped (PPO eq. 7; clip-higher from DAPO, Yu et al. 2025):
        l_it = max(-A_it w, -A_it clip(w, 1 - eps_low, 1 + eps_high))
    dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games", eq. 5), for A < 0 only:
        l_it = min(l_it, -c A_it)                                       (c = ``clip_ratio_c`` > 1)
    cispo (MiniMax-M1, 2025, eq. 4): the weight is clipped and detached, the gradient flows through log pi:
        l_it = -sg(min(w, eps_high)) A_it log pi(x_it)                  (eps_high is the cap eps_max itself)
    unclipped (REINFORCE, Williams 1992; one on-policy update, w = 1):
        l_it = -A_it log pi(x_it)
    sapo, vespo: :mod:`reinlm.algorithms.surrogates`; luspo uses the clipped surrogate.

then ``l_it *= keep_it`` (the off-policy and high-entropy masks, :mod:`reinlm.algorithms.token_selection`) and
``l_it *= rho_it`` (truncated importance weights against the sampler, :mod:`reinlm.algorithms.mismatch`).
A KL loss term beta * kl_it (GRPO, Shao et al. 2024 eq. 3) is aggregated the same way and added
(:meth:`reinlm.algorithms.base.Algorithm.loss`); aggregation is linear, so this equals TRL's per-token sum.

**Aggregation** (``loss_type``, TRL 1.16's definitions). An optimiser step is made of several micro-batches
(gradient accumulation) on each of W processes (gradients averaged). Each micro-batch returns its *share* of
the step's loss, so that summing the shares over the step's micro-batches and averaging over processes gives
exactly the loss below. With S_loc = sequences of this process in the step, N = loss tokens of the whole step
(every micro-batch and process), L = max completion length:

    grpo     1/S_loc sum_i [ sum_t m_it l_it / sum_t m_it ]     sequence mean (Shao et al. 2024 eq. 3)
    bnpo     sum_it m l / sum_it m  of each micro-batch, weighted by its share of S_loc  (token mean, local)
    dr_grpo  1/(S_loc L) sum_it m_it l_it                        constant normaliser (Liu et al. 2025, Dr. GRPO)
    dapo     W/N sum_it m_it l_it                                token mean over the whole step (Yu et al. 2025)
    cispo    as dapo, with the cispo per-token loss
    sapo     as grpo, with the sapo per-token loss
    luspo    1/S_loc sum_i sum_t m_it l_it                       sequence sums, mean over sequences (LUSPO)
    vespo    as dapo, with the vespo per-token loss

TRL divides grpo/bnpo/dr_grpo by the number of accumulation steps instead of weighting by S_loc: the same for
equal micro-batches. A sequence with no loss token (masked) contributes 0 but still counts in S_loc (as in TRL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from reinlm.algorithms.surrogates import sapo_per_token, vespo_weights
from reinlm.config.coerce import check_choice

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
CLIPPED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")  # the clipped ratio surrogate
ImportanceSamplingLevel = Literal["token", "sequence"]
IS_LEVELS = ("token", "sequence")


# ----------------------------------------------------------------------------------------------- reductions
def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) over ``dim`` (all when None)."""
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * m) / sum(m) over ``dim`` (all when None); 0 where the mask is empty."""
    mask = mask.to(x.dtype)
    total = masked_sum(x, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, *,
                  unbiased: bool = True, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries (advantage whitening, as in TRL's PPO).

    ``reduce_sum`` (an all-reduce over processes) makes the mean and variance those of the global batch;
    ``unbiased=False`` divides by n (OpenRLHF's REINFORCE++) instead of n - 1. With ``shift_mean=False`` the
    mean is added back (only the scale changes). Padding is transformed too: multiply by the mask if it must
    be zero.
    """
    reduce_sum = reduce_sum or (lambda t: t)
    m = mask.to(x.dtype)
    n_sum = reduce_sum(torch.stack([m.sum(), (x * m).sum()]))
    n = n_sum[0]
    mean = n_sum[1] / n.clamp(min=1.0)
    sq = reduce_sum(((x - mean).square() * m).sum())
    var = sq / (n - 1) if unbiased and float(n) > 1 else sq / n.clamp(min=1.0)
    white = (x - mean) * torch.rsqrt(var + eps)
    return white if shift_mean else white + mean


# ----------------------------------------------------------------------------------------------- aggregation
@dataclass(frozen=True)
class LossNorm:
    """What a micro-batch must know about its whole optimiser step to return its share of the loss."""

    seqs: int  # S_loc: sequences this process puts into the optimiser step (all its micro-batches)
    tokens: float  # N: loss tokens of the whole optimiser step, every micro-batch of every process
    world: int = 1  # W: processes whose gradients are averaged
    max_len: int = 1  # L: the maximum completion length (dr_grpo's constant)

    @classmethod
    def single(cls, mask: torch.Tensor, max_len: int | None = None) -> "LossNorm":
        """The step is this one micro-batch on one process."""
        return cls(seqs=mask.shape[0], tokens=float(mask.sum()), world=1, max_len=max_len or mask.shape[-1])


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: LossType, norm: LossNorm) -> torch.Tensor:
    """This micro-batch's share of the step loss from a per-token loss (B, R) (module docstring)."""
    check_choice("loss_type", loss_type, LOSS_TYPES)
    mask = mask.to(per_token.dtype)
    summed = (per_token * mask).sum()
    if loss_type in ("grpo", "sapo"):
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (B,)
        return per_seq.sum() / norm.seqs
    if loss_type == "bnpo":
        return summed / mask.sum().clamp(min=1.0) * (mask.shape[0] / norm.seqs)
    if loss_type == "dr_grpo":
        return summed / (norm.seqs * norm.max_len)
    if loss_type == "luspo":
        return summed / norm.seqs
    return summed / (max(norm.tokens, 1.0) / norm.world)  # dapo, cispo, vespo (N clamped at 1 as in TRL)


def _per_token(advantages: torch.Tensor) -> torch.Tensor:
    """(B,) sequence advantages -> (B, 1) for broadcasting; (B, R) unchanged."""
    return advantages[:, None] if advantages.dim() == 1 else advantages


def log_importance_weights(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                           level: ImportanceSamplingLevel = "token") -> torch.Tensor:
    """log w: per token (B, R), or the mean log-ratio of each sequence (B, 1) (GSPO, Zheng et al. 2025 eq. 7)."""
    check_choice("importance_sampling_level", level, IS_LEVELS)
    log_ratio = logp - old_logp.detach()  # (B, R)
    if level == "token":
        return log_ratio
    mask = mask.to(log_ratio.dtype)
    return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0))[:, None]  # (B, 1)


# ----------------------------------------------------------------------------------------------- the surrogate
def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                norm: LossNorm, *, loss_type: LossType = "grpo", clipped: bool = True, clip_eps: float = 0.2,
                clip_eps_high: float | None = None, clip_ratio_c: float | None = None,
                importance_sampling_level: ImportanceSamplingLevel = "token",
                is_weights: torch.Tensor | None = None, keep: torch.Tensor | None = None,
                sapo_temperatures: tuple[float, float] = (1.0, 1.05),
                vespo_params: tuple[float, float, float, float] = (2.0, 3.0, 3.0, 2.0),
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy loss of one micro-batch (module docstring for every formula).

    Args:
        logp: (B, R) log pi(x_t) under the current policy, with gradients.
        old_logp: (B, R) log pi_old(x_t), the trainer's log-probs at the parameters that sampled (no gradient).
        advantages: (B,) or (B, R), no gradient.
        mask: (B, R) loss mask.
        norm: the optimiser step's normalisers (:class:`LossNorm`).
        loss_type: grpo | bnpo | dr_grpo | dapo | cispo.
        clipped: the clipped ratio surrogate; False gives REINFORCE's -A log pi (one on-policy update).
        clip_eps, clip_eps_high: the clip range [1 - eps, 1 + eps_high] (eps_high defaults to eps); for
            cispo, ``clip_eps_high`` is the cap on the weight itself.
        clip_ratio_c: dual-clip constant c > 1 (None: off).
        importance_sampling_level: "token" or "sequence" (GSPO).
        is_weights: (B, R) or (B, 1) truncated importance weights against the sampler (no gradient), or None;
            vespo folds them into its sequence weight instead of multiplying the loss (TRL's definition).
        keep: (B, R) or (B, 1) 0/1 multiplier of the per-token loss (token-selection masks), or None.
        sapo_temperatures: sapo's (tau_pos, tau_neg).
        vespo_params: vespo's (k_pos, lambda_pos, k_neg, lambda_neg).

    Returns ``(loss, stats)``: the micro-batch's share of the step loss, and float statistics over its loss
    tokens: ``clip_fraction`` (low or high clip active), ``clip_fraction_low`` (w < 1 - eps with A < 0),
    ``clip_fraction_high`` (w > 1 + eps_high with A > 0), ``dual_clip_fraction`` (w > c with A < 0),
    ``cispo_clip_fraction`` (w > eps_high with A > 0),
    ``ratio_mean``, ``ratio_max``, ``approx_kl`` (mean (w - 1) - log w, token level).
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    adv = _per_token(advantages.detach())  # (B, 1) or (B, R)
    log_w = log_importance_weights(logp, old_logp, mask, importance_sampling_level)  # (B, R) or (B, 1)
    w = log_w.exp()
    if loss_type == "cispo":
        per_token = -w.clamp(max=eps_high).detach() * adv * logp  # (B, R)
    elif loss_type == "sapo":
        per_token = sapo_per_token(w, adv, *sapo_temperatures)
    elif loss_type == "vespo":
        phi = vespo_weights(adv, logp - old_logp.detach(), mask.to(logp.dtype), is_weights, *vespo_params)
        per_token = -phi * adv * logp
    elif clipped:
        per_token = torch.maximum(-adv * w, -adv * w.clamp(1.0 - clip_eps, 1.0 + eps_high))
        if clip_ratio_c is not None:
            per_token = torch.where(adv < 0, torch.minimum(per_token, -clip_ratio_c * adv), per_token)
    else:
        per_token = -adv * logp
    if keep is not None:
        per_token = per_token * keep
    if is_weights is not None and loss_type != "vespo":
        per_token = per_token * is_weights.detach()
    per_token = per_token.expand_as(logp) if per_token.shape != logp.shape else per_token
    loss = aggregate(per_token, mask, loss_type, norm)
    with torch.no_grad():
        m = mask.to(logp.dtype)
        wt = w.expand_as(logp)  # (B, R)
        low = (wt < 1.0 - clip_eps) & (adv < 0)
        high = (wt > 1.0 + eps_high) & (adv > 0)
        token_log_ratio = logp - old_logp
        stats = {
            "clip_fraction": float(masked_mean((low | high).to(m.dtype), m)) if clipped and loss_type in CLIPPED_LOSS_TYPES else 0.0,
            "clip_fraction_low": float(masked_mean(low.to(m.dtype), m)) if clipped and loss_type in CLIPPED_LOSS_TYPES else 0.0,
            "clip_fraction_high": float(masked_mean(high.to(m.dtype), m)) if clipped and loss_type in CLIPPED_LOSS_TYPES else 0.0,
            "ratio_mean": float(masked_mean(wt, m)),
            "ratio_max": float((wt * m).max()) if bool(m.any()) else 1.0,
            "approx_kl": float(masked_mean(token_log_ratio.exp() - 1.0 - token_log_ratio, m)),
        }
        if clip_ratio_c is not None:
            stats["dual_clip_fraction"] = float(masked_mean(((wt > clip_ratio_c) & (adv < 0)).to(m.dtype), m))
        if loss_type == "cispo":
            stats["cispo_clip_fraction"] = float(masked_mean(((wt > eps_high) & (adv > 0)).to(m.dtype), m))
    return loss, stats


def token_mean_share(x: torch.Tensor, mask: torch.Tensor, norm: LossNorm) -> torch.Tensor:
    """A token mean over this micro-batch weighted by its share of the step's sequences (the entropy bonus and
    the value loss: TRL's mean per micro-batch divided by the accumulation steps). (B, R) -> scalar."""
    return masked_mean(x, mask) * (mask.shape[0] / norm.seqs)
