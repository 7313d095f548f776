"""TrainConfig's nested settings: flat flags, flat and nested YAML, flat Python names, TRL's names for the
algorithm settings, deprecated spellings of old run directories."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from reinlm.algorithms.config import AlgorithmConfig, KLConfig
from reinlm.config.build import build_config, config_to_dict
from reinlm.config.fields import flat_fields
from reinlm.config.yamlfile import load_yaml
from reinlm.errors import ConfigError
from reinlm.trainer.config import SamplingSettings, TrainConfig, add_train_args


def test_flat_python_names_route_into_the_nested_settings_at_construction():
    cfg = TrainConfig(kl_coef=0.1, temperature=0.7, loss_type="dapo", mask_truncated=True, value_clip=0.3)
    assert cfg.kl == KLConfig(kl_coef=0.1) and cfg.sampling == SamplingSettings(temperature=0.7)
    assert cfg.algorithm.loss_type == "dapo" and cfg.batches.mask_truncated and cfg.ppo.value_clip == 0.3
    assert dataclasses.replace(cfg, kl_coef=0.3).kl.kl_coef == 0.3
    cfg.sampling.temperature = 0.9
    assert cfg.sampling.temperature == 0.9


def test_nested_settings_have_no_flat_attribute():
    """No attribute magic: a nested setting is read and assigned through its nested config only (issue 26)."""
    cfg = TrainConfig()
    nested = {name: ff.path for name, ff in flat_fields(TrainConfig).items() if len(ff.path) > 1}
    assert {"kl_coef", "tis", "kl_in", "temperature", "critic", "environment"} <= set(nested)
    for name in nested:
        with pytest.raises(AttributeError):
            getattr(cfg, name)
    with pytest.raises(AttributeError, match="kl.kl_coef"):  # would only shadow cfg.kl.kl_coef
        cfg.kl_coef = 0.3  # type: ignore[attr-defined]
    assert cfg.kl.kl_coef == KLConfig().kl_coef and "kl_coef" not in vars(cfg)
    with pytest.raises(AttributeError):
        cfg.no_such_setting  # type: ignore[attr-defined]  # noqa: B018


def test_an_old_flat_run_config_still_loads(tmp_path):
    """A run directory's config.yaml is written flat (and was, before the nesting): it loads into the nested
    settings, deprecated spellings included, and writes back the same flat keys."""
    old = tmp_path / "config.yaml"
    old.write_text("algo: ppo\nsteps: 3\nkl_coef: 0.02\nkl_target: 0.1\ntemperature: 0.7\nmax_new_tokens: 12\n"
                   "clip_eps: 0.3\nvalue_model: separate\ndynamic_sampling: false\nscale_std: false\n"
                   "loss_aggregation: token_mean\ncritic_model: default\nmax_turns: 2\n")
    cfg = build_config(TrainConfig, None, [load_yaml(old)])
    assert (cfg.algo, cfg.steps, cfg.kl.kl_coef, cfg.kl.kl_target) == ("ppo", 3, 0.02, 0.1)
    assert (cfg.sampling.temperature, cfg.sampling.max_new_tokens, cfg.algorithm.clip_eps) == (0.7, 12, 0.3)
    assert (cfg.ppo.value_model, cfg.env.max_turns, cfg.llm_critic.critic_model) == ("separate", 2, "default")
    assert (cfg.algorithm.scale_rewards, cfg.algorithm.loss_type) == ("none", "bnpo")
    again = config_to_dict(cfg)
    assert (again["kl_coef"], again["temperature"], again["value_model"], again["scale_rewards"]) == \
        (0.02, 0.7, "separate", "none")
    assert build_config(TrainConfig, None, [again]) == cfg


def test_nested_and_flat_yaml_and_flags_agree(tmp_path):
    nested = build_config(TrainConfig, None, {"kl": {"kl_coef": 0.2}, "algorithm": {"loss_type": "dapo"}})
    flat = build_config(TrainConfig, None, {"kl_coef": 0.2, "loss_type": "dapo"})
    assert nested == flat
    parser = argparse.ArgumentParser()
    add_train_args(parser)
    args = parser.parse_args(["--kl-coef", "0.2", "--loss-type", "dapo", "--clip-eps-high", "0.28",
                              "--dynamic-sampling", "--tis", "sequence"])
    cfg = build_config(TrainConfig, args)
    assert (cfg.kl.kl_coef, cfg.algorithm.loss_type, cfg.algorithm.clip_eps_high, cfg.batches.dynamic_sampling,
            cfg.algorithm.tis) == (0.2, "dapo", 0.28, True, "sequence")
    assert config_to_dict(cfg)["clip_eps_high"] == 0.28 and "kl" not in config_to_dict(cfg)  # written flat


def test_trl_names_of_the_algorithm_settings():
    cfg = build_config(TrainConfig, None, {
        "loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28, "importance_sampling_level": "sequence",
        "scale_rewards": "batch", "mask_truncated_completions": True, "delta": 3.0,
        "vllm_importance_sampling_mode": "token_truncate", "vllm_importance_sampling_clip_max": 3.0,
    })
    a = cfg.algorithm
    assert (a.loss_type, a.clip_eps, a.clip_eps_high, a.importance_sampling_level, a.scale_rewards) == \
        ("dapo", 0.2, 0.28, "sequence", "batch")
    assert (cfg.batches.mask_truncated, cfg.algorithm.clip_ratio_c, cfg.algorithm.tis, cfg.algorithm.tis_cap) == \
        (True, 3.0, "token", 3.0)
    assert build_config(TrainConfig, None, {"scale_rewards": False}).algorithm.scale_rewards == "none"
    assert build_config(TrainConfig, None, {"vllm_importance_sampling_correction": False}).algorithm.tis == "none"


@pytest.mark.parametrize("kw, words", [
    (dict(loss_type="sapoo"), ["loss_type", "sapo"]),
    (dict(sapo_temperature_pos=0.0), ["sapo_temperature_pos: got 0.0", "> 0"]),
    (dict(vespo_lambda_neg=-1.0), ["vespo_lambda_neg: got -1.0", ">= 0"]),
    (dict(off_policy_mask_threshold=-0.1), ["off_policy_mask_threshold: got -0.1", ">= 0"]),
    (dict(top_entropy_quantile=1.5), ["top_entropy_quantile: got 1.5", "<= 1"]),
    (dict(use_adaptive_entropy=True, entropy_coef_min=0.5, entropy_coef_max=0.1), ["entropy_coef_min: got 0.5",
                                                                                    "<= entropy_coef_max"]),
    (dict(entropy_coef_delta=-0.1), ["entropy_coef_delta: got -0.1"]),
    (dict(tis_clip_min=3.0, tis_cap=2.0), ["tis_clip_min: got 3.0", "< tis_cap"]),
    (dict(tis_mode="clip"), ["tis_mode: got 'clip'", "truncate, mask"]),
    (dict(loss_type="vespo", tis="sequence"), ["tis: got sequence with --loss-type vespo", "token"]),
    (dict(clip_ratio_c=0.9), ["clip_ratio_c"]),
    (dict(tis_cap=0.0), ["tis_cap"]),
    (dict(dynamic_sampling=True, samples_per_prompt=1, algo="reinforce", baseline="none"), ["dynamic_sampling"]),
    (dict(algo="reinforce_pp", samples_per_prompt=1), ["baseline: group_mean needs --samples-per-prompt >= 2"]),
])
def test_bad_algorithm_settings_name_the_field(kw, words):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**kw)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_cispo_caps_at_five_unless_told():
    assert AlgorithmConfig(loss_type="cispo").clip_eps_high == 5.0
    assert TrainConfig(loss_type="cispo").algorithm.clip_eps_high == 5.0
    assert TrainConfig(loss_type="cispo", clip_eps_high=2.0).algorithm.clip_eps_high == 2.0
    assert TrainConfig(loss_type="dapo").algorithm.clip_eps_high is None


def test_deprecated_spellings_still_load():
    cfg = build_config(TrainConfig, None, {"scale_std": False, "loss_aggregation": "token_mean"})
    assert (cfg.algorithm.scale_rewards, cfg.algorithm.loss_type, cfg.scale_std, cfg.loss_aggregation) == \
        ("none", "bnpo", None, None)


def test_algo_names_come_from_the_registry():
    """An algorithm registered after import validates as ``algo`` (a Literal that repeated the built-in names
    refused it); once unregistered it is refused again, with the registered names and a suggestion."""
    from reinlm.algorithms.base import ALGORITHMS, register_algorithm
    from reinlm.algorithms.grpo import GRPO

    @register_algorithm("grpo_copy")
    class GRPOCopy(GRPO):
        """GRPO under another name (a stand-in for a user's algorithm)."""

    try:
        assert TrainConfig(algo="grpo_copy").algo == "grpo_copy"
        assert build_config(TrainConfig, None, {"algo": "grpo_copy"}).algo == "grpo_copy"
    finally:
        del ALGORITHMS["grpo_copy"]
    with pytest.raises(ConfigError, match=r"algo: got 'grpo_copy'; allowed: .*grpo.* \(did you mean 'grpo'\?\)"):
        TrainConfig(algo="grpo_copy")


def test_settings_that_do_not_go_with_an_environment_are_refused():
    env = {"environment": "builtin:persuade"}
    assert TrainConfig(**env).env.environment == "builtin:persuade"
    for kw, words in (({"algo": "remax"}, "algo: remax's greedy-rollout baseline is not defined for episodes"),
                      ({"dynamic_sampling": True}, "dynamic_sampling: not wired for episodes yet"),
                      ({"generation_backend": "vllm"}, "generation_backend: got 'vllm' with --environment"),
                      ({"turn_credit": "gae"}, "turn_credit: gae needs PPO's value head; got --algo grpo")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            TrainConfig(**env, **kw)
    assert TrainConfig(**env, algo="ppo", turn_credit="gae").env.turn_credit == "gae"
