"""GRPO: group-relative advantages (Shao et al. 2024, "DeepSeekMath", section 4.1.2, outcome supervision).

Dimension legend: B = sequences (prompts x samples), G = samples per prompt.

For the G samples of one prompt with rewards r_1..r_G:

    A_i = (r_i - mean(r)) / (std(r) + eps)        (``scale_std=True``; std is the unbiased sample std)
    A_i =  r_i - mean(r)                          (``scale_std=False``: Dr. GRPO, Liu et al. 2025)

Every token of sample i gets A_i; the update is the clipped ratio loss
(:func:`reinlm.algorithms.losses.clipped_policy_loss`), several updates per batch. eps = 1e-4 as in TRL.
A group whose rewards are all equal gets A = 0 (no signal).
"""

from __future__ import annotations

import torch

from reinlm.algorithms.groups import group_mean_std


def group_advantages(scores: torch.Tensor, group_ids: torch.Tensor, scale_std: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages (B,) from scores (B,) and group ids (B,) (module docstring)."""
    scores = scores.float()
    mean, std, _ = group_mean_std(scores, group_ids)
    centred = scores - mean
    return centred / (std + eps) if scale_std else centred
