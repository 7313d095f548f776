"""Per-token surrogates beyond the clipped ratio: SAPO's soft gate and VESPO's gamma-shaped sequence weight.

Dimension legend: B = sequences, R = response tokens. ``w`` is the importance ratio pi / pi_old (B, R) at token
level or (B, 1) at sequence level (:func:`reinlm.algorithms.losses.log_importance_weights`); advantages are
(B, 1) or (B, R). Definitions as in TRL 1.16's ``GRPOTrainer._compute_loss`` (the parity tests compare them).

**SAPO** (Gao et al. 2025, "Soft Adaptive Policy Optimization", eq. 5): the hard clip is replaced by a sigmoid
gate whose slope at w = 1 is 1, with temperature tau_pos for A > 0 and tau_neg otherwise:

    l_t = -(4 / tau) sigmoid(tau (w_t - 1)) A_t

**VESPO** (variational sequence-level soft policy optimisation, TRL's ``vespo``): a detached weight of the
sequence ratio W_i = prod_t w_it (times the sampler correction, clamped in log space to [log 1e-8, 20]),

    phi(W) = exp(lambda + k log W - lambda W) = W^k e^(lambda (1 - W))        (phi(1) = 1)
    l_it = -phi(W_i) A_i log pi(x_it)

with (k, lambda) = (k_pos, lambda_pos) for A >= 0 and (k_neg, lambda_neg) for A < 0.
"""

from __future__ import annotations

import math

import torch


def sapo_per_token(w: torch.Tensor, adv: torch.Tensor, tau_pos: float, tau_neg: float) -> torch.Tensor:
    """SAPO's per-token loss (module docstring). w: (B, R) or (B, 1); adv: (B, 1) or (B, R). Returns the
    broadcast shape."""
    tau = torch.where(adv > 0, torch.as_tensor(tau_pos, dtype=w.dtype), torch.as_tensor(tau_neg, dtype=w.dtype))
    return -(torch.sigmoid(tau * (w - 1.0)) * 4.0 / tau) * adv


@torch.no_grad()
def vespo_weights(adv: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor, is_weights: torch.Tensor | None,
                  k_pos: float, lambda_pos: float, k_neg: float, lambda_neg: float) -> torch.Tensor:
    """phi(W_i), detached (module docstring): (B, 1), or (B, R) with per-token advantages (the sign of A picks
    (k, lambda) per token; on a sequence's loss tokens all equal).

    Args:
        adv: (B, 1) sequence advantages or (B, R) per-token ones.
        log_ratio: (B, R) per-token log pi - log pi_old.
        mask: (B, R) loss tokens.
        is_weights: (B, R) token-level importance weights against the sampler, or None.
    """
    lower = math.log(1e-8)
    seq = (log_ratio.clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True)  # (B, 1) log prod_t w_t
    if is_weights is not None:
        seq = seq + torch.log(is_weights).clamp(lower, 20.0).sum(-1, keepdim=True)
    log_w = seq.clamp(lower, 20.0)
    nonneg = adv >= 0
    k = torch.where(nonneg, torch.as_tensor(k_pos, dtype=log_w.dtype), torch.as_tensor(k_neg, dtype=log_w.dtype))
    lam = torch.where(nonneg, torch.as_tensor(lambda_pos, dtype=log_w.dtype),
                      torch.as_tensor(lambda_neg, dtype=log_w.dtype)).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * log_w.exp()).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
