"""reinlm.algorithms: advantages, losses, KL estimators and controllers as small pure functions.

One module per concept: ``kl`` (estimators k1/k2/k3), ``controllers`` (constant, adaptive beta),
``shaping`` (per-token rewards, running score scaling), ``reinforce`` (baselines, RLOO), ``grpo`` (group
normalisation), ``losses`` (masked reductions, policy-gradient and clipped losses), ``ppo`` (GAE, value
loss, value head). See docs/algorithms.md for the formulas and references.
"""

from reinlm.algorithms.controllers import AdaptiveKLController, ConstantKLController
from reinlm.algorithms.grpo import group_advantages
from reinlm.algorithms.kl import kl_estimate
from reinlm.algorithms.losses import (clipped_policy_loss, masked_mean, masked_whiten, policy_gradient_loss)
from reinlm.algorithms.ppo import clipped_value_loss, gae
from reinlm.algorithms.reinforce import reinforce_advantages
from reinlm.algorithms.shaping import RunningMoments, per_token_rewards

__all__ = [
    "AdaptiveKLController", "ConstantKLController", "RunningMoments", "clipped_policy_loss", "clipped_value_loss",
    "gae", "group_advantages", "kl_estimate", "masked_mean", "masked_whiten", "per_token_rewards",
    "policy_gradient_loss", "reinforce_advantages",
]
