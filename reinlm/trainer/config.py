"""`TrainConfig`: every `reinlm train` flag, documented once where it is declared, validated there.

The settings compose: ``TrainConfig`` nests one dataclass per concern,

- ``sampling``: :class:`SamplingSettings` (temperature, top-k, top-p, completion length);
- ``batches``: :class:`BatchConfig` (dynamic sampling, truncated completions, score clipping and scaling);
- ``rollout``: :class:`~reinlm.rollout.config.RolloutConfig` (generation backend, rollout dtype, vLLM settings);
- ``algorithm``: :class:`~reinlm.algorithms.config.AlgorithmConfig` (baselines, loss type, clipping, TIS);
- ``ppo``: :class:`~reinlm.algorithms.config.PPOConfig` (value head, GAE);
- ``kl``: :class:`~reinlm.algorithms.config.KLConfig` (the KL anchor and its controller);
- ``distill``: :class:`~reinlm.algorithms.config.DistillConfig` (on-policy distillation from a teacher);
- ``llm_critic``: :class:`~reinlm.critic.config.CriticConfig` (dense span rewards from an LLM critic);

while flags and YAML keys stay flat (``--temperature``, ``kl_coef: 0.1``; a nested mapping such as
``kl: {kl_coef: 0.1}`` is accepted too) and ``config.yaml`` is written flat, so run directories written before
the nesting still resume. In Python the constructor takes the flat names too (TRL users pass them):
``TrainConfig(kl_coef=0.1)`` (and ``reinlm.train(kl_coef=0.1)``) routes the value into ``cfg.kl``. Reading and
assigning go through the nested config: ``cfg.kl.kl_coef`` (``cfg.kl_coef`` is no attribute).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass
from typing import Any, Literal

from reinlm.algorithms import get_algorithm
from reinlm.algorithms.base import Needs, available_algorithms
from reinlm.algorithms.config import AlgorithmConfig, DistillConfig, KLConfig, PPOConfig
from reinlm.algorithms.turn_credit import check_turn_credit
from reinlm.config.fields import flat_fields
from reinlm.config.flags import add_dataclass_args
from reinlm.config.schema import Config, check_device, opt
from reinlm.critic.config import CriticConfig
from reinlm.envs.config import EnvConfig
from reinlm.errors import ConfigError
from reinlm.rewards.combine import parse_reward_weights
from reinlm.rollout.config import RolloutConfig
from reinlm.trainer import trl_names
from reinlm.trainer.trl_refused import TRL_UNSUPPORTED


@dataclass
class SamplingSettings(Config):
    """How training rollouts are drawn (training log-probs are recomputed at the same temperature)."""

    max_new_tokens: int = opt(20, "maximum completion length in tokens", lo=1)
    temperature: float = opt(1.0, "sampling temperature (training log-probs use the same temperature)", lo=0, lo_open=True)
    top_k: int = opt(0, "top-k filtering at sampling (0: off)", lo=0)
    top_p: float = opt(1.0, "nucleus filtering at sampling (1.0: off)", lo=0, lo_open=True, hi=1)
    min_p: float = opt(0.0, "min-p filtering at sampling, after top-k and top-p: drop tokens less likely than min_p "
                            "x the most likely one (0: off; TRL's min_p)", lo=0, hi=1)
    repetition_penalty: float = opt(1.0, "divide the positive logits (multiply the negative ones) of tokens already in "
                                          "the prompt or the completion by this when sampling (1.0: off; TRL's "
                                          "repetition_penalty); the training log-probs stay the model's own", lo=0,
                                     lo_open=True)


@dataclass
class BatchConfig(Config):
    """What enters a step's batch, and how its scores are shaped before the advantages."""

    dynamic_sampling: bool = opt(False, "DAPO dynamic sampling: drop groups whose valid rewards all agree and sample "
                                        "more prompts until the step has --batch-prompts groups with a spread")
    dynamic_sampling_max_tries: int = opt(4, "extra rollout rounds a step may spend refilling; then the batch is "
                                             "topped up with zero-spread groups (no policy gradient)", lo=0)
    mask_truncated: bool = opt(False, "completions cut at --max-new-tokens without EOS do not enter the loss "
                                      "(their rewards still count in the group baselines)")
    score_clip: float | None = opt(None, "clip sequence scores to [-x, x] before use (None: off)", lo=0, lo_open=True)
    score_scaling: Literal["none", "running"] = opt("none", "scale scores by a running std (PPO)")


