"""The training loop shared by every algorithm and both action spaces: :class:`Trainer`.

One step: choose prompts -> roll out G samples per prompt -> score (sequence and token rewards; with
``--dynamic-sampling``, refill groups without a reward spread) -> reference scores and per-step KL ->
advantages (the algorithm's) -> ``update_epochs`` passes of minibatch updates (the algorithm's loss) -> KL
controller update -> metrics, samples, checkpoint. The same code runs as one process or as several
(torchrun on the CPU, ``accelerate launch`` on GPUs): each process takes a slice of the step's prompts,
gradients are averaged.

The loop knows neither the algorithm nor the action space: it looks the algorithm up in the registry
(:mod:`reinlm.algorithms.base`: ``needs``, ``advantages``, ``loss``) and talks to the policy through
:class:`reinlm.trainer.policy.Policy`.

Where things live (hook in there, not here):

- ``loop.py`` (this file): :class:`Trainer`: ``__init__`` builds the parts (``parts.py``),
  :meth:`Trainer.train_step` is one step from rollouts to metrics, :meth:`Trainer._update` the minibatch
  gradient steps (``_optimizer_step``, ``_micro_batch``).
- ``parts.py``: the parts built from the config: processes and seed, prompts and held-out split, rewards, policy,
  optimiser, schedule and KL controller.
- ``collect.py``: prompt choice (``choose_prompts``; seeds: ``reinlm.utils.rng.step_seed``), rollouts, dynamic sampling; a
  step's batch as :class:`~reinlm.trainer.collect.Collected` (with its zero-spread flags, computed once).
- ``scoring.py``: rewards -> :class:`~reinlm.trainer.scoring.Scored` (sequence, token-level, critic), score
  scaling/clipping, ReMax's greedy baseline, the rewards' ``trainer_state``.
- ``step_metrics.py``: the metrics dict of a step and the sums/means over processes (``Reducer``).
- ``run_shell.py``: ``train()``: run directory, lock, resume, checkpoints, logging, final model.
- ``held_out.py``: the held-out evaluation before and after training.
- ``episodes.py``: multi-turn environments (``--environment``): rollouts, scores and turn-credit targets that
  collect.py, scoring.py and ``train_step`` take from it instead of the plain rollout/rewards/advantages.
- ``optim.py``: AdamW and the learning-rate schedule (``reinlm/schedules.py``'s formula).
- ``teacher.py``: on-policy distillation (``--teacher``): the frozen teacher, GKD's dataset steps (``--lmbda``).
- ``policy.py`` (the protocol), ``token_policy.py`` / ``latent_policy.py`` (the two action spaces);
  ``batching.py`` (joining rollouts, truncation, group selection); ``checkpoint.py``, ``guards.py``,
  ``logging.py``, ``runlock.py``, ``inputs.py``, ``degeneration.py`` (what their names say).

Dimension legend: B = sequences on this process, R = response length (tokens, or latent actions).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reinlm.algorithms import AdvantageInputs, LossInputs, LossNorm, Targets, build_algorithm
from reinlm.algorithms.groups import normalize_then_sum
from reinlm.algorithms.mismatch import mismatch_stats, tis_clip_fraction, truncated_is_weights
from reinlm.envs import resolve_environment
from reinlm.rollout.multiturn import EpisodeBatch
from reinlm.rollout.token import RolloutBatch
from reinlm.trainer import run_shell
from reinlm.trainer.batching import truncated_rows
from reinlm.trainer.collect import Collected, Collector, choose_prompts
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.degeneration import DegenerationConfig, DegenerationMonitor
from reinlm.trainer.episodes import EpisodeRunner
from reinlm.trainer.guards import check_grad_norm, check_loss
from reinlm.trainer.held_out import evaluate_held_out
from reinlm.trainer.optim import lr_lambda, make_adamw
from reinlm.trainer.parts import (build_optimisation, build_rewards, check_lengths, make_policy, prompt_texts,
                                  split_prompts, start_processes, tis_level)
from reinlm.trainer.policy import Policy, PolicyScores
from reinlm.trainer.run_shell import RUN_OUTPUTS, prepare_fresh_run_dir, previous_run_outputs
from reinlm.trainer.scoring import Scorer, ScoreShaper, greedy_baseline, reward_trainer_state
from reinlm.trainer.step_metrics import Reducer, StepTimes, UpdateStats, perplexity_metrics, step_metrics
from reinlm.trainer.teacher import DatasetSteps, Teacher
from reinlm.utils.fsdp import full_tensor, train_state_bytes
from reinlm.utils.rng import step_seed


@dataclass
class UpdateBatch:
    """What :meth:`Trainer._update` works on: the step's batch and what stays fixed through its passes."""

    batch: RolloutBatch
    old_logp: torch.Tensor | None  # (B, R) the trainer's log-probs before the update; None: from the first pass
    ref: PolicyScores | None  # the reference's scores (None: no KL)
    mask: torch.Tensor  # (B, R) the tokens in the loss
    targets: Targets  # the algorithm's advantages/returns
    step: int
    off_policy: bool  # several optimiser steps on this batch
    kl_coef: float  # beta of the KL loss term (0: none)
    seen_old: torch.Tensor  # (B, R) the first pass's log-probs, filled when old_logp is None


