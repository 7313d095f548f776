"""The train/inference mismatch: the sampler's log-probs against the trainer's log-probs of the same tokens.

Dimension legend: B = sequences, R = response tokens.

Rollouts may come from another numeric path than the training forward (a bfloat16 copy, vLLM, another kernel),
so the distribution that sampled, pi_sampler, is not exactly the one being trained, pi_trainer, even at the same
parameters. Truncated importance sampling (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You
Off-Policy RL Training"; TRL's ``vllm_importance_sampling_correction``) reweights each token's loss by

    rho_t = min( pi_trainer(x_t) / pi_sampler(x_t), C )                         (``--tis token``)
    rho_i = min( prod_t pi_trainer(x_it) / pi_sampler(x_it), C )                 (``--tis sequence``)

with pi_trainer taken at the parameters that sampled (no gradient). TRL 1.16's ``vllm_importance_sampling_mode``
adds a lower bound C_min and a second way to treat weights outside [C_min, C_max]: ``truncate`` clamps them into
the range, ``mask`` sets them to 0 (the token, or at sequence level the whole sequence, leaves the loss). The mismatch itself is measured by a k3
estimate of KL(pi_sampler || pi_trainer) on the sampled tokens (Schulman 2020): with d = log pi_trainer -
log pi_sampler, k3 = exp(d) - 1 - d >= 0.
"""

from __future__ import annotations

from typing import Literal

import torch

from reinlm.algorithms.losses import masked_mean

TISLevel = Literal["token", "sequence"]


def truncated_is_weights(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                         level: TISLevel = "token", cap: float = 2.0, clip_min: float | None = None,
                         mode: Literal["truncate", "mask"] = "truncate") -> tuple[torch.Tensor, torch.Tensor]:
    """Importance weights against the sampler (module docstring) and where a bound bit.

    Args:
        trainer_logp, sampler_logp: (B, R) log-probs of the sampled tokens (no gradient needed); a NaN sampler
            log-prob (a token the sampler could not score) gives ratio 1, as in TRL.
        mask: (B, R) real response tokens.
        cap, clip_min: the bounds C_max and C_min (None: no lower bound).
        mode: truncate (clamp into [C_min, C_max]) or mask (0 outside).
    Returns:
        weights (B, R) for "token" or (B, 1) for "sequence", and a bool tensor of the same shape that is True
        where the ratio was outside the bounds.
    """
    diff = torch.nan_to_num(((trainer_logp - sampler_logp) * mask).detach(), nan=0.0)  # (B, R); 0 on padding
    if level == "sequence":
        diff = diff.sum(-1, keepdim=True)  # (B, 1): log of the product of token ratios
    ratio = diff.exp()
    outside = ratio > cap
    if clip_min is not None:
        outside = outside | (ratio < clip_min)
    if mode == "mask":
        return ratio.masked_fill(outside, 0.0), outside
    return ratio.clamp(min=clip_min, max=cap), outside


def mismatch_stats(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """``mismatch/kl`` (k3 estimate of KL(sampler || trainer) per token), ``mismatch/k1`` (mean log-ratio
    log pi_sampler - log pi_trainer) and ``mismatch/max_abs_logp_diff`` over the masked tokens."""
    m = mask.to(trainer_logp.dtype)
    d = (trainer_logp - sampler_logp).detach()
    if not bool(m.any()):
        return {"mismatch/kl": 0.0, "mismatch/k1": 0.0, "mismatch/max_abs_logp_diff": 0.0}
    return {
        "mismatch/kl": float(masked_mean(torch.expm1(d) - d, m)),
        "mismatch/k1": float(masked_mean(-d, m)),
        "mismatch/max_abs_logp_diff": float((d.abs() * m).max()),
    }


def tis_clip_fraction(clipped: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of the loss tokens (token level) or of the sequences with a loss token (sequence level) whose
    importance weight was truncated."""
    m = mask.to(torch.float32)
    if clipped.shape[-1] == 1 and m.shape[-1] != 1:
        rows = (m.sum(-1, keepdim=True) > 0).float()  # (B, 1)
        return float(masked_mean(clipped.float(), rows))
    return float(masked_mean(clipped.float(), m))
