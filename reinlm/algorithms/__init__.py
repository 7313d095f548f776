"""reinlm.algorithms: one module per RL algorithm, the shared math as small pure functions, a registry.

Algorithms (each registered under its ``--algo`` name; docs/algorithms.md has one section per file):
``reinforce`` (baselines), ``rloo`` (leave-one-out), ``grpo`` (group-normalised, clipped ratio),
``reinforce_pp`` (REINFORCE++, global normalisation), ``remax`` (greedy-rollout baseline), ``ppo`` (value
head, GAE), ``distill`` (on-policy distillation from a teacher: ``onpolicy_distill``). The contract with the
trainer is :mod:`reinlm.algorithms.base`.

Shared pieces: ``losses`` (masked reductions, ``loss_type`` aggregation, the clipped / dual-clip / GSPO /
CISPO surrogate), ``mismatch`` (truncated importance sampling against the sampler), ``groups`` (group
statistics over valid samples), ``kl`` (estimators k1/k2/k3), ``controllers`` (constant, adaptive beta),
``shaping`` (per-token rewards, running score scaling), ``config`` (the settings the algorithms read).
"""

from reinlm.algorithms import grpo, ppo, reinforce, reinforce_pp, remax, rloo  # noqa: F401  (registers them)
from reinlm.algorithms import onpolicy_distill  # noqa: F401,I001  (registered last: --help lists it last)
from reinlm.algorithms.base import (ALGORITHMS, AdvantageInputs, Algorithm, LossInputs, Needs, Targets,
                                    available_algorithms, build_algorithm, get_algorithm, register_algorithm)
from reinlm.algorithms.config import AlgorithmConfig, PPOConfig
from reinlm.algorithms.controllers import AdaptiveKLController, ConstantKLController
from reinlm.algorithms.grpo import group_advantages
from reinlm.algorithms.kl import kl_estimate
from reinlm.algorithms.losses import LossNorm, aggregate, masked_mean, masked_whiten, policy_loss
from reinlm.algorithms.mismatch import mismatch_stats, truncated_is_weights
from reinlm.algorithms.ppo import clipped_value_loss, gae
from reinlm.algorithms.reinforce import reinforce_advantages
from reinlm.algorithms.shaping import RunningMoments, per_token_rewards

__all__ = [
    "ALGORITHMS", "AdaptiveKLController", "AdvantageInputs", "Algorithm", "AlgorithmConfig", "ConstantKLController",
    "LossInputs", "LossNorm", "Needs", "PPOConfig", "RunningMoments", "Targets", "aggregate", "available_algorithms",
    "build_algorithm", "clipped_value_loss", "gae", "get_algorithm", "group_advantages", "kl_estimate", "masked_mean",
    "masked_whiten", "mismatch_stats", "per_token_rewards", "policy_loss", "register_algorithm",
    "reinforce_advantages", "truncated_is_weights",
]
