"""KL-coefficient controllers: the beta that multiplies the per-token KL penalty.

- :class:`ConstantKLController`: beta never changes.
- :class:`AdaptiveKLController`: Ziegler et al. 2019, "Fine-Tuning Language Models from Human
  Preferences", section 2.2: a proportional controller that steers the measured KL towards a target,

      e_t  = clip(KL_t / KL_target - 1, -0.2, 0.2)
      beta <- beta * (1 + K_beta * e_t),   K_beta = n_steps / horizon

  where n_steps is the number of samples (episodes) the KL was measured on and horizon the number of
  samples over which the error should be corrected (Ziegler et al. use horizon = 10000).
"""

from __future__ import annotations

from typing import Any

from reinlm.config.coerce import check_range


class ConstantKLController:
    """beta = ``value`` for the whole run."""

    def __init__(self, value: float):
        check_range("kl_coef", value, 0)
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No-op (the signature matches :class:`AdaptiveKLController`); returns beta."""
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019 adaptive beta (see the module docstring for the formula)."""

    max_error = 0.2  # the clip on the proportional error e_t

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        check_range("kl_coef", init_kl_coef, 0, lo_open=True)
        check_range("kl_target", target, 0, lo_open=True)
        check_range("kl_horizon", horizon, 0, lo_open=True)
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """One controller step with the KL measured on ``n_steps`` samples; returns the new beta."""
        error = min(max(float(current_kl) / self.target - 1.0, -self.max_error), self.max_error)  # e_t
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))
