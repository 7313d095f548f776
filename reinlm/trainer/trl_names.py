"""TRL's config names in a reinlm training config: the one table of what each means here.

A TRL user's ``GRPOConfig`` / ``TrainingArguments`` / ``ModelConfig`` keys work in ``reinlm train
--config FILE.yaml`` where reinlm has the same setting:

- :data:`TRL_SAME`: keys spelled the same in both (listed for the docs; nothing to translate);
- :data:`TRL_RENAMES`: keys with the same meaning under another name (``learning_rate`` -> ``lr``);
- :data:`TRL_DERIVED`: keys whose value maps onto reinlm settings by a rule (``per_device_train_batch_size``
  counts completions per device and optimiser step; reinlm counts prompts per rollout step), applied by
  :func:`translate_trl_keys`;
- :data:`TRL_UNSUPPORTED`: TRL keys reinlm has no meaning for, refused with the reason (not "unknown key").

Meanings follow TRL 1.16 (``trl/trainer/grpo_config.py``, ``model_config.py``, transformers'
``TrainingArguments``). A key that is (or becomes) a field of :class:`~reinlm.trainer.config.TrainConfig`
is that field: fields win over this table (a test checks that no entry shadows a field).
:func:`render_trl_table` writes the Markdown table of docs/trl-migration.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NoReturn

from reinlm.config.coerce import check_field
from reinlm.errors import ConfigError
from reinlm.trainer.trl_refused import TRL_UNSUPPORTED

#: TRL key -> note (the key is also a reinlm field of the same meaning)
TRL_SAME: dict[str, str] = {
    "max_tool_calling_iterations": "rounds of tool calls per episode (with --environment)",
    "temperature": "sampling temperature",
    "top_p": "nucleus sampling (1.0: off)",
    "top_k": "top-k sampling (0: off)",
    "min_p": "min-p sampling after top-k and top-p, HF's rule (TRL's None is 0: off)",
    "chat_template_kwargs": "extra chat-template variables when conversation prompts are rendered (e.g. "
                            "enable_thinking: false)",
    "repetition_penalty": "HF's rule at sampling (prompt and completion tokens; 1.0: off); the training log-probs "
                          "are the model's own, as TRL's",
    "seed": "seed of prompts, sampling and initialisation",
    "weight_decay": "AdamW weight decay",
    "sync_ref_model": "the reference mixed toward the policy every ref_model_sync_steps optimiser steps (TRL's "
                      "SyncRefModelCallback rule); the mixed reference is saved in checkpoints",
    "ref_model_mixup_alpha": "ref = alpha policy + (1 - alpha) ref at each sync (0.6 in both)",
    "ref_model_sync_steps": "optimiser steps between syncs (512 in both)",
    "reward_weights": "one weight per reward term (TRL: per reward function), multiplying the SPEC's own weight",
    "multi_objective_aggregation": "sum_then_normalize (both defaults) or normalize_then_sum (TRL's rule: each "
                                   "term normalised within its group, weighted sum, divided by the batch std); grpo",
    "adam_beta1": "AdamW beta1 (0.9 in both)",
    "adam_beta2": "AdamW beta2 (0.999 in both)",
    "adam_epsilon": "AdamW epsilon (1e-8 in both)",
    "disable_dropout": "every torch.nn.Dropout of the trained model to p = 0 (TRL's rule); false in both",
    "max_grad_norm": "gradient-norm clip (0: off)",
    "warmup_steps": "linear warm-up in optimiser steps, as in TRL (the schedule counts optimiser steps); a "
                    "float in (0, 1) is warmup_ratio, as in transformers 5",
    "warmup_ratio": "warm-up over ceil(warmup_ratio x all optimiser steps), the schedule (warm-up and decay) "
                    "stepped per optimiser step, as in TRL (transformers 4; transformers 5 writes it as a float "
                    "warmup_steps)",
    "entropy_coef": "entropy bonus coefficient",
    "lora_r": "LoRA rank (0: full fine-tuning; TRL's default with use_peft is 16)",
    "lora_alpha": "LoRA alpha (TRL's default is 32, reinlm's 16)",
    "loss_type": "grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo with TRL's definitions; TRL's default is "
                 "dapo, reinlm's grpo",
    "sapo_temperature_pos": "sapo's gate temperature for positive advantages",
    "sapo_temperature_neg": "sapo's gate temperature for non-positive advantages",
    "vespo_k_pos": "vespo's power k for advantages >= 0",
    "vespo_lambda_pos": "vespo's decay lambda for advantages >= 0",
    "vespo_k_neg": "vespo's power k for negative advantages",
    "vespo_lambda_neg": "vespo's decay lambda for negative advantages",
    "off_policy_mask_threshold": "DeepSeek-V3.2's off-policy sequence mask against the sampler's log-probs (None: off)",
    "use_bias_correction_kl": "the KL loss term times the importance ratio (with kl_in: loss); TRL's default is "
                              "true, reinlm's false",
    "top_entropy_quantile": "only the top share of tokens by entropy enters the policy loss and the entropy bonus "
                            "(the quantile over every process's micro-batch, as TRL's)",
    "use_adaptive_entropy": "Skywork-OR1's adaptive entropy coefficient, updated after every optimiser step",
    "entropy_target": "adaptive entropy control's target entropy (nats)",
    "entropy_coef_min": "adaptive entropy control's lower bound",
    "entropy_coef_max": "adaptive entropy control's upper bound",
    "entropy_coef_delta": "adaptive entropy control's step",
    "importance_sampling_level": "token or sequence (GSPO)",
    "scale_rewards": "group, batch or none (TRL's true / false: group / none)",
    "lmbda": "GKD's share of on-policy steps (GKDConfig); the other steps train on the data's completion column. "
             "TRL's DistillationTrainer is always on-policy (1.0, reinlm's default)",
}

#: TRL key -> (reinlm field, note)
TRL_RENAMES: dict[str, tuple[str, str]] = {
    "learning_rate": ("lr", "AdamW learning rate"),
    "num_generations": ("samples_per_prompt", "completions per prompt, the group size G"),
    "max_completion_length": ("max_new_tokens", "most tokens per completion"),
    "num_iterations": ("update_epochs", "passes over each rollout batch (mu in the GRPO paper)"),
    "epsilon": ("clip_eps", "ratio clip epsilon"),
    "epsilon_high": ("clip_eps_high", "upper ratio clip (DAPO's clip-higher); with loss_type cispo the weight cap "
                                      "(TRL then falls back to epsilon, reinlm to 5.0)"),
    "delta": ("clip_ratio_c", "TRL's two-sided clip caps the ratio at delta; reinlm's dual clip bounds the loss of "
                              "negative advantages at -delta A, the same when delta > 1 + epsilon_high"),
    "mask_truncated_completions": ("mask_truncated", "truncated completions leave the loss"),
    "vllm_importance_sampling_clip_max": ("tis_cap", "the upper bound C_max of the importance weights (TRL's "
                                                     "default 3.0, reinlm's 2.0)"),
    "vllm_importance_sampling_clip_min": ("tis_clip_min", "the lower bound C_min of the importance weights"),
    "vllm_importance_sampling_cap": ("tis_cap", "TRL's deprecated name of vllm_importance_sampling_clip_max"),
    "gradient_accumulation_steps": ("grad_accum", "micro-batches per optimiser step"),
    "output_dir": ("out", "run directory"),
    "save_steps": ("save_every", "checkpoint every N steps (rollout steps in reinlm)"),
    "save_total_limit": ("keep_checkpoints", "newest checkpoints kept"),
    "model_name_or_path": ("model", "policy model (TRL's ModelConfig / script argument)"),
    "lora_target_modules": ("lora_targets", "modules LoRA adapts (a YAML list or comma-separated)"),
    "teacher_model_name_or_path": ("teacher", "the teacher of on-policy distillation (TRL's DistillationConfig / "
                                              "GKDConfig)"),
    "num_generations_eval": ("eval_samples", "completions per prompt in the evaluation (reinlm's held-out "
                                             "before/after evaluation)"),
}

#: TRL key -> how its value is mapped (see translate_trl_keys)
TRL_DERIVED: dict[str, str] = {
    "shuffle_dataset": "true is accepted (each step draws a seeded random set of prompts, TRL's shuffled order); "
                       "false is refused (reinlm has no sequential pass over the prompts)",
    "log_completions": "true -> print_completions: the step's completions printed as on TRL's console every "
                       "sample_every steps (they go to samples.jsonl either way); false -> sample_every: 0",
    "num_completions_to_print": "with log_completions: true, print_completions = this many (TRL's None: all)",
    "beta": "kl_coef = beta with TRL's meaning: the k3 KL as a loss term weighted by the importance ratio (kl_in: "
            "loss, kl_estimator: k3, use_bias_correction_kl: true, each unless given). reinlm's own kl_coef defaults "
            "to 0.05 as a k1 reward penalty (kl_in: reward); TRL's beta defaults to 0.0. With algo: distill, "
            "DistillationConfig's beta: distill_beta, the generalized JSD's weight (1.0 reverse KL)",
    "max_steps": "TRL counts optimiser steps, reinlm rollout steps: steps = ceil(max_steps / (num_iterations x "
                 "steps_per_generation / gradient_accumulation_steps)) (= max_steps with TRL's defaults)",
    "per_device_train_batch_size": "completions per device per micro-batch: batch_prompts = "
                                   "per_device_train_batch_size x steps_per_generation / num_generations (must "
                                   "divide), minibatch_size = per_device_train_batch_size x "
                                   "gradient_accumulation_steps; single process",
    "generation_batch_size": "completions per rollout: batch_prompts = generation_batch_size / num_generations",
    "steps_per_generation": "optimiser steps per rollout (with per_device_train_batch_size or "
                            "generation_batch_size; default gradient_accumulation_steps)",
    "lr_scheduler_type": "constant, constant_with_warmup -> lr_schedule: constant (with warmup_steps); linear; "
                         "cosine. TRL's default is linear, reinlm's constant",
    "generation_kwargs": "a mapping whose keys override the sampling settings, as in TRL: temperature, top_k, "
                         "top_p, min_p, repetition_penalty, max_new_tokens; do_sample: true accepted; other keys refused by name",
    "report_to": "none / [] -> log: none; tensorboard -> tensorboard; wandb -> wandb (TensorBoard too)",
    "use_peft": "true: LoRA with lora_r 16 and lora_alpha 32 unless given (TRL's defaults); false: lora_r 0",
    "use_cpu": "true -> device: cpu",
    "vllm_importance_sampling_correction": "false -> tis: none; true -> tis: token (reinlm's default, tis: auto, "
                                           "turns it on whenever rollouts run another numeric path than training)",
    "vllm_importance_sampling_mode": "token_truncate / token_mask / sequence_truncate / sequence_mask -> tis: token "
                                     "or sequence with tis_mode: truncate or mask (TRL's default is sequence_mask)",
    "bf16": "true -> train_precision: bf16-autocast (bfloat16 mixed precision, float32 weights and AdamW, as TRL's); "
            "false -> train_precision: same",
    "use_vllm": "true -> generation_backend: vllm (in the training process, TRL's colocate mode); false -> reinlm",
    "vllm_mode": "colocate is accepted (reinlm's vLLM runs in the training process); server is refused",
    "fp16": "false is accepted; true is refused (no fp16 mixed precision)",
    "gradient_checkpointing": "false is accepted; true is refused (not implemented)",
    "optim": "adamw_torch, adamw_torch_fused, adamw_hf accepted (reinlm's optimiser is AdamW); others refused",
    "eval_strategy": "no is accepted; reinlm evaluates held-out prompts before and after training "
                     "(eval_prompts, eval_samples)",
    "save_strategy": "steps is accepted (save_every); others refused",
    "dataset_name": "prompts: hf:NAME[:CONFIG][:SPLIT] with dataset_config and dataset_train_split (TRL's script "
                    "arguments; docs/models-and-data.md)",
    "dataset_config": "the CONFIG of prompts: hf:NAME:CONFIG:SPLIT (with dataset_name)",
    "dataset_train_split": "the SPLIT of prompts: hf:NAME:CONFIG:SPLIT (with dataset_name; default train)",
}

#: keys of older TRL / transformers versions, still recognised (not in TRL 1.16 / transformers 5)
TRL_LEGACY: frozenset[str] = frozenset({"warmup_ratio", "logging_dir", "torch_dtype", "max_prompt_length"})

_GENERATION_KEYS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                    "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_new_tokens"}
_LR_SCHEDULES = {"constant": "constant", "constant_with_warmup": "constant", "linear": "linear", "cosine": "cosine"}
_OPTIMS = ("adamw_torch", "adamw_torch_fused", "adamw_hf")


def trl_aliases() -> dict[str, str]:
    """``{TRL key: reinlm field}`` of the plain renames (what ``TrainConfig.__aliases__`` holds)."""
    return {k: v[0] for k, v in TRL_RENAMES.items()}


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{key}: got {value!r}; allowed: true or false.")


def _int(key: str, value: Any, lo: int = 1) -> int:
    n: int = check_field(key, value, int, {"lo": lo})
    return n


def translate_trl_keys(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Map the :data:`TRL_DERIVED` keys of a config mapping onto reinlm fields; other keys pass through.

    ``values``: flat keys as written in the file (renames not yet resolved); ``defaults``: the reinlm
    defaults of the fields the rules read (``samples_per_prompt``, ``grad_accum``, ``update_epochs``,
    ``steps``). A derived value whose reinlm field is also given is an error naming both keys. Each rule of
    :data:`_RULES` (one function per group of TRL keys) runs in order on a :class:`_Translation`.
    """
    values = _older_spellings(values)
    if not any(k in TRL_DERIVED for k in values):
        return values
    t = _Translation(values, defaults)
    for rule in _RULES:
        rule(t)
    return t.out


