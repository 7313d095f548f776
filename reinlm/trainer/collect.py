"""Collection: a step's batch of rollouts, scored, with DAPO's dynamic sampling.

:func:`choose_prompts` picks the step's prompts (seeded with :func:`~reinlm.utils.rng.step_seed`: a resumed run
replays the same draws), each process
rolls out its slice of them (:meth:`Collector.rollout_and_score`), and with ``--dynamic-sampling``
:meth:`Collector.collect` keeps the groups with a reward spread, refills from fresh prompts and tops up with
zero-spread groups (trainer/batching.py has the rule and its reference). The step's zero-spread flags are
computed here, once, and read by the step metrics.

Dimension legend: B = sequences on this process, G = samples per prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reinlm.algorithms.groups import zero_spread
from reinlm.data.prompts import PromptSet
from reinlm.rollout.token import RolloutBatch
from reinlm.trainer.batching import concat_rollouts, rows_of_groups, select_groups
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.policy import Policy
from reinlm.trainer.scoring import Scored, Scorer
from reinlm.utils.rng import step_seed


def choose_prompts(n_prompts: int, batch_prompts: int, seed: int, step: int, attempt: int = 0) -> list[int]:
    """Indices of the prompts used at ``step`` (a fresh permutation slice per step, seeded); ``attempt`` > 0
    draws the prompts of a dynamic-sampling refill."""
    rng = np.random.default_rng(step_seed(seed, step, 1 + 1_000_003 * attempt))
    if batch_prompts <= n_prompts:
        return [int(i) for i in rng.permutation(n_prompts)[:batch_prompts]]
    return [int(i) for i in rng.integers(0, n_prompts, size=batch_prompts)]


@dataclass
class Collected:
    """A step's batch on this process: the rollouts, their scores, the prompt index of each group, the samples
    per prompt (``samples_per_prompt``; 1 on a GKD dataset step), whether each sample's group has no reward
    spread (B,) bool (:func:`~reinlm.algorithms.groups.zero_spread` over the valid scores), and the
    dynamic-sampling statistics (empty without it)."""

    batch: RolloutBatch
    scored: Scored
    prompt_idx: list[int]
    group_size: int
    flat: torch.Tensor
    stats: dict[str, float]


class Collector:
    """Rolls out and scores this process's share of each step's prompts.

    ``timing`` holds the seconds spent in rollouts (``generate``) and rewards (``reward``) during the last
    :meth:`collect`.
    """

    def __init__(self, cfg: TrainConfig, policy: Policy, score: Scorer, prompts: PromptSet, texts: list[str],
                 rank: int, world: int, device: torch.device, episodes: Any = None, dataset_steps: Any = None):
        self.cfg = cfg
        self.policy = policy
        self.score = score
        self.prompts = prompts
        self.texts = texts  # the prompts rendered for the policy (chat template applied)
        self.rank = rank
        self.world = world
        self.device = device
        self.episodes = episodes  # --environment: episodes instead of single completions (trainer/episodes.py)
        self.dataset_steps = dataset_steps  # --lmbda < 1: GKD's dataset-completion steps (trainer/teacher.py)
        self.timing = {"generate": 0.0, "reward": 0.0}
        self.on_policy = True  # the last rollout_and_score sampled from the student (False: a dataset step)

    def rollout_and_score(self, step: int, attempt: int) -> tuple[RolloutBatch, Scored, list[int], int]:
        """This process's share of the step's prompts (``attempt`` > 0: a dynamic-sampling refill), rolled out
        and scored; also returns the prompt index of each group and the group size G."""
        cfg = self.cfg
        all_idx = choose_prompts(len(self.prompts), cfg.batch_prompts, cfg.seed, step, attempt)
        local_idx = all_idx[self.rank::self.world]
        prompts = [self.texts[i] for i in local_idx]
        salt = 1000 + 1_000_003 * attempt
        seeds = [step_seed(cfg.seed, step, salt + j) for j in range(self.rank, len(all_idx), self.world)]
        t0 = time.perf_counter()
        offline = self.dataset_steps(step, local_idx, prompts) if self.dataset_steps is not None else None
        G = cfg.samples_per_prompt if offline is None else 1
        self.on_policy = offline is None
        batch = (offline if offline is not None else self.policy.rollout(prompts, G, seeds) if self.episodes is None
                 else self.episodes.rollout(self.prompts, local_idx, G, seeds, step))
        t1 = time.perf_counter()
        scored = self.score(batch, self.prompts, local_idx, G)
        self.timing["generate"] += t1 - t0
        self.timing["reward"] += time.perf_counter() - t1
        return batch, scored, local_idx, G

    def collect(self, step: int) -> Collected:
        """The step's batch: one rollout, or with ``--dynamic-sampling`` the groups that have a reward spread,
        refilled from fresh prompts for at most ``--dynamic-sampling-max-tries`` extra rollouts, then topped up
        with zero-spread groups so the batch always holds ``batch_prompts`` groups (trainer/batching.py)."""
        self.timing = {"generate": 0.0, "reward": 0.0}
        batch, scored, idx, G = self.rollout_and_score(step, 0)
        if not self.cfg.batches.dynamic_sampling:
            stats = {} if self.dataset_steps is None else {"distill/on_policy": float(self.on_policy)}
            return Collected(batch, scored, idx, G, zero_spread(scored.scores, batch.group_ids, scored.valid), stats)
        return self._dynamic(step, batch, scored, idx, G)

    def _dynamic(self, step: int, batch: RolloutBatch, scored: Scored, idx: list[int], G: int) -> Collected:
        """Dynamic sampling (docstring of :meth:`collect`); G: the group size of every rollout (on-policy)."""
        target = self.cfg.batch_prompts // self.world
        kept: list[tuple[RolloutBatch, Scored, int, int]] = []  # (batch, scored, prompt idx, group id) with a spread
        flat: list[tuple[RolloutBatch, Scored, int, int]] = []  # the same without
        dropped = refills = 0
        attempt = 0
        while True:
            keep, drop = select_groups(scored.scores, batch.group_ids, scored.valid)
            order = list(dict.fromkeys(batch.group_ids.tolist()))
            kept += [(batch, scored, idx[order.index(g)], g) for g in keep]
            flat += [(batch, scored, idx[order.index(g)], g) for g in drop]
            dropped += len(drop)
            if len(kept) >= target or attempt >= self.cfg.batches.dynamic_sampling_max_tries:
                break
            attempt += 1
            refills += 1
            batch, scored, idx, _ = self.rollout_and_score(step, attempt)
        chosen = (kept + flat)[:target]
        parts, scored_parts, prompt_idx, flags = [], [], [], []
        for n, (b, sc, p, g) in enumerate(chosen):
            rows = rows_of_groups(b.group_ids, [g])
            parts.append(b.select(rows))
            scored_parts.append(sc.select(torch.tensor(rows, device=self.device)))
            prompt_idx.append(p)
            flags.append(torch.full((len(rows),), n >= len(kept), dtype=torch.bool, device=self.device))
        joined = concat_rollouts(parts)
        stats = {"batch/dropped_groups": float(dropped), "batch/refill_rollouts": float(refills),
                 "batch/zero_spread_kept": float(max(0, target - len(kept)))}
        return Collected(joined, Scored.cat(scored_parts, joined.response_mask.shape[1]), prompt_idx, G,
                         torch.cat(flags), stats)
