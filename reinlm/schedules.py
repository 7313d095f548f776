"""Learning-rate schedules: the multiplier of the base learning rate at optimiser step s (for ``LambdaLR``).

One formula for every trainer (latent pretraining and fine-tuning here; ``trainer/optim.py``'s ``lr_lambda`` calls
the same formula with ``warmup_inside=False``). Legend: s = optimiser step (0-based), T = total steps,
w = warm-up steps.
"""

from __future__ import annotations

import math
from typing import Callable

DECAYS = ("constant", "linear", "cosine")


def lr_multiplier(total: int, warmup: int = 0, decay: str = "cosine", warmup_inside: bool = False
                  ) -> Callable[[int], float]:
    """s -> the learning-rate multiplier.

    Linear warm-up (s + 1) / w, then the decay d(f) = 1 (constant), 1 - f (linear) or (1 + cos(pi f)) / 2
    (cosine, Loshchilov & Hutter 2017).
    - ``warmup_inside=False`` (the RL trainer): the warm-up replaces the first w steps and the decay runs over
      the T - w steps after it, f = min(1, (s - w) / max(1, T - w)).
    - ``warmup_inside=True`` (latent pretraining): the warm-up factor min(1, (s + 1) / w) multiplies a decay
      that runs over all T steps from step 0, f = min(s, T) / max(T, 1).
    ``warmup=0``: no warm-up (both forms then give the same multipliers).
    """
    if decay not in DECAYS:
        raise ValueError(f"decay: got {decay!r}; allowed: {', '.join(DECAYS)}")

    def shape(f: float) -> float:
        if decay == "constant":
            return 1.0
        return 1.0 - f if decay == "linear" else 0.5 * (1 + math.cos(math.pi * f))

    if warmup_inside:
        return lambda s: (min(1.0, (s + 1) / warmup) if warmup else 1.0) * shape(min(s, total) / max(total, 1))

    def fn(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        return shape(min(1.0, (s - warmup) / max(1, total - warmup)))
    return fn
