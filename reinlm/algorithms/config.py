"""The settings the algorithms read: one dataclass for the policy update, one for PPO's value function.

Each field is documented once, here; ``reinlm train`` turns them into flags with the same names
(``--loss-type``, ``--clip-eps-high``, ...). Formulas: docs/algorithms.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reinlm.config import check_choice, check_range, opt
from reinlm.errors import ConfigError


@dataclass
class AlgorithmConfig:
    """How advantages are formed and how the policy loss is built (every algorithm)."""

    baseline: Literal["none", "batch_mean", "group_mean", "leave_one_out"] = opt(
        "group_mean", "REINFORCE and REINFORCE++ baseline subtracted from the return (rloo always uses leave_one_out)")
    scale_rewards: Literal["group", "batch", "none"] = opt(
        "group", "GRPO: divide the group-centred return by the std of its group, of the whole batch, or not at all")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo"] = opt(
        "grpo", "how per-token losses become one number (TRL's definitions): grpo sequence mean; bnpo token mean "
        "per micro-batch; dr_grpo sum / (sequences x max_new_tokens); dapo token mean over the whole step (all "
        "micro-batches and processes); cispo clipped detached weights times log-probs, dapo's normaliser")
    clip_eps: float = opt(0.2, "ratio clip: the lower bound is 1 - clip_eps (and the upper one unless --clip-eps-high)")
    clip_eps_high: float | None = opt(
        None, "upper ratio clip 1 + clip_eps_high (DAPO's clip-higher, e.g. 0.28); with --loss-type cispo, the cap "
        "on the weight itself (ScaleRL recommends 5.0; default then 5.0)")
    clip_ratio_c: float | None = opt(None, "dual clip: for negative advantages the loss is at most -c A (c > 1, e.g. 3.0; None: off)")
    importance_sampling_level: Literal["token", "sequence"] = opt(
        "token", "ratio per token, or one per sequence from its mean log-ratio (GSPO)")
    entropy_coef: float = opt(0.0, "entropy bonus coefficient (mean per-token entropy)")
    tis: Literal["none", "token", "sequence"] = opt(
        "none", "truncated importance sampling against the sampler/trainer mismatch: weight each token's loss by "
        "min(pi_trainer / pi_sampler, --tis-cap), per token or per sequence (product of token ratios)")
    tis_cap: float = opt(2.0, "the cap C of the truncated importance weights")

    def __post_init__(self) -> None:
        check_choice("baseline", self.baseline, ("none", "batch_mean", "group_mean", "leave_one_out"))
        check_choice("scale_rewards", self.scale_rewards, ("group", "batch", "none"))
        check_choice("loss_type", self.loss_type, ("grpo", "bnpo", "dr_grpo", "dapo", "cispo"))
        check_choice("importance_sampling_level", self.importance_sampling_level, ("token", "sequence"))
        check_choice("tis", self.tis, ("none", "token", "sequence"))
        check_range("clip_eps", self.clip_eps, 0, 1, lo_open=True)
        if self.clip_eps_high is not None:
            check_range("clip_eps_high", self.clip_eps_high, 0, lo_open=True)
        if self.clip_eps_high is None and self.loss_type == "cispo":
            self.clip_eps_high = 5.0  # ScaleRL's eps_max (TRL would fall back to clip_eps = 0.2 as the cap)
        if self.clip_ratio_c is not None and not self.clip_ratio_c > 1.0:
            raise ConfigError(f"clip_ratio_c: got {self.clip_ratio_c!r}; allowed: a number > 1 (the dual-clip bound "
                              "c, e.g. 3.0), or None for no dual clip.")
        check_range("entropy_coef", self.entropy_coef, 0)
        check_range("tis_cap", self.tis_cap, 0, lo_open=True)


@dataclass
class PPOConfig:
    """PPO's value function and advantage estimation (DESIGN.md section 3 defaults)."""

    value_clip: float = opt(0.2, "PPO value clip")
    vf_coef: float = opt(0.1, "PPO value-loss coefficient")
    gamma: float = opt(1.0, "PPO discount")
    lam: float = opt(0.95, "PPO GAE lambda")
    whiten_advantages: bool = opt(True, "PPO: whiten advantages over the batch")
    value_model: Literal["shared", "separate"] = opt(
        "shared", "PPO value head on the policy trunk (shared) or on a separate copy of the model")

    def __post_init__(self) -> None:
        check_choice("value_model", self.value_model, ("shared", "separate"))
        check_range("value_clip", self.value_clip, 0)
        check_range("vf_coef", self.vf_coef, 0)
        check_range("gamma", self.gamma, 0, 1)
        check_range("lam", self.lam, 0, 1)
