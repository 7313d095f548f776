"""Turn credit: which share of an episode's rewards each model turn's tokens are credited with.

Dimension legend: B = episodes, R = response length (transcript after the first observation), K = turns.
``turn_ids`` (B, R) holds k + 1 on the model tokens of turn k and 0 elsewhere (observations, padding);
``turn_rewards`` (B, K) the reward the environment gave after each turn (0 past an episode's last turn).

``--turn-credit``:

- ``outcome`` (TRL's): every model token gets the episode's return sum_k r_k: the sequence score is the
  return and the algorithm runs unchanged.
- ``discounted``: turn k is credited with its discounted return-to-go G_k = sum_{j >= k} gamma^(j-k) r_j
  (``--gamma``). Critic-free algorithms run once per turn index k with G_k as the score of the episodes that
  reached turn k, on turn k's tokens only, so a group baseline compares turn k of one episode with turn k of
  its siblings (:func:`per_turn_advantages`).
- ``gae``: turn-level GAE with PPO's value head (Schulman et al. 2016, eq. 16, with turns as time steps):
  V_k is the value at turn k's first model token, delta_k = r_k + gamma V_{k+1} - V_k (V_K = 0 after the last
  turn), A_k = sum_l (gamma lambda)^l delta_{k+l}; every token of turn k gets A_k as its advantage and A_k + V_k
  as its value target (:func:`turn_gae`, :func:`gae_targets`).
"""

from __future__ import annotations

import dataclasses

import torch

from reinlm.algorithms.base import AdvantageInputs, Algorithm, Targets
from reinlm.algorithms.losses import masked_whiten
from reinlm.errors import ConfigError

__all__ = ["TURN_CREDITS", "discounted_returns", "turn_gae", "broadcast_turns", "turn_values",
           "per_turn_advantages", "gae_targets", "credit_targets", "check_turn_credit"]

TURN_CREDITS = ("outcome", "discounted", "gae")


