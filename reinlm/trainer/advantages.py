"""From a scored rollout to what the loss needs: per-algorithm advantages, returns and old values.

Dimension legend: B = sequences, R = response tokens.
The formulas live in ``reinlm.algorithms`` (one pure function each); this module only chooses and
composes them for the configured algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reinlm.algorithms.grpo import group_advantages
from reinlm.algorithms.losses import masked_mean, masked_whiten
from reinlm.algorithms.ppo import gae
from reinlm.algorithms.reinforce import reinforce_advantages
from reinlm.algorithms.shaping import per_token_rewards
from reinlm.trainer.config import TrainConfig


@dataclass
class Targets:
    """What the update step needs for each sequence of the batch."""

    advantages: torch.Tensor  # (B, R) per-token advantages (sequence advantages broadcast over tokens)
    returns: torch.Tensor | None = None  # (B, R) PPO value targets
    old_values: torch.Tensor | None = None  # (B, R) PPO values at rollout time


def sequence_scores_with_kl(scores: torch.Tensor, kl: torch.Tensor | None, mask: torch.Tensor, beta: float,
                            dense: torch.Tensor | None, cfg: TrainConfig) -> torch.Tensor:
    """Sequence-level return for REINFORCE/GRPO/RLOO: score - beta * sum_t kl_t (+ sum of dense rewards).

    This is the sum over t of the per-token rewards of DESIGN.md section 3 (gamma = 1), so sequence-level
    algorithms see the same KL-penalised objective as PPO. (B,) -> (B,).
    """
    scores = scores.clamp(-cfg.score_clip, cfg.score_clip) if cfg.score_clip is not None else scores
    out = scores.clone()
    if kl is not None and cfg.kl_in == "reward" and beta > 0:
        out = out - beta * (kl * mask).sum(-1)
    if dense is not None:
        out = out + (dense * mask).sum(-1)
    return out


def compute_targets(cfg: TrainConfig, scores: torch.Tensor, kl: torch.Tensor | None, mask: torch.Tensor,
                    group_ids: torch.Tensor, beta: float, dense: torch.Tensor | None = None,
                    values: torch.Tensor | None = None, baseline_scores: torch.Tensor | None = None) -> Targets:
    """Advantages for ``cfg.algo``.

    Args:
        scores: (B,) sequence rewards (already scaled when running scaling is on).
        kl: (B, R) per-token KL estimates against the reference, or None when KL is off.
        mask: (B, R) response mask.
        group_ids: (B,) prompt index of each sequence.
        dense: (B, R) optional token-level rewards.
        values: (B, R) PPO values at rollout time.
        baseline_scores: (B,) ReMax baseline (the greedy rollout's reward), latent space only.
    """
    R = mask.shape[1]
    if cfg.algo == "ppo":
        kl_term = kl if (kl is not None and cfg.kl_in == "reward") else torch.zeros_like(mask, dtype=torch.float)
        clipped = scores.clamp(-cfg.score_clip, cfg.score_clip) if cfg.score_clip is not None else scores
        rewards = per_token_rewards(clipped, kl_term, mask, beta, dense=dense)  # (B, R)
        adv, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            adv = masked_whiten(adv, mask)
        return Targets(adv * mask, returns, values)
    seq = sequence_scores_with_kl(scores, kl, mask, beta, dense, cfg)  # (B,)
    if cfg.algo == "grpo":
        seq_adv = group_advantages(seq, group_ids, scale_std=cfg.scale_std)
    elif cfg.algo == "remax":
        if baseline_scores is None:
            raise ValueError("remax needs the greedy rollout's reward as baseline_scores")
        seq_adv = seq - baseline_scores
    else:  # reinforce, rloo (rloo fixes the baseline to leave_one_out in TrainConfig)
        seq_adv = reinforce_advantages(seq, group_ids, cfg.baseline)
    return Targets(seq_adv[:, None].expand(-1, R) * mask)


def batch_kl_stats(kl: torch.Tensor | None, mask: torch.Tensor) -> dict[str, float]:
    """Mean per-sequence KL (sum over tokens) and mean per-token KL of a batch."""
    if kl is None:
        return {}
    return {"kl/mean": float((kl * mask).sum(-1).mean()), "kl/per_token": float(masked_mean(kl, mask))}
