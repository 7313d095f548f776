"""Episodes in latent space (``--space latent --environment SPEC``): the latent policy picks the actions of each
turn, the frozen model writes the text, only the policy trains.

Dimension legend: B = episodes, P = first-observation length (left-padded), R = the rest of the transcript
(model and environment tokens, right-padded), T = P + R - 1 positions the policy reads, H = hidden size,
K = actions.

**Playing** (:func:`latent_turn_stepper`): each turn, the live episodes' transcripts go through the one decode
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
from typing import Any, Callable

import torch

from reinlm.rollout.multiturn import EpisodeBatch
from reinlm.rollout.sampling import Chooser
from reinlm.trainer.latent_policy import LatentRolloutBatch

__all__ = ["LatentEpisodeBatch", "latent_turn_stepper", "latent_episode_batch", "frozen_latent_opponent"]


@dataclass
class LatentEpisodeBatch(EpisodeBatch, LatentRolloutBatch):
    """An :class:`EpisodeBatch` with what the latent policy's update reads (module docstring)."""


def latent_turn_stepper(lam: Any, temperature: float) -> Callable[[], Any]:
    """``fn() -> stepper``: a fresh stepper of the latent model ``lam`` for one turn (actions sampled at
    ``temperature``, no top-k / top-p; tokens greedy from the world model)."""
    def make() -> Any:
        return lam._make_stepper(Chooser("sample", float(temperature), 0, 1.0), Chooser("greedy", record_logprob=False))

    return make


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


class frozen_latent_opponent:  # noqa: N801 (used as a function)
    """``--opponent frozen`` in latent space: ``fn(ids, max_new_tokens, generator) -> text``, the latent model with
    the frozen behaviour-cloned policy ``ref_policy`` in place of the trained one (the same frozen backbone and
    world model, shared, not copied; ``model``: that view), its actions sampled at ``temperature``."""

    def __init__(self, lam: Any, ref_policy: torch.nn.Module, temperature: float) -> None:
        import copy

        self.lam = lam
        self.model = opp = copy.copy(lam)  # a second view: its own module table, so lam keeps the trained policy
        opp._modules = dict(lam._modules)
        opp._modules["policy"] = ref_policy
        opp.set_action_sampling(greedy=False, tau=temperature, top_k=0, top_p=1.0)

    def __call__(self, ids: list[int], max_new_tokens: int, generator: torch.Generator) -> str:
        x = torch.tensor([ids], device=self.lam.device)
        out = self.model.generate(x, torch.ones_like(x), max_new_tokens=max_new_tokens,
                                  eos_token_id=self.lam.eos_token_ids(), generator=generator, return_dict=True)
        ids_out = out.response_ids[0][out.response_mask[0].bool()]
        return str(self.lam.tokenizer.decode(ids_out, skip_special_tokens=True))