def _older_spellings(values: dict[str, Any]) -> dict[str, Any]:
    """TRL's and transformers' other spellings of a value: ``min_p: null``, ``scale_rewards: true``, a float
    ``warmup_steps`` in (0, 1) (transformers 5: a share of the steps, i.e. ``warmup_ratio``)."""
    values = dict(values)
    if "min_p" in values and values["min_p"] is None:  # TRL's default None: no min-p filtering
        values["min_p"] = 0.0
    if isinstance(values.get("scale_rewards"), bool):  # TRL accepts true / false for group / none
        values["scale_rewards"] = "group" if values["scale_rewards"] else "none"
    wu = values.get("warmup_steps")
    if isinstance(wu, float) and 0 < wu < 1:  # transformers 5: a float in (0, 1) is a share of the steps
        if "warmup_ratio" in values:
            raise ConfigError("warmup_steps and warmup_ratio: both give the warm-up; keep one.")
        values["warmup_ratio"] = values.pop("warmup_steps")
    return values


class _Translation:
    """One mapping's TRL keys being translated: ``given`` (its TRL_DERIVED keys), ``out`` (the other keys, and
    the reinlm fields the rules set)."""

    def __init__(self, values: dict[str, Any], defaults: dict[str, Any]):
        self.values = values
        self.defaults = defaults
        self.out = {k: v for k, v in values.items() if k not in TRL_DERIVED}
        self.given = {k: v for k, v in values.items() if k in TRL_DERIVED}

    def current(self, field: str) -> Any:
        """The value of reinlm's ``field`` in the mapping (under its name or a TRL rename), else its default."""
        for key in _names_of(field):
            if key in self.values:
                return self.values[key]
        return self.defaults[field]

    def put(self, field: str, value: Any, from_key: str) -> None:
        """Set reinlm's ``field`` from TRL's ``from_key``; an error when the mapping gives the field too."""
        clash = [k for k in _names_of(field) if k in self.values]
        if clash:
            raise ConfigError(f"{from_key}: sets {field} (TRL's {from_key}), but {clash[0]!r} is given too; keep one.")
        self.out[field] = value

    def refuse(self, key: str, why: str) -> NoReturn:
        raise ConfigError(f"{key}: got {self.given[key]!r}; {why}")

    def true(self, key: str) -> bool:
        """Whether the boolean TRL key ``key`` is given as true."""
        return key in self.given and _bool(key, self.given[key])

    def false(self, key: str) -> bool:
        """Whether the boolean TRL key ``key`` is given as false."""
        return key in self.given and not _bool(key, self.given[key])


