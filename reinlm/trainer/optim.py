"""The policy's optimiser and learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from reinlm.schedules import lr_multiplier
from reinlm.trainer.config import TrainConfig


def make_adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW, with the fused kernel where this torch build has it for the parameters' device (same math)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)


def optimizer_steps_per_step(cfg: TrainConfig, world: int) -> int:
    """Optimiser steps in one rollout step: ``update_epochs`` x ceil(B / minibatch), B = this process's sequences
    (``batch_prompts x samples_per_prompt / world``)."""
    B = cfg.batch_size // world
    mb = min(cfg.minibatch_size or B, B)
    return cfg.update_epochs * math.ceil(B / mb)


def lr_lambda(cfg: TrainConfig, per_step: int = 1) -> Callable[[int], float]:
    """Multiplier of the base learning rate: linear warm-up, then the decay schedule
    (:func:`reinlm.schedules.lr_multiplier`, warm-up before the decay).

    It counts optimiser steps, as TRL's does, ``per_step`` of them per rollout step
    (:func:`optimizer_steps_per_step`; the scheduler is stepped after every optimiser step): T = steps x
    per_step; the warm-up is ``--warmup-steps`` optimiser steps, or ceil(T x warmup_ratio) with
    ``--warmup-ratio`` (transformers' ``get_warmup_steps``). With one optimiser step per rollout step (the
    default) optimiser and rollout steps are the same.
    """
    total = cfg.steps * per_step
    warmup = math.ceil(total * cfg.warmup_ratio) if cfg.warmup_ratio is not None else cfg.warmup_steps
    return lr_multiplier(total, warmup, cfg.lr_schedule, warmup_inside=False)
