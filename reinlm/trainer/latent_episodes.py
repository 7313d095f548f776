"""Episodes in latent space (``--space latent --environment SPEC``): the latent policy picks the actions of each
turn, the frozen model writes the text, only the policy trains.

Dimension legend: B = episodes, P = first-observation length (left-padded), R = the rest of the transcript
(model and environment tokens, right-padded), T = P + R - 1 positions the policy reads, H = hidden size,
K = actions.

**Playing** (:func:`reinlm.latent.turns.latent_turn_stepper`): each turn, the live episodes' transcripts go through the one decode
engine with the latent model's own stepper (:class:`~reinlm.latent.stepper.LatentStepper`, or BWArea's): the
policy samples a_t at the temperature with neither top-k nor top-p (the distribution the update differentiates,
as :meth:`~reinlm.trainer.latent_policy.LatentPolicy.rollout` samples), the world model turns a_t into the next
token greedily (the randomness lives in the actions), and the action of every model token is recorded
(:attr:`~reinlm.rollout.multiturn.Episode.turn_actions`). The environment's observations are tokenized as in
token space (:class:`~reinlm.rollout.multiturn.TurnFormat`); the policy takes no action there.

**Folding** (:func:`latent_episode_batch`): after the episodes, one forward of the frozen model over each whole
transcript (``head_input``: the backbone's states, or BWArea's token ids) gives what the policy reads at every
position, observations included. The batch's ``actions`` are the recorded ones at model tokens and 0 elsewhere;
``response_mask`` is the model mask, so observation positions get no gradient, KL or entropy (tested); the old
log-probs are the policy's on those states, so the first pass's importance ratio is exactly 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reinlm.rollout.multiturn import EpisodeBatch
from reinlm.trainer.latent_policy import LatentRolloutBatch

__all__ = ["LatentEpisodeBatch", "latent_episode_batch"]


@dataclass
class LatentEpisodeBatch(EpisodeBatch, LatentRolloutBatch):
    """An :class:`EpisodeBatch` with what the latent policy's update reads (module docstring)."""


@torch.no_grad()
def latent_episode_batch(policy: Any, batch: EpisodeBatch) -> LatentEpisodeBatch:
    """Token-space episode batch (:func:`~reinlm.rollout.multiturn.episodes_to_batch`) -> the latent one.

    ``policy``: the :class:`~reinlm.trainer.latent_policy.LatentPolicy`. Adds ``actions`` (B, R) (each model
    token's recorded action, 0 elsewhere), ``hidden`` (B, T, ...) and ``hidden_mask`` (B, T) from one frozen
    forward over the transcripts, ``old_logp_all`` (B, R, K) and ``logprobs`` (B, R) from the policy on them.
    """
    B, P = batch.prompt_ids.shape
    R = batch.response_ids.shape[1]
    actions = torch.zeros(B, R, dtype=torch.long)
    for b, ep in enumerate(batch.episodes):
        for (s, e), acts in zip(ep.turns, ep.turn_actions):
            actions[b, s - ep.prompt_len: e - ep.prompt_len] = torch.tensor(acts, dtype=torch.long)
    actions = actions.to(batch.response_ids.device)
    ids, mask = batch.input_ids[:, :-1], batch.attention_mask[:, :-1].long()  # (B, T)
    hidden = policy.lam.head_input(ids, mask)
    fields = {f: getattr(batch, f) for f in batch.__dataclass_fields__}
    out = LatentEpisodeBatch(**{**fields, "actions": actions, "hidden": hidden, "hidden_mask": mask})
    was_training = policy.policy.training
    policy.policy.eval()
    try:
        out.old_logp_all = policy.action_logp_all(policy.policy, out)  # (B, R, K)
    finally:
        policy.policy.train(was_training)
    out.logprobs = out.old_logp_all.gather(-1, actions[..., None]).squeeze(-1) * batch.response_mask
    return out
