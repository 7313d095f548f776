"""The settings the algorithms read: the policy update, PPO's value function, the KL anchor, on-policy distillation.

Each field is documented once, here, with its allowed range; ``reinlm train`` turns them into flags with the
same names (``--loss-type``, ``--clip-eps-high``, ``--kl-coef``, ...). Formulas: docs/algorithms.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reinlm.config.schema import Config, opt
from reinlm.errors import ConfigError


@dataclass
class AlgorithmConfig(Config):
    """How advantages are formed and how the policy loss is built (every algorithm)."""

    baseline: Literal["none", "batch_mean", "group_mean", "leave_one_out"] = opt(
        "group_mean", "REINFORCE and REINFORCE++ baseline subtracted from the return (rloo always uses leave_one_out)")
    scale_rewards: Literal["group", "batch", "none"] = opt(
        "group", "GRPO: divide the group-centred return by the std of its group, of the whole batch, or not at all")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"] = opt(
        "grpo", "how per-token losses become one number (TRL's definitions): grpo sequence mean; bnpo token mean "
        "per micro-batch; dr_grpo sum / (sequences x max_new_tokens); dapo token mean over the whole step (all "
        "micro-batches and processes); cispo clipped detached weights times log-probs, dapo's normaliser; sapo "
        "soft sigmoid gate instead of the clip, grpo's normaliser; luspo the clipped surrogate summed over each "
        "sequence, mean over sequences; vespo gamma-shaped sequence weight times log-probs, dapo's normaliser")
    multi_objective_aggregation: Literal["sum_then_normalize", "normalize_then_sum"] = opt(
        "sum_then_normalize", "GRPO with several reward terms (TRL's names): sum_then_normalize weights and sums "
        "them, then --scale-rewards normalises the sum; normalize_then_sum centres and scales each term within its "
        "group first, sums them weighted, then divides by the batch std (TRL's rule; --scale-rewards is not read)")
    sapo_temperature_pos: float = opt(1.0, "sapo: gate temperature of tokens with a positive advantage", lo=0,
                                      lo_open=True)
    sapo_temperature_neg: float = opt(1.05, "sapo: gate temperature of tokens with a non-positive advantage", lo=0,
                                      lo_open=True)
    vespo_k_pos: float = opt(2.0, "vespo: power k of the weight w^k e^(lambda (1 - w)) for advantages >= 0", lo=0)
    vespo_lambda_pos: float = opt(3.0, "vespo: decay lambda of the weight for advantages >= 0", lo=0)
    vespo_k_neg: float = opt(3.0, "vespo: power k of the weight for negative advantages", lo=0)
    vespo_lambda_neg: float = opt(2.0, "vespo: decay lambda of the weight for negative advantages", lo=0)
    off_policy_mask_threshold: float | None = opt(
        None, "off-policy sequence mask (DeepSeek-V3.2 eq. 9): drop sequences with a negative advantage whose mean "
        "log pi_sampler - log pi is above this (None: off)", lo=0)
    top_entropy_quantile: float = opt(
        1.0, "keep in the policy loss only the top share of tokens by entropy (Wang et al. 2025, 'Beyond the 80/20 "
        "rule'; 1.0: all tokens, 0.0: the highest-entropy token)", lo=0, hi=1)
    clip_eps: float = opt(0.2, "ratio clip: the lower bound is 1 - clip_eps (and the upper one unless --clip-eps-high)",
                           lo=0, lo_open=True, hi=1)
    clip_eps_high: float | None = opt(
        None, "upper ratio clip 1 + clip_eps_high (DAPO's clip-higher, e.g. 0.28); with --loss-type cispo, the cap "
        "on the weight itself (ScaleRL recommends 5.0; default then 5.0)", lo=0, lo_open=True)
    clip_ratio_c: float | None = opt(
        None, "dual clip: for negative advantages the loss is at most -c A (c > 1, e.g. 3.0; None: off)", lo=1, lo_open=True)
    importance_sampling_level: Literal["token", "sequence"] = opt(
        "token", "ratio per token, or one per sequence from its mean log-ratio (GSPO)")
    entropy_coef: float = opt(0.0, "entropy bonus coefficient (mean per-token entropy); with --use-adaptive-entropy "
                                    "its starting value", lo=0)
    use_adaptive_entropy: bool = opt(
        False, "adaptive entropy control (Skywork-OR1, He et al. 2025): after each optimiser step entropy_coef moves by "
        "--entropy-coef-delta, up when the step's mean entropy is at or below --entropy-target, down otherwise; the "
        "bonus applies only while the last step's entropy was at or below the target")
    entropy_target: float = opt(0.2, "adaptive entropy control: target mean per-token entropy (nats)", lo=0)
    entropy_coef_min: float = opt(0.0, "adaptive entropy control: lower bound of entropy_coef", lo=0)
    entropy_coef_max: float = opt(1.0, "adaptive entropy control: upper bound of entropy_coef", lo=0)
    entropy_coef_delta: float = opt(0.005, "adaptive entropy control: step of entropy_coef per optimiser step", lo=0)
    use_bias_correction_kl: bool = opt(
        False, "with --kl-in loss: multiply the per-token KL by the importance ratio pi / pi_old (DeepSeek-V3.2), "
        "the unbiased reverse-KL gradient (TRL's default is true)")
    tis: Literal["auto", "none", "token", "sequence"] = opt(
        "auto", "truncated importance sampling against the sampler/trainer mismatch: weight each token's loss by "
        "min(pi_trainer / pi_sampler, --tis-cap), per token or per sequence (product of token ratios); auto: token "
        "when the rollouts run another numeric path than training (a bfloat16 copy, vLLM), else none")
    tis_cap: float = opt(2.0, "the upper bound C_max of the importance weights", lo=0, lo_open=True)
    tis_clip_min: float | None = opt(None, "the lower bound C_min of the importance weights (None: none)", lo=0)
    tis_mode: Literal["truncate", "mask"] = opt(
        "truncate", "weights outside [C_min, C_max]: truncate (clamp into the range) or mask (weight 0; TRL's *_mask "
        "modes, the sequence-level one drops the whole sequence)")

    def __post_init__(self) -> None:
        super().__post_init__()  # every field checked and coerced first
        if self.entropy_coef_min > self.entropy_coef_max:
            raise ConfigError(f"entropy_coef_min: got {self.entropy_coef_min} > entropy_coef_max "
                              f"{self.entropy_coef_max}; allowed: entropy_coef_min <= entropy_coef_max.")
        if self.tis_clip_min is not None and self.tis_clip_min >= self.tis_cap:
            raise ConfigError(f"tis_clip_min: got {self.tis_clip_min} >= tis_cap {self.tis_cap}; allowed: "
                              "0 <= tis_clip_min < tis_cap.")
        if self.loss_type == "vespo" and self.tis == "sequence":
            raise ConfigError("tis: got sequence with --loss-type vespo; allowed: auto, none or token (vespo folds "
                              "token-level importance weights into its sequence weight, as TRL requires).")
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
    sync_ref_model: bool = opt(False, "move the reference toward the policy every --ref-model-sync-steps optimiser "
                                      "steps: ref = alpha policy + (1 - alpha) ref (TRL's sync_ref_model, TR-DPO, "
                                      "Gorbatovski et al. 2024); token space, full fine-tuning, --kl-coef > 0")
    ref_model_mixup_alpha: float = opt(0.6, "alpha of --sync-ref-model (1: copy the policy)", lo=0, hi=1)
    ref_model_sync_steps: int = opt(512, "optimiser steps between two syncs of --sync-ref-model", lo=1)

    def __post_init__(self) -> None:
        super().__post_init__()  # every field checked and coerced first
        if self.kl_target is not None and self.kl_coef == 0:
            raise ConfigError("kl_coef: got 0 with --kl-target set; the adaptive controller scales beta, "
                              "so it needs a starting --kl-coef > 0.")
        if self.sync_ref_model and self.kl_coef == 0:
            raise ConfigError("sync_ref_model: true with --kl-coef 0, which has no reference to sync; allowed: "
                              "--kl-coef > 0, or sync_ref_model false.", field="sync_ref_model")


@dataclass
class DistillConfig(Config):
    """On-policy distillation (Agarwal et al. 2024, GKD; TRL's ``DistillationTrainer``): the student's samples
    scored by a frozen teacher, the per-token generalized JSD of :mod:`reinlm.algorithms.distill` in the loss.
    ``--algo distill`` trains on that loss alone; any other algorithm with ``--teacher`` adds it, times
    ``--distill-coef``, to its own loss. The divergence is taken at the sampling temperature (TRL's
    ``temperature`` is both, as in its DistillationTrainer)."""

    teacher: str | None = opt(None, "teacher model for on-policy distillation (an alias, HF id in the cache, local "
                                    "dir such as a run's final/, or .gguf) with the student's tokenizer; frozen, in "
                                    "--frozen-dtype; required with --algo distill (TRL: teacher_model_name_or_path)")
    distill_coef: float = opt(1.0, "weight of the distillation loss (beside the algorithm's own loss when --algo is "
                                   "not distill)", lo=0)
    distill_beta: float = opt(1.0, "beta of the generalized JSD: 0 forward KL(teacher || student), 1 reverse "
                                   "KL(student || teacher) (TRL DistillationConfig's default), in between the JSD "
                                   "(GKD's default 0.5); TRL's beta under --algo distill", lo=0, hi=1)
    lmbda: float = opt(1.0, "GKD's lambda: the probability that a step trains on the student's own samples; "
                            "otherwise on the dataset's completions (the prompt file's 'completion' column, one per "
                            "prompt). 1.0: always on-policy (TRL's DistillationTrainer); --algo distill only below 1",
                       lo=0, hi=1)
    distill_top_k: int = opt(0, "keep only the teacher's k most likely tokens at each position and renormalise both "
                                "distributions over them (0: the whole vocabulary)", lo=0)
