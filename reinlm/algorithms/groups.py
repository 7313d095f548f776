"""Statistics of scores within groups (the G samples drawn for one prompt).

Dimension legend: B = sequences, K = distinct groups. ``group_ids`` (B,) may hold any integers (they need
not be contiguous or sorted); every statistic is returned broadcast back to (B,).
"""

from __future__ import annotations

import torch


def group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids to 0..K-1: -> (index (B,), K)."""
    _, index = torch.unique(group_ids, return_inverse=True)
    return index, int(index.max()) + 1 if index.numel() else 0


def group_sum(x: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element group sum and group size: (B,), (B,) -> sum (B,), count (B,)."""
    index, K = group_index(group_ids)
    sums = torch.zeros(K, dtype=x.dtype, device=x.device).index_add_(0, index, x)  # (K,)
    counts = torch.zeros(K, dtype=x.dtype, device=x.device).index_add_(0, index, torch.ones_like(x))  # (K,)
    return sums[index], counts[index]


def group_mean_std(x: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-element group mean, unbiased group std (0 for groups of one) and group size. -> (B,) x 3."""
    sums, counts = group_sum(x, group_ids)
    mean = sums / counts
    sq, _ = group_sum((x - mean).square(), group_ids)
    std = torch.where(counts > 1, (sq / (counts - 1).clamp(min=1)).sqrt(), torch.zeros_like(x))
    return mean, std, counts
