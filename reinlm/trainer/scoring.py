"""Rewards -> scores: what the training loop learns from, for one rollout batch.

:class:`Scorer` calls the reward set (sequence rewards, TRL's arguments: docs/rewards.md), the token-level
rewards and the LLM critic, and returns a :class:`Scored`. :class:`ScoreShaper` applies ``--score-scaling
running`` and ``--score-clip``. :func:`greedy_baseline` is ReMax's baseline: the shaped score of one greedy
rollout per prompt.

Dimension legend: B = sequences, R = response length (tokens, or latent actions), G = samples per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reinlm.algorithms.shaping import RunningMoments
from reinlm.data import as_conversations
from reinlm.data.prompts import PromptSet
from reinlm.rewards.call import RewardTrainerState
from reinlm.rollout.token import RolloutBatch
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.policy import Policy


@dataclass
class Scored:
    """A batch's rewards: sequence scores (B,), validity (B,), dense token rewards (B, R) or None, each
    component's values (B,) (NaN where it did not score a sample), and extra per-step metrics."""

    scores: torch.Tensor
    valid: torch.Tensor
    dense: torch.Tensor | None
    components: dict[str, torch.Tensor]
    extra: dict[str, float]
    columns: dict[str, list[Any]] | None = None  # what rewards logged with log_extra: one value per sample

    def select(self, rows: torch.Tensor) -> Scored:
        """The rows ``rows`` (a 1-D index tensor) of every per-sample field."""
        idx = rows.tolist()
        return Scored(self.scores[rows], self.valid[rows], None if self.dense is None else self.dense[rows],
                      {k: v[rows] for k, v in self.components.items()}, self.extra,
                      {k: [v[i] for i in idx] for k, v in (self.columns or {}).items()})

    @staticmethod
    def cat(parts: list[Scored], R: int) -> Scored:
        """Join the scores of batches that :func:`~reinlm.trainer.batching.concat_rollouts` joined (dense
        rewards right-padded to R)."""
        dense = None
        if parts[0].dense is not None:
            dense = torch.cat([torch.nn.functional.pad(p.dense, (0, R - p.dense.shape[1]))
                               for p in parts if p.dense is not None])
        extra: dict[str, float] = {}
        for p in parts:
            extra.update(p.extra)
        columns = {k: [x for p in parts for x in (p.columns or {}).get(k, [None] * len(p.scores))]
                   for k in dict.fromkeys(k for p in parts for k in (p.columns or {}))}
        return Scored(torch.cat([p.scores for p in parts]), torch.cat([p.valid for p in parts]), dense,
                      {k: torch.cat([p.components[k] for p in parts]) for k in parts[0].components}, extra, columns)