def _names_of(field: str) -> tuple[str, ...]:
    """reinlm's ``field`` and the TRL keys renamed to it."""
    return (field, *[t for t, (f, _) in TRL_RENAMES.items() if f == field])


def _batch_shape(t: _Translation) -> None:
    """per_device_train_batch_size, generation_batch_size, steps_per_generation, max_steps -> batch_prompts,
    minibatch_size, steps (TRL counts completions per optimiser step, reinlm prompts per rollout step)."""
    given = t.given
    G = _int("num_generations", t.current("samples_per_prompt"))
    gas = _int("gradient_accumulation_steps", t.current("grad_accum"))
    mu = _int("num_iterations", t.current("update_epochs"))
    P = _int("per_device_train_batch_size", given["per_device_train_batch_size"]) \
        if "per_device_train_batch_size" in given else None
    GB = _int("generation_batch_size", given["generation_batch_size"]) if "generation_batch_size" in given else None
    spg = _int("steps_per_generation", given["steps_per_generation"]) if "steps_per_generation" in given else None
    if GB is not None and spg is not None:
        raise ConfigError("generation_batch_size and steps_per_generation: give one of them (TRL refuses both too).")
    if spg is not None and P is None:
        raise ConfigError("steps_per_generation: needs per_device_train_batch_size (completions per micro-batch) "
                          "to size the rollout batch; or give batch_prompts and minibatch_size directly.")
    updates = 1  # optimiser steps per rollout batch and update epoch
    if P is not None:
        GB = GB if GB is not None else P * (spg if spg is not None else gas)
        if GB % (P * gas):
            raise ConfigError(f"per_device_train_batch_size: gives {GB} completions per rollout, not a multiple of "
                              f"per_device_train_batch_size x gradient_accumulation_steps = {P * gas}; reinlm "
                              "takes whole optimiser steps from each rollout batch.")
    if GB is not None:
        if GB % G:
            raise ConfigError(f"per_device_train_batch_size: gives {GB} completions per rollout, not a multiple of "
                              f"num_generations = {G}; reinlm rolls out whole prompt groups (batch_prompts x "
                              "samples_per_prompt completions).")
        t.put("batch_prompts", GB // G, "per_device_train_batch_size" if P is not None else "generation_batch_size")
        if P is not None:
            updates = GB // (P * gas)
            t.put("minibatch_size", 0 if updates == 1 else P * gas, "per_device_train_batch_size")
    if "max_steps" in given:
        t.put("steps", max(1, math.ceil(_int("max_steps", given["max_steps"]) / (mu * updates))), "max_steps")


def _data_order_and_samples(t: _Translation) -> None:
    """shuffle_dataset (true only), log_completions (true -> print_completions, false -> sample_every 0) with
    num_completions_to_print."""
    if t.false("shuffle_dataset"):
        t.refuse("shuffle_dataset", "reinlm draws a seeded random set of prompts each step; there is no sequential "
                                    "order (write true or remove the key).")
    if t.false("log_completions"):
        t.put("sample_every", 0, "log_completions")
    n = t.given.get("num_completions_to_print")
    if t.true("log_completions"):
        t.put("print_completions", -1 if n is None else _int("num_completions_to_print", n), "log_completions")


def _generation_kwargs(t: _Translation) -> None:
    """generation_kwargs: sampling overrides (TRL: they win over the sampling keys)."""
    gk = t.given.get("generation_kwargs")
    if gk is None:
        return
    if not isinstance(gk, dict):
        t.refuse("generation_kwargs", "allowed: a mapping, e.g. {top_p: 0.9, min_p: 0.05}.")
    for k, v in gk.items():
        if k in _GENERATION_KEYS:
            t.out[_GENERATION_KEYS[k]] = v
        elif not (k == "do_sample" and v is True):
            raise ConfigError(f"generation_kwargs: the key {k!r} has no meaning in reinlm's sampler; allowed: "
                              f"{', '.join(_GENERATION_KEYS)} (and do_sample: true).")


def _kl_anchor(t: _Translation) -> None:
    """beta: TRL's KL anchor is a k3 loss term (with the ratio correction by default); distillation's beta."""
    if "beta" not in t.given:
        return
    if t.values.get("algo") == "distill":  # TRL's DistillationConfig.beta
        t.put("distill_beta", t.given["beta"], "beta")
        return
    t.put("kl_coef", t.given["beta"], "beta")
    for field, value in (("kl_in", "loss"), ("kl_estimator", "k3"), ("use_bias_correction_kl", True)):
        if field not in t.values:
            t.out[field] = value


def _schedule(t: _Translation) -> None:
    """lr_scheduler_type (warmup_ratio is a field of its own: TrainConfig.warmup_ratio)."""
    if "lr_scheduler_type" in t.given:
        v = str(t.given["lr_scheduler_type"])
        if v not in _LR_SCHEDULES:
            t.refuse("lr_scheduler_type", f"allowed: {', '.join(_LR_SCHEDULES)} (reinlm's lr_schedule is constant, "
                                          "linear or cosine after warmup_steps).")
        t.put("lr_schedule", _LR_SCHEDULES[v], "lr_scheduler_type")


def _logging_adapters_device(t: _Translation) -> None:
    """report_to, use_peft, use_cpu."""
    if "report_to" in t.given:
        v = t.given["report_to"]
        names = [v] if isinstance(v, str) else list(v or [])
        names = [str(n).lower() for n in names if str(n).lower() != "none"]
        bad = [n for n in names if n not in ("tensorboard", "wandb", "all")]
        if bad:
            t.refuse("report_to", f"allowed: none, tensorboard, wandb (reinlm has no {bad[0]} logger).")
        t.put("log", "wandb" if "wandb" in names else ("tensorboard" if names else "none"), "report_to")
    if t.true("use_peft"):
        if "lora_r" not in t.values:
            t.put("lora_r", 16, "use_peft")
        if "lora_alpha" not in t.values:
            t.out["lora_alpha"] = 32
    elif "use_peft" in t.given and "lora_r" not in t.values:
        t.put("lora_r", 0, "use_peft")
    if t.true("use_cpu"):
        t.put("device", "cpu", "use_cpu")


def _importance_sampling(t: _Translation) -> None:
    """vllm_importance_sampling_mode / _correction -> tis, tis_mode."""
    given = t.given
    if "vllm_importance_sampling_mode" in given:
        modes = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
        v = str(given["vllm_importance_sampling_mode"])
        if v not in modes:
            t.refuse("vllm_importance_sampling_mode", f"allowed: {', '.join(modes)}.")
        if not t.false("vllm_importance_sampling_correction"):
            t.put("tis", v.split("_")[0], "vllm_importance_sampling_mode")
            t.put("tis_mode", v.split("_")[1], "vllm_importance_sampling_mode")
        else:
            t.put("tis", "none", "vllm_importance_sampling_correction")
    elif "vllm_importance_sampling_correction" in given:
        on = t.true("vllm_importance_sampling_correction")
        t.put("tis", "token" if on else "none", "vllm_importance_sampling_correction")


def _precision_and_backend(t: _Translation) -> None:
    """bf16, use_vllm, vllm_mode, fp16, gradient_checkpointing, optim."""
    given = t.given
    if "bf16" in given:
        t.put("train_precision", "bf16-autocast" if t.true("bf16") else "same", "bf16")
    if "use_vllm" in given:
        t.put("generation_backend", "vllm" if t.true("use_vllm") else "reinlm", "use_vllm")
    if "vllm_mode" in given and str(given["vllm_mode"]) != "colocate":
        t.refuse("vllm_mode", "allowed: colocate (reinlm runs vLLM in the training process; no server mode).")
    if t.true("fp16"):
        t.refuse("fp16", "reinlm has no fp16 mixed precision; use dtype: float32 or bfloat16.")
    if t.true("gradient_checkpointing"):
        t.refuse("gradient_checkpointing", "reinlm does not implement gradient checkpointing; write false or remove "
                                           "it.")
    if "optim" in given and str(given["optim"]) not in _OPTIMS:
        t.refuse("optim", f"allowed: {', '.join(_OPTIMS)} (reinlm's optimiser is AdamW).")


def _evaluation_and_saving(t: _Translation) -> None:
    """eval_strategy (no only), save_strategy (steps only)."""
    if "eval_strategy" in t.given and str(t.given["eval_strategy"]).lower() != "no":
        t.refuse("eval_strategy", "reinlm evaluates held-out prompts before and after training (eval_prompts, "
                                  "eval_samples); write no or remove it.")
    if "save_strategy" in t.given and str(t.given["save_strategy"]).lower() != "steps":
        t.refuse("save_strategy", "allowed: steps (checkpoints every save_every steps).")


def _dataset(t: _Translation) -> None:
    """dataset_name, dataset_config, dataset_train_split (TRL's script arguments) -> one prompt SPEC."""
    dataset_keys = [k for k in ("dataset_name", "dataset_config", "dataset_train_split") if k in t.given]
    if not dataset_keys:
        return
    if "dataset_name" not in t.given:
        t.refuse(dataset_keys[0], "it needs dataset_name (the Hugging Face dataset id) too.")
    config, split = t.given.get("dataset_config") or "", t.given.get("dataset_train_split") or "train"
    t.put("prompts", f"hf:{t.given['dataset_name']}:{config}:{split}", "dataset_name")


#: the rules of :func:`translate_trl_keys`, in order
_RULES: tuple[Callable[[_Translation], None], ...] = (
    _batch_shape, _data_order_and_samples, _generation_kwargs, _kl_anchor, _schedule, _logging_adapters_device,
    _importance_sampling, _precision_and_backend, _evaluation_and_saving, _dataset)


def describe_trl_keys(values: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """One line per TRL key of a config mapping: the reinlm field and value it became, and the table's note
    (``reinlm train --dry-run`` prints them, so a TRL config's meaning here is visible before a run).
    ``defaults``: as for :func:`translate_trl_keys` (``TrainConfig.describe_trl_keys`` passes them)."""
    lines = []
    for key, value in values.items():
        if key in TRL_RENAMES:
            field, note = TRL_RENAMES[key]
            lines.append(f"{key}: {value!r} -> {field}: {value!r}  ({note})")
        elif key in TRL_SAME:
            lines.append(f"{key}: {value!r} (the same name; {TRL_SAME[key]})")
    derived = {k: v for k, v in values.items() if k in TRL_DERIVED}
    if derived:
        context = {k: v for k, v in values.items() if k not in derived}
        made = {k: v for k, v in translate_trl_keys(values, defaults).items() if k not in context}
        shown = ", ".join(f"{k}: {v!r}" for k, v in derived.items())
        became = ", ".join(f"{k}: {v!r}" for k, v in made.items()) or "no change (accepted as is)"
        lines.append(f"{shown} -> {became}")
        lines += [f"  {k}: {TRL_DERIVED[k]}" for k in derived]
    return lines


def render_trl_table() -> str:
    """The Markdown table TRL name -> reinlm name -> behaviour (the body of docs/trl-migration.md's table)."""
    rows = ["| TRL key | reinlm | notes |", "| --- | --- | --- |"]
    for k, note in sorted(TRL_SAME.items()):
        rows.append(f"| `{k}` | `{k}` | {note} |")
    for k, (field, note) in sorted(TRL_RENAMES.items()):
        rows.append(f"| `{k}` | `{field}` | {note} |")
    for k, note in sorted(TRL_DERIVED.items()):
        rows.append(f"| `{k}` | (derived) | {note} |")
    for k, why in sorted(TRL_UNSUPPORTED.items()):
        rows.append(f"| `{k}` | - | refused: {why} |")
    return "\n".join(rows) + "\n"
