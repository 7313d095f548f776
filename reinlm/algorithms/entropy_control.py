"""Adaptive entropy control (He et al. 2025, "Skywork Open Reasoner 1", section 3.2.3; TRL's
``use_adaptive_entropy``).

The bonus coefficient c moves after every optimiser step by the step's mean per-token entropy H over the tokens
the bonus acts on (every micro-batch and process):

    c <- min(c + delta, c_max)   if H <= H_target
    c <- max(c - delta, c_min)   otherwise

and a micro-batch applies c only while the previous step's H was at or below the target (so the bonus switches
off while entropy is high enough). The first step applies no bonus (H of "no step" is +inf), as in TRL.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch


class AdaptiveEntropyController:
    """The coefficient c and the running window of the current optimiser step (module docstring)."""

    def __init__(self, coef: float, target: float, coef_min: float, coef_max: float, delta: float):
        self.coef, self.target = float(coef), float(target)
        self.coef_min, self.coef_max, self.delta = float(coef_min), float(coef_max), float(delta)
        self.last_entropy = math.inf
        self._window: torch.Tensor | None = None  # (2,) entropy sum and token count of this step so far

    def applied(self) -> float:
        """The coefficient a micro-batch of the current step applies."""
        return self.coef if self.last_entropy <= self.target else 0.0

    def observe(self, entropy: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a micro-batch's entropies (B, R) over ``mask`` (B, R) to the step's window."""
        m = mask.to(entropy.dtype)
        stats = torch.stack([(entropy.detach() * m).sum(), m.sum()]).double()
        self._window = stats if self._window is None else self._window + stats

    def end_step(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        """At the optimiser-step boundary: the step's entropy over every process, then the update of c."""
        if self._window is None:
            return
        total = reduce_sum(self._window)
        h = float(total[0] / total[1].clamp(min=1.0))
        if h <= self.target:
            self.coef = min(self.coef + self.delta, self.coef_max)
        else:
            self.coef = max(self.coef - self.delta, self.coef_min)
        self.last_entropy, self._window = h, None

    def state_dict(self) -> dict[str, Any]:
        return {"entropy_coef": self.coef, "last_entropy": self.last_entropy}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coef, self.last_entropy = float(state["entropy_coef"]), float(state["last_entropy"])
