"""PPO for language models: GAE, the clipped value loss, the value head, minibatches.

Dimension legend: B = sequences, R = response tokens (right-padded), H = hidden size, T = P + R.

Per-token rewards come from :func:`reinlm.algorithms.shaping.per_token_rewards`; the policy loss is
:func:`reinlm.algorithms.losses.clipped_policy_loss` (Schulman et al. 2017, eq. 7). Defaults as in
DESIGN.md section 3: gamma 1, lambda 0.95, clip 0.2, value clip 0.2, advantage whitening.

Where the value comes from (option ``value_model`` of the trainer, both supported here):
- ``shared``: a :class:`ValueHead` on the policy's own final hidden state (one forward gives log-probs and
  values; the value loss also trains the shared trunk: cheap, the TRL v0 / Ziegler et al. 2019 layout);
- ``separate``: the head on a separate copy of the model (a second forward and a second set of weights;
  the policy trunk only sees the policy loss: the InstructGPT / TRL PPOTrainer layout).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from reinlm.algorithms.losses import masked_mean, masked_whiten

whiten = masked_whiten  # the name docs/architecture.md gives it


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
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


def response_values(model, value_head: ValueHead, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    response_len: int) -> torch.Tensor:
    """Values (B, R) of the response states from ``model``'s final hidden states (the ``separate`` layout).

    V_t is read at the position that predicts response token t (the same shift as the log-probs).
    """
    from reinlm.rollout.token import position_ids_from_mask

    R = int(response_len)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                use_cache=False, logits_to_keep=1, output_hidden_states=True)
    return value_head(out.hidden_states[-1][:, -R - 1:-1])  # (B, R)


class PolicyValueOutput(NamedTuple):
    logp: torch.Tensor  # (B, R)
    entropy: torch.Tensor | None  # (B, R)
    values: torch.Tensor  # (B, R)


class PolicyWithValueHead(torch.nn.Module):
    """A causal LM policy plus a value head, on the shared trunk (``value_model=None``) or on a separate model.

    ``forward(input_ids, attention_mask, response_len, temperature)`` -> :class:`PolicyValueOutput`:
    one forward pass in the shared layout, two in the separate one.
    """

    def __init__(self, policy, value_model=None, hidden_size: int | None = None):
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        trunk = value_model if value_model is not None else policy
        self.value_head = ValueHead(hidden_size or trunk.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                temperature: float = 1.0, return_entropy: bool = True) -> PolicyValueOutput:
        from reinlm.rollout.token import token_logprobs

        shared = self.value_model is None
        scores = token_logprobs(self.policy, input_ids, attention_mask, response_len, temperature,
                                return_entropy=return_entropy, return_hidden=shared)
        if shared:
            values = self.value_head(scores.hidden)
        else:
            values = response_values(self.value_model, self.value_head, input_ids, attention_mask, response_len)
        return PolicyValueOutput(scores.logp, scores.entropy, values)


def minibatch_indices(n: int, minibatch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """A random permutation of range(n) cut into minibatches of ``minibatch_size`` (the last may be smaller)."""
    if minibatch_size < 1:
        raise ValueError(f"minibatch_size must be >= 1, got {minibatch_size}")
    order = torch.randperm(n, generator=generator)
    return list(order.split(minibatch_size))
