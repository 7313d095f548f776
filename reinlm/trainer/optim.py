"""The policy's optimiser and learning-rate schedule."""

from __future__ import annotations

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


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the base learning rate at an optimiser step: linear warm-up, then the decay schedule
    (:func:`reinlm.schedules.lr_multiplier`, warm-up before the decay)."""
    return lr_multiplier(cfg.steps, cfg.warmup_steps, cfg.lr_schedule, warmup_inside=False)
