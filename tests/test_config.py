"""The config layer (reinlm/config.py): one validator for every field, nested configs flattened into flat
flags and YAML keys, strict YAML with aliases, and TrainConfig's TRL names (reinlm/trainer/trl_names.py)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from reinlm.config.build import build_config, config_to_dict
from reinlm.config.coerce import check_field
from reinlm.config.fields import flat_fields
from reinlm.config.flags import add_dataclass_args
from reinlm.config.schema import Config, opt
from reinlm.config.yamlfile import load_yaml
from reinlm.errors import ConfigError
from reinlm.trainer import trl_names
from reinlm.trainer.config import TrainConfig

ASSETS = Path(__file__).parent / "assets"


# --------------------------------------------------------------------------- the generic validator
@pytest.mark.parametrize("value,tp,meta,expected", [
    ("1e-5", float, {}, 1e-5),
    ("3", int, {}, 3),
    (2.0, int, {}, 2),
    ("1e3", int, {}, 1000),
    (" 7 ", int, {}, 7),
    (5, float, {}, 5.0),
    ("true", bool, {}, True),
    ("no", bool, {}, False),
    (5, str, {}, "5"),
    (["q_proj", "v_proj"], str, {"sep": ","}, "q_proj,v_proj"),
    ("a,b", list[str], {}, ["a", "b"]),
    ("grpo", Literal["grpo", "ppo"], {}, "grpo"),
    (float("inf"), float, {"finite": False}, math.inf),
    (1.0, float, {"lo": 0, "hi": 1}, 1.0),
])
def test_check_field_coerces_lossless_values(value, tp, meta, expected):
    assert check_field("x", value, tp, meta) == expected


@pytest.mark.parametrize("value,tp,meta,words", [
    (2.5, int, {}, ["x: got 2.5", "an integer"]),
    ("abc", float, {}, ["got 'abc'", "a finite number"]),
    ("two", int, {}, ["got 'two'", "an integer"]),
    (None, int, {}, ["got null", "an integer"]),
    ([1, 2], float, {}, ["got [1, 2] (a list)", "a finite number"]),
    ({"a": 1}, str, {}, ["(a mapping)", "a string"]),
    (True, int, {}, ["got True", "an integer"]),
    (True, float, {}, ["got True", "a finite number"]),
    (1, bool, {}, ["got 1", "true or false"]),
    (True, str, {}, ["got True", "a string"]),
    (float("nan"), float, {}, ["got nan", "a finite number"]),
    (float("inf"), float, {"lo": 0}, ["got inf", "a finite number >= 0"]),
    ("-inf", float, {}, ["got -inf", "a finite number"]),
    (10**400, float, {}, ["a finite number"]),
    (float("inf"), int, {}, ["an integer"]),
    (-1, int, {"lo": 0}, ["got -1", "an integer >= 0"]),
    (0.0, float, {"lo": 0, "lo_open": True}, ["got 0.0", "> 0"]),
    (1.5, float, {"hi": 1}, ["<= 1"]),
    (1.0, float, {"hi": 1, "hi_open": True}, ["< 1"]),
    ("ppo2", Literal["grpo", "ppo"], {}, ["one of grpo, ppo", "did you mean 'ppo'"]),
    ("x", str, {"choices": ("none", "running")}, ["one of none, running"]),
    ("a,,nan", list[float], {}, ["a list of numbers"]),
])
def test_check_field_refuses_with_field_value_and_allowed(value, tp, meta, words):
    with pytest.raises(ConfigError) as e:
        check_field("x", value, tp, meta)
    msg = str(e.value)
    assert e.value.field == "x"
    for w in words:
        assert w in msg, (w, msg)
    assert "\n" not in msg


def test_optional_fields_take_null():
    assert check_field("x", None, int, {"lo": 1}, optional=True) is None
    with pytest.raises(ConfigError, match="or null"):
        check_field("x", 0, int, {"lo": 1}, optional=True)


# --------------------------------------------------------------------------- nesting
@dataclass
class Inner(Config):
    alpha: float = opt(0.5, "an inner number", lo=0, hi=1)
    mode: Literal["a", "b"] = opt("a", "an inner choice", aliases=("inner_mode",))


@dataclass
class Outer(Config):
    steps: int = opt(3, "an outer count", lo=1)
    inner: Inner = opt(default_factory=Inner, help="inner settings")
    tags: list[str] = opt(default_factory=list, help="tags")
    seen: list = dataclasses.field(default_factory=list, metadata={"flag": False})

    def __post_init__(self):
        # runs after the generic validator: the value is already an int
        super().__post_init__()
        self.seen.append(type(self.steps).__name__)


def test_nested_fields_flatten_into_flags_and_yaml(tmp_path):
    assert list(flat_fields(Outer)) == ["steps", "alpha", "mode", "tags", "seen"]
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, Outer)
    args = parser.parse_args(["--alpha", "0.25", "--tags", "x,y"])
    cfg = build_config(Outer, args)
    assert cfg.inner.alpha == 0.25 and cfg.inner.mode == "a" and cfg.tags == ["x", "y"]
    # flat and nested YAML mappings mean the same; the nested alias works
    (tmp_path / "flat.yaml").write_text("steps: '4'\nalpha: 1e-1\nmode: b\n")
    (tmp_path / "nested.yaml").write_text("steps: 4\ninner:\n  alpha: 0.1\n  inner_mode: b\n")
    a = build_config(Outer, None, load_yaml(tmp_path / "flat.yaml"))
    b = build_config(Outer, None, load_yaml(tmp_path / "nested.yaml"))
    assert config_to_dict(a) == config_to_dict(b) == {"steps": 4, "alpha": 0.1, "mode": "b", "tags": [], "seen": ["int"]}
    assert a.seen == ["int"]  # the subclass's own __post_init__ ran once, after coercion
    # flags beat YAML; config_to_dict is flat and reads back
    c = build_config(Outer, parser.parse_args(["--mode", "a"]), load_yaml(tmp_path / "nested.yaml"))
    assert c.inner.mode == "a" and c.inner.alpha == 0.1
    assert config_to_dict(build_config(Outer, None, config_to_dict(c))) == config_to_dict(c)


def test_nested_errors_name_the_flat_key_and_the_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("inner:\n  alpha: 2\n")
    with pytest.raises(ConfigError, match=r"config '.*bad.yaml': alpha: got 2.0; allowed: a finite number >= 0 and <= 1"):
        build_config(Outer, None, load_yaml(tmp_path / "bad.yaml"))
    (tmp_path / "typo.yaml").write_text("inner:\n  alpah: 0.2\n")
    with pytest.raises(ConfigError, match=r"unknown key 'inner.alpah'; did you mean 'alpha'"):
        build_config(Outer, None, load_yaml(tmp_path / "typo.yaml"))
    with pytest.raises(ConfigError, match="given twice"):
        build_config(Outer, None, {"alpha": 0.1, "inner": {"alpha": 0.2}})
    with pytest.raises(ConfigError, match="a mapping of the fields of Inner"):
        build_config(Outer, None, {"inner": 3})
    with pytest.raises(ConfigError, match="alpha: got nan"):
        Outer(inner=Inner(alpha=float("nan")))
    assert Outer(inner={"alpha": "0.3"}).inner.alpha == 0.3  # a mapping is built into the nested config


def test_duplicate_flat_names_are_refused_when_declared():
    @dataclass
    class Clash(Config):
        alpha: float = opt(1.0, "clashes with Inner.alpha")
        inner: Inner = opt(default_factory=Inner)

    with pytest.raises(TypeError, match="'alpha' is declared twice"):
        flat_fields(Clash)


def test_validation_runs_on_direct_construction_with_and_without_own_post_init():
    @dataclass
    class Plain(Config):
        n: int = opt(1, "n", lo=1)

    @dataclass
    class Child(Plain):
        m: float = opt(0.0, "m")

    assert Plain(n="2").n == 2
    with pytest.raises(ConfigError, match="n: got 0"):
        Plain(n=0)
    with pytest.raises(ConfigError, match="m: got inf"):
        Child(m=float("inf"))
    with pytest.raises(ConfigError, match="steps: got 0"):
        Outer(steps=0)


# --------------------------------------------------------------------------- YAML files
@pytest.mark.parametrize("content,words", [
    (b"steps: [1\n", ["not valid YAML", "line 2"]),
    (b"\xff\xfesteps: 2\n", ["not UTF-8", "0xff", "offset 0"]),
    (b"steps: 2\nreward: caf\xe9\n", ["not UTF-8", "line 2"]),
    (b"", ["is empty"]),
    (b"# only a comment\n", ["is empty"]),
    (b"- 1\n- 2\n", ["must hold a mapping", "a list"]),
    (b"just text\n", ["must hold a mapping", "a string"]),
    (b"steps: 1\nsteps: 2\n", ["'steps' is given twice"]),
    (b"1: 2\n", ["has the key 1"]),
    (b"\x00\x01\x02binary", ["NUL byte"]),
])
def test_bad_yaml_files_give_one_paragraph_naming_the_file(tmp_path, content, words):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError if b"\xff" not in content and b"\xe9" not in content and b"\x00" not in content
                       else Exception) as e:
        build_config(TrainConfig, None, load_yaml(path))
    msg = str(e.value)
    assert "cfg.yaml" in msg and "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_missing_and_directory_yaml(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(Exception, match="is a directory"):
        load_yaml(tmp_path)


# --------------------------------------------------------------------------- TrainConfig ranges (issue 18)
@pytest.mark.parametrize("field,value", [
    ("steps", "abc"), ("steps", 2.5), ("steps", None), ("steps", 0), ("lr", "fast"), ("lr", float("nan")),
    ("lr", float("inf")), ("lr", 0), ("temperature", [1, 2]), ("temperature", float("nan")), ("kl_coef", float("nan")),
    ("clip_eps", float("nan")), ("top_p", float("nan")), ("weight_decay", -1), ("keep_checkpoints", -1),
    ("eval_prompts", -1), ("warmup_steps", -1), ("max_grad_norm", -1), ("lora_r", -1), ("score_clip", -1),
    ("score_clip", 0), ("gamma", 2), ("lam", -1), ("eval_samples", 0), ("held_out_fraction", 1.0),
    ("num_actions", "abc"), ("seed", -1), ("device", "tpu"), ("algo", 5), ("reward", True), ("progress", "maybe"),
    ("critic_timeout", 0), ("critic_values", "nan,-0.5"), ("critic_concurrency", 0), ("critic_scale", "log"),
])
def test_train_config_refuses_the_issue_values(field, value):
    with pytest.raises(ConfigError) as e:
        build_config(TrainConfig, None, {field: value})
    assert str(e.value).startswith(f"config: {field}:") or str(e.value).startswith(f"{field}:"), str(e.value)


def test_eval_samples_zero_names_eval_samples():
    with pytest.raises(ConfigError, match=r"^eval_samples: got 0"):
        TrainConfig(eval_samples=0)


def test_cuda_without_a_gpu_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA device"):
        TrainConfig(device="cuda")


def test_old_flat_run_config_still_loads():
    values = load_yaml(ASSETS / "old_run_config.yaml")
    cfg = build_config(TrainConfig, None, values)
    assert (cfg.steps, cfg.algo, cfg.kl.kl_target, cfg.out) == (3, "ppo", 0.1, "runs/old")
    written = config_to_dict(cfg)
    # every old key keeps its value, except the two deprecated spellings, now written as their new fields
    assert {k: v for k, v in written.items() if k in values} == {**values, "scale_std": None, "loss_aggregation": None}
    assert (written["scale_rewards"], written["loss_type"]) == ("group", "grpo")
    assert build_config(TrainConfig, None, written) == cfg


def test_config_to_dict_round_trips_through_yaml():
    cfg = TrainConfig(steps=4, lr=3e-6, lora_r=4, lora_targets="q_proj,k_proj", score_clip=2.0)
    back = build_config(TrainConfig, None, yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))))
    assert config_to_dict(back) == config_to_dict(cfg)


# --------------------------------------------------------------------------- TRL names
def test_trl_renames_and_derived_keys(tmp_path):
    (tmp_path / "trl.yaml").write_text(
        "learning_rate: 1e-5\nnum_generations: 4\nper_device_train_batch_size: 8\ngradient_accumulation_steps: 2\n"
        "max_completion_length: 16\nbeta: 0.02\nnum_iterations: 2\nepsilon: 0.3\nmax_steps: 10\n"
        "lr_scheduler_type: cosine\nwarmup_ratio: 0.1\noutput_dir: runs/x\nsave_steps: 5\nsave_total_limit: 3\n"
        "report_to: none\nbf16: false\nuse_peft: true\nlora_target_modules: [q_proj, k_proj]\nseed: 3\n")
    cfg = build_config(TrainConfig, None, load_yaml(tmp_path / "trl.yaml"))
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)
    # 8 completions x 2 micro-batches per optimiser step = 16 completions = 4 prompts x 4 generations
    assert (cfg.samples_per_prompt, cfg.batch_prompts, cfg.minibatch_size, cfg.grad_accum) == (4, 4, 0, 2)
    # 10 optimiser steps with 2 iterations per rollout batch = 5 rollout steps; TRL's warmup_ratio is a field of
    # its own (a share of the optimiser steps: tests/test_schedules.py)
    assert (cfg.steps, cfg.update_epochs, cfg.warmup_ratio, cfg.warmup_steps) == (5, 2, 0.1, 0)
    assert (cfg.sampling.max_new_tokens, cfg.kl.kl_coef, cfg.algorithm.clip_eps, cfg.lr_schedule) == \
        (16, 0.02, 0.3, "cosine")
    # TRL's beta: a k3 KL loss term with the importance-ratio correction (TRL's defaults), not reinlm's k1 penalty
    assert (cfg.kl.kl_in, cfg.kl.kl_estimator, cfg.algorithm.use_bias_correction_kl) == ("loss", "k3", True)
    assert build_config(TrainConfig, None, {"beta": 0.1, "kl_in": "reward"}).kl.kl_in == "reward"  # given wins
    assert build_config(TrainConfig, None, {"kl_coef": 0.1}).kl.kl_in == "reward"  # reinlm's own name: reinlm's meaning
    assert (cfg.out, cfg.save_every, cfg.keep_checkpoints, cfg.log) == ("runs/x", 5, 3, "none")
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_targets, cfg.seed) == (16, 32, "q_proj,k_proj", 3)


def test_trl_bf16_and_use_vllm_map_onto_mixed_precision_and_the_vllm_backend():
    cfg = build_config(TrainConfig, None, {"bf16": True, "use_vllm": True, "vllm_mode": "colocate"})
    assert (cfg.train_precision, cfg.rollout.generation_backend) == ("bf16-autocast", "vllm")
    cfg = build_config(TrainConfig, None, {"bf16": False, "use_vllm": False})
    assert (cfg.train_precision, cfg.rollout.generation_backend) == ("same", "reinlm")


def test_warmup_steps_as_a_share_like_transformers_5():
    cfg = build_config(TrainConfig, None, {"warmup_steps": 0.1, "steps": 20})
    assert (cfg.warmup_ratio, cfg.warmup_steps) == (0.1, 0)  # a share of the optimiser steps, as warmup_ratio
    assert build_config(TrainConfig, None, {"warmup_steps": 3}).warmup_steps == 3
    with pytest.raises(ConfigError, match="warmup_ratio: got 0.1 with warmup_steps 3; both give the warm-up"):
        build_config(TrainConfig, None, {"warmup_ratio": 0.1, "warmup_steps": 3})


def test_trl_generation_batch_with_several_optimiser_steps():
    cfg = build_config(TrainConfig, None, {"num_generations": 4, "per_device_train_batch_size": 4,
                                           "steps_per_generation": 4, "max_steps": 8})
    # 16 completions per rollout, 4 optimiser steps of 4 each: 8 optimiser steps = 2 rollout steps
    assert (cfg.batch_prompts, cfg.minibatch_size, cfg.steps) == (4, 4, 2)


@pytest.mark.parametrize("values,words", [
    ({"learning_rate": 1e-5, "lr": 1e-4}, ["'lr' is given twice", "learning_rate"]),
    ({"max_steps": 5, "steps": 4}, ["max_steps", "'steps' is given too"]),
    ({"num_generations": 3, "per_device_train_batch_size": 8}, ["not a multiple of num_generations = 3"]),
    ({"bf16": True, "train_precision": "same"}, ["bf16", "sets train_precision", "keep one"]),
    ({"vllm_mode": "server"}, ["vllm_mode", "allowed: colocate"]),
    ({"num_train_epochs": 3}, ["'num_train_epochs' has no meaning in reinlm", "max_steps"]),
    ({"logging_steps": 10}, ["has no meaning in reinlm"]),
    ({"vllm_server_base_url": "http://x"}, ["in the training process", "no vLLM server"]),
    ({"loss_type": "sapoo"}, ["loss_type", "grpo", "sapo"]),
    ({"vllm_importance_sampling_mode": "sequence_clip"}, ["token_truncate", "sequence_mask"]),
    ({"lr_scheduler_type": "polynomial"}, ["lr_scheduler_type", "constant, constant_with_warmup, linear, cosine"]),
    ({"report_to": ["mlflow"]}, ["no mlflow logger"]),
    ({"stpes": 2}, ["unknown key 'stpes'; did you mean 'steps'"]),
    ({"num_generation": 4}, ["did you mean 'num_generations' (= samples_per_prompt)"]),
    ({"gradient_checkpointing": True}, ["gradient checkpointing"]),
    ({"steps_per_generation": 2}, ["needs per_device_train_batch_size"]),
])
def test_trl_keys_without_a_clean_meaning_are_explained(values, words):
    with pytest.raises(ConfigError) as e:
        build_config(TrainConfig, None, values)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_trl_alias_flags_are_hidden_but_work():
    from reinlm.trainer.config import add_train_args

    parser = argparse.ArgumentParser()
    add_train_args(parser)
    assert "--learning-rate" not in parser.format_help()
    args = parser.parse_args(["--learning-rate", "3e-6"])
    assert build_config(TrainConfig, args).lr == 3e-6
    args = parser.parse_args(["--num_generations", "4", "--max_completion_length", "16"])  # TRL's CLI spelling
    cfg = build_config(TrainConfig, args)
    assert (cfg.samples_per_prompt, cfg.sampling.max_new_tokens) == (4, 16)


def _trl_source_keys() -> set[str]:
    """Field names of TRL's GRPOConfig, DistillationConfig, GKDConfig, ModelConfig, ScriptArguments and
    transformers' TrainingArguments, read from the installed sources (importing TRL would cost seconds)."""
    import importlib.util

    keys: set[str] = set()
    for mod, files in (("trl", ("trainer/grpo_config.py", "trainer/model_config.py", "scripts/utils.py",
                                "trainer/base_config.py", "trainer/distillation_config.py",
                                "experimental/gkd/gkd_config.py")),
                       ("transformers", ("training_args.py",))):
        spec = importlib.util.find_spec(mod)
        if spec is None or not spec.submodule_search_locations:
            pytest.skip(f"{mod} is not installed")
        root = Path(list(spec.submodule_search_locations)[0])
        for f in files:
            keys |= set(re.findall(r"^    (\w+): [^=\n]+= field\(", (root / f).read_text(), re.M))
    return keys


