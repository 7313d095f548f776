"""Per-token rewards for PPO: the KL penalty on every token, the sequence score on the last one.

Dimension legend: B = sequences, R = response tokens.

Semantics (DESIGN.md section 3; torchrl's rollout utility and TRL's PPO agree; Ziegler et al. 2019 eq. 2):

    r_t = -beta * kl_t                          for every real response token t
        + clip(score, -c, c)                    added at the last real response token
        + dense_t                               optional token-level rewards (e.g. LLM-critic spans)

The last real token is the EOS when the completion stopped, otherwise the last generated token.
Rows whose mask is all zero (skipped samples) get no reward at all.
"""

from __future__ import annotations

from typing import Any

import math

import torch


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of ``mask`` (0 for an empty row). (B, R) -> (B,)."""
    R = mask.shape[-1]
    positions = torch.arange(R, device=mask.device).expand_as(mask)  # (B, R)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(-1).values


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float,
                      dense: torch.Tensor | None = None, score_clip: float | None = None) -> torch.Tensor:
    """r (B, R) from scores (B,), kl (B, R), mask (B, R), beta, dense (B, R) or None (module docstring).

    ``score_clip`` c clips the score to [-c, c] (None: no clipping). Padding positions are 0.
    """
    mask = mask.to(kl.dtype)
    scores = scores.to(kl.dtype)
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    rewards = -beta * kl * mask  # (B, R)
    has_tokens = (mask.sum(-1) > 0).to(kl.dtype)  # (B,)
    last = last_token_index(mask)  # (B,)
    rewards = rewards.scatter_add(1, last[:, None], (scores * has_tokens)[:, None])
    if dense is not None:
        rewards = rewards + dense.to(kl.dtype) * mask
    return rewards


class RunningMoments:
    """Running mean and standard deviation of every score seen (Chan et al. 1979 parallel update).

    Used for optional running score scaling: score / std (TRL's ``RunningMoments``). Before any update,
    mean = 0 and std = 1 (also after a single sample). ``std`` is Bessel-corrected over all samples seen.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 1.0  # population variance of everything seen
        self.count = 0

    @property
    def std(self) -> float:
        if self.count < 2:
            return 1.0
        return math.sqrt(self.var * self.count / (self.count - 1))

    def update(self, x: torch.Tensor) -> tuple[float, float]:
        """Fold in a batch of scores; returns the batch's (mean, std)."""
        x = x.detach().double().flatten()
        n = x.numel()
        if n == 0:
            return 0.0, 0.0
        b_mean = float(x.mean())
        b_var = float(((x - b_mean) ** 2).mean())  # population variance of the batch
        if self.count == 0:
            self.mean, self.var, self.count = b_mean, b_var, n
        else:
            total = self.count + n
            delta = b_mean - self.mean
            m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
            self.mean += delta * n / total
            self.var = m2 / total
            self.count = total
        return b_mean, (math.sqrt(b_var * n / (n - 1)) if n > 1 else 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])