class Scorer:
    """Scores rollout batches with the run's rewards (and the LLM critic, when there is one).

    ``trainer_state`` is what rewards get as ``trainer_state`` (:func:`reward_trainer_state`); the loop sets it
    before each step and before held-out evaluation.
    """

    def __init__(self, reward_set: Any, critic: Any, policy: Policy, device: torch.device, chat_template: Any,
                 episodes: Any = None):
        self.reward_set = reward_set
        self.episodes = episodes  # --environment: the EpisodeRunner scores its episodes (trainer/episodes.py)
        self.critic = critic
        self.policy = policy
        self.device = device
        self.chat_template = chat_template
        self.trainer_state: RewardTrainerState | None = None

    def __call__(self, batch: RolloutBatch, prompt_set: PromptSet, prompt_idx: list[int],
                 group_size: int) -> Scored:
        """Score a batch of ``group_size`` samples for each prompt ``prompt_set[prompt_idx[i]]``: sequence scores,
        validity, dense token rewards (B, R) or None, component values.

        Rewards get TRL's arguments (docs/rewards.md): the prompts as given (message lists for conversational
        data), ``completion_ids``, the columns, ``trainer_state``, and ``log_metric`` / ``log_extra``, whose
        values become the step's ``user/<name>`` metrics and the samples' ``extra`` columns.
        """
        columns = {k: [v[i] for i in prompt_idx for _ in range(group_size)] for k, v in prompt_set.columns.items()}
        raw = as_conversations([prompt_set.prompts[i] for i in prompt_idx for _ in range(group_size)],
                               self.chat_template)
        ids = [row[m.bool()].tolist() for row, m in zip(batch.response_ids.cpu(), batch.response_mask.cpu())]
        kwargs = dict(completion_ids=ids, trainer_state=self.trainer_state, prompt_texts=list(batch.prompts))
        if self.episodes is not None:  # the environment's returns (+ reward functions, given environments=)
            ep_scores, ep_valid, ep_comps, ep_extra, ep_cols = self.episodes.score(batch, raw, columns, **kwargs)
            return Scored(ep_scores, ep_valid, None, ep_comps, ep_extra, ep_cols)
        result = self.reward_set.score(raw, batch.completions, columns, **kwargs)
        valid = result.valid.to(self.device).bool()
        extra: dict[str, float] = {}
        dense = self._dense(batch, raw, columns, kwargs, result.total.tolist(), extra)
        comps = {k: v.to(self.device).float() for k, v in result.components.items()}
        extra.update({f"user/{k}": v for k, v in result.metrics.items()})  # log_metric
        return Scored(result.total.to(self.device, torch.float32), valid, dense, comps, extra, result.extras)

    def _dense(self, batch: RolloutBatch, raw: list[Any], columns: dict[str, list[Any]], kwargs: dict[str, Any],
               extrinsic: list[float], extra: dict[str, float]) -> torch.Tensor | None:
        """Token-level rewards and the critic's, summed into (B, R); None when neither is configured. The
        critic's own metrics go into ``extra``."""
        token_level = getattr(self.reward_set, "has_token_level", False)
        if not token_level and self.critic is None:
            return None
        token_rewards = []
        spans = self.policy.token_spans(batch)
        if token_level:
            token_rewards.append(self.reward_set.score_tokens(raw, batch.completions, spans, columns, **kwargs))
        if self.critic is not None:
            token_rewards.append(self.critic(batch.prompts, batch.completions, completion_token_spans=spans,
                                             extrinsic=extrinsic, **columns))
            extra.update({k: float(v) for k, v in self.critic.metrics().items()})
        R = batch.response_mask.shape[1]
        dense = torch.zeros(len(batch.completions), R, device=self.device)
        for rows in token_rewards:
            for i, row in enumerate(rows):
                n = min(len(row), R)
                dense[i, :n] += torch.tensor(row[:n], dtype=torch.float32, device=self.device)
        return dense


class ScoreShaper:
    """Running score scaling (``--score-scaling running``, fed the valid scores) and ``--score-clip``."""

    def __init__(self, scaling: str, clip: float | None):
        self.moments = RunningMoments() if scaling == "running" else None
        self.clip = clip

    def __call__(self, scores: torch.Tensor, valid: torch.Tensor | None = None, update: bool = True) -> torch.Tensor:
        """Shaped scores (B,); ``update`` feeds ``scores[valid]`` to the running moments first."""
        if self.moments is not None:
            if update:
                self.moments.update(scores if valid is None else scores[valid])
            scores = scores / max(self.moments.std, 1e-6)
        if self.clip is not None:
            scores = scores.clamp(-self.clip, self.clip)
        return scores


def greedy_baseline(policy: Policy, score: Scorer, shape: ScoreShaper, batch: RolloutBatch, prompt_set: PromptSet,
                    prompt_idx: list[int], G: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ReMax's baseline: the shaped score of one greedy rollout per prompt through the policy, repeated over the
    prompt's G samples (B,), and whether it could be scored (B,)."""
    greedy = policy.rollout(batch.prompts[::G], 1, [0] * len(prompt_idx), greedy=True)
    sc = score(greedy, prompt_set, prompt_idx, 1)
    return shape(sc.scores, update=False).repeat_interleave(G), sc.valid.repeat_interleave(G)


def reward_trainer_state(cfg: TrainConfig, n_train_prompts: int, step: int, is_main: bool,
                         is_local_main: bool) -> RewardTrainerState:
    """What rewards get as ``trainer_state`` at ``step`` (optimiser steps done so far)."""
    per_epoch = n_train_prompts / cfg.batch_prompts  # steps in one pass over the prompts
    return RewardTrainerState(global_step=step, max_steps=cfg.steps, epoch=step / per_epoch,
                              num_train_epochs=cfg.steps / per_epoch, is_world_process_zero=is_main,
                              is_local_process_zero=is_local_main)
