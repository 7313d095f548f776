"""Per-token KL estimators between the policy and the frozen reference.

Dimension legend: B = sequences, R = response tokens (any shape works: the estimators are elementwise).

With x ~ pi (the sampled tokens), log-ratio d = log pi(x) - log pi_ref(x), the three single-sample
estimators of KL(pi || pi_ref) from J. Schulman, "Approximating KL Divergence" (2020,
http://joschu.net/blog/kl-approx.html), also DESIGN.md section 3:

- k1 = d                                unbiased, high variance, can be negative per token;
- k2 = d^2 / 2                           biased (low for small d), low variance, always >= 0;
- k3 = exp(-d) - 1 + d                   unbiased, low variance, always >= 0 (the GRPO paper's choice).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

from reinlm.config.coerce import check_choice

KLKind = Literal["k1", "k2", "k3"]


def kl_k1(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k1 = log p - log p_ref (Schulman 2020)."""
    return logp - logp_ref


def kl_k2(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k2 = (log p - log p_ref)^2 / 2 (Schulman 2020)."""
    return 0.5 * (logp - logp_ref).square()


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k3 = exp(log p_ref - log p) - 1 - (log p_ref - log p) (Schulman 2020; Shao et al. 2024 eq. 4).

    ``expm1`` keeps it exact near 0 (no cancellation between exp(.) and 1).
    """
    r = logp_ref - logp
    return torch.expm1(r) - r


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, kind: KLKind = "k1") -> torch.Tensor:
    """Per-token KL estimate of the chosen ``kind`` ("k1" | "k2" | "k3"); same shape as the inputs.

    Args:
        logp: log pi(x_t) of the sampled tokens under the policy, e.g. (B, R).
        logp_ref: log pi_ref(x_t) of the same tokens under the reference, same shape.
    Padding positions are not masked here: multiply by the response mask.
    """
    check_choice("kl_estimator", kind, KL_ESTIMATORS)
    return KL_ESTIMATORS[kind](logp, logp_ref)


def categorical_kl(logp_all: torch.Tensor, logp_ref_all: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) = sum_v p_v (log p_v - log q_v) over the last dimension. (..., K) -> (...).

    For small action spaces (the latent policy's K categories) where no sampling estimator is needed.
    """
    return (logp_all.exp() * (logp_all - logp_ref_all)).sum(-1)
