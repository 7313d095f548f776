"""Every field of the installed TRL's ``GRPOConfig`` (its GRPO options and the ``TrainingArguments`` it inherits)
is either implemented with TRL's meaning or refused with a reason of its own (reinlm/trainer/trl_names.py).

TRL is pinned in the ``test`` extra (pyproject.toml), so these tests run under a plain ``make test``: a new TRL
release that adds a field shows up here as a failure, not as a silent gap.
"""

from __future__ import annotations

import dataclasses

import pytest
from trl import GRPOConfig

from reinlm.config.build import build_config
from reinlm.config.fields import flat_fields
from reinlm.errors import ConfigError
from reinlm.trainer import trl_names
from reinlm.trainer.config import TrainConfig

#: one value per derived key that the rule in translate_trl_keys accepts (a new derived key needs one here)
DERIVED_SAMPLES = {
    "beta": 0.04, "shuffle_dataset": True, "log_completions": False,
    "max_steps": 4, "per_device_train_batch_size": 8, "generation_batch_size": 16, "steps_per_generation": 2,
    "lr_scheduler_type": "cosine", "report_to": "none", "use_peft": True, "use_cpu": True,
    "vllm_importance_sampling_correction": False, "vllm_importance_sampling_mode": "token_truncate",
    "bf16": False, "use_vllm": False, "vllm_mode": "colocate", "fp16": False, "gradient_checkpointing": False,
    "optim": "adamw_torch", "eval_strategy": "no", "save_strategy": "steps", "dataset_name": "org/data",
    "dataset_config": "main", "dataset_train_split": "train", "generation_kwargs": {"top_p": 0.9},
    "num_completions_to_print": 3,
}
#: reasons that say nothing about the key they refuse
GENERIC = ("not supported", "not supported; remove the key.", "not implemented", "remove the key.")


def _grpo_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(GRPOConfig)]


def test_every_grpo_config_field_is_implemented_or_refused():
    fields = set(flat_fields(TrainConfig))
    missing = []
    for name in _grpo_fields():
        if name in trl_names.TRL_SAME:
            assert name in fields, f"{name}: listed as the same name but is no TrainConfig field"
        elif name in trl_names.TRL_RENAMES:
            assert trl_names.TRL_RENAMES[name][0] in fields, f"{name}: renamed to a field that does not exist"
        elif name in trl_names.TRL_DERIVED:
            assert name in DERIVED_SAMPLES, f"{name}: derived, give it a sample value in DERIVED_SAMPLES"
        elif name not in trl_names.TRL_UNSUPPORTED:
            missing.append(name)
    assert not missing, (f"TRL {GRPOConfig.__module__} fields with no meaning in reinlm's table: {missing}; implement "
                         "each with TRL's meaning or refuse it with its reason in reinlm/trainer/trl_refused.py")
    assert len(_grpo_fields()) > 150  # GRPO's options and TrainingArguments' (189 in TRL 1.16)


def test_each_refusal_gives_a_reason_of_its_own():
    for key, why in trl_names.TRL_UNSUPPORTED.items():
        assert why.strip().lower() not in GENERIC and len(why) >= 20, f"{key}: the reason {why!r} is not specific"


@pytest.mark.parametrize("key", ["push_to_hub", "hub_model_id", "hub_token", "log_completions_hub_repo",
                                 "vllm_server_base_url", "trackio_space_id"])
def test_network_options_are_refused_as_offline(key):
    with pytest.raises(ConfigError) as err:
        build_config(TrainConfig, None, {key: "x"})
    msg = str(err.value)
    assert f"the key '{key}' has no meaning in reinlm" in msg
    assert ("never uploads" in msg and "offline" in msg) or "network" in msg or "no vLLM server" in msg


def test_every_refused_key_is_refused_with_its_reason():
    for key, why in trl_names.TRL_UNSUPPORTED.items():
        with pytest.raises(ConfigError, match="has no meaning in reinlm") as err:
            build_config(TrainConfig, None, {key: 1})
        assert why in str(err.value), key


def test_every_derived_key_is_consumed_by_its_rule():
    ff = flat_fields(TrainConfig)
    defaults = {n: ff[n].default for n in ("samples_per_prompt", "grad_accum", "update_epochs", "steps")}
    for key, value in DERIVED_SAMPLES.items():
        values = {key: value}
        if key in ("dataset_config", "dataset_train_split"):
            values["dataset_name"] = "org/data"
        if key == "steps_per_generation":
            values["per_device_train_batch_size"] = 8
        out = trl_names.translate_trl_keys(values, defaults)
        assert not set(out) & set(trl_names.TRL_DERIVED), (key, out)


def test_eval_generations_completion_logging_and_shuffling_keep_trls_meaning():
    cfg = build_config(TrainConfig, None, {"num_generations_eval": 3, "log_completions": False,
                                           "shuffle_dataset": True})
    assert (cfg.eval_samples, cfg.sample_every) == (3, 0)
    assert build_config(TrainConfig, None, {"log_completions": True}).sample_every == 5  # reinlm's cadence
    with pytest.raises(ConfigError, match="shuffle_dataset: got False; reinlm draws a seeded random set"):
        build_config(TrainConfig, None, {"shuffle_dataset": False})
