"""Which tokens enter the policy loss: the off-policy sequence mask and the high-entropy token mask.

Dimension legend: B = sequences, R = response tokens; ``mask`` (B, R) marks the loss tokens. Each mask multiplies
the per-token policy loss (not the normaliser, not the KL term), as in TRL 1.16's ``GRPOTrainer._compute_loss``.

- **Off-policy sequence mask** (DeepSeek-AI 2025, "DeepSeek-V3.2", eq. 9): keep sequence i unless its advantage is
  negative and its mean log-ratio to the sampler is above delta,

      keep_i = [A_i >= 0] or [ 1/|y_i| sum_t (log pi_sampler(x_it) - log pi(x_it)) <= delta ]

- **High-entropy tokens** (Wang et al. 2025, "Beyond the 80/20 Rule"): keep the tokens whose entropy is at or
  above the (1 - rho) quantile of the micro-batch's loss-token entropies (rho = ``top_entropy_quantile``), the
  quantile taken over every process's micro-batch, as TRL takes it (its ``get_high_entropy_mask`` gathers them).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from reinlm.utils.distributed import gather_values


@torch.no_grad()
def off_policy_mask(adv: torch.Tensor, logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                    threshold: float) -> torch.Tensor:
    """keep_i (B, 1) in the mask's dtype (module docstring). adv: (B, 1); logp, sampler_logp, mask: (B, R)."""
    kl = torch.nan_to_num(sampler_logp - logp.detach(), nan=0.0)
    m = mask.to(kl.dtype)
    mean_kl = (kl * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)  # (B, 1)
    return ((adv >= 0) | (mean_kl <= threshold)).to(m.dtype)


@torch.no_grad()
def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, quantile: float,
                      gather: Callable[[torch.Tensor], torch.Tensor] = gather_values) -> torch.Tensor:
    """(B, R) bool: loss tokens whose entropy is >= the ``1 - quantile`` quantile of the loss tokens' entropies of
    every process (``gather``: this process's values (n,) -> all processes' values, a collective)."""
    values = gather(entropy[mask.bool()].float())
    if values.numel() == 0:
        return torch.zeros_like(entropy, dtype=torch.bool)
    threshold = torch.quantile(values, 1.0 - quantile)
    return ((entropy * mask.to(entropy.dtype)) >= threshold) & mask.bool()
