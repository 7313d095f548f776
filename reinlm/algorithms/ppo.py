"""PPO for language models: GAE over per-token rewards, the clipped policy and value losses, the value head
(Schulman et al. 2017, "Proximal Policy Optimization Algorithms"; Ziegler et al. 2019 for the language setting).

Dimension legend: B = sequences, R = response tokens (right-padded), H = hidden size.

Needs: a value head (``needs.values``: the trainer passes the values at rollout time to ``advantages`` and the
current values to ``loss``); a frozen reference for the per-token KL penalty. Runs in both spaces (latent
space: the head reads the policy's features).

1. Per-token rewards (:func:`reinlm.algorithms.shaping.per_token_rewards`, Ziegler et al. 2019 eq. 2):
   r_t = -beta kl_t, plus the clipped score at the last token, plus dense token rewards (critic spans).
2. GAE (Schulman et al. 2016 eq. 16): delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1},
   returns G_t = A_t + V_t; advantages whitened over the global batch (``--whiten-advantages``).
3. Loss: the clipped surrogate of :func:`reinlm.algorithms.losses.policy_loss` (aggregated by ``--loss-type``)
   plus ``vf_coef`` times the clipped value loss 1/2 max((V - G)^2, (V_old + clip(V - V_old, -c, c) - G)^2).

Defaults as in DESIGN.md section 3: gamma 1, lambda 0.95, clip 0.2, value clip 0.2, whitened advantages.
Where the value comes from (``--value-model``): ``shared``, a :class:`ValueHead` on the policy's own final
hidden state (one forward gives log-probs and values; the value loss also trains the trunk: the TRL v0 /
Ziegler et al. 2019 layout); ``separate``, the head on a separate copy of the model (the InstructGPT / TRL
PPOTrainer layout).
"""

from __future__ import annotations

import torch

from reinlm.algorithms.base import AdvantageInputs, Algorithm, LossInputs, LossNorm, Needs, Targets, register_algorithm
from reinlm.algorithms.losses import masked_mean, masked_whiten


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control Using
    Generalized Advantage Estimation", eq. 16):

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns = A + V    (the value targets, TD(lambda) returns)

    The episode ends at the last real token of each row (right padding): V_{t+1} = 0 and A_{t+1} = 0 there,
    whether the completion stopped at EOS or was cut at max_new_tokens.

    Args:
        rewards, values, mask: (B, R); padding entries are ignored.
    Returns:
        advantages (B, R), returns (B, R), both 0 on padding.
    """
    mask = mask.to(values.dtype)
    values = values.detach() * mask
    rewards = rewards.detach() * mask
    B, R = rewards.shape
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros(B, dtype=values.dtype, device=values.device)  # A_{t+1}
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)  # V_{t+1}
    next_mask = torch.zeros(B, dtype=values.dtype, device=values.device)  # 1 if token t+1 is real
    for t in reversed(range(R)):
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        next_adv = delta + gamma * lam * next_adv * next_mask
        adv[:, t] = next_adv
        next_value, next_mask = values[:, t], mask[:, t]
    adv = adv * mask
    return adv, (adv + values) * mask


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float | None = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss (Schulman et al. 2017 PPO implementation; TRL/CleanRL):

        V_clip = V_old + clip(V - V_old, -c, c)
        L_V    = 1/2 * mean_t max( (V - G)^2, (V_clip - G)^2 )       (token mean over the mask)

    ``clip=None`` gives the plain squared error. Returns ``(loss, stats)`` with float stats
    ``clip_fraction`` (share of tokens where the clipped error is the larger), ``mean`` (mean value),
    ``error`` (mean unclipped squared error).
    """
    err = (values - returns).square()  # (B, R)
    if clip is None:
        worst = err
        clipped_more = torch.zeros_like(err)
    else:
        v_clip = old_values + (values - old_values).clamp(-clip, clip)
        err_clip = (v_clip - returns).square()
        worst = torch.maximum(err, err_clip)
        clipped_more = (err_clip > err).to(err.dtype)
    loss = 0.5 * masked_mean(worst, mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": float(masked_mean(clipped_more, mask)),
            "mean": float(masked_mean(values, mask)),
            "error": float(masked_mean(err, mask)),
        }
    return loss, stats


class ValueHead(torch.nn.Module):
    """V(s_t) = w . h_t + b on a final hidden state h_t: (..., H) -> (...). Zero-initialised, so the first
    values are 0 and the first advantages are the reward-to-go."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)
        return out


@register_algorithm("ppo")
class PPO(Algorithm):
    """Proximal Policy Optimization with a value head and GAE (module docstring)."""

    needs = Needs(values=True, always_clipped=True)

    def advantages(self, batch: AdvantageInputs) -> Targets:
        if batch.values is None:
            raise ValueError("ppo needs the rollout-time values (needs.values)")
        mask = batch.mask.float()
        adv, returns = gae(batch.token_rewards(), batch.values, mask, self.ppo.gamma, self.ppo.lam)  # (B, R) x 2
        if self.ppo.whiten_advantages:
            adv = masked_whiten(adv, mask, reduce_sum=batch.reduce_sum)
        return Targets(adv * mask, returns, batch.values.detach())

    def loss(self, mb: LossInputs, norm: LossNorm) -> tuple[torch.Tensor, dict[str, float]]:
        loss, stats = super().loss(mb, norm)  # the clipped policy surrogate (+ KL term, entropy bonus)
        if mb.values is None or mb.targets.old_values is None or mb.targets.returns is None:
            raise ValueError("ppo's loss needs the current values and the targets' old values and returns")
        v_loss, v_stats = clipped_value_loss(mb.values, mb.targets.old_values, mb.targets.returns, mb.mask,
                                             self.ppo.value_clip)
        v_share = v_loss * (mb.mask.shape[0] / norm.seqs)  # this micro-batch's share of the step's value loss
        loss = loss + self.ppo.vf_coef * v_share
        stats["loss/value"] = float(v_share.detach())
        stats.update({f"value/{k}": v for k, v in v_stats.items()})
        return loss, stats
