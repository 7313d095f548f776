"""Held-out evaluation before and after training (``RUN_DIR/train_eval.json``).

Seeded: the same prompts and the same draws before and after training, so the two halves compare the
policies, not the luck of the samples.
"""

from __future__ import annotations

from typing import Any

import torch

from reinlm.data.prompts import PromptSet
from reinlm.progress import task
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.policy import Policy
from reinlm.trainer.scoring import Scorer
from reinlm.trainer.step_metrics import group_distinct_2
from reinlm.utils.rng import step_seed


@torch.no_grad()
def evaluate_held_out(cfg: TrainConfig, policy: Policy, score: Scorer, prompts: PromptSet, texts: list[str],
                      tag: str, episodes: Any = None) -> dict[str, Any]:
    """Held-out evaluation of ``policy`` on the first ``cfg.eval_prompts`` of ``prompts`` (``texts``: the same
    rendered for the policy), ``cfg.eval_samples`` samples each; ``tag`` ("before"/"after") names it in the
    progress line; ``episodes``: the EpisodeRunner with ``--environment``. Empty when there is nothing to evaluate.

    Returns the mean reward, distinct-2 within each prompt's samples, the summed KL to the reference
    (KL estimator k1; exact for latent actions), the perplexity of the samples under the frozen starting model
    (the backbone in latent space) and the first 8 samples.
    """
    if cfg.eval_prompts <= 0 or len(prompts) == 0:
        return {}
    idx = list(range(min(cfg.eval_prompts, len(prompts))))
    with task(f"held-out evaluation {tag} training ({len(idx)} prompts x {cfg.eval_samples} samples)"):
        G = cfg.eval_samples
        seeds = [step_seed(cfg.seed, 10**9, 2000 + i) for i in idx]
        batch = (policy.rollout([texts[i] for i in idx], G, seeds) if episodes is None else
                 episodes.rollout(prompts, idx, G, seeds))
        result = score(batch, prompts, idx, G)
        vf = result.valid.float()
        out: dict[str, Any] = {"reward_mean": float((result.scores * vf).sum() / vf.sum().clamp(min=1)),
                               "n_samples": len(batch.completions), "invalid_frac": float(1 - vf.mean())}
        out["distinct_2"] = group_distinct_2(batch.completions, G)
        out["kl_to_reference"] = float(policy.eval_kl(batch).mean())
        mask = batch.response_mask.float()
        nll = -(policy.frozen_logprobs(batch) * mask).sum() / mask.sum().clamp(min=1)
        out["perplexity_frozen"] = float(torch.exp(nll))
        out["samples"] = [{"prompt": p, "completion": c, "reward": float(r) if ok else None}
                          for p, c, r, ok in list(zip(batch.prompts, batch.completions, result.scores.tolist(),
                                                      result.valid.tolist()))[:8]]
        return out