def test_trl_table_is_consistent_with_trl_and_with_train_config():
    fields = set(flat_fields(TrainConfig))
    trl_keys = _trl_source_keys()
    tables = {**trl_names.TRL_SAME, **trl_names.TRL_RENAMES, **trl_names.TRL_DERIVED, **trl_names.TRL_UNSUPPORTED}
    missing = sorted(k for k in tables if k not in trl_keys and k not in trl_names.TRL_LEGACY)
    assert not missing, f"not TRL keys (typo?): {missing}"
    for k in trl_names.TRL_SAME:
        assert k in fields, f"{k} is listed as the same name but is no TrainConfig field"
    for k, (target, _) in trl_names.TRL_RENAMES.items():
        assert target in fields and k not in fields
    shadowed = sorted(k for k in {**trl_names.TRL_DERIVED, **trl_names.TRL_UNSUPPORTED} if k in fields)
    assert not shadowed, (f"TrainConfig now has the fields {shadowed}: remove them from TRL_DERIVED / "
                          "TRL_UNSUPPORTED in reinlm/trainer/trl_names.py (a field takes its key)")


def test_trl_migration_doc_matches_the_table():
    doc = Path(__file__).resolve().parents[1] / "docs" / "trl-migration.md"
    table = trl_names.render_trl_table()
    assert table.count("\n") > 40 and "| `learning_rate` | `lr` |" in table
    if not doc.is_file():
        pytest.skip("docs/trl-migration.md is not written yet")
    assert table in doc.read_text(), "docs/trl-migration.md is out of date: paste render_trl_table()'s output"