def discounted_returns(turn_rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_k = r_k + gamma G_{k+1}, G_K = 0. (B, K) -> (B, K)."""
    out = torch.zeros_like(turn_rewards, dtype=torch.float32)
    running = torch.zeros(turn_rewards.shape[0], dtype=torch.float32, device=turn_rewards.device)
    for k in reversed(range(turn_rewards.shape[1])):
        running = turn_rewards[:, k].float() + gamma * running
        out[:, k] = running
    return out


def turn_gae(turn_rewards: torch.Tensor, values: torch.Tensor, n_turns: torch.Tensor, gamma: float,
             lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn-level GAE (module docstring). rewards, values (B, K); ``n_turns`` (B,) turns each episode played
    (values past it are ignored, V after the last turn is 0). -> advantages (B, K), returns A + V (B, K)."""
    B, K = turn_rewards.shape
    live = torch.arange(K, device=values.device)[None, :] < n_turns[:, None]  # (B, K)
    v = values.float() * live
    adv = torch.zeros(B, K, device=values.device)
    last = torch.zeros(B, device=values.device)
    for k in reversed(range(K)):
        v_next = v[:, k + 1] if k + 1 < K else torch.zeros(B, device=values.device)
        delta = turn_rewards[:, k].float() + gamma * v_next - v[:, k]
        last = (delta + gamma * lam * last) * live[:, k]
        adv[:, k] = last
    return adv, (adv + v) * live


def broadcast_turns(per_turn: torch.Tensor, turn_ids: torch.Tensor) -> torch.Tensor:
    """(B, K) per-turn values -> (B, R): turn k's value on its tokens, 0 where ``turn_ids`` is 0."""
    padded = torch.cat([torch.zeros_like(per_turn[:, :1]), per_turn], dim=1)  # (B, K + 1), column 0 = none
    return padded.gather(1, turn_ids.clamp(max=per_turn.shape[1]))


def turn_values(values: torch.Tensor, turn_ids: torch.Tensor, K: int) -> torch.Tensor:
    """V_k = the value at turn k's first model token. values, turn_ids (B, R) -> (B, K) (0 for missing turns)."""
    B, R = turn_ids.shape
    pos = torch.arange(R, device=turn_ids.device).expand(B, R)
    out = torch.zeros(B, K, device=values.device)
    for k in range(K):
        first = torch.where(turn_ids == k + 1, pos, R).min(dim=1).values  # (B,)
        has = first < R
        out[:, k] = torch.where(has, values.gather(1, first.clamp(max=R - 1)[:, None]).squeeze(1).float(), 0.0)
    return out


def per_turn_advantages(algorithm: Algorithm, inputs: AdvantageInputs, turn_ids: torch.Tensor,
                        returns: torch.Tensor) -> Targets:
    """``discounted`` credit for a critic-free algorithm: one ``advantages`` call per turn index k, with G_k as
    the score of the episodes that reached turn k and turn k's tokens as the mask. -> Targets (B, R)."""
    adv = torch.zeros_like(inputs.mask, dtype=torch.float32)
    for k in range(returns.shape[1]):
        tok = (turn_ids == k + 1).to(inputs.mask.dtype)  # (B, R)
        reached = tok.sum(-1) > 0
        if not bool((reached & inputs.valid).any()):
            continue
        part = dataclasses.replace(inputs, scores=returns[:, k] * reached, valid=inputs.valid & reached,
                                   mask=inputs.mask * tok,
                                   dense=None if inputs.dense is None else inputs.dense * tok)
        adv = adv + algorithm.advantages(part).advantages * tok
    return Targets(advantages=adv)


def gae_targets(inputs: AdvantageInputs, turn_ids: torch.Tensor, turn_rewards: torch.Tensor, gamma: float,
                lam: float, whiten: bool = True) -> Targets:
    """``gae`` credit: PPO's targets from turn-level GAE. ``inputs.values`` (B, R) are the rollout-time values;
    a KL reward penalty (``beta`` > 0) is charged to the turn its tokens belong to. -> Targets."""
    K = turn_rewards.shape[1]
    rewards = turn_rewards.float().clone()
    if inputs.kl is not None and inputs.beta > 0:
        for k in range(K):
            rewards[:, k] -= inputs.beta * (inputs.kl * inputs.mask * (turn_ids == k + 1)).sum(-1)
    n_turns = turn_ids.max(dim=1).values  # (B,)
    if inputs.values is None:
        raise ValueError("gae turn credit needs the rollout-time values (an algorithm with needs.values)")
    v = turn_values(inputs.values, turn_ids, K)
    adv, ret = turn_gae(rewards * inputs.valid[:, None], v, n_turns, gamma, lam)
    adv_t = broadcast_turns(adv, turn_ids) * inputs.mask
    ret_t = broadcast_turns(ret, turn_ids) * inputs.mask
    if whiten:
        adv_t = masked_whiten(adv_t, inputs.mask, reduce_sum=inputs.reduce_sum) * inputs.mask
    return Targets(advantages=adv_t, returns=ret_t, old_values=inputs.values)


def credit_targets(algorithm: Algorithm, inputs: AdvantageInputs, turn_ids: torch.Tensor,
                   turn_rewards: torch.Tensor, credit: str, gamma: float, lam: float, whiten: bool = True) -> Targets:
    """The step's targets under ``--turn-credit`` (module docstring). ``outcome`` expects ``inputs.scores`` to
    hold the episode returns already."""
    if credit == "outcome":
        return algorithm.advantages(inputs)
    if credit == "discounted":
        return per_turn_advantages(algorithm, inputs, turn_ids, discounted_returns(turn_rewards, gamma))
    return gae_targets(inputs, turn_ids, turn_rewards, gamma, lam, whiten)


def check_turn_credit(credit: str, needs_values: bool, algo: str) -> None:
    """``gae`` needs a value head (``--algo ppo``); ``discounted`` is for critic-free algorithms."""
    if credit not in TURN_CREDITS:
        raise ConfigError(f"turn_credit: got {credit!r}; allowed: {', '.join(TURN_CREDITS)}.")
    if credit == "gae" and not needs_values:
        raise ConfigError(f"turn_credit: gae needs PPO's value head; got --algo {algo}. Use --algo ppo, or "
                          "--turn-credit outcome|discounted.", field="turn_credit")
    if credit == "discounted" and needs_values:
        raise ConfigError("turn_credit: with --algo ppo use gae (turn-level GAE with the value head) or outcome.",
                          field="turn_credit")
