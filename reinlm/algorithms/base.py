"""The contract between the trainer and an RL algorithm, and the registry the trainer looks algorithms up in.

Dimension legend: B = sequences on this process, R = response length (tokens, or latent actions).

An algorithm is one class in one module (``reinforce.py``, ``rloo.py``, ``grpo.py``, ``reinforce_pp.py``,
``remax.py``, ``ppo.py``), registered under its ``--algo`` name with :func:`register_algorithm`. It declares

- ``needs`` (:class:`Needs`): what the trainer must provide (a value head, the reward of a greedy rollout,
  at least two samples per prompt), the action spaces it runs in, and whether its update is always the
  clipped ratio surrogate;
- ``advantages(AdvantageInputs) -> Targets``: per-token advantages (and PPO's returns) for the whole batch;
- ``loss(LossInputs, LossNorm) -> (loss, stats)``: one micro-batch's share of the step loss. The default is
  the shared surrogate of :mod:`reinlm.algorithms.losses` plus the entropy bonus; PPO adds its value loss.

The trainer never branches on the algorithm's name: it reads ``needs`` and calls these two methods.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

import torch

from reinlm.algorithms.config import AlgorithmConfig, DistillConfig, PPOConfig
from reinlm.algorithms.distill import distill_share
from reinlm.algorithms.entropy_control import AdaptiveEntropyController
from reinlm.algorithms.losses import (LossNorm, aggregate, log_importance_weights, masked_mean, policy_loss,
                                      token_mean_share)
from reinlm.algorithms.token_selection import high_entropy_mask, off_policy_mask
from reinlm.algorithms.shaping import per_token_rewards
from reinlm.errors import ConfigError


def _no_reduce(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass(frozen=True)
class Needs:
    """What an algorithm needs from the trainer and where it runs."""

    values: bool = False  # a value head whose rollout-time values reach `advantages` (PPO)
    greedy_baseline: bool = False  # the reward of one greedy rollout per prompt (ReMax)
    min_group_size: int = 1  # samples per prompt it needs (2 for group baselines)
    spaces: tuple[str, ...] = ("token", "latent")  # action spaces it makes sense in
    always_clipped: bool = False  # the clipped ratio surrogate even for one on-policy update (GRPO, PPO)
    reads_baseline: bool = False  # uses --baseline (REINFORCE, REINFORCE++)


@dataclass
class AdvantageInputs:
    """Everything an algorithm may read to compute advantages for a batch of B sequences."""

    scores: torch.Tensor  # (B,) sequence scores (after --score-clip / running scaling); 0 where invalid
    valid: torch.Tensor  # (B,) bool: a reward could score the sample; invalid ones get no advantage
    mask: torch.Tensor  # (B, R) response tokens of the valid samples
    group_ids: torch.Tensor  # (B,) prompt of each sequence
    kl: torch.Tensor | None = None  # (B, R) per-token KL of the sampled tokens to the reference (rollout time)
    beta: float = 0.0  # coefficient of the KL *reward penalty* (0 when the KL is a loss term or off)
    dense: torch.Tensor | None = None  # (B, R) token-level rewards (critic spans, token rewards)
    values: torch.Tensor | None = None  # (B, R) values at rollout time (algorithms with needs.values)
    baseline_scores: torch.Tensor | None = None  # (B,) greedy-rollout reward of each sample's prompt (ReMax)
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] = _no_reduce  # all-reduce (sum) over processes

    def returns(self) -> torch.Tensor:
        """Sequence return R_i = score_i - beta sum_t kl_it + sum_t dense_it (gamma = 1): the sum over t of the
        per-token rewards of :func:`reinlm.algorithms.shaping.per_token_rewards`, so sequence-level algorithms
        optimise the same KL-penalised objective as PPO. 0 for invalid samples. (B,)."""
        out = self.scores.float().clone()
        if self.kl is not None and self.beta > 0:
            out = out - self.beta * (self.kl * self.mask).sum(-1)
        if self.dense is not None:
            out = out + (self.dense * self.mask).sum(-1)
        return out * self.valid.to(out.dtype)

    def token_rewards(self) -> torch.Tensor:
        """Per-token rewards r_t (B, R): -beta kl_t on every token, the score at the last one, dense rewards."""
        kl = self.kl if self.kl is not None else torch.zeros_like(self.mask, dtype=torch.float32)
        scores = self.scores.float() * self.valid.float()
        return per_token_rewards(scores, kl, self.mask.float(), self.beta, dense=self.dense)

    def broadcast(self, seq_advantages: torch.Tensor) -> torch.Tensor:
        """(B,) sequence advantages -> (B, R) on the valid response tokens, 0 elsewhere."""
        return seq_advantages[:, None].float() * self.mask.float()


@dataclass
class Targets:
    """What the update needs for each sequence of the batch."""

    advantages: torch.Tensor  # (B, R) per-token advantages (0 on padding and invalid samples)
    returns: torch.Tensor | None = None  # (B, R) value targets (PPO)
    old_values: torch.Tensor | None = None  # (B, R) values at rollout time (PPO)

    def select(self, idx: torch.Tensor) -> "Targets":
        """The rows ``idx`` of every tensor."""
        def rows(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx]

        return Targets(self.advantages[idx], rows(self.returns), rows(self.old_values))


@dataclass
class LossInputs:
    """One micro-batch, as the loss sees it. Tensors are (b, R) unless noted."""

    logp: torch.Tensor  # log pi(x_t) under the current parameters, with gradients
    old_logp: torch.Tensor  # the trainer's log-probs at the parameters that sampled (the ratio's denominator)
    mask: torch.Tensor  # loss mask (valid samples, truncated ones removed with --mask-truncated)
    targets: Targets  # this micro-batch's rows of the batch targets
    off_policy: bool = False  # the step makes several optimiser steps on one batch (ratios move away from 1)
    is_weights: torch.Tensor | None = None  # (b, R) or (b, 1) truncated importance weights vs the sampler
    kl: torch.Tensor | None = None  # per-token KL to the reference with gradients, when the KL is a loss term
    kl_coef: float = 0.0  # its coefficient beta
    entropy: torch.Tensor | None = None  # per-token entropy of the current policy
    values: torch.Tensor | None = None  # current values (algorithms with needs.values), with gradients
    sampler_logp: torch.Tensor | None = None  # (b, R) the sampler's log-probs (the off-policy mask; else old_logp)
    dist: torch.Tensor | None = None  # (b, R, V) the student's log-distributions with gradients (with --teacher)
    teacher_dist: torch.Tensor | None = None  # (b, R, V) the teacher's log-distributions (with --teacher)


# ----------------------------------------------------------------------------------------------- base class
class Algorithm:
    """Base class: subclasses set ``name`` and ``needs`` and implement :meth:`advantages`."""

    name: ClassVar[str] = ""
    needs: ClassVar[Needs] = Needs()

    def __init__(self, cfg: AlgorithmConfig | None = None, ppo: PPOConfig | None = None,
                 distill: DistillConfig | None = None):
        self.cfg = cfg or AlgorithmConfig()
        self.ppo = ppo or PPOConfig()
        self.distill = distill or DistillConfig()
        c = self.cfg
        self.entropy_ctl = (AdaptiveEntropyController(c.entropy_coef, c.entropy_target, c.entropy_coef_min,
                                                      c.entropy_coef_max, c.entropy_coef_delta)
                            if c.use_adaptive_entropy else None)

    def end_optimizer_step(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor] = _no_reduce) -> None:
        """Called by the trainer after every optimiser step (adaptive entropy control updates here)."""
        if self.entropy_ctl is not None:
            self.entropy_ctl.end_step(reduce_sum)

    def state_dict(self) -> dict[str, Any]:
        """Controller state a resume must restore (empty without adaptive entropy control)."""
        return {"entropy": self.entropy_ctl.state_dict()} if self.entropy_ctl is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.entropy_ctl is not None and "entropy" in state:
            self.entropy_ctl.load_state_dict(state["entropy"])

    def advantages(self, batch: AdvantageInputs) -> Targets:
        """Per-token advantages (and returns) for the batch."""
        raise NotImplementedError

    def clipped(self, off_policy: bool) -> bool:
        """Whether the update uses the clipped ratio surrogate (always for some algorithms, else only when the
        step takes several optimiser steps on one batch, where plain REINFORCE would ignore the drift)."""
        return self.needs.always_clipped or off_policy

    def loss(self, mb: LossInputs, norm: LossNorm) -> tuple[torch.Tensor, dict[str, float]]:
        """Policy surrogate (+ KL loss term) (+ entropy bonus) of one micro-batch (module docstring)."""
        cfg = self.cfg
        keep, bonus_mask, stats = None, mb.mask, {}
        if cfg.off_policy_mask_threshold is not None:
            sampler = mb.sampler_logp if mb.sampler_logp is not None else mb.old_logp
            keep = off_policy_mask(mb.targets.advantages, mb.logp, sampler, mb.mask, cfg.off_policy_mask_threshold)
            stats["policy/off_policy_masked_fraction"] = float(1.0 - masked_mean(keep.expand_as(mb.mask), mb.mask))
        if cfg.top_entropy_quantile < 1.0 and mb.entropy is not None:
            high = high_entropy_mask(mb.entropy.detach(), mb.mask, cfg.top_entropy_quantile).to(mb.logp.dtype)
            keep = high if keep is None else keep * high
            bonus_mask = mb.mask * high
        pg, pg_stats = policy_loss(mb.logp, mb.old_logp, mb.targets.advantages, mb.mask, norm,
                                   loss_type=cfg.loss_type, clipped=self.clipped(mb.off_policy),
                                   clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high,
                                   clip_ratio_c=cfg.clip_ratio_c,
                                   importance_sampling_level=cfg.importance_sampling_level,
                                   is_weights=mb.is_weights, keep=keep,
                                   sapo_temperatures=(cfg.sapo_temperature_pos, cfg.sapo_temperature_neg),
                                   vespo_params=(cfg.vespo_k_pos, cfg.vespo_lambda_pos, cfg.vespo_k_neg,
                                                 cfg.vespo_lambda_neg))
        stats.update({f"policy/{k}": v for k, v in pg_stats.items()})
        stats["loss/policy"] = float(pg.detach())
        loss = pg
        if mb.kl is not None and mb.kl_coef > 0:
            kl = mb.kl
            if cfg.use_bias_correction_kl:  # DeepSeek-V3.2: the ratio (with gradient) times the KL estimate
                kl = kl * log_importance_weights(mb.logp, mb.old_logp, mb.mask, cfg.importance_sampling_level).exp()
            kl_term = aggregate(kl, mb.mask, cfg.loss_type, norm)  # same normaliser as the policy term
            loss = loss + mb.kl_coef * kl_term
            stats["loss/kl"] = float(kl_term.detach())
        if mb.entropy is not None:
            stats["policy/entropy"] = float(masked_mean(mb.entropy.detach(), mb.mask))
            coef = cfg.entropy_coef
            if self.entropy_ctl is not None:
                coef = self.entropy_ctl.applied()
                self.entropy_ctl.observe(mb.entropy, bonus_mask)
                stats["policy/entropy_coef"] = self.entropy_ctl.coef
            if coef:  # Mnih et al. 2016: L - c H, the mean per-token entropy
                loss = loss - coef * token_mean_share(mb.entropy, bonus_mask, norm)
        if mb.teacher_dist is not None:  # --teacher beside the reward: + distill_coef x the distillation loss
            share, d_stats = distill_share(mb.dist, mb.teacher_dist, mb.mask, norm, self.distill)
            loss = loss + self.distill.distill_coef * share
            stats.update(d_stats)
        return loss, stats


# ----------------------------------------------------------------------------------------------- registry
ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator: make the algorithm available as ``--algo name``."""

    def wrap(cls: type[Algorithm]) -> type[Algorithm]:
        cls.name = name
        ALGORITHMS[name] = cls
        return cls

    return wrap


def available_algorithms() -> list[str]:
    """Registered algorithm names (importing :mod:`reinlm.algorithms` registers the built-ins)."""
    import reinlm.algorithms  # noqa: F401  (registers the built-ins)

    return list(ALGORITHMS)


def get_algorithm(name: str) -> type[Algorithm]:
    """The algorithm class registered as ``name``; :class:`ConfigError` listing the names otherwise."""
    names = available_algorithms()
    if name not in ALGORITHMS:
        raise ConfigError(f"algo: got {name!r}; allowed: {', '.join(names)}.")
    return ALGORITHMS[name]


def build_algorithm(name: str, cfg: AlgorithmConfig | None = None, ppo: PPOConfig | None = None,
                    distill: DistillConfig | None = None) -> Algorithm:
    """An instance of the algorithm registered as ``name``."""
    return get_algorithm(name)(cfg, ppo, distill)


__all__ = ["ALGORITHMS", "AdvantageInputs", "Algorithm", "LossInputs", "LossNorm", "Needs", "Targets",
           "available_algorithms", "build_algorithm", "get_algorithm", "register_algorithm"]