class Trainer:
    """Builds every component from a :class:`TrainConfig` and runs the loop.

    ``model``/``tokenizer``, ``reward_set``, ``prompt_set`` and ``teacher`` (a model with the student's
    tokenizer) may be injected (tests, notebooks); otherwise they are built from the config.
    """

    def __init__(self, cfg: TrainConfig, *, model: Any = None, tokenizer: Any = None, reward_set: Any = None,
                 prompt_set: Any = None, accelerator: Any = None, degeneration: DegenerationConfig | None = None,
                 environment: Any = None, env_rewards: Any = None, teacher: Any = None):
        self.run_dir = Path(cfg.out or cfg.default_out)
        # this process's place in the run (parts.py); accelerate launch's FSDP config sets --sharding fsdp there
        self.cfg, (self.accelerator, self.device, self.rank, self.world, self.is_main) = start_processes(
            cfg, accelerator)
        cfg = self.cfg
        # data and rewards before any model: bad input fails fast
        if cfg.env.environment and environment is None:  # a bad SPEC fails here, before any model loads
            environment = resolve_environment(cfg.env.environment, tools=cfg.env.tools, opponent=cfg.env.opponent,
                                              max_tool_calling_iterations=cfg.env.max_tool_calling_iterations)
        prompts = split_prompts(cfg, prompt_set, environment, self.is_main)
        self.full_prompts, self.train_prompts, self.held_out = prompts
        self.reward_set, self.critic = build_rewards(cfg, reward_set, self.full_prompts, environment)
        # the algorithm (looked up by name: docs/algorithms.md) and the policy of the action space
        self.algorithm = build_algorithm(cfg.algo, cfg.algorithm, cfg.ppo, cfg.distill)
        self.needs = self.algorithm.needs
        self.policy: Policy = make_policy(cfg, self.device, model=model, tokenizer=tokenizer,
                                          with_value_head=self.needs.values)
        self.train_texts, self.held_texts = prompt_texts(cfg, prompts, self.policy.tokenizer)
        # --teacher: on-policy distillation (teacher.py); --environment: episodes.py plays and scores the episodes
        self.teacher = (Teacher(cfg, self.policy, self.device, model=teacher)
                        if cfg.distill.teacher or teacher is not None else None)
        self.episodes = None
        if environment is not None:
            self.episodes = EpisodeRunner(cfg, self.policy, environment, reward_set=env_rewards)
            self.episodes.probe(self.train_prompts)
        self.tis_level = tis_level(cfg, self.policy)
        check_lengths(cfg, self.policy, self.train_texts)
        # the step's parts (collect.py, scoring.py, step_metrics.py)
        self.score = Scorer(self.reward_set, self.critic, self.policy, self.device, cfg.chat_template, self.episodes)
        self.shape_scores = ScoreShaper(cfg.batches.score_scaling, cfg.batches.score_clip)
        dataset_steps = DatasetSteps(cfg, self.policy, self.train_prompts) if cfg.distill.lmbda < 1 else None
        self.collector = Collector(cfg, self.policy, self.score, self.train_prompts, self.train_texts, self.rank,
                                   self.world, self.device, self.episodes, dataset_steps)
        self.reduce = Reducer(self.accelerator, self.world, self.device)
        (self.sharded, self.sharded_module, self.optimizer, self.scheduler,
         self.kl_ctl) = build_optimisation(cfg, self.policy, self.world, self.accelerator)
        self.monitor = DegenerationMonitor(degeneration or DegenerationConfig())
        self.start_step = 0
        self.steps_done = 0
        self.last_healthy_ckpt: int | None = None

    # ------------------------------------------------------------------ the run (run_shell.py)
    def train(self, resume: bool = False) -> Path:
        """Run (or continue) training; returns the run directory (:func:`reinlm.trainer.run_shell.run`)."""
        return run_shell.run(self, resume)

    def resume(self) -> int:
        """Load the newest checkpoint of ``run_dir``; returns the step to continue from."""
        return run_shell.resume(self)

    def _save(self, step: int) -> None:
        run_shell.save(self, step)

    def evaluate_held_out(self, tag: str) -> dict[str, Any]:
        """Held-out evaluation (seeded, the same draws before and after training): trainer/held_out.py."""
        step = 0 if tag == "before" else self.steps_done or self.start_step
        self.score.trainer_state = self._reward_state(step)
        return evaluate_held_out(self.cfg, self.policy, self.score, self.held_out, self.held_texts, tag, self.episodes)

    def _reward_state(self, step: int) -> Any:
        return reward_trainer_state(self.cfg, len(self.train_prompts), step, self.is_main,
                                    self.accelerator.is_local_main_process)

    # ------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict[str, Any]:
        """One step (module docstring): returns the step's ``metrics``, its rollout ``batch``, the raw
        ``scores`` (B,) and the rewards' logged ``extras`` columns."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.score.trainer_state = self._reward_state(step)
        got = self.collector.collect(step)
        batch, scored = got.batch, got.scored

        valid = scored.valid
        scores = self.shape_scores(scored.scores, valid) * valid.float()
        if cfg.algorithm.multi_objective_aggregation == "normalize_then_sum":  # TRL's: each term normalised first
            weights = {c.name: c.weight for c in self.reward_set.components}
            scores = normalize_then_sum(scored.components, weights, batch.group_ids.to(self.device)) * valid.float()
        mask = batch.response_mask.float() * valid[:, None].float()  # tokens of the valid samples
        truncated = truncated_rows(batch, cfg.sampling.max_new_tokens, self.policy.eos_token_ids)
        loss_mask = mask * (~truncated).float()[:, None] if cfg.batches.mask_truncated else mask
        B = len(batch)
        mb = min(cfg.minibatch_size or B, B)
        off_policy = cfg.update_epochs > 1 or mb < B  # several optimiser steps on this batch
        t_reward = time.perf_counter()  # rollouts and rewards done (interleaved with dynamic-sampling refills)

        ref = self.policy.reference(batch)
        old = self._old_scores(batch, ref, off_policy)
        # KL of the sampled tokens to the reference: before the update when it enters the reward; with kl_in=loss
        # on inexact rollouts (no recompute) it is a metric only, taken after the update from the first pass
        kl_after = old is None and not self.policy.rollout_logprobs_exact and ref is not None
        kl = None if kl_after else self.policy.rollout_kl(batch, ref, cfg.kl.kl_estimator,
                                                          old=None if old is None else old.logp)
        kl = kl * mask if kl is not None else None
        beta = self.kl_ctl.value
        targets, valid = self._advantages(got, scores, valid, mask, kl, beta, old)
        t_prep = time.perf_counter()

        old_logp = None if old is None else old.logp.detach()
        stats, seen_old = self._update(batch, old_logp, ref, loss_mask, targets, step, off_policy)
        t_update = time.perf_counter()

        if kl_after:
            late_kl = self.policy.rollout_kl(batch, ref, cfg.kl.kl_estimator, old=seen_old)
            kl = None if late_kl is None else late_kl * mask
        mismatch = mismatch_stats(old_logp if old_logp is not None else seen_old, batch.logprobs, loss_mask)
        times = StepTimes(t0, t_reward, t_prep, t_update, self.collector.timing["generate"])
        metrics = step_metrics(self.reduce, batch=batch, scored=scored, flat=got.flat, valid=valid, mask=mask,
                               kl=kl, truncated=truncated, beta=beta,
                               group_size=got.group_size,
                               update=stats, mismatch=mismatch, batch_stats=got.stats,
                               lr=float(self.scheduler.get_last_lr()[0]), times=times)
        self.kl_ctl.update(metrics["kl/mean"], cfg.batch_size)
        if scored.dense is not None:
            metrics["reward/dense_mean"] = float((scored.dense * mask).sum(-1).mean())
        metrics.update(perplexity_metrics(self.policy, batch, ref, mask, cfg.log_frozen_perplexity))
        metrics.update(self.policy.step_metrics())  # e.g. mismatch/ref_logp_abs at the first step
        # this process's trained parameters + gradients + AdamW state (its shards under FSDP)
        metrics["perf/train_state_mb"] = train_state_bytes(self.policy.trainable_parameters(), self.optimizer) / 2**20
        return {"metrics": metrics, "batch": batch, "scores": scored.scores, "extras": scored.columns or {}}

    def _old_scores(self, batch: RolloutBatch, ref: PolicyScores | None, off_policy: bool) -> PolicyScores | None:
        """The trainer's own scores of the batch at the sampling parameters, before the update (None: nothing
        reads them first).

        With one optimiser step on the batch they come free from the update's first pass (old = its detached
        log-probs; TIS compares them with the sampler's). One no-grad forward computes them here only when
        something reads them first: values (PPO), several optimiser steps, or a KL *reward* on rollouts from
        another numeric path (bf16 copy, vLLM).
        """
        exact = self.policy.rollout_logprobs_exact
        if self.needs.values or off_policy or (not exact and ref is not None and self.cfg.kl.kl_in == "reward"):
            with torch.no_grad():
                return self.policy.score(batch, need_values=self.needs.values)
        return None

    def _advantages(self, got: Collected, scores: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor,
                    kl: torch.Tensor | None, beta: float, old: PolicyScores | None) -> tuple[Targets, torch.Tensor]:
        """The algorithm's targets (advantages, returns) of the step's batch, and the samples that got one (B,)
        (ReMax: no greedy baseline, no advantage)."""
        cfg, batch = self.cfg, got.batch
        baseline_scores = None
        if self.needs.greedy_baseline:
            baseline_scores, greedy_valid = greedy_baseline(self.policy, self.score, self.shape_scores, batch,
                                                            self.train_prompts, got.prompt_idx, got.group_size)
            valid = valid & greedy_valid
        inputs = AdvantageInputs(scores=scores, valid=valid, mask=mask, group_ids=batch.group_ids.to(self.device),
                                 kl=kl, beta=beta if cfg.kl.kl_in == "reward" else 0.0, dense=got.scored.dense,
                                 values=None if old is None or old.values is None else old.values.detach(),
                                 baseline_scores=baseline_scores, reduce_sum=self.reduce.sum)
        if self.episodes is None:
            return self.algorithm.advantages(inputs), valid
        if isinstance(batch, EpisodeBatch):  # --turn-credit
            return self.episodes.targets(self.algorithm, inputs, batch), valid
        raise TypeError(f"--environment: the step's batch is a {type(batch).__name__}, not the episodes' batch")

    def _update(self, batch: RolloutBatch, old_logp: torch.Tensor | None, ref: PolicyScores | None,
                mask: torch.Tensor, targets: Targets, step: int, off_policy: bool) -> tuple[dict[str, float], torch.Tensor]:
        """``update_epochs`` passes of minibatch gradient steps (mask (B, R): the tokens in the loss).

        Returns averaged statistics and the trainer's log-probs seen on the first pass (B, R) (the old
        log-probs when ``old_logp`` is None: one optimiser step, so the first pass is at the sampling
        parameters).
        """
        cfg = self.cfg
        B = mask.shape[0]
        mb = min(cfg.minibatch_size or B, B)
        kl_coef = self.kl_ctl.value if (cfg.kl.kl_in == "loss" and ref is not None) else 0.0
        up = UpdateBatch(batch, old_logp, ref, mask, targets, step, off_policy, kl_coef, torch.zeros_like(mask))
        stats = UpdateStats()
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, 7))
        for epoch in range(cfg.update_epochs):
            order = torch.randperm(B, generator=gen) if (epoch > 0 or mb < B) else torch.arange(B)
            for start in range(0, B, mb):
                self._optimizer_step(up, order[start:start + mb], stats)
        return stats.means(), up.seen_old

    def _optimizer_step(self, up: UpdateBatch, idx: torch.Tensor, stats: UpdateStats) -> None:
        """One optimiser step on the rows ``idx`` of the batch: ``grad_accum`` micro-batches, clip, AdamW."""
        cfg = self.cfg
        norm = LossNorm(seqs=len(idx), tokens=float(self.reduce.sum(up.mask[idx].sum())), world=self.world,
                        max_len=cfg.sampling.max_new_tokens)
        self.optimizer.zero_grad(set_to_none=True)
        micro = max(1, math.ceil(len(idx) / cfg.grad_accum))
        for m0 in range(0, len(idx), micro):
            self._micro_batch(up, idx[m0:m0 + micro], norm, stats)
        gn = full_tensor(torch.nn.utils.clip_grad_norm_(  # FSDP: the norm over every shard
            self.policy.trainable_parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")))
        check_grad_norm(gn, up.step + 1)  # before the step: a NaN never reaches the weights
        stats.add("grad/norm", float(gn), len(idx))
        self.optimizer.step()
        self.scheduler.step()  # the schedule counts optimiser steps, as TRL's does
        self.policy.after_optimizer_step()
        self.algorithm.end_optimizer_step(self.reduce.sum)
        stats.opt_steps += 1

    def _micro_batch(self, up: UpdateBatch, sub: torch.Tensor, norm: LossNorm, stats: UpdateStats) -> None:
        """Forward, loss and backward of the rows ``sub`` (gradients accumulate until the optimiser step)."""
        sub_batch = up.batch.select(sub.tolist())
        scores = self.policy.score(sub_batch, need_values=self.needs.values, need_dist=self.teacher is not None)
        old = up.old_logp[sub] if up.old_logp is not None else scores.logp.detach()
        if up.old_logp is None:
            up.seen_old[sub] = old
        is_w = None
        if self.tis_level != "none":
            a = self.cfg.algorithm
            is_w, clipped = truncated_is_weights(old, sub_batch.logprobs, up.mask[sub], self.tis_level,
                                                 a.tis_cap, a.tis_clip_min, a.tis_mode)
            stats.add("mismatch/tis_clip_fraction", tis_clip_fraction(clipped, up.mask[sub]), len(sub))
        kl = None
        if up.kl_coef > 0 and up.ref is not None:
            kl = self.policy.kl_loss(sub_batch, scores, up.ref.select(sub))
        inputs = LossInputs(logp=scores.logp, old_logp=old, mask=up.mask[sub], targets=up.targets.select(sub),
                            off_policy=up.off_policy, is_weights=is_w, kl=kl, kl_coef=up.kl_coef,
                            entropy=scores.entropy, values=scores.values, sampler_logp=sub_batch.logprobs,
                            dist=scores.dist,
                            teacher_dist=None if self.teacher is None else self.teacher.log_dist(sub_batch))
        loss, st = self.algorithm.loss(inputs, norm)
        if self.world == 1:  # several processes: the all-reduced gradient norm below stops them all
            check_loss(loss, up.step + 1, st)
        self.policy.backward(self.accelerator, loss)
        stats.add_micro_batch(float(loss.detach()), st, len(sub))


def train(cfg: TrainConfig, resume: bool = False, **inject: Any) -> Path:
    """Build a :class:`Trainer` from ``cfg`` and run it; returns the run directory."""
    return Trainer(cfg, **inject).train(resume=resume)


__all__ = ["RUN_OUTPUTS", "Trainer", "choose_prompts", "lr_lambda", "make_adamw", "make_policy",
           "prepare_fresh_run_dir", "previous_run_outputs", "step_seed", "train"]