def check_algorithm_name(name: str, value: str) -> None:
    """``check`` of ``--algo``: a name registered with :func:`reinlm.algorithms.base.register_algorithm` (looked up
    when the config is built, so an algorithm registered later validates too)."""
    names = available_algorithms()
    if value not in names:
        near = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"{name}: got {value!r}; allowed: {', '.join(names)}{hint}.", field=name)


_C = typing.TypeVar("_C")


def _accept_flat_names(cls: type[_C]) -> type[_C]:
    """Wrap the dataclass ``__init__`` of ``cls`` so that flat names of nested fields are routed into them; the
    routing, ``{flat name: the nested field holding it}``, is kept as ``cls.__nested_owners__``."""
    init = cls.__init__
    hints = typing.get_type_hints(cls)
    owners = {ff.name: ff.path[0] for ff in flat_fields(cls).values() if len(ff.path) > 1}
    setattr(cls, "__nested_owners__", owners)

    @functools.wraps(init)
    def __init__(self: _C, *args: Any, **kwargs: Any) -> None:
        routed: dict[str, dict[str, Any]] = {}
        for name in [k for k in kwargs if k in owners]:
            routed.setdefault(owners[name], {})[name] = kwargs.pop(name)
        for owner, values in routed.items():
            given = kwargs.get(owner)
            if isinstance(given, dict):
                kwargs[owner] = hints[owner](**{**given, **values})
            elif given is not None:
                kwargs[owner] = dataclasses.replace(given, **values)
            else:
                kwargs[owner] = hints[owner](**values)
        init(self, *args, **kwargs)

    setattr(cls, "__init__", __init__)
    return cls


def check_latent_lora(rank: int, targets: str, default_targets: str) -> None:
    """``--latent-train lora`` needs ``--lora-r`` > 0 and adapts every linear layer of the policy's blocks, so
    ``--lora-targets`` (a token-space choice of modules) must stay at its default."""
    if rank <= 0:
        raise ConfigError("lora_r: --latent-train lora needs a LoRA rank; allowed: --lora-r 1 or more (e.g. 8).",
                          field="lora_r")
    if targets != default_targets:
        raise ConfigError(f"lora_targets: got {targets!r} with --latent-train lora; in latent space LoRA adapts every "
                          f"linear layer of the policy's blocks (qkv, proj, gate, up, down); leave --lora-targets at "
                          f"{default_targets!r}.", field="lora_targets")


