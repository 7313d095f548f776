"""Masked reductions and the policy-gradient losses shared by REINFORCE, GRPO/RLOO and PPO.

Dimension legend: B = sequences, R = response tokens. ``mask`` (B, R) is 1 on real response tokens.
Advantages are either per sequence (B,) (broadcast over the tokens) or per token (B, R).

Aggregation of a per-token loss l (B, R) into a scalar (option ``aggregation``):
- ``token_mean``: sum_{i,t} m_it l_it / sum_{i,t} m_it (every token weighs the same; DAPO, Yu et al. 2025);
- ``seq_mean``: mean_i [ sum_t m_it l_it / sum_t m_it ] (every sequence weighs the same; GRPO as written in
  Shao et al. 2024 eq. 3). Sequences with no real token are left out of the mean.
"""

from __future__ import annotations

from typing import Literal

import torch

from reinlm.config import check_choice

Aggregation = Literal["token_mean", "seq_mean"]
AGGREGATIONS = ("token_mean", "seq_mean")


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """sum(x * mask) over ``dim`` (all when None)."""
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """sum(x * m) / sum(m) over ``dim`` (all when None); 0 where the mask is empty."""
    mask = mask.to(x.dtype)
    total = masked_sum(x, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of x (Bessel-corrected when ``unbiased`` and n > 1)."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean).square(), mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries (advantage whitening, as in TRL's PPO).

    With ``shift_mean=False`` the mean is added back (only the scale changes). Padding stays unmasked:
    multiply by the mask if it must be zero.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    white = (x - mean) * torch.rsqrt(var + eps)
    return white if shift_mean else white + mean


def aggregate(loss: torch.Tensor, mask: torch.Tensor, aggregation: Aggregation = "token_mean") -> torch.Tensor:
    """Reduce a per-token loss (B, R) to a scalar by ``token_mean`` or ``seq_mean`` (module docstring)."""
    check_choice("loss_aggregation", aggregation, AGGREGATIONS)
    mask = mask.to(loss.dtype)
    if aggregation == "token_mean":
        return masked_mean(loss, mask)
    per_seq = masked_mean(loss, mask, dim=-1)  # (B,)
    has_tokens = (mask.sum(-1) > 0).to(loss.dtype)  # (B,)
    return (per_seq * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)


def _per_token(advantages: torch.Tensor) -> torch.Tensor:
    """(B,) sequence advantages -> (B, 1) for broadcasting; (B, R) unchanged."""
    return advantages[:, None] if advantages.dim() == 1 else advantages


def policy_gradient_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                         aggregation: Aggregation = "token_mean") -> torch.Tensor:
    """REINFORCE loss L = -agg_t[ A_t * log pi(x_t) ] (Williams 1992; the score-function estimator).

    Args:
        logp: (B, R) log-probs of the sampled tokens under the current policy (with gradients).
        advantages: (B,) or (B, R), no gradient.
        mask: (B, R).
    """
    loss = -_per_token(advantages.detach()) * logp  # (B, R)
    return aggregate(loss, mask, aggregation)


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        clip_eps: float = 0.2, aggregation: Aggregation = "token_mean",
                        clip_eps_high: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), negated to a loss:

        rho_t = exp(log pi(x_t) - log pi_old(x_t))
        L     = agg_t max( -A_t rho_t,  -A_t clip(rho_t, 1 - eps, 1 + eps_high) )

    ``eps_high`` defaults to ``eps`` (DAPO's "clip-higher" when larger). GRPO uses the same loss with
    group-normalised advantages (Shao et al. 2024 eq. 3).

    Returns ``(loss, stats)``; stats are floats: ``clip_fraction`` (share of tokens where the clipped term
    is the active one), ``approx_kl`` (mean of (rho - 1) - log rho, the k3 estimate of KL(old || new) as in
    CleanRL), ``ratio_mean``, ``ratio_max``.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    adv = _per_token(advantages.detach())  # (B, 1) or (B, R)
    log_ratio = logp - old_logp.detach()  # (B, R)
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + eps_high)
    loss = aggregate(torch.maximum(unclipped, clipped), mask, aggregation)
    with torch.no_grad():
        m = mask.to(ratio.dtype)
        stats = {
            "clip_fraction": float(masked_mean((clipped > unclipped).to(ratio.dtype), m)),
            "approx_kl": float(masked_mean((ratio - 1.0) - log_ratio, m)),
            "ratio_mean": float(masked_mean(ratio, m)),
            "ratio_max": float((ratio * m).max()) if m.any() else 1.0,
        }
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = -sum_v p_v log p_v of softmax(logits) over the last dimension. (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, coef: float) -> torch.Tensor:
    """The loss term -coef * masked_mean(H) that rewards exploration (Mnih et al. 2016)."""
    return -coef * masked_mean(entropy, mask)
