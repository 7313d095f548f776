"""Statistics of scores within groups (the G samples drawn for one prompt), over the valid samples only.

Dimension legend: B = sequences, K = distinct groups. ``group_ids`` (B,) may hold any integers (they need
not be contiguous or sorted); every statistic is returned broadcast back to (B,). ``valid`` (B,) bool marks the
samples a reward could score; invalid samples (a reward failed or returned None everywhere) are left out of
every statistic, as TRL's nan-aware group statistics leave out its unscorable completions.
"""

from __future__ import annotations

import torch


def group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids to 0..K-1: -> (index (B,), K)."""
    _, index = torch.unique(group_ids, return_inverse=True)
    return index, int(index.max()) + 1 if index.numel() else 0


def _weights(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(x) if valid is None else valid.to(x.dtype)


def group_sum(x: torch.Tensor, group_ids: torch.Tensor,
              valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element sum over the valid members of its group, and their number: (B,) -> sum (B,), count (B,)."""
    index, K = group_index(group_ids)
    wts = _weights(x, valid)
    sums = torch.zeros(K, dtype=x.dtype, device=x.device).index_add_(0, index, x * wts)  # (K,)
    counts = torch.zeros(K, dtype=x.dtype, device=x.device).index_add_(0, index, wts)  # (K,)
    return sums[index], counts[index]


def group_mean_std(x: torch.Tensor, group_ids: torch.Tensor,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-element group mean, unbiased group std (0 for fewer than two valid members) and valid group size,
    all over the valid members. -> (B,) x 3."""
    sums, counts = group_sum(x, group_ids, valid)
    mean = sums / counts.clamp(min=1)
    sq, _ = group_sum((x - mean).square(), group_ids, valid)
    std = torch.where(counts > 1, (sq / (counts - 1).clamp(min=1)).sqrt(), torch.zeros_like(x))
    return mean, std, counts


def zero_spread(scores: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor | None = None,
                atol: float = 1e-8) -> torch.Tensor:
    """(B,) bool: the sample's group carries no learning signal, its valid scores all equal (std <= ``atol``,
    TRL's ``frac_reward_zero_std`` test) or fewer than two of them are valid (DAPO's dynamic-sampling filter)."""
    _, std, counts = group_mean_std(scores.float(), group_ids, valid)
    return (std <= atol) | (counts < 2)


def normalize_then_sum(components: dict[str, torch.Tensor], weights: dict[str, float], group_ids: torch.Tensor,
                       eps: float = 1e-4) -> torch.Tensor:
    """TRL's ``multi_objective_aggregation: normalize_then_sum`` before its batch normalisation: each reward term
    (B,) (NaN where it did not score a sample) centred by its group mean and divided by its unbiased group std +
    ``eps``, over the samples it scored; then the sum weighted by ``weights[name]`` (a NaN term adds 0). -> (B,)."""
    total = torch.zeros_like(group_ids, dtype=torch.float32)
    for name, x in components.items():
        scored = ~torch.isnan(x)
        x0 = torch.nan_to_num(x.float())
        mean, std, _ = group_mean_std(x0, group_ids, scored)
        total = total + weights[name] * torch.where(scored, (x0 - mean) / (std + eps), torch.zeros_like(x0))
    return total
