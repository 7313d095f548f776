"""A latent model playing environment turns: the stepper of one turn, and a frozen latent opponent.

Used by latent-space training on episodes (:mod:`reinlm.trainer.latent_episodes`) and by the tree search across
environment turns (:mod:`reinlm.latent.env_search`).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from reinlm.rollout.sampling import Chooser

__all__ = ["latent_turn_stepper", "frozen_latent_opponent"]


def latent_turn_stepper(lam: Any, temperature: float, greedy: bool = False) -> Callable[[], Any]:
    """``fn() -> stepper``: a fresh stepper of the latent model ``lam`` for one turn (actions sampled at
    ``temperature``, no top-k / top-p, or the policy's most likely ones with ``greedy``; tokens greedy from the
    world model)."""
    def make() -> Any:
        act = Chooser("greedy") if greedy else Chooser("sample", float(temperature), 0, 1.0)
        return lam.make_stepper(act, Chooser("greedy", record_logprob=False))

    return make


class frozen_latent_opponent:  # noqa: N801 (used as a function)
    """``--opponent frozen`` in latent space: ``fn(ids, max_new_tokens, generator) -> text``, the latent model with
    the frozen behaviour-cloned policy ``ref_policy`` in place of the trained one (the same frozen backbone and
    world model, shared, not copied; ``model``: that view), its actions sampled at ``temperature``."""

    def __init__(self, lam: Any, ref_policy: torch.nn.Module, temperature: float) -> None:
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