@_accept_flat_names
@dataclass
class TrainConfig(Config):
    """Every ``reinlm train`` flag (module docstring for how the nested settings flatten)."""

    # --- what to train ---
    model: str = opt("smollm2-135m", "policy model: embedded alias, HF id, local dir or .gguf (token space)")
    space: Literal["token", "latent"] = opt("token", "action space: token (the LM itself) or latent (a policy over latent actions)")
    latent: str | None = opt(None, "latent-action model directory (required with --space latent)")
    num_actions: int | None = opt(None, "latent space: expected number of actions K (checked against the latent model)", lo=2)
    latent_train: Literal["policy", "head", "lora"] = opt(
        "policy", "latent space: what RL trains: policy (all of it), head (only its output layer, e.g. BWArea's "
        "transformer_policy_layer: the policy's layers and embeddings stay frozen, no optimizer state for them) or "
        "lora (LoRA adapters of rank --lora-r on every linear layer of the policy's blocks; merged into the "
        "saved policy)")
    algo: str = opt("grpo", "RL algorithm, a name in the algorithm registry (built in: "
                     f"{', '.join(available_algorithms())}; docs/algorithms.md has one section per algorithm)",
                     check=check_algorithm_name)
    reward: str = opt("sentiment", "reward SPEC, e.g. sentiment, contains_words:red,blue, 0.5*sentiment+target_length:80")
    reward_weights: str | None = opt(None, "one weight per term of --reward, multiplying it (TRL's reward_weights; "
                                           "a YAML list or comma-separated numbers)", sep=",",
                                     check=lambda name, value: parse_reward_weights(name, value))
    reward_on_error: Literal["fail", "skip"] = opt("fail", "a reward returning NaN/None/wrong length: fail the run, or skip those samples")
    # --- data ---
    prompts: str = opt("builtin:reviews", "prompt SPEC: builtin:neutral|reviews|summaries, a .txt/.jsonl/.csv/.parquet file, a saved dataset dir, or hf:NAME[:CONFIG][:SPLIT]")
    prompt_column: str = opt("prompt", "column holding the prompt (text, or a list of {role, content} messages) in tabular prompt files")
    rename_columns: str = opt("", "rename dataset columns before use: OLD=NEW,... (e.g. question=prompt,answer=solution)")
    held_out_fraction: float = opt(0.2, "share of prompts kept out of training for the before/after evaluation (0, or --eval-prompts 0: train on all)", lo=0, hi=0.9)
    chat_template: bool = opt(False, "wrap text prompts as a user message of the model's chat template (message-list prompts always use it)")
    chat_template_kwargs: dict[str, Any] = opt(
        default_factory=dict, help="extra variables for the chat template when prompts are rendered with it (TRL's "
        "chat_template_kwargs), e.g. {\"enable_thinking\": false}; on the command line a JSON object",
        metavar="JSON")
    # --- rollouts ---
    steps: int = opt(30, "number of RL steps (one rollout batch each)", lo=1)
    batch_prompts: int = opt(2, "prompts per step (global, across processes)", lo=1)
    samples_per_prompt: int = opt(8, "completions sampled per prompt (the group size G)", lo=1)
    sampling: SamplingSettings = opt(default_factory=SamplingSettings)
    batches: BatchConfig = opt(default_factory=BatchConfig)
    rollout: RolloutConfig = opt(default_factory=RolloutConfig)
    # --- algorithm ---
    algorithm: AlgorithmConfig = opt(default_factory=AlgorithmConfig)
    ppo: PPOConfig = opt(default_factory=PPOConfig)
    kl: KLConfig = opt(default_factory=KLConfig)
    distill: DistillConfig = opt(default_factory=DistillConfig)  # --teacher, --algo distill (docs/algorithms.md)
    scale_std: bool | None = opt(None, "deprecated: true = --scale-rewards group, false = none")
    loss_aggregation: Literal["seq_mean", "token_mean"] | None = opt(
        None, "deprecated: seq_mean = --loss-type grpo, token_mean = --loss-type bnpo")
    # --- optimisation ---
    update_epochs: int = opt(1, "passes over each rollout batch; > 1 (or minibatches) makes every algorithm use the "
                                "clipped ratio", lo=1)
    minibatch_size: int = opt(0, "sequences per optimiser step (0: the whole local batch)", lo=0)
    grad_accum: int = opt(1, "micro-batches per minibatch (gradient accumulation)", lo=1)
    lr: float = opt(1e-5, "AdamW learning rate", lo=0, lo_open=True)
    weight_decay: float = opt(0.0, "AdamW weight decay", lo=0)
    adam_beta1: float = opt(0.9, "AdamW beta1, the decay of the first-moment estimate (TRL's adam_beta1)", lo=0, hi=1,
                            hi_open=True)
    adam_beta2: float = opt(0.999, "AdamW beta2, the decay of the second-moment estimate (TRL's adam_beta2)", lo=0,
                            hi=1, hi_open=True)
    adam_epsilon: float = opt(1e-8, "AdamW epsilon added to the denominator (TRL's adam_epsilon)", lo=0, lo_open=True)
    warmup_steps: int = opt(0, "linear learning-rate warm-up, in optimiser steps (TRL's warmup_steps; one per "
                               "rollout step unless --update-epochs or --minibatch-size give more)", lo=0)
    warmup_ratio: float | None = opt(None, "warm-up over ceil(this share x all optimiser steps) (TRL's "
                                     "warmup_ratio); the schedule then counts optimiser steps, as TRL's does",
                                     lo=0, hi=1)
    lr_schedule: Literal["constant", "linear", "cosine"] = opt("constant", "learning-rate decay after warm-up")
    max_grad_norm: float = opt(1.0, "gradient-norm clip (0: off)", lo=0)
    disable_dropout: bool = opt(False, "set every torch.nn.Dropout of the trained model to p = 0 (TRL's "
                                       "disable_dropout; the embedded SmolLM2 has no dropout layers)")
    lora_r: int = opt(0, "LoRA rank (0: full fine-tuning)", lo=0)
    lora_alpha: int = opt(16, "LoRA alpha", lo=1)
    lora_targets: str = opt("q_proj,v_proj", "modules LoRA adapts: all-linear, module names (q_proj,v_proj) or a regex of full module names", sep=",")
    lora_save_merged: bool = opt(False, "with --lora-r: also write final/merged/, the adapters merged into the base "
                                        "model (an ordinary model directory, the size of the base model); final/ "
                                        "itself is the PEFT adapter either way")
    # --- runtime ---
    device: str = opt("auto", "cpu, cuda, cuda:N or auto (a device that is not there is refused)",
                     check=check_device)
    dtype: Literal["float32", "bfloat16"] = opt("float32", "parameter dtype")
    train_precision: Literal["auto", "same", "bf16-autocast"] = opt(
        "auto", "precision of the token policy's training forward/backward: bf16-autocast (bfloat16 mixed "
        "precision, torch.autocast: matrix products in bfloat16, weights, gradients and AdamW stay float32; about "
        "2x faster on CPUs with native bfloat16 (AVX512-BF16/AMX) and recent GPUs, slower where bfloat16 is "
        "emulated; TRL's bf16: true), same (--dtype: the exact float32 path), or auto (default): bf16-autocast in "
        "token space with --dtype float32 where the device computes bfloat16 natively, else same (config.yaml "
        "records the resolved value)")
    sharding: Literal["none", "fsdp"] = opt(
        "none", "how several processes (torchrun / accelerate launch) hold the trained model: none (data parallel: "
        "a whole copy each, gradients averaged) or fsdp (FSDP2, torch fully_shard: parameters, gradients and AdamW "
        "state sharded across the processes, each decoder layer gathered only while it computes; token space, "
        "full fine-tuning, the reinlm generation backend; no value model, environment, teacher or --sync-ref-model). "
        "One process ignores it")
    frozen_dtype: Literal["same", "auto", "float32", "bfloat16"] = opt(
        "auto", "dtype of the frozen networks: the token-space reference (and evaluation copy), the latent "
        "backbone with its LM head. auto (default): bfloat16 where the device computes it natively (CPU "
        "avx512_bf16/amx_bf16, recent GPUs) and, in token space, training runs bf16-autocast; else --dtype. same: "
        "--dtype (the exact float32 path). The token-space reference runs the training forward's numerics: under "
        "bf16-autocast its linear weights are stored in bfloat16 (what autocast computes them in anyway), so its "
        "log-probs equal the policy's at the start and the KL starts at 0; a bfloat16 reference beside float32 "
        "training (--frozen-dtype bfloat16 --train-precision same) adds an error, logged at the first step "
        "(mismatch/ref_logp_abs)")
    seed: int = opt(0, "seed for prompts, sampling and initialisation", lo=0, hi=2**63 - 1)
    out: str | None = opt(None, "run directory (default: runs/<algo>-<space>-<seed>)")
    overwrite: bool = opt(False, "replace an earlier run in --out (its metrics, samples, checkpoints and final model); "
                                 "without it a fresh run refuses a directory that holds one")
    save_every: int = opt(10, "write a checkpoint every N steps (and at the end)", lo=1)
    keep_checkpoints: int = opt(2, "checkpoints kept on disk, the newest (0: all)", lo=0)
    sample_every: int = opt(5, "log sample completions every N steps (0: never)", lo=0)
    print_completions: int = opt(0, "also print this many of the step's completions (prompt, completion, reward) on "
                                    "the console every --sample-every steps (-1: all of them; 0: none; TRL's "
                                    "log_completions with num_completions_to_print)", lo=-1)
    log: Literal["tensorboard", "wandb", "none"] = opt("tensorboard", "extra logger besides metrics.jsonl (TensorBoard always unless none)")
    eval_prompts: int = opt(8, "held-out prompts for the before/after evaluation (0: skip)", lo=0)
    eval_samples: int = opt(4, "samples per held-out prompt in the evaluation", lo=1)
    stop_on_degeneration: bool = opt(False, "stop when the degeneration alarm fires, keeping the last healthy checkpoint")
    log_frozen_perplexity: bool = opt(False, "log response/perplexity_frozen every step: the samples' perplexity under "
                                             "the frozen starting LM (the backbone in latent space; one extra frozen "
                                             "forward per step); the degeneration alarm uses it where no reference "
                                             "perplexity comes for free")
    progress: bool = opt(True, "progress bars (false: one plain line per step and per long task)")
    llm_critic: CriticConfig = opt(default_factory=CriticConfig)
    env: EnvConfig = opt(default_factory=EnvConfig)  # --environment and its limits (docs/environments.md)

    # TRL's names for these settings (the one table: reinlm/trainer/trl_names.py)
    __aliases__ = trl_names.trl_aliases()
    __unsupported__ = TRL_UNSUPPORTED
    __nested_owners__: typing.ClassVar[dict[str, str]] = {}  # flat name -> nested field (set by _accept_flat_names)

    @classmethod
    def translate_keys(cls, values: dict[str, Any]) -> dict[str, Any]:
        """TRL keys whose value maps onto reinlm fields by a rule (``per_device_train_batch_size``,
        ``max_steps``, ``bf16``, ...: :data:`reinlm.trainer.trl_names.TRL_DERIVED`)."""
        return trl_names.translate_trl_keys(values, cls._trl_rule_defaults())

    @classmethod
    def describe_trl_keys(cls, values: dict[str, Any]) -> list[str]:
        """One line per TRL key of a config mapping: the reinlm setting it became, and the table's note
        (:func:`reinlm.trainer.trl_names.describe_trl_keys`)."""
        return trl_names.describe_trl_keys(values, cls._trl_rule_defaults())

    @classmethod
    def _trl_rule_defaults(cls) -> dict[str, Any]:
        """The defaults of the fields that the TRL_DERIVED rules read."""
        ff = flat_fields(cls)
        return {n: ff[n].default for n in ("samples_per_prompt", "grad_accum", "update_epochs", "steps")}

    def __post_init__(self) -> None:
        # every field's type and range is checked first (reinlm.config.schema.Config); here: checks across fields
        super().__post_init__()
        self._resolve_auto_and_deprecated()
        needs = get_algorithm(self.algo).needs
        self._check_space_options(needs)
        if self.samples_per_prompt < needs.min_group_size:
            raise ConfigError(f"samples_per_prompt: got {self.samples_per_prompt} with algo {self.algo}; allowed: "
                              f">= {needs.min_group_size} (group baselines need at least two samples per prompt).")
        if (needs.reads_baseline and self.algorithm.baseline in ("group_mean", "leave_one_out")
                and self.samples_per_prompt < 2):
            raise ConfigError(f"baseline: {self.algorithm.baseline} needs --samples-per-prompt >= 2, got "
                              f"{self.samples_per_prompt}; use --baseline batch_mean or none.")
        if self.batches.dynamic_sampling and self.samples_per_prompt < 2:
            raise ConfigError(f"dynamic_sampling: needs --samples-per-prompt >= 2 (a group of one has no spread), "
                              f"got {self.samples_per_prompt}.")
        if self.kl.sync_ref_model and self.lora_r > 0:
            raise ConfigError(f"sync_ref_model: true with --lora-r {self.lora_r}; the LoRA reference is the base model "
                              "with the adapters off, which cannot move toward the policy; allowed: full fine-tuning "
                              "(--lora-r 0) or sync_ref_model false.", field="sync_ref_model")
        if self.train_precision == "bf16-autocast" and self.dtype != "float32":
            raise ConfigError(f"train_precision: got bf16-autocast with --dtype {self.dtype}; allowed: --dtype float32 "
                              "(mixed precision keeps float32 weights; bfloat16 weights already train in bfloat16).",
                              field="train_precision")
        if self.warmup_ratio is not None and self.warmup_steps > 0:
            raise ConfigError(f"warmup_ratio: got {self.warmup_ratio} with warmup_steps {self.warmup_steps}; both "
                              "give the warm-up; allowed: one of them.", field="warmup_ratio")
        if self.algo == "distill" or self.distill.teacher or self.distill.lmbda < 1:
            self._check_distill()
        if self.algorithm.multi_objective_aggregation == "normalize_then_sum" and self.algo != "grpo":
            raise ConfigError(f"multi_objective_aggregation: normalize_then_sum with --algo {self.algo}; allowed: "
                              "--algo grpo (TRL's GRPOTrainer), or sum_then_normalize.",
                              field="multi_objective_aggregation")
        if self.sharding == "fsdp":
            self._check_fsdp(needs.values)
        if self.env.environment or self.env.tools:  # episodes: the settings that go with them
            self._check_environment(needs.values)


    def _resolve_auto_and_deprecated(self) -> None:
        """``auto`` resolved here, so config.yaml records what ran; deprecated spellings of old run directories."""
        if "auto" in (self.frozen_dtype, self.train_precision):  # resolved here, so config.yaml records what ran
            from reinlm.utils.devices import native_bfloat16  # here: tests fake it in its module

            native = native_bfloat16(self.device)
            if self.train_precision == "auto":
                mixed = native and self.space == "token" and self.dtype == "float32"
                self.train_precision = "bf16-autocast" if mixed else "same"
            if self.frozen_dtype == "auto":  # token space: the reference follows the training forward's precision
                follows = self.space != "token" or self.train_precision == "bf16-autocast"
                self.frozen_dtype = "bfloat16" if native and follows else "same"
        # deprecated spellings (run directories written before --scale-rewards and --loss-type)
        if self.scale_std is not None:
            self.algorithm.scale_rewards = "group" if self.scale_std else "none"
            self.scale_std = None
        if self.loss_aggregation is not None:
            self.algorithm.loss_type = "grpo" if self.loss_aggregation == "seq_mean" else "bnpo"
            self.loss_aggregation = None

    def _check_space_options(self, needs: Needs) -> None:
        """The algorithm runs in ``--space``; options of the other space are refused."""
        if self.space not in needs.spaces:
            raise ConfigError(f"algo: got {self.algo!r} with --space {self.space}; it runs in "
                              f"{' and '.join(needs.spaces)} space.")
        if self.space == "latent" and not self.latent:
            raise ConfigError("latent: --space latent needs --latent DIR, a latent-action model directory "
                              "made by `reinlm latent pretrain`.")
        if self.space == "token" and self.num_actions is not None:
            raise ConfigError(f"num_actions: got {self.num_actions}, a latent-space option; use it with --space latent.")
        if self.space == "token" and self.latent_train != "policy":
            raise ConfigError(f"latent_train: got {self.latent_train!r}, a latent-space option; use it with --space "
                              "latent (token space: --lora-r trains adapters only).", field="latent_train")
        if self.lora_save_merged and (self.lora_r == 0 or self.space == "latent"):
            raise ConfigError(f"lora_save_merged: true with --lora-r {self.lora_r} in {self.space} space; it writes a "
                              "token-space LoRA run's final/merged/: use it with --lora-r 1 or more, --space token.",
                              field="lora_save_merged")
        if self.lora_r > 0 and not [t for t in self.lora_targets.split(",") if t.strip()]:
            raise ConfigError(f"lora_targets: got {self.lora_targets!r} with --lora-r {self.lora_r}; allowed: "
                              "comma-separated module names, e.g. q_proj,v_proj.", field="lora_targets")
        if self.space == "latent":
            token_only = {"lora_r": (self.lora_r, 0), "value_model": (self.ppo.value_model, "shared"),
                          "train_precision": (self.train_precision, "same"),
                          "sync_ref_model": (self.kl.sync_ref_model, False),
                          "repetition_penalty": (self.sampling.repetition_penalty, 1.0)}
            if self.latent_train == "lora":  # LoRA on the latent policy: --lora-r given, --lora-targets not read
                del token_only["lora_r"]
                check_latent_lora(self.lora_r, self.lora_targets, flat_fields(TrainConfig)["lora_targets"].default)
            for name, (value, neutral) in token_only.items():
                if value != neutral:
                    raise ConfigError(f"{name}: got {value!r}, a token-space option; it cannot be "
                                      f"used with --space latent (leave it at {neutral!r}).")

    def __setattr__(self, name: str, value: Any) -> None:
        # ``cfg.kl_coef = x`` would only add an attribute beside ``cfg.kl.kl_coef``, silently ignored: refused
        owner = type(self).__nested_owners__.get(name)
        if owner is not None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}; the setting is "
                                 f"{owner}.{name}")
        super().__setattr__(name, value)

    def _check_fsdp(self, needs_values: bool) -> None:
        """``--sharding fsdp`` is built and tested for full fine-tuning of the token policy with reinlm's decode engine
        (docs/training.md, "FSDP"); the combinations it has not been tested with are refused."""
        env = self.env.environment or self.env.tools
        backend = self.rollout.generation_backend
        untested = [("space", self.space, self.space != "token", "token"),
                    ("lora_r", self.lora_r, self.lora_r > 0, "0 (full fine-tuning)"),
                    ("generation_backend", backend, backend != "reinlm", "reinlm"),
                    ("algo", self.algo, needs_values, "an algorithm without a value model (grpo, rloo, reinforce, ...)"),
                    ("environment", env, bool(env), "none"),
                    ("sync_ref_model", self.kl.sync_ref_model, self.kl.sync_ref_model, "false"),
                    ("teacher", self.distill.teacher, bool(self.distill.teacher) or self.algo == "distill", "none")]
        for name, value, bad, allowed in untested:
            if bad:
                raise ConfigError(f"sharding: fsdp with {name} {value!r} is not supported yet; allowed with fsdp: "
                                  f"{name} {allowed}.", field="sharding")

    def _check_environment(self, needs_values: bool) -> None:
        """Settings that do not go with ``--environment`` (ConfigError naming them)."""
        if self.rollout.generation_backend != "reinlm":
            raise ConfigError(f"generation_backend: got {self.rollout.generation_backend!r} with --environment; "
                              "episodes decode through reinlm's engine (--generation-backend reinlm).",
                              field="generation_backend")
        if self.algo == "remax":
            raise ConfigError("algo: remax's greedy-rollout baseline is not defined for episodes; use grpo, rloo, "
                              "reinforce, reinforce_pp or ppo with --environment.", field="algo")
        if self.batches.dynamic_sampling:
            raise ConfigError("dynamic_sampling: not wired for episodes yet; leave it off with --environment.",
                              field="dynamic_sampling")
        check_turn_credit(self.env.turn_credit, needs_values, self.algo)

    def _check_distill(self) -> None:
        """Checks across fields of on-policy distillation (ConfigError naming the setting and what is allowed)."""
        d = self.distill
        if self.algo == "distill" and not d.teacher:
            raise ConfigError("teacher: --algo distill needs --teacher MODEL (an alias, HF id, local dir such as a "
                              "run's final/, or .gguf) with the student's tokenizer.", field="teacher")
        if d.teacher and self.space != "token":
            raise ConfigError(f"teacher: got {d.teacher!r} with --space {self.space}; allowed: token space only "
                              "(the teacher scores the student's tokens).", field="teacher")
        if d.lmbda < 1 and self.algo != "distill":
            raise ConfigError(f"lmbda: got {d.lmbda} with --algo {self.algo}; allowed: 1.0, or --algo distill (the "
                              "dataset's completions carry no policy gradient).", field="lmbda")
        if self.algo == "distill" and self.batches.dynamic_sampling:
            raise ConfigError("dynamic_sampling: --algo distill does not train on rewards, so there is no reward "
                              "spread to select groups by; allowed: false.", field="dynamic_sampling")
        if d.lmbda < 1 and (self.env.environment or self.env.tools):
            raise ConfigError(f"lmbda: got {d.lmbda} with --environment; allowed: 1.0 (episodes have no dataset "
                              "completions).", field="lmbda")

    @property
    def critic_config(self) -> CriticConfig:
        """The critic settings alone (used when ``--critic`` or ``--critic-url`` is given)."""
        return self.llm_critic

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


def add_train_args(parser: argparse.ArgumentParser, group: str = "training options") -> None:
    """Add every TrainConfig flag to an argparse parser: the training options, then the critic's in a group
    of their own (``reinlm train`` and ``reinlm bench latent-vs-token`` share this)."""
    add_dataclass_args(parser, TrainConfig, group=group, exclude=CriticConfig)
    add_dataclass_args(parser, CriticConfig, group="LLM critic (dense span rewards; see docs/critic.md)")
