"""`TrainConfig`: every `reinlm train` flag, documented once, validated in `__post_init__`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from reinlm.config import add_dataclass_args, flat_fields, opt
from reinlm.critic.config import CriticConfig
from reinlm.errors import ConfigError, bad_value
from reinlm.trainer import trl_names

ALGOS = ("reinforce", "grpo", "rloo", "ppo", "remax")
TOKEN_ALGOS = ("reinforce", "grpo", "rloo", "ppo")
LATENT_ALGOS = ("reinforce", "grpo", "rloo", "ppo", "remax")


@dataclass
class TrainConfig(CriticConfig):
    """Every ``reinlm train`` flag. The ``--critic-*`` fields (dense span rewards from an LLM critic) are
    inherited from :class:`CriticConfig`, so training takes every critic setting ``reinlm critique`` takes."""

    # --- what to train ---
    model: str = opt("smollm2-135m", "policy model: embedded alias, HF id, local dir or .gguf (token space)")
    space: Literal["token", "latent"] = opt("token", "action space: token (the LM itself) or latent (a policy over latent actions)")
    latent: str | None = opt(None, "latent-action model directory (required with --space latent)")
    num_actions: int | None = opt(None, "latent space: expected number of actions K (checked against the latent model)", lo=2)
    algo: Literal["reinforce", "grpo", "rloo", "ppo", "remax"] = opt("grpo", "RL algorithm (remax: latent space only)")
    reward: str = opt("sentiment", "reward SPEC, e.g. sentiment, contains_words:red,blue, 0.5*sentiment+target_length:80")
    reward_on_error: Literal["fail", "skip"] = opt("fail", "a reward returning NaN/None/wrong length: fail the run, or skip those samples")
    # --- data ---
    prompts: str = opt("builtin:reviews", "prompt SPEC: builtin:neutral|reviews|summaries, a .txt/.jsonl/.csv/.parquet file, a saved dataset dir, or hf:NAME[:SPLIT]")
    prompt_column: str = opt("prompt", "column holding the prompt in tabular prompt files")
    held_out_fraction: float = opt(0.2, "share of prompts kept out of training for evaluation", lo=0, hi=0.9)
    chat_template: bool = opt(False, "wrap prompts in the model's chat template")
    # --- rollouts ---
    steps: int = opt(30, "number of RL steps (one rollout batch each)", lo=1)
    batch_prompts: int = opt(2, "prompts per step (global, across processes)", lo=1)
    samples_per_prompt: int = opt(8, "completions sampled per prompt (the group size G)", lo=1)
    max_new_tokens: int = opt(20, "maximum completion length in tokens", lo=1)
    temperature: float = opt(1.0, "sampling temperature (training log-probs use the same temperature)", lo=0, lo_open=True)
    top_k: int = opt(0, "top-k filtering at sampling (0: off)", lo=0)
    top_p: float = opt(1.0, "nucleus filtering at sampling (1.0: off)", lo=0, lo_open=True, hi=1)
    # --- algorithm ---
    baseline: Literal["none", "batch_mean", "group_mean", "leave_one_out"] = opt("group_mean", "REINFORCE baseline (rloo forces leave_one_out)")
    scale_std: bool = opt(True, "GRPO: divide group-centred rewards by the group std")
    update_epochs: int = opt(1, "passes over each rollout batch (GRPO/PPO); >1 uses the clipped ratio", lo=1)
    minibatch_size: int = opt(0, "sequences per optimiser step (0: the whole local batch)", lo=0)
    grad_accum: int = opt(1, "micro-batches per minibatch (gradient accumulation)", lo=1)
    clip_eps: float = opt(0.2, "PPO/GRPO ratio clip epsilon", lo=0, lo_open=True, hi=1)
    value_clip: float = opt(0.2, "PPO value clip", lo=0, lo_open=True)
    vf_coef: float = opt(0.1, "PPO value-loss coefficient", lo=0)
    gamma: float = opt(1.0, "PPO discount", lo=0, hi=1)
    lam: float = opt(0.95, "PPO GAE lambda", lo=0, hi=1)
    whiten_advantages: bool = opt(True, "PPO: whiten advantages over the batch")
    value_model: Literal["shared", "separate"] = opt("shared", "PPO value head on the policy trunk (shared) or on a separate copy of the model")
    score_clip: float | None = opt(None, "clip sequence scores to [-x, x] before use (None: off)", lo=0, lo_open=True)
    score_scaling: Literal["none", "running"] = opt("none", "scale scores by a running std (PPO)")
    entropy_coef: float = opt(0.0, "entropy bonus coefficient")
    loss_aggregation: Literal["seq_mean", "token_mean"] = opt("seq_mean", "average the loss per sequence then over sequences, or over all tokens")
    # --- KL anchor ---
    kl_coef: float = opt(0.05, "KL coefficient beta (0 disables the reference model)", lo=0)
    kl_estimator: Literal["k1", "k2", "k3"] = opt("k1", "per-token KL estimator (DESIGN.md section 3)")
    kl_in: Literal["reward", "loss"] = opt("reward", "KL as a per-token reward penalty (TRL/torchrl semantics) or as a loss term")
    kl_target: float | None = opt(None, "adaptive KL control target (Ziegler et al. 2019); None: constant beta", lo=0, lo_open=True)
    kl_horizon: int = opt(10000, "adaptive KL control horizon", lo=1)
    # --- optimisation ---
    lr: float = opt(1e-5, "AdamW learning rate", lo=0, lo_open=True)
    weight_decay: float = opt(0.0, "AdamW weight decay", lo=0)
    warmup_steps: int = opt(0, "linear learning-rate warm-up steps", lo=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = opt("constant", "learning-rate decay after warm-up")
    max_grad_norm: float = opt(1.0, "gradient-norm clip (0: off)", lo=0)
    lora_r: int = opt(0, "LoRA rank (0: full fine-tuning)", lo=0)
    lora_alpha: int = opt(16, "LoRA alpha", lo=1)
    lora_targets: str = opt("q_proj,v_proj", "comma-separated module names LoRA adapts", sep=",")
    # --- runtime ---
    device: str = opt("auto", "cpu, cuda, cuda:N or auto (a device that is not there is refused)")
    dtype: Literal["float32", "bfloat16"] = opt("float32", "parameter dtype")
    frozen_dtype: Literal["same", "auto", "float32", "bfloat16"] = opt(
        "same", "dtype of the frozen networks: the token-space reference (and evaluation copy), the latent "
        "backbone with its LM head. same: --dtype; auto: bfloat16 where the device computes it natively, else "
        "--dtype. Frozen weights never take an optimizer step, so bfloat16 halves their memory traffic "
        "without rounding any update")
    seed: int = opt(0, "seed for prompts, sampling and initialisation", lo=0, hi=2**63 - 1)
    out: str | None = opt(None, "run directory (default: runs/<algo>-<space>-<seed>)")
    overwrite: bool = opt(False, "replace an earlier run in --out (its metrics, samples, checkpoints and final model); "
                                 "without it a fresh run refuses a directory that holds one")
    save_every: int = opt(10, "write a checkpoint every N steps (and at the end)", lo=1)
    keep_checkpoints: int = opt(2, "checkpoints kept on disk, the newest (0: all)", lo=0)
    sample_every: int = opt(5, "log sample completions every N steps (0: never)", lo=0)
    log: Literal["tensorboard", "wandb", "none"] = opt("tensorboard", "extra logger besides metrics.jsonl (TensorBoard always unless none)")
    eval_prompts: int = opt(8, "held-out prompts for the before/after evaluation (0: skip)", lo=0)
    eval_samples: int = opt(4, "samples per held-out prompt in the evaluation", lo=1)
    stop_on_degeneration: bool = opt(False, "stop when the degeneration alarm fires, keeping the last healthy checkpoint")
    progress: bool = opt(True, "show a progress bar")

    # TRL's names for these settings (the one table: reinlm/trainer/trl_names.py)
    __aliases__ = trl_names.trl_aliases()
    __unsupported__ = trl_names.TRL_UNSUPPORTED

    @classmethod
    def translate_keys(cls, values: dict[str, Any]) -> dict[str, Any]:
        """TRL keys whose value maps onto reinlm fields by a rule (``per_device_train_batch_size``,
        ``max_steps``, ``bf16``, ...: :data:`reinlm.trainer.trl_names.TRL_DERIVED`)."""
        ff = flat_fields(cls)
        defaults = {n: ff[n].default for n in ("samples_per_prompt", "grad_accum", "update_epochs", "steps")}
        return trl_names.translate_trl_keys(values, defaults)

    def __post_init__(self) -> None:
        # every field's type and range is checked first (reinlm.config.Config); here: checks across fields
        super().__post_init__()  # the critic fields
        from reinlm.utils import resolve_device

        try:
            resolve_device(self.device)  # refuse a device that is absent (cuda without a GPU) or unknown (tpu)
        except ConfigError as e:
            e.field = "device"
            raise
        if self.frozen_dtype == "auto":  # resolved here, so config.yaml records what ran
            from reinlm.utils import native_bfloat16

            self.frozen_dtype = "bfloat16" if native_bfloat16(self.device) else "same"
        if self.space == "token" and self.algo not in TOKEN_ALGOS:
            raise ConfigError(f"algo: got {self.algo!r} with --space token; allowed: {', '.join(TOKEN_ALGOS)} "
                              "(remax runs in latent space only).")
        if self.space == "latent" and not self.latent:
            raise ConfigError("latent: --space latent needs --latent DIR, a latent-action model directory "
                              "made by `reinlm latent pretrain`.")
        if self.space == "token" and self.num_actions is not None:
            raise ConfigError(f"num_actions: got {self.num_actions}, a latent-space option; use it with --space latent.")
        if self.space == "latent":
            token_only = {"lora_r": 0, "value_model": "shared", "chat_template": False}
            for name, neutral in token_only.items():
                if getattr(self, name) != neutral:
                    raise ConfigError(f"{name}: got {getattr(self, name)!r}, a token-space option; it cannot be "
                                      f"used with --space latent (leave it at {neutral!r}).")
        if self.kl_target is not None:
            if self.kl_coef == 0:
                raise ConfigError("kl_coef: got 0 with --kl-target set; the adaptive controller scales beta, "
                                  "so it needs a starting --kl-coef > 0.")
        if self.algo in ("grpo", "rloo") and self.samples_per_prompt < 2:
            raise ConfigError(f"samples_per_prompt: got {self.samples_per_prompt} with algo {self.algo}; allowed: "
                              ">= 2 (group baselines need at least two samples per prompt).")
        if self.algo == "rloo":
            self.baseline = "leave_one_out"
        if self.baseline in ("group_mean", "leave_one_out") and self.algo == "reinforce" and self.samples_per_prompt < 2:
            raise ConfigError(f"baseline: {self.baseline} needs --samples-per-prompt >= 2, got "
                              f"{self.samples_per_prompt}; use --baseline batch_mean or none.")

    @property
    def critic_config(self) -> CriticConfig:
        """The critic settings alone (used when ``--critic`` or ``--critic-url`` is given)."""
        return CriticConfig(**{f.name: getattr(self, f.name) for f in fields(CriticConfig)})

    @property
    def batch_size(self) -> int:
        """Completions per step across all processes."""
        return self.batch_prompts * self.samples_per_prompt

    @property
    def frozen_dtype_name(self) -> str:
        """The dtype of the frozen networks: ``--frozen-dtype`` with ``same`` resolved to ``--dtype``."""
        return self.dtype if self.frozen_dtype == "same" else self.frozen_dtype

    @property
    def default_out(self) -> str:
        return f"runs/{self.algo}-{self.space}-seed{self.seed}"


def add_train_args(parser, group: str = "training options") -> None:
    """Add every TrainConfig flag to an argparse parser: the training options, then the critic's in a group
    of their own (``reinlm train`` and ``reinlm bench latent-vs-token`` share this)."""
    add_dataclass_args(parser, TrainConfig, group=group, exclude=CriticConfig)
    add_dataclass_args(parser, CriticConfig, group="LLM critic (dense span rewards; see docs/critic.md)")
