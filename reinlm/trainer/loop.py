"""The training loop shared by every algorithm and both action spaces.

One step: choose prompts -> roll out G samples per prompt -> score (sequence and token rewards) ->
reference log-probs and per-token KL -> advantages -> ``update_epochs`` passes of minibatch updates ->
KL controller update -> metrics, samples, checkpoint. The same code runs as one process or as several
(torchrun on the CPU, ``accelerate launch`` on GPUs): each process takes a slice of the step's prompts,
gradients are averaged.

Dimension legend: B = sequences on this process, R = response length (tokens, or latent actions).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from reinlm.algorithms.controllers import AdaptiveKLController, ConstantKLController
from reinlm.algorithms.losses import clipped_policy_loss, masked_mean, policy_gradient_loss
from reinlm.algorithms.ppo import clipped_value_loss
from reinlm.algorithms.shaping import RunningMoments
from reinlm.config import config_to_dict
from reinlm.errors import ConfigError, ReinlmError
from reinlm.trainer.advantages import batch_kl_stats, compute_targets
from reinlm.trainer.checkpoint import latest_checkpoint, load_trainer_state, load_value_head, save_checkpoint
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.logging import RunLogger
from reinlm.utils import peak_rss_mb, seed_everything, set_rng_state, write_json

log = logging.getLogger("reinlm")


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """A deterministic 63-bit seed for (run seed, step, salt): resumed runs replay the same draws."""
    return int(np.random.SeedSequence([seed, step, salt]).generate_state(1, dtype=np.uint64)[0] >> 1)


def choose_prompts(n_prompts: int, batch_prompts: int, seed: int, step: int) -> list[int]:
    """Indices of the prompts used at ``step`` (a fresh permutation slice per step, seeded)."""
    rng = np.random.default_rng(step_seed(seed, step, 1))
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


class Trainer:
    """Builds every component from a :class:`TrainConfig` and runs the loop.

    ``model``/``tokenizer``, ``reward_set`` and ``prompt_set`` may be injected (tests, notebooks);
    otherwise they are built from the config.
    """

    def __init__(self, cfg: TrainConfig, *, model=None, tokenizer=None, reward_set=None, prompt_set=None,
                 accelerator=None, degeneration=None):
        from accelerate import Accelerator

        self.cfg = cfg
        self.run_dir = Path(cfg.out or cfg.default_out)
        self.accelerator = accelerator or Accelerator(cpu=(cfg.device == "cpu" or not torch.cuda.is_available()))
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        if cfg.batch_prompts % self.world:
            raise ConfigError(f"batch_prompts: got {cfg.batch_prompts} with {self.world} processes; allowed: a "
                              "multiple of the number of processes (each process takes whole prompt groups).")
        seed_everything(cfg.seed)

        # --- data (before any model: bad input fails fast) ---
        from reinlm.data import load_prompts

        full = prompt_set if prompt_set is not None else load_prompts(cfg.prompts, column=cfg.prompt_column)
        if cfg.held_out_fraction > 0 and len(full) >= 2:
            self.train_prompts, self.held_out = full.split(cfg.held_out_fraction, cfg.seed)
        else:
            self.train_prompts, self.held_out = full, full
        if len(self.train_prompts) == 0:
            raise ConfigError(f"prompts: {cfg.prompts!r} left no training prompts after holding out "
                              f"{cfg.held_out_fraction:.0%}; give more prompts or a smaller --held-out-fraction.")

        # --- rewards ---
        from reinlm.rewards import parse_reward_spec

        self.reward_set = reward_set if reward_set is not None else parse_reward_spec(cfg.reward, on_error=cfg.reward_on_error)
        self.critic = None
        if cfg.critic or cfg.critic_url:
            self.critic = cfg.critic_config.build()

        # --- policy ---
        if cfg.space == "token":
            from reinlm.trainer.token_policy import TokenPolicy

            self.policy = TokenPolicy(cfg, self.device, model=model, tokenizer=tokenizer)
        else:
            from reinlm.trainer.latent_policy import LatentPolicy

            self.policy = LatentPolicy(cfg, self.device)
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
        self.last_healthy_ckpt: int | None = None

    # ------------------------------------------------------------------ set-up checks
    def _check_lengths(self) -> None:
        tok = self.policy.tokenizer
        context = self.policy.context_length
        if self.cfg.max_new_tokens >= context:
            raise ConfigError(f"max_new_tokens: got {self.cfg.max_new_tokens}; allowed: fewer than the model's "
                              f"context of {context} tokens.")
        longest = max(len(tok(p)["input_ids"]) for p in self.train_prompts.prompts)
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
        set_rng_state(torch.load(ckpt / "rng.pt", weights_only=False))
        self.start_step = step
        if self.is_main:
            log.info("resumed %s from step %d", self.run_dir, step)
        return step

    def _save(self, step: int) -> None:
        if not self.is_main:
            return
        state = {"kl_controller": self.kl_ctl.state_dict(),
                 "score_moments": self.score_moments.state_dict() if self.score_moments else None,
                 "degeneration": self.monitor.state_dict() if self.monitor is not None else None}
        save_checkpoint(self.run_dir, step, policy_saver=self.policy.save, optimizer=self.optimizer,
                        scheduler=self.scheduler, trainer_state=state, config=config_to_dict(self.cfg),
                        value_head=self.policy.value_head, keep=self.cfg.keep_checkpoints)
        self.last_healthy_ckpt = step

    # ------------------------------------------------------------------ one step
    def _score(self, batch, prompt_idx: list[int]) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor | None]:
        """Sequence scores (B,), per-component means, validity (B,) and dense token rewards (B, R) or None."""
        G = self.cfg.samples_per_prompt
        columns = {k: [v[i] for i in prompt_idx for _ in range(G)] for k, v in self.train_prompts.columns.items()}
        result = self.reward_set.score(batch.prompts, batch.completions, columns)
        scores = result.total.to(self.device, torch.float32)
        comps = {f"reward/{k}/mean": float(v.float().mean()) for k, v in result.components.items()}
        dense = None
        token_rewards = []
        if getattr(self.reward_set, "has_token_level", False) or self.critic is not None:
            spans = self.policy.token_spans(batch)
            if getattr(self.reward_set, "has_token_level", False):
                token_rewards.append(self.reward_set.score_tokens(batch.prompts, batch.completions, spans, columns))
            if self.critic is not None:
                token_rewards.append(self.critic(batch.prompts, batch.completions, completion_token_spans=spans,
                                                 extrinsic=scores.tolist(), **columns))
                comps.update({k: float(v) for k, v in self.critic.metrics().items()})
            R = batch.response_mask.shape[1]
            dense = torch.zeros(len(batch.completions), R, device=self.device)
            for rows in token_rewards:
                for i, row in enumerate(rows):
                    n = min(len(row), R)
                    dense[i, :n] += torch.tensor(row[:n], dtype=torch.float32, device=self.device)
            comps["reward/dense_mean"] = float((dense * batch.response_mask).sum(-1).mean())
        return scores, comps, result.valid.to(self.device), dense

    def train_step(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        all_idx = choose_prompts(len(self.train_prompts), cfg.batch_prompts, cfg.seed, step)
        local_idx = all_idx[self.rank::self.world]
        prompts = [self.train_prompts.prompts[i] for i in local_idx]
        seeds = [step_seed(cfg.seed, step, 1000 + j) for j in range(self.rank, len(all_idx), self.world)]
        batch = self.policy.rollout(prompts, cfg.samples_per_prompt, seeds)
        t_gen = time.perf_counter()

        scores, comp_metrics, valid, dense = self._score(batch, local_idx)
        raw_scores = scores.clone()
        if self.score_moments is not None:
            self.score_moments.update(scores)
            scores = scores / max(self.score_moments.std, 1e-6)
        mask = batch.response_mask.float() * valid[:, None].float()  # skipped samples contribute nothing
        t_reward = time.perf_counter()

        ref_logp = self.policy.ref_logprobs(batch)
        old_logp = batch.logprobs
        kl = self.policy.rollout_kl(batch, ref_logp, cfg.kl_estimator)
        kl = kl * mask if kl is not None else None
        beta = self.kl_ctl.value
        values = None
        if cfg.algo == "ppo":
            with torch.no_grad():
                values = self.policy.logprobs(batch, need_values=True)[2].detach()
        baseline_scores = self.policy.greedy_baseline(self, batch, local_idx) if cfg.algo == "remax" else None
        targets = compute_targets(cfg, scores, kl, mask, batch.group_ids.to(self.device), beta, dense=dense,
                                  values=values, baseline_scores=baseline_scores)
        t_prep = time.perf_counter()

        stats = self._update(batch, old_logp, ref_logp, mask, targets, step)
        t_update = time.perf_counter()

        kl_stats = batch_kl_stats(kl, mask)
        if ref_logp is not None and ref_logp.dim() == 2 and cfg.temperature == 1.0:
            # the frozen reference's perplexity of the samples: a degeneration signal, free at temperature 1
            tokens = batch.response_mask.float()
            kl_stats["response/perplexity_ref"] = float(torch.exp(-(ref_logp * tokens).sum() / tokens.sum().clamp(min=1)))
        mean_kl = self._global_mean(kl_stats.get("kl/mean", 0.0))
        self.kl_ctl.update(mean_kl, cfg.batch_size)
        n = len(batch.completions) * self.world
        lengths = batch.response_mask.float().sum(-1)
        metrics = {
            "reward/mean": self._global_mean(float(raw_scores.mean())),
            "reward/std": float(raw_scores.std()) if len(raw_scores) > 1 else 0.0,
            **comp_metrics,
            "kl/mean": mean_kl,
            "kl/per_token": kl_stats.get("kl/per_token", 0.0),
            "kl/beta": beta,
            "response/length_mean": float(lengths.mean()),
            "response/invalid": int((~valid.bool()).sum()),
            "response/distinct_2": group_distinct_2(batch.completions, cfg.samples_per_prompt),
            **stats,
            **{k: v for k, v in kl_stats.items() if k.startswith("response/")},
            "lr": self.scheduler.get_last_lr()[0],
            "perf/completions_per_s": n / (t_update - t0),
            "perf/tokens_per_s": float(lengths.sum()) * self.world / (t_update - t0),
            "perf/step_s": t_update - t0,
            "perf/generate_s": t_gen - t0,
            "perf/reward_s": t_reward - t_gen,
            "perf/ref_and_values_s": t_prep - t_reward,
            "perf/update_s": t_update - t_prep,
            "perf/peak_rss_mb": peak_rss_mb(),
        }
        return {"metrics": metrics, "batch": batch, "scores": raw_scores}

    def _global_mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], device=self.device)
        return float(self.accelerator.reduce(t, reduction="mean"))

    def _update(self, batch, old_logp, ref_logp, mask, targets, step: int) -> dict[str, float]:
        """``update_epochs`` passes of minibatch gradient steps; returns averaged loss statistics."""
        cfg = self.cfg
        B = mask.shape[0]
        mb = cfg.minibatch_size or B
        mb = min(mb, B)
        sums: dict[str, float] = {}
        count = 0
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, 7))
        for epoch in range(cfg.update_epochs):
            order = torch.randperm(B, generator=gen) if (epoch > 0 or mb < B) else torch.arange(B)
            for start in range(0, B, mb):
                idx = order[start:start + mb]
                self.optimizer.zero_grad(set_to_none=True)
                micro = max(1, math.ceil(len(idx) / cfg.grad_accum))
                for m0 in range(0, len(idx), micro):
                    sub = idx[m0:m0 + micro]
                    loss, st = self._loss(batch.select(sub.tolist()), old_logp[sub], None if ref_logp is None else ref_logp[sub],
                                          mask[sub], targets, sub)
                    self.policy.backward(self.accelerator, loss * len(sub) / len(idx))
                    for k, v in st.items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1
                if cfg.max_grad_norm > 0:
                    gn = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), cfg.max_grad_norm)
                    sums["grad/norm"] = sums.get("grad/norm", 0.0) + float(gn) * math.ceil(len(idx) / micro)
                self.optimizer.step()
        self.scheduler.step()
        return {k: v / max(count, 1) for k, v in sums.items()}

    def _loss(self, sub_batch, old_logp, ref_logp, mask, targets, idx):
        cfg = self.cfg
        need_values = cfg.algo == "ppo"
        logp, entropy, values = self.policy.logprobs(sub_batch, need_values=need_values)
        adv = targets.advantages[idx]
        stats: dict[str, float] = {}
        if cfg.algo in ("grpo", "ppo") or cfg.update_epochs > 1:
            pg_loss, pg_stats = clipped_policy_loss(logp, old_logp, adv, mask, cfg.clip_eps,
                                                    aggregation=cfg.loss_aggregation)
            stats.update({f"policy/{k}": float(v) for k, v in pg_stats.items()})
        else:
            pg_loss = policy_gradient_loss(logp, adv, mask, aggregation=cfg.loss_aggregation)
        loss = pg_loss
        stats["loss/policy"] = float(pg_loss.detach())
        if cfg.kl_in == "loss" and ref_logp is not None and self.kl_ctl.value > 0:
            kl_loss = masked_mean(self.policy.kl_loss(sub_batch, logp, ref_logp), mask)
            loss = loss + self.kl_ctl.value * kl_loss
            stats["loss/kl"] = float(kl_loss.detach())
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * masked_mean(entropy, mask)
        if need_values:
            v_loss, v_stats = clipped_value_loss(values, targets.old_values[idx], targets.returns[idx], mask, cfg.value_clip)
            loss = loss + cfg.vf_coef * v_loss
            stats["loss/value"] = float(v_loss.detach())
            stats.update({f"value/{k}": float(v) for k, v in v_stats.items()})
        stats["policy/entropy"] = float(masked_mean(entropy.detach(), mask))
        stats["loss/total"] = float(loss.detach())
        return loss, stats

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
        idx = list(range(min(cfg.eval_prompts, len(self.held_out))))
        prompts = [self.held_out.prompts[i] for i in idx]
        seeds = [step_seed(cfg.seed, 10**9, 2000 + i) for i in idx]
        batch = self.policy.rollout(prompts, cfg.eval_samples, seeds)
        G = cfg.eval_samples
        columns = {k: [v[i] for i in idx for _ in range(G)] for k, v in self.held_out.columns.items()}
        result = self.reward_set.score(batch.prompts, batch.completions, columns)
        out = {"reward_mean": float(result.total.float().mean()), "n_samples": len(batch.completions)}
        out["distinct_2"] = group_distinct_2(batch.completions, G)
        out["kl_to_reference"] = float(self.policy.eval_kl(batch).mean())
        mask = batch.response_mask.float()
        nll = -(self.policy.frozen_logprobs(batch) * mask).sum() / mask.sum().clamp(min=1)
        out["perplexity_frozen"] = float(torch.exp(nll))
        out["samples"] = [{"prompt": p, "completion": c, "reward": float(r)}
                          for p, c, r in list(zip(batch.prompts, batch.completions, result.total.tolist()))[:8]]
        return out

    # ------------------------------------------------------------------ the loop
    def train(self, resume: bool = False) -> Path:
        """Run (or continue) training; returns the run directory."""
        cfg = self.cfg
        if resume:
            self.resume()
        elif self.is_main:
            prepare_fresh_run_dir(self.run_dir, cfg.overwrite)
        if self.is_main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        logger = RunLogger(self.run_dir, cfg.log, config_to_dict(cfg), enabled=self.is_main,
                           resume_step=self.start_step if resume else None)
        evaluation: dict[str, Any] = {}
        if self.is_main and not resume:
            evaluation["before"] = self.evaluate_held_out("before")
        bar = None
        if cfg.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.start_step, desc=f"{cfg.algo}/{cfg.space}", unit="step")
        stopped_reason = None
        try:
            for step in range(self.start_step, cfg.steps):
                out = self.train_step(step)
                m = out["metrics"]
                batch = out["batch"]
                alarm = (self.monitor.observe(step + 1, batch.completions, perplexity=m.get("response/perplexity_ref"))
                         if self.monitor is not None else None)
                m["alarm/degeneration"] = int(alarm is not None)
                logger.log_metrics(step + 1, m)
                if cfg.sample_every and (step % cfg.sample_every == 0 or step + 1 == cfg.steps):
                    logger.log_samples(step + 1, batch.prompts, batch.completions, out["scores"].tolist())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{m['reward/mean']:.3f}", kl=f"{m['kl/mean']:.3f}",
                                    cps=f"{m['perf/completions_per_s']:.1f}")
                if alarm is not None:
                    log.warning("degeneration alarm at step %d: %s", step + 1, alarm)
                    if cfg.stop_on_degeneration:
                        stopped_reason = f"degeneration at step {step + 1}"
                        break
                if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                    self._save(step + 1)
        finally:
            if bar is not None:
                bar.close()
        final_step = cfg.steps if stopped_reason is None else (self.last_healthy_ckpt or 0)
        if self.is_main:
            if stopped_reason is None:
                self._save(cfg.steps)
                self.policy.save_final(self.run_dir / "final")
            elif self.last_healthy_ckpt is not None:
                from reinlm.trainer.checkpoint import checkpoint_dir

                self.policy.load(checkpoint_dir(self.run_dir, self.last_healthy_ckpt) / "policy")
                self.policy.save_final(self.run_dir / "final")
            evaluation["after"] = self.evaluate_held_out("after")
            if stopped_reason:
                evaluation["stopped"] = stopped_reason
            evaluation["final_step"] = final_step
            prev = self.run_dir / "train_eval.json"
            if resume and prev.is_file():
                import json

                evaluation = {**json.loads(prev.read_text()), **evaluation}
            write_json(prev, evaluation)
        logger.close()
        self.accelerator.wait_for_everyone()
        return self.run_dir


RUN_OUTPUTS = ("metrics.jsonl", "samples.jsonl", "checkpoints", "final", "train_eval.json", "tb")


def previous_run_outputs(run_dir: str | Path, overwrite: bool = False) -> list[str]:
    """The outputs of an earlier run found in ``run_dir`` (names from ``RUN_OUTPUTS``).

    Raises :class:`ReinlmError` when there are some and ``overwrite`` is false.
    """
    found = [n for n in RUN_OUTPUTS if (Path(run_dir) / n).exists()]
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
    for name in found:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def train(cfg: TrainConfig, resume: bool = False, **inject) -> Path:
    """Build a :class:`Trainer` from ``cfg`` and run it; returns the run directory."""
    return Trainer(cfg, **inject).train(resume=resume)
