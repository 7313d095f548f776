"""The training loop shared by every algorithm and both action spaces.

One step: choose prompts -> roll out G samples per prompt -> score (sequence and token rewards; with
``--dynamic-sampling``, refill groups without a reward spread) -> reference scores and per-step KL ->
advantages (the algorithm's) -> ``update_epochs`` passes of minibatch updates (the algorithm's loss) -> KL
controller update -> metrics, samples, checkpoint. The same code runs as one process or as several
(torchrun on the CPU, ``accelerate launch`` on GPUs): each process takes a slice of the step's prompts,
gradients are averaged.

The loop knows neither the algorithm nor the action space: it looks the algorithm up in the registry
(:mod:`reinlm.algorithms.base`: ``needs``, ``advantages``, ``loss``) and talks to the policy through
:class:`reinlm.trainer.policy.Policy`.

Dimension legend: B = sequences on this process, R = response length (tokens, or latent actions).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from reinlm.algorithms import AdvantageInputs, LossInputs, LossNorm, build_algorithm
from reinlm.algorithms.controllers import AdaptiveKLController, ConstantKLController
from reinlm.algorithms.groups import zero_spread
from reinlm.algorithms.losses import masked_mean
from reinlm.algorithms.mismatch import mismatch_stats, tis_clip_fraction, truncated_is_weights
from reinlm.algorithms.shaping import RunningMoments
from reinlm.config.build import config_to_dict
from reinlm.envs import resolve_environment
from reinlm.errors import ConfigError, ReinlmError
from reinlm.trainer.batching import concat_rollouts, rows_of_groups, select_groups, truncated_rows
from reinlm.trainer.checkpoint import latest_checkpoint, load_trainer_state, load_value_head, save_checkpoint
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.episodes import EpisodeRunner, synthetic_rows
from reinlm.trainer.logging import RunLogger
from reinlm.trainer.policy import PolicyScores
from reinlm.trainer.guards import NonFiniteError, check_grad_norm, check_loss, check_weights, stopped_message
from reinlm.trainer.runlock import RunLock
from reinlm.utils.atomic import atomic_dir, atomic_write_text, remove_stale_temps
from reinlm.utils.distributed import destroy_process_group_at_exit
from reinlm.utils.jsonio import write_json
from reinlm.utils.memory import peak_rss_mb
from reinlm.utils.rng import seed_everything, set_rng_state

log = logging.getLogger("reinlm")


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """A deterministic 63-bit seed for (run seed, step, salt): resumed runs replay the same draws."""
    return int(np.random.SeedSequence([seed, step, salt]).generate_state(1, dtype=np.uint64)[0] >> 1)


def choose_prompts(n_prompts: int, batch_prompts: int, seed: int, step: int, attempt: int = 0) -> list[int]:
    """Indices of the prompts used at ``step`` (a fresh permutation slice per step, seeded); ``attempt`` > 0
    draws the prompts of a dynamic-sampling refill."""
    rng = np.random.default_rng(step_seed(seed, step, 1 + 1_000_003 * attempt))
    if batch_prompts <= n_prompts:
        return rng.permutation(n_prompts)[:batch_prompts].tolist()
    return rng.integers(0, n_prompts, size=batch_prompts).tolist()


def group_distinct_2(completions: list[str], group_size: int) -> float:
    """Mean over prompts of distinct-2 among that prompt's samples (consecutive groups of ``group_size``)."""
    from reinlm.textstats import distinct_n

    groups = [completions[i:i + group_size] for i in range(0, len(completions), group_size)]
    return float(np.mean([distinct_n(g, 2) for g in groups])) if groups else 0.0