# --------------------------------------------------------------------------- through the CLI
def _cli(argv, capsys):
    from reinlm.cli.main import main

    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("yaml_text,words", [
    ("stpes: 2\n", ["unknown key 'stpes'", "did you mean 'steps'"]),
    ("num_train_epochs: 1\n", ["no meaning in reinlm"]),
    ("lr: fast\n", ["lr: got 'fast'"]),
    ("steps: two\n", ["steps: got 'two'", "an integer >= 1"]),
    ("steps: [1\n", ["not valid YAML"]),
    ("reward: 5\nsteps: 0\n", ["steps: got 0"]),
])
def test_train_cli_bad_config_exits_2_before_any_model(tmp_path, capsys, yaml_text, words):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    code, err = _cli(["train", "--config", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert "Traceback" not in err
    for w in words:
        assert w in " ".join(err.split()), (w, err)
    assert not (tmp_path / "run").exists()


def test_train_cli_resume_refuses_an_empty_saved_config(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("")
    code, err = _cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and "is empty" in err and "checkpoint" in err


def test_every_config_dataclass_derives_from_config():
    """A dataclass whose fields are declared with opt() is a config: it must run the shared validator."""
    import importlib
    import pkgutil

    import reinlm

    missing = []
    for mod in pkgutil.walk_packages(reinlm.__path__, "reinlm."):
        module = importlib.import_module(mod.name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
                    and any("help" in f.metadata for f in dataclasses.fields(obj)) and not issubclass(obj, Config)):
                missing.append(f"{module.__name__}.{obj.__name__}")
    assert not missing, f"config dataclasses that skip validation (derive them from reinlm.config.schema.Config): {missing}"


def test_every_own_post_init_validates_first():
    """Config.__post_init__ is the validator: a config class with its own __post_init__ must call it first, or
    its fields go unchecked (a string for a number, nan, out of range) and its own checks see raw values."""
    import ast
    import importlib
    import inspect
    import pkgutil
    import textwrap

    import reinlm

    skipping = []
    for mod in pkgutil.walk_packages(reinlm.__path__, "reinlm."):
        module = importlib.import_module(mod.name)
        for obj in vars(module).values():
            if not (isinstance(obj, type) and issubclass(obj, Config) and obj is not Config
                    and obj.__module__ == module.__name__
                    and "__post_init__" in vars(obj)):
                continue
            fn = ast.parse(textwrap.dedent(inspect.getsource(obj.__post_init__))).body[0]
            body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            calls = [s for s in body if ast.unparse(s) == "super().__post_init__()"]
            if not body or ast.unparse(body[0]) != "super().__post_init__()" or len(calls) != 1:
                skipping.append(f"{module.__name__}.{obj.__name__}")
    assert not skipping, f"__post_init__ must start with super().__post_init__(), called once: {skipping}"
    assert "__post_init__" in vars(Outer)  # the nesting test's class, built in Python, validates as well:
    with pytest.raises(ConfigError, match=r"steps: got 'x'"):
        Outer(steps="x")


@dataclass
class NeedsDir(Config):
    latent: str = opt("", "latent model directory", required=True, metavar="DIR")
    flag: bool = opt(False, "a switch")


def test_a_required_option_is_declared_on_the_config_and_refused_when_missing(tmp_path):
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, NeedsDir)
    assert "latent model directory (required)" in " ".join(parser.format_help().split())
    with pytest.raises(ConfigError, match=r"^latent: required, but not given; pass --latent DIR: latent model directory\.$"):
        build_config(NeedsDir, parser.parse_args([]))
    with pytest.raises(ConfigError, match="latent: required"):
        NeedsDir(latent="")
    (tmp_path / "c.yaml").write_text("latent: runs/lam\n")  # a YAML file may give it instead of the flag
    assert build_config(NeedsDir, parser.parse_args([]), load_yaml(tmp_path / "c.yaml")).latent == "runs/lam"
    assert build_config(NeedsDir, parser.parse_args(["--latent", "x"])).latent == "x"


def test_switches_leave_positional_arguments_alone():
    """`reinlm compare --group-seeds RUN_A RUN_B`: a switch takes no value, so the run directories stay positional."""
    from reinlm.cli.main import build_parser

    args = build_parser().parse_args(["compare", "--group-seeds", "runs/a", "runs/b"])
    assert args.group_seeds is True and args.run_dirs == ["runs/a", "runs/b"]
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, NeedsDir, switches=True)
    parser.add_argument("rest", nargs="*")
    a = parser.parse_args(["--flag", "x", "y"])
    assert a.flag is True and a.rest == ["x", "y"] and build_config(NeedsDir, a, {"latent": "d"}).flag is True
    assert parser.parse_args(["x"]).flag is None  # not given: the field's default applies


def test_a_bad_value_is_reported_before_a_missing_required_option():
    """`reinlm latent finetune --lr nan` without --latent names the bad value first (as before the required options
    moved onto the config layer, when run_search / train_q / finetune checked them after the config was built)."""
    with pytest.raises(ConfigError, match="^flag: got 'x'"):
        NeedsDir(flag="x")
