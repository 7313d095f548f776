"""Held-out figures of a latent model, one batch at a time: the one computation behind pretraining's stage
summaries (:func:`reinlm.latent.pretrain.evaluate`) and fine-tuning's task figures
(:func:`reinlm.latent.finetune.evaluate_task`), for either latent family (it calls the family's
``lm_nll_sum``, ``step_world_logits``, ``idm_logits_from_hidden`` and ``policy_logits_from_hidden``).

Per valid step t (tokens t and t+1 both real), full vocabulary: the frozen language model's NLL of token t+1
(the backbone; on BWArea the model marginalised over its policy), the world model's NLL under the IDM's argmax
action and under an action drawn from the policy at temperature tau (``modules.sample_actions``, the one action
sampler; until 2026-12-08 ``torch.multinomial``, so held-out figures of earlier runs drew other actions), and
whether the IDM's action is the policy's top-1 / in its top-5. Legend: B = batch, L = window, K = actions;
h (B, L, *) is the family's ``head_input``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reinlm.latent.modules import sample_actions

SUMS = ("nll_backbone", "nll_world_model_idm", "nll_world_model_policy", "top1", "top5")


@torch.no_grad()
def batch_sums(model, h: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, sums: dict[str, float], *,
               policy: bool = True, lm_nll: bool = True, tau: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Add one batch's sums into ``sums`` (keys :data:`SUMS`). h (B, L, *), ids / mask (B, L). ``lm_nll=False``
    skips the two NLLs that do not depend on the policy; ``policy=False`` the policy's figures. The policy's
    actions are drawn by :func:`~reinlm.latent.modules.sample_actions` from ``generator`` (on the CPU). Returns
    the IDM's argmax actions of the valid steps (N,) (for code counts); the valid step count is their number."""
    valid = (mask[:, :-1] * mask[:, 1:]).bool()  # (B, L-1)
    target = ids[:, 1:][valid]
    idm = model.idm_logits_from_hidden(h, mask).argmax(-1)  # (B, L-1)
    if lm_nll:
        sums["nll_backbone"] += model.lm_nll_sum(h, ids, mask, valid)
        wm = model.step_world_logits(h, ids, mask, idm)[valid]
        sums["nll_world_model_idm"] += F.cross_entropy(wm, target, reduction="sum").item()
    if policy:
        pl = model.policy_logits_from_hidden(h, mask)[:, :-1]  # (B, L-1, K)
        tgt = idm[valid]
        sums["top1"] += (pl[valid].argmax(-1) == tgt).sum().item()
        sums["top5"] += (pl[valid].topk(min(5, pl.shape[-1]), -1).indices == tgt[:, None]).any(-1).sum().item()
        a = sample_actions(pl.float().cpu(), tau=tau, generator=generator).to(h.device)  # (B, L-1)
        wp = model.step_world_logits(h, ids, mask, a)[valid]
        sums["nll_world_model_policy"] += F.cross_entropy(wp, target, reduction="sum").item()
    return idm[valid]
