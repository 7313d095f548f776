"""The settings the algorithms read: the policy update, PPO's value function, the KL anchor.

Each field is documented once, here, with its allowed range; ``reinlm train`` turns them into flags with the
same names (``--loss-type``, ``--clip-eps-high``, ``--kl-coef``, ...). Formulas: docs/algorithms.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reinlm.config import Config, opt
from reinlm.errors import ConfigError


@dataclass
class AlgorithmConfig(Config):
    """How advantages are formed and how the policy loss is built (every algorithm)."""

    baseline: Literal["none", "batch_mean", "group_mean", "leave_one_out"] = opt(
        "group_mean", "REINFORCE and REINFORCE++ baseline subtracted from the return (rloo always uses leave_one_out)")
    scale_rewards: Literal["group", "batch", "none"] = opt(
        "group", "GRPO: divide the group-centred return by the std of its group, of the whole batch, or not at all")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo"] = opt(
        "grpo", "how per-token losses become one number (TRL's definitions): grpo sequence mean; bnpo token mean "
        "per micro-batch; dr_grpo sum / (sequences x max_new_tokens); dapo token mean over the whole step (all "
        "micro-batches and processes); cispo clipped detached weights times log-probs, dapo's normaliser")
    clip_eps: float = opt(0.2, "ratio clip: the lower bound is 1 - clip_eps (and the upper one unless --clip-eps-high)",
                           lo=0, lo_open=True, hi=1)
    clip_eps_high: float | None = opt(
        None, "upper ratio clip 1 + clip_eps_high (DAPO's clip-higher, e.g. 0.28); with --loss-type cispo, the cap "
        "on the weight itself (ScaleRL recommends 5.0; default then 5.0)", lo=0, lo_open=True)
    clip_ratio_c: float | None = opt(
        None, "dual clip: for negative advantages the loss is at most -c A (c > 1, e.g. 3.0; None: off)", lo=1, lo_open=True)
    importance_sampling_level: Literal["token", "sequence"] = opt(
        "token", "ratio per token, or one per sequence from its mean log-ratio (GSPO)")
    entropy_coef: float = opt(0.0, "entropy bonus coefficient (mean per-token entropy)", lo=0)
    tis: Literal["auto", "none", "token", "sequence"] = opt(
        "auto", "truncated importance sampling against the sampler/trainer mismatch: weight each token's loss by "
        "min(pi_trainer / pi_sampler, --tis-cap), per token or per sequence (product of token ratios); auto: token "
        "when the rollouts run another numeric path than training (a bfloat16 copy, vLLM), else none")
    tis_cap: float = opt(2.0, "the cap C of the truncated importance weights", lo=0, lo_open=True)

    def __post_init__(self) -> None:
        if self.clip_eps_high is None and self.loss_type == "cispo":
            self.clip_eps_high = 5.0  # ScaleRL's eps_max (TRL would fall back to clip_eps = 0.2 as the cap)


@dataclass
class PPOConfig(Config):
    """PPO's value function and advantage estimation (DESIGN.md section 3 defaults)."""

    value_clip: float = opt(0.2, "PPO value clip", lo=0, lo_open=True)
    vf_coef: float = opt(0.1, "PPO value-loss coefficient", lo=0)
    gamma: float = opt(1.0, "PPO discount", lo=0, hi=1)
    lam: float = opt(0.95, "PPO GAE lambda", lo=0, hi=1)
    whiten_advantages: bool = opt(True, "PPO: whiten advantages over the batch")
    value_model: Literal["shared", "separate"] = opt(
        "shared", "PPO value head on the policy trunk (shared) or on a separate copy of the model")


@dataclass
class KLConfig(Config):
    """The KL anchor to the frozen reference (DESIGN.md section 3; Ziegler et al. 2019)."""

    kl_coef: float = opt(0.05, "KL coefficient beta (0 disables the reference model)", lo=0)
    kl_estimator: Literal["k1", "k2", "k3"] = opt("k1", "per-token KL estimator (DESIGN.md section 3)")
    kl_in: Literal["reward", "loss"] = opt(
        "reward", "KL as a per-token reward penalty (TRL PPO / torchrl semantics) or as a loss term (GRPO)")
    kl_target: float | None = opt(None, "adaptive KL control target (Ziegler et al. 2019); None: constant beta",
                                  lo=0, lo_open=True)
    kl_horizon: int = opt(10000, "adaptive KL control horizon", lo=1)

    def __post_init__(self) -> None:
        if self.kl_target is not None and self.kl_coef == 0:
            raise ConfigError("kl_coef: got 0 with --kl-target set; the adaptive controller scales beta, "
                              "so it needs a starting --kl-coef > 0.")