def make_adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, with the fused kernel where this torch build has it for the parameters' device (same math)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def lr_lambda(cfg: TrainConfig):
    """Multiplier of the base learning rate at an optimiser step: linear warm-up, then the decay schedule."""
    def fn(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        total = max(1, cfg.steps - cfg.warmup_steps)
        frac = min(1.0, (step - cfg.warmup_steps) / total)
        return 1.0 - frac if cfg.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return fn


@dataclass
class Scored:
    """A batch's rewards: sequence scores (B,), validity (B,), dense token rewards (B, R) or None, each
    component's values (B,) (NaN where it did not score a sample), and extra per-step metrics."""

    scores: torch.Tensor
    valid: torch.Tensor
    dense: torch.Tensor | None
    components: dict[str, torch.Tensor]
    extra: dict[str, float]
    columns: dict[str, list] | None = None  # what rewards logged with log_extra: one value per sample

    def select(self, rows: torch.Tensor) -> "Scored":
        idx = rows.tolist()
        return Scored(self.scores[rows], self.valid[rows], None if self.dense is None else self.dense[rows],
                      {k: v[rows] for k, v in self.components.items()}, self.extra,
                      {k: [v[i] for i in idx] for k, v in (self.columns or {}).items()})

    @staticmethod
    def cat(parts: list["Scored"], R: int) -> "Scored":
        """Join the scores of batches that :func:`~reinlm.trainer.batching.concat_rollouts` joined (dense
        rewards right-padded to R)."""
        dense = None
        if parts[0].dense is not None:
            dense = torch.cat([torch.nn.functional.pad(p.dense, (0, R - p.dense.shape[1])) for p in parts])
        extra: dict[str, float] = {}
        for p in parts:
            extra.update(p.extra)
        columns = {k: [x for p in parts for x in (p.columns or {}).get(k, [None] * len(p.scores))]
                   for k in dict.fromkeys(k for p in parts for k in (p.columns or {}))}
        return Scored(torch.cat([p.scores for p in parts]), torch.cat([p.valid for p in parts]), dense,
                      {k: torch.cat([p.components[k] for p in parts]) for k in parts[0].components}, extra, columns)


def make_policy(cfg: TrainConfig, device, *, model=None, tokenizer=None, with_value_head: bool = False):
    """The policy of ``cfg.space`` (:class:`~reinlm.trainer.policy.Policy`)."""
    if cfg.space == "token":
        from reinlm.trainer.token_policy import TokenPolicy

        return TokenPolicy(cfg, device, model=model, tokenizer=tokenizer, with_value_head=with_value_head)
    from reinlm.trainer.latent_policy import LatentPolicy

    return LatentPolicy(cfg, device, with_value_head=with_value_head)


class Trainer:
    """Builds every component from a :class:`TrainConfig` and runs the loop.

    ``model``/``tokenizer``, ``reward_set`` and ``prompt_set`` may be injected (tests, notebooks);
    otherwise they are built from the config.
    """

    def __init__(self, cfg: TrainConfig, *, model=None, tokenizer=None, reward_set=None, prompt_set=None,
                 accelerator=None, degeneration=None, environment=None, env_rewards=None):
        from accelerate import Accelerator

        self.cfg = cfg
        self.run_dir = Path(cfg.out or cfg.default_out)
        self.accelerator = accelerator or Accelerator(cpu=(cfg.device == "cpu" or not torch.cuda.is_available()))
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        if self.world > 1:
            destroy_process_group_at_exit()
        if cfg.batch_prompts % self.world:
            raise ConfigError(f"batch_prompts: got {cfg.batch_prompts} with {self.world} processes; allowed: a "
                              "multiple of the number of processes (each process takes whole prompt groups).")
        seed_everything(cfg.seed)

        # --- data (before any model: bad input fails fast) ---
        from reinlm.data import load_prompts

        if cfg.environment and environment is None:  # a bad SPEC fails here, before any model loads
            environment = resolve_environment(cfg.environment, tools=cfg.tools, opponent=cfg.opponent,
                                              max_tool_calling_iterations=cfg.max_tool_calling_iterations)
        if prompt_set is None and environment is not None and cfg.prompts == "builtin:reviews":
            prompt_set = synthetic_rows(cfg.env_rows)
        full = prompt_set if prompt_set is not None else load_prompts(cfg.prompts, column=cfg.prompt_column,
                                                                     rename=cfg.rename_columns)
        self.full_prompts = full
        if cfg.held_out_fraction > 0 and len(full) >= 2:
            self.train_prompts, self.held_out = full.split(cfg.held_out_fraction, cfg.seed)
        else:
            self.train_prompts, self.held_out = full, full
        if len(self.train_prompts) == 0:
            raise ConfigError(f"prompts: {cfg.prompts!r} left no training prompts after holding out "
                              f"{cfg.held_out_fraction:.0%}; give more prompts or a smaller --held-out-fraction.")
        if self.is_main:
            from reinlm.data import held_out_line
            from reinlm.progress import note

            n_held = 0 if self.held_out is self.train_prompts else len(self.held_out)
            note(held_out_line(len(full), n_held, cfg.held_out_fraction, cfg.eval_prompts))

        # --- rewards ---
        from reinlm.rewards import parse_reward_spec

        self.reward_set = reward_set if reward_set is not None else parse_reward_spec(cfg.reward, on_error=cfg.reward_on_error)
        from reinlm.rewards.precheck import check_reward_inputs

        env_cols = ["environments"] if environment is not None else []  # reward functions get the instances
        check_reward_inputs(self.reward_set, [*full.columns, *env_cols])  # a missing column fails before any model
        self.critic = None
        if cfg.critic or cfg.critic_url:
            self.critic = cfg.llm_critic.build()

        # --- algorithm (looked up by name: docs/algorithms.md) and policy (the action space) ---
        self.algorithm = build_algorithm(cfg.algo, cfg.algorithm, cfg.ppo)
        self.needs = self.algorithm.needs
        self.policy = make_policy(cfg, self.device, model=model, tokenizer=tokenizer,
                                  with_value_head=self.needs.values)
        # conversational prompts (and --chat-template) become prompt strings here, before any rollout
        from reinlm.data import render_prompts

        self.train_texts = render_prompts(self.train_prompts.prompts, self.policy.tokenizer, cfg.chat_template)
        self.held_texts = (self.train_texts if self.held_out is self.train_prompts
                           else render_prompts(self.held_out.prompts, self.policy.tokenizer, cfg.chat_template))
        self._reward_state = None
        self.episodes = None  # --environment: trainer/episodes.py plays and scores the episodes
        if environment is not None:
            self.episodes = EpisodeRunner(cfg, self.policy, environment, reward_set=env_rewards)
            self.episodes.probe(self.train_prompts)
        # --tis auto: correct the mismatch exactly when the rollouts come from another numeric path
        self.tis_level = cfg.tis if cfg.tis != "auto" else ("none" if self.policy.rollout_logprobs_exact else "token")
        self._check_lengths()

        params = self.policy.trainable_parameters()
        if not params:
            raise ReinlmError("the policy has no trainable parameters.")
        self.optimizer = make_adamw(params, cfg.lr, cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        if self.world > 1:
            self.policy.wrap_for_ddp(self.accelerator)
        self.kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target is not None
                       else ConstantKLController(cfg.kl_coef))
        self.score_moments = RunningMoments() if cfg.score_scaling == "running" else None
        from reinlm.trainer.degeneration import DegenerationConfig, DegenerationMonitor

        self.monitor = DegenerationMonitor(degeneration or DegenerationConfig())
        self.start_step = 0
        self._timing = {"generate": 0.0, "reward": 0.0}  # seconds spent in rollouts / rewards this step
        self.last_healthy_ckpt: int | None = None

    # ------------------------------------------------------------------ set-up checks
    def _check_lengths(self) -> None:
        tok = self.policy.tokenizer
        context = self.policy.context_length
        if self.cfg.max_new_tokens >= context:
            raise ConfigError(f"max_new_tokens: got {self.cfg.max_new_tokens}; allowed: fewer than the model's "
                              f"context of {context} tokens.")
        longest = max(len(tok(p)["input_ids"]) for p in self.train_texts)
        if longest + self.cfg.max_new_tokens > context:
            raise ConfigError(f"prompts: the longest prompt has {longest} tokens, which with max_new_tokens "
                              f"{self.cfg.max_new_tokens} exceeds the model's context of {context}; shorten "
                              "the prompts or lower --max-new-tokens.")

    # ------------------------------------------------------------------ resume
    def resume(self) -> int:
        """Load the newest checkpoint of ``run_dir``; returns the step to continue from."""
        found = latest_checkpoint(self.run_dir)
        if found is None:
            raise ReinlmError(f"resume: {str(self.run_dir)!r} has no complete checkpoint under checkpoints/; "
                              "start the run without --resume.")
        step, ckpt = found
        self.policy.load(ckpt / "policy")
        load_value_head(ckpt, self.policy.value_head)
        self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
        self.scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
        state = load_trainer_state(ckpt)
        self.kl_ctl.load_state_dict(state["kl_controller"])
        if self.score_moments is not None and state.get("score_moments"):
            self.score_moments.load_state_dict(state["score_moments"])
        if self.monitor is not None and state.get("degeneration"):
            self.monitor.load_state_dict(state["degeneration"])
        self.algorithm.load_state_dict(state.get("algorithm") or {})
        set_rng_state(torch.load(ckpt / "rng.pt", weights_only=False))
        self.start_step = step
        if self.is_main:
            from reinlm.progress import note

            note(f"resumed {self.run_dir} from step {step}")  # printed from Python as from the CLI
        return step

    def _save(self, step: int) -> None:
        if not self.is_main:
            return
        self._check_weights(step)
        state = {"kl_controller": self.kl_ctl.state_dict(),
                 "score_moments": self.score_moments.state_dict() if self.score_moments else None,
                 "degeneration": self.monitor.state_dict() if self.monitor is not None else None,
                 "algorithm": self.algorithm.state_dict()}
        save_checkpoint(self.run_dir, step, policy_saver=self.policy.save, optimizer=self.optimizer,
                        scheduler=self.scheduler, trainer_state=state, config=config_to_dict(self.cfg),
                        value_head=self.policy.value_head, keep=self.cfg.keep_checkpoints)
        self.last_healthy_ckpt = step

    # ------------------------------------------------------------------ one step
    def _score(self, batch, prompt_idx: list[int], group_size: int, prompt_set=None) -> "Scored":
        """Score a batch: sequence scores, validity, dense token rewards (B, R) or None, component values.

        Rewards get TRL's arguments (docs/rewards.md): the prompts as given (message lists for conversational
        data), ``completion_ids``, the columns, ``trainer_state``, and ``log_metric`` / ``log_extra``, whose
        values become the step's ``user/<name>`` metrics and the samples' ``extra`` columns.
        """
        from reinlm.data import as_conversations

        prompt_set = prompt_set if prompt_set is not None else self.train_prompts
        columns = {k: [v[i] for i in prompt_idx for _ in range(group_size)] for k, v in prompt_set.columns.items()}
        raw = as_conversations([prompt_set.prompts[i] for i in prompt_idx for _ in range(group_size)],
                               self.cfg.chat_template)
        ids = [row[m.bool()].tolist() for row, m in zip(batch.response_ids.cpu(), batch.response_mask.cpu())]
        kwargs = dict(completion_ids=ids, trainer_state=self._reward_state, prompt_texts=list(batch.prompts))
        if self.episodes is not None:  # the environment's returns (+ reward functions, given environments=)
            scores, valid, comps, extra, cols = self.episodes.score(batch, raw, columns, **kwargs)
            return Scored(scores, valid, None, comps, extra, cols)
        result = self.reward_set.score(raw, batch.completions, columns, **kwargs)
        valid = result.valid.to(self.device).bool()
        dense = None
        token_rewards, extra = [], {}
        if getattr(self.reward_set, "has_token_level", False) or self.critic is not None:
            spans = self.policy.token_spans(batch)
            if getattr(self.reward_set, "has_token_level", False):
                token_rewards.append(self.reward_set.score_tokens(raw, batch.completions, spans, columns, **kwargs))
            if self.critic is not None:
                token_rewards.append(self.critic(batch.prompts, batch.completions, completion_token_spans=spans,
                                                 extrinsic=result.total.tolist(), **columns))
                extra.update({k: float(v) for k, v in self.critic.metrics().items()})
            R = batch.response_mask.shape[1]
            dense = torch.zeros(len(batch.completions), R, device=self.device)
            for rows in token_rewards:
                for i, row in enumerate(rows):
                    n = min(len(row), R)
                    dense[i, :n] += torch.tensor(row[:n], dtype=torch.float32, device=self.device)
        comps = {k: v.to(self.device).float() for k, v in result.components.items()}
        extra.update({f"user/{k}": v for k, v in result.metrics.items()})  # log_metric
        return Scored(result.total.to(self.device, torch.float32), valid, dense, comps, extra, result.extras)

    def _rollout_and_score(self, step: int, attempt: int) -> tuple[Any, "Scored", list[int]]:
        """This process's share of the step's prompts (``attempt`` > 0: a dynamic-sampling refill), rolled out
        and scored; also returns the prompt index of each group."""
        cfg = self.cfg
        all_idx = choose_prompts(len(self.train_prompts), cfg.batch_prompts, cfg.seed, step, attempt)
        local_idx = all_idx[self.rank::self.world]
        prompts = [self.train_texts[i] for i in local_idx]
        salt = 1000 + 1_000_003 * attempt
        seeds = [step_seed(cfg.seed, step, salt + j) for j in range(self.rank, len(all_idx), self.world)]
        t0 = time.perf_counter()
        batch = (self.policy.rollout(prompts, cfg.samples_per_prompt, seeds) if self.episodes is None else
                 self.episodes.rollout(self.train_prompts, local_idx, cfg.samples_per_prompt, seeds, step))
        t1 = time.perf_counter()
        scored = self._score(batch, local_idx, cfg.samples_per_prompt)
        self._timing["generate"] += t1 - t0
        self._timing["reward"] += time.perf_counter() - t1
        return batch, scored, local_idx

    def _collect(self, step: int) -> tuple[Any, "Scored", list[int], dict[str, float]]:
        """The step's batch: one rollout, or with ``--dynamic-sampling`` the groups that have a reward spread,
        refilled from fresh prompts for at most ``--dynamic-sampling-max-tries`` extra rollouts, then topped up
        with zero-spread groups so the batch always holds ``batch_prompts`` groups (trainer/batching.py)."""
        cfg = self.cfg
        batch, scored, idx = self._rollout_and_score(step, 0)
        if not cfg.dynamic_sampling:
            return batch, scored, idx, {}
        target = cfg.batch_prompts // self.world
        kept: list[tuple] = []  # (batch, scored, prompt idx, group id) with a spread
        flat: list[tuple] = []  # the same without
        dropped = refills = 0
        attempt = 0
        while True:
            keep, drop = select_groups(scored.scores, batch.group_ids, scored.valid)
            order = list(dict.fromkeys(batch.group_ids.tolist()))
            kept += [(batch, scored, idx[order.index(g)], g) for g in keep]
            flat += [(batch, scored, idx[order.index(g)], g) for g in drop]
            dropped += len(drop)
            if len(kept) >= target or attempt >= cfg.dynamic_sampling_max_tries:
                break
            attempt += 1
            refills += 1
            batch, scored, idx = self._rollout_and_score(step, attempt)
        chosen = (kept + flat)[:target]
        parts, scored_parts, prompt_idx = [], [], []
        for b, sc, p, g in chosen:
            rows = rows_of_groups(b.group_ids, [g])
            parts.append(b.select(rows))
            scored_parts.append(sc.select(torch.tensor(rows, device=self.device)))
            prompt_idx.append(p)
        batch = concat_rollouts(parts)
        stats = {"batch/dropped_groups": float(dropped), "batch/refill_rollouts": float(refills),
                 "batch/zero_spread_kept": float(max(0, target - len(kept)))}
        return batch, Scored.cat(scored_parts, batch.response_mask.shape[1]), prompt_idx, stats

    def _greedy_baseline(self, batch, prompt_idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """ReMax's baseline: the score of one greedy rollout per prompt through the policy, repeated over the
        prompt's samples (B,), and whether it could be scored (B,)."""
        G = self.cfg.samples_per_prompt
        greedy = self.policy.rollout(batch.prompts[::G], 1, [0] * len(prompt_idx), greedy=True)
        sc = self._score(greedy, prompt_idx, 1)
        return self._shape_scores(sc.scores, update=False).repeat_interleave(G), sc.valid.repeat_interleave(G)

    def _shape_scores(self, scores: torch.Tensor, valid: torch.Tensor | None = None, update: bool = True) -> torch.Tensor:
        """Running score scaling (``--score-scaling running``, fed the valid scores) and ``--score-clip``."""
        if self.score_moments is not None:
            if update:
                self.score_moments.update(scores if valid is None else scores[valid])
            scores = scores / max(self.score_moments.std, 1e-6)
        if self.cfg.score_clip is not None:
            scores = scores.clamp(-self.cfg.score_clip, self.cfg.score_clip)
        return scores

    def _trainer_state(self, step: int):
        """What rewards get as ``trainer_state`` at ``step`` (optimiser steps done so far)."""
        from reinlm.rewards import RewardTrainerState

        per_epoch = len(self.train_prompts) / self.cfg.batch_prompts  # steps in one pass over the prompts
        return RewardTrainerState(global_step=step, max_steps=self.cfg.steps, epoch=step / per_epoch,
                                  num_train_epochs=self.cfg.steps / per_epoch, is_world_process_zero=self.is_main,
                                  is_local_process_zero=self.accelerator.is_local_main_process)

    def train_step(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        self._timing = {"generate": 0.0, "reward": 0.0}
        self._reward_state = self._trainer_state(step)
        batch, scored, prompt_idx, batch_stats = self._collect(step)

        valid = scored.valid
        scores = self._shape_scores(scored.scores, valid) * valid.float()
        mask = batch.response_mask.float() * valid[:, None].float()  # tokens of the valid samples
        truncated = truncated_rows(batch, cfg.max_new_tokens, self.policy.eos_token_ids)
        loss_mask = mask * (~truncated).float()[:, None] if cfg.mask_truncated else mask
        B = len(batch)
        mb = min(cfg.minibatch_size or B, B)
        off_policy = cfg.update_epochs > 1 or mb < B  # several optimiser steps on this batch
        t_reward = time.perf_counter()  # rollouts and rewards done (interleaved with dynamic-sampling refills)

        # the trainer's own log-probs at the sampling parameters: with one optimiser step on the batch they come
        # free from the update's first pass (old = its detached log-probs; TIS compares them with the sampler's).
        # One no-grad forward recomputes them before the update only when something reads them first: values
        # (PPO), several optimiser steps, or a KL *reward* on rollouts from another numeric path (bf16 copy, vLLM)
        ref = self.policy.reference(batch)
        exact = self.policy.rollout_logprobs_exact
        old = None
        if self.needs.values or off_policy or (not exact and ref is not None and cfg.kl_in == "reward"):
            with torch.no_grad():
                old = self.policy.score(batch, need_values=self.needs.values)
        # KL of the sampled tokens to the reference: before the update when it enters the reward; with kl_in=loss
        # on inexact rollouts (no recompute) it is a metric only, taken after the update from the first pass
        kl_after = old is None and not exact and ref is not None
        kl = None if kl_after else self.policy.rollout_kl(batch, ref, cfg.kl_estimator,
                                                          old=None if old is None else old.logp)
        kl = kl * mask if kl is not None else None
        beta = self.kl_ctl.value
        baseline_scores = None
        if self.needs.greedy_baseline:
            baseline_scores, greedy_valid = self._greedy_baseline(batch, prompt_idx)
            valid = valid & greedy_valid  # no baseline, no advantage
        inputs = AdvantageInputs(scores=scores, valid=valid, mask=mask, group_ids=batch.group_ids.to(self.device),
                                 kl=kl, beta=beta if cfg.kl_in == "reward" else 0.0, dense=scored.dense,
                                 values=None if old is None or old.values is None else old.values.detach(),
                                 baseline_scores=baseline_scores, reduce_sum=self._reduce_sum)
        targets = (self.algorithm.advantages(inputs) if self.episodes is None else
                   self.episodes.targets(self.algorithm, inputs, batch))  # --turn-credit
        t_prep = time.perf_counter()

        old_logp = None if old is None else old.logp.detach()
        stats, seen_old = self._update(batch, old_logp, ref, loss_mask, targets, step, off_policy)
        t_update = time.perf_counter()

        trainer_logp = old_logp if old_logp is not None else seen_old
        if kl_after:
            kl = self.policy.rollout_kl(batch, ref, cfg.kl_estimator, old=seen_old) * mask
        mismatch = mismatch_stats(trainer_logp, batch.logprobs, loss_mask)
        n = len(batch.completions) * self.world
        lengths = batch.response_mask.float().sum(-1)
        vf = valid.float()
        kl_seq = (kl * mask).sum(-1) if kl is not None else torch.zeros(B, device=self.device)
        n_valid = self._reduce_sum(vf.sum())
        mean_kl = float(self._reduce_sum((kl_seq * vf).sum()) / n_valid.clamp(min=1))
        self.kl_ctl.update(mean_kl, cfg.batch_size)
        reward_mean = self._reduce_sum((scored.scores * vf).sum()) / n_valid.clamp(min=1)
        reward_sq = self._reduce_sum(((scored.scores - reward_mean).square() * vf).sum())
        metrics = {
            "reward/mean": float(reward_mean),
            "reward/std": float((reward_sq / (n_valid - 1).clamp(min=1)).sqrt()),
            **{f"reward/{k}/mean": self._masked_global_mean(v, vf) for k, v in scored.components.items()},
            **scored.extra,
            "reward/invalid_frac": 1.0 - float(n_valid) / n,
            "reward/frac_zero_std": self._global_mean(float(zero_spread(scored.scores, batch.group_ids, valid).float().mean())),
            "kl/mean": mean_kl,
            "kl/per_token": float(self._reduce_sum((kl * mask).sum()) / self._reduce_sum(mask.sum()).clamp(min=1))
            if kl is not None else 0.0,
            "kl/beta": beta,
            "response/length_mean": self._masked_global_mean(lengths, vf),
            "response/truncated_frac": self._global_mean(float(truncated.float().mean())),
            "response/invalid": int((~valid).sum()),
            "response/distinct_2": group_distinct_2(batch.completions, cfg.samples_per_prompt),
            **stats,
            **mismatch,
            **batch_stats,
            "lr": self.scheduler.get_last_lr()[0],
            "perf/completions_per_s": n / (t_update - t0),
            "perf/tokens_per_s": float(lengths.sum()) * self.world / (t_update - t0),
            "perf/step_s": t_update - t0,
            "perf/generate_s": self._timing["generate"],
            "perf/reward_s": t_reward - t0 - self._timing["generate"],
            "perf/ref_and_values_s": t_prep - t_reward,
            "perf/update_s": t_update - t_prep,
            "perf/peak_rss_mb": peak_rss_mb(),
        }
        if scored.dense is not None:
            metrics["reward/dense_mean"] = float((scored.dense * mask).sum(-1).mean())
        ppl = self.policy.reference_perplexity(batch, ref, mask)
        if ppl is not None:
            metrics["response/perplexity_ref"] = ppl
        if hasattr(self.policy, "action_stats"):  # latent space: how many of the K actions the batch used
            metrics.update(self.policy.action_stats(batch))
        if cfg.log_frozen_perplexity:
            with torch.no_grad():
                frozen = self.policy.frozen_logprobs(batch)
            metrics["response/perplexity_frozen"] = float(torch.exp(-masked_mean(frozen, mask)))
        return {"metrics": metrics, "batch": batch, "scores": scored.scores, "extras": scored.columns or {}}

    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of a tensor over processes (itself with one process)."""
        if self.world == 1:
            return t
        return self.accelerator.reduce(t.detach().float().clone(), reduction="sum")

    def _masked_global_mean(self, x: torch.Tensor, weights: torch.Tensor) -> float:
        """Mean of x over the entries with weight 1, over every process (NaN entries left out)."""
        w = weights.float() * (~torch.isnan(x)).float()
        tot = self._reduce_sum(torch.stack([(torch.nan_to_num(x) * w).sum(), w.sum()]))
        return float(tot[0] / tot[1]) if float(tot[1]) > 0 else float("nan")

    def _global_mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], device=self.device)
        return float(self.accelerator.reduce(t, reduction="mean"))

    def _update(self, batch, old_logp: torch.Tensor | None, ref: PolicyScores | None, mask: torch.Tensor,
                targets, step: int, off_policy: bool) -> tuple[dict[str, float], torch.Tensor]:
        """``update_epochs`` passes of minibatch gradient steps.

        Returns averaged statistics and the trainer's log-probs seen on the first pass (B, R) (the old
        log-probs when ``old_logp`` is None: one optimiser step, so the first pass is at the sampling
        parameters).
        """
        cfg = self.cfg
        B = mask.shape[0]
        mb = min(cfg.minibatch_size or B, B)
        seen_old = torch.zeros_like(mask)
        loss_sums: dict[str, float] = {}  # "loss/..." shares, summed within an optimiser step
        sums: dict[str, float] = {}  # other statistics, row-weighted over micro-batches
        rows = 0
        opt_steps = 0
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, 7))
        kl_coef = self.kl_ctl.value if (cfg.kl_in == "loss" and ref is not None) else 0.0
        for epoch in range(cfg.update_epochs):
            order = torch.randperm(B, generator=gen) if (epoch > 0 or mb < B) else torch.arange(B)
            for start in range(0, B, mb):
                idx = order[start:start + mb]
                norm = LossNorm(seqs=len(idx), tokens=float(self._reduce_sum(mask[idx].sum())), world=self.world,
                                max_len=cfg.max_new_tokens)
                self.optimizer.zero_grad(set_to_none=True)
                micro = max(1, math.ceil(len(idx) / cfg.grad_accum))
                for m0 in range(0, len(idx), micro):
                    sub = idx[m0:m0 + micro]
                    sub_batch = batch.select(sub.tolist())
                    scores = self.policy.score(sub_batch, need_values=self.needs.values)
                    old = old_logp[sub] if old_logp is not None else scores.logp.detach()
                    if old_logp is None:
                        seen_old[sub] = old
                    is_w = None
                    if self.tis_level != "none":
                        is_w, clipped = truncated_is_weights(old, sub_batch.logprobs, mask[sub], self.tis_level,
                                                             cfg.tis_cap, cfg.tis_clip_min, cfg.tis_mode)
                        sums["mismatch/tis_clip_fraction"] = sums.get("mismatch/tis_clip_fraction", 0.0) + \
                            tis_clip_fraction(clipped, mask[sub]) * len(sub)
                    kl = None
                    if kl_coef > 0:
                        kl = self.policy.kl_loss(sub_batch, scores, ref.select(sub))
                    inputs = LossInputs(logp=scores.logp, old_logp=old, mask=mask[sub], targets=targets.select(sub),
                                        off_policy=off_policy, is_weights=is_w, kl=kl, kl_coef=kl_coef,
                                        entropy=scores.entropy, values=scores.values,
                                        sampler_logp=sub_batch.logprobs)
                    loss, st = self.algorithm.loss(inputs, norm)
                    if self.world == 1:  # several processes: the all-reduced gradient norm below stops them all
                        check_loss(loss, step + 1, st)
                    self.policy.backward(self.accelerator, loss)
                    loss_sums["loss/total"] = loss_sums.get("loss/total", 0.0) + float(loss.detach())
                    for k, v in st.items():
                        if k.startswith("loss/"):
                            loss_sums[k] = loss_sums.get(k, 0.0) + v
                        else:
                            sums[k] = sums.get(k, 0.0) + v * len(sub)
                    rows += len(sub)
                gn = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(),
                                                    cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
                check_grad_norm(gn, step + 1)  # before the step: a NaN never reaches the weights
                sums["grad/norm"] = sums.get("grad/norm", 0.0) + float(gn) * len(idx)
                self.optimizer.step()
                self.policy.after_optimizer_step()
                self.algorithm.end_optimizer_step(self._reduce_sum)
                opt_steps += 1
        self.scheduler.step()
        stats = {k: v / max(rows, 1) for k, v in sums.items()}
        stats.update({k: v / max(opt_steps, 1) for k, v in loss_sums.items()})
        return stats, seen_old

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate_held_out(self, tag: str) -> dict[str, float]:
        """Held-out evaluation (seeded, the same draws before and after training).

        Returns the mean reward, distinct-2 within each prompt's samples, the summed KL to the reference
        (KL estimator k1; exact for latent actions), and the perplexity of the samples under the frozen
        starting model (the backbone in latent space).
        """
        cfg = self.cfg
        if cfg.eval_prompts <= 0 or len(self.held_out) == 0:
            return {}
        from reinlm.progress import task

        idx = list(range(min(cfg.eval_prompts, len(self.held_out))))
        self._reward_state = self._trainer_state(0 if tag == "before" else getattr(self, "steps_done", self.start_step))
        with task(f"held-out evaluation {tag} training ({len(idx)} prompts x {cfg.eval_samples} samples)"):
            return self._evaluate(idx)

    def _evaluate(self, idx: list[int]) -> dict[str, Any]:
        cfg = self.cfg
        prompts = [self.held_texts[i] for i in idx]
        seeds = [step_seed(cfg.seed, 10**9, 2000 + i) for i in idx]
        batch = (self.policy.rollout(prompts, cfg.eval_samples, seeds) if self.episodes is None else
                 self.episodes.rollout(self.held_out, idx, cfg.eval_samples, seeds))
        G = cfg.eval_samples
        result = self._score(batch, idx, G, prompt_set=self.held_out)
        vf = result.valid.float()
        out = {"reward_mean": float((result.scores * vf).sum() / vf.sum().clamp(min=1)),
               "n_samples": len(batch.completions), "invalid_frac": float(1 - vf.mean())}
        out["distinct_2"] = group_distinct_2(batch.completions, G)
        out["kl_to_reference"] = float(self.policy.eval_kl(batch).mean())
        mask = batch.response_mask.float()
        nll = -(self.policy.frozen_logprobs(batch) * mask).sum() / mask.sum().clamp(min=1)
        out["perplexity_frozen"] = float(torch.exp(nll))
        out["samples"] = [{"prompt": p, "completion": c, "reward": float(r) if ok else None}
                          for p, c, r, ok in list(zip(batch.prompts, batch.completions, result.scores.tolist(),
                                                      result.valid.tolist()))[:8]]
        return out

    # ------------------------------------------------------------------ the loop
    def _check_weights(self, step: int) -> None:
        """Refuse to write a checkpoint or final model with a nan/inf weight (guards.check_weights)."""
        params = self.policy.trainable_parameters()
        check_weights(((f"trainable tensor {i} {tuple(p.shape)}", p) for i, p in enumerate(params)), step,
                       "the policy")

    def train(self, resume: bool = False) -> Path:
        """Run (or continue) training; returns the run directory.

        The main process holds the run-directory lock throughout (a second writer is refused). A non-finite
        loss, gradient norm or weight stops the run with a :class:`NonFiniteError` before it reaches the
        weights or any file; the checkpoints written so far stay.
        """
        lock = RunLock(self.run_dir) if self.is_main else None
        if lock is not None:
            lock.acquire()
        try:
            return self._train(resume)
        except NonFiniteError as e:
            last = latest_checkpoint(self.run_dir) if self.is_main else None
            raise NonFiniteError(stopped_message(e, self.run_dir, last[0] if last else None)) from None
        finally:
            if lock is not None:
                lock.release()

    def _train(self, resume: bool) -> Path:
        from reinlm.progress import step_bar, task
        from reinlm.trainer.inputs import check_resume_inputs, describe_inputs, write_inputs

        cfg = self.cfg
        inputs = describe_inputs(self.full_prompts, self.reward_set)
        if self.is_main:
            for where in (self.run_dir, self.run_dir / "checkpoints"):
                for name in remove_stale_temps(where):  # leftovers of a killed write (we hold the lock)
                    log.info("removed %s/%s, left by an interrupted write", where, name)
        evaluation: dict[str, Any] = {}
        eval_path = self.run_dir / "train_eval.json"
        if self.is_main and not resume:
            # before anything is written: a reward or prompt that fails on the first samples leaves no run behind
            evaluation["before"] = self.evaluate_held_out("before")
        if resume:
            check_resume_inputs(self.run_dir, inputs)  # refuse to continue on other prompts or rewards
            self.resume()
        elif self.is_main:
            prepare_fresh_run_dir(self.run_dir, cfg.overwrite)
            write_inputs(self.run_dir, inputs)
        if self.is_main:
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
            if not resume:
                write_json(eval_path, evaluation)  # now, so a resumed run keeps the "before" half
        logger = RunLogger(self.run_dir, cfg.log, config_to_dict(cfg), enabled=self.is_main,
                           resume_step=self.start_step if resume else None)
        bar = None
        if self.is_main:  # a tqdm bar, or with --progress false one plain line per step
            bar = step_bar(cfg.steps, f"{cfg.algo}/{cfg.space}", initial=self.start_step, enabled=cfg.progress)
        stopped_reason = None
        try:
            for step in range(self.start_step, cfg.steps):
                out = self.train_step(step)
                self.steps_done = step + 1
                m = out["metrics"]
                batch = out["batch"]
                ppl = m.get("response/perplexity_ref", m.get("response/perplexity_frozen"))
                alarm = (self.monitor.observe(step + 1, batch.completions, perplexity=ppl)
                         if self.monitor is not None else None)
                m["alarm/degeneration"] = int(alarm is not None)
                logger.log_metrics(step + 1, m)
                if cfg.sample_every and (step % cfg.sample_every == 0 or step + 1 == cfg.steps):
                    logger.log_samples(step + 1, batch.prompts, batch.completions, out["scores"].tolist(),
                                       extra=out["extras"])
                if bar is not None:
                    bar.set_postfix(reward=f"{m['reward/mean']:.3f}", kl=f"{m['kl/mean']:.3f}",
                                    cps=f"{m['perf/completions_per_s']:.1f}")
                    bar.update(1)
                if alarm is not None:
                    log.warning("degeneration alarm at step %d: %s", step + 1, alarm)
                    if cfg.stop_on_degeneration:
                        stopped_reason = f"degeneration at step {step + 1}"
                        break
                if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps and self.is_main:
                    with task(f"saving checkpoint step-{step + 1}"):
                        self._save(step + 1)
        finally:
            if bar is not None:
                bar.close()
        final_step = cfg.steps if stopped_reason is None else (self.last_healthy_ckpt or 0)
        if self.is_main:
            if stopped_reason is None:
                with task(f"saving checkpoint step-{cfg.steps} and the final model in {self.run_dir / 'final'}"):
                    self._save(cfg.steps)
                    with atomic_dir(self.run_dir / "final") as tmp:
                        self.policy.save_final(tmp)
            elif self.last_healthy_ckpt is not None:
                from reinlm.trainer.checkpoint import checkpoint_dir

                self.policy.load(checkpoint_dir(self.run_dir, self.last_healthy_ckpt) / "policy")
                with atomic_dir(self.run_dir / "final") as tmp:
                    self.policy.save_final(tmp)
            evaluation["after"] = self.evaluate_held_out("after")
            if stopped_reason:
                evaluation["stopped"] = stopped_reason
            evaluation["final_step"] = final_step
            if eval_path.is_file():  # the "before" half, written at the start (possibly by an earlier process)
                from reinlm.utils.integrity import json_file_problem

                if json_file_problem(eval_path) is None:
                    import json

                    evaluation = {**json.loads(eval_path.read_text()), **evaluation}
            write_json(eval_path, evaluation)
        logger.close()
        self.accelerator.wait_for_everyone()
        return self.run_dir


RUN_OUTPUTS = ("metrics.jsonl", "samples.jsonl", "checkpoints", "final", "train_eval.json", "tb")


def previous_run_outputs(run_dir: str | Path, overwrite: bool = False) -> list[str]:
    """The outputs of an earlier run found in ``run_dir`` (names from ``RUN_OUTPUTS``).

    Raises :class:`ReinlmError` when there are some and ``overwrite`` is false, unless that run never saved a
    checkpoint or a final model (it failed at start): there is nothing to resume, so a fresh start replaces it.
    """
    found = [n for n in RUN_OUTPUTS if (Path(run_dir) / n).exists()]
    if found and not overwrite and latest_checkpoint(run_dir) is None and not (Path(run_dir) / "final").exists():
        return found
    if found and not overwrite:
        raise ReinlmError(f"out: {str(run_dir)!r} already holds a run ({', '.join(found)}); continue it with "
                          f"--resume {run_dir}, replace it with --overwrite, or choose another --out.")
    return found


def prepare_fresh_run_dir(run_dir: str | Path, overwrite: bool) -> None:
    """Create ``run_dir`` for a fresh run; an earlier run there is an error unless ``overwrite`` removes it.

    Without this check a fresh run would append its metrics to the old run's ``metrics.jsonl`` and leave the
    old checkpoints beside the new ones.
    """
    run_dir = Path(run_dir)
    found = previous_run_outputs(run_dir, overwrite)
    if found and not overwrite:
        from reinlm.progress import note

        note(f"out: {run_dir} held a run that saved no checkpoint ({', '.join(found)}); starting afresh in its place.")
    for name in found:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def train(cfg: TrainConfig, resume: bool = False, **inject) -> Path:
    """Build a :class:`Trainer` from ``cfg`` and run it; returns the run directory."""
    return Trainer(cfg, **inject).train(resume=resume)
