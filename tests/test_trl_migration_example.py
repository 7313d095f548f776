"""examples/trl_migration: a conversational GSM8K-like set (20 questions), TRL-style rewards and a YAML config in
TRL's key names; the config resolves to the intended reinlm settings (SmolLM2-135M) and trains 3 GRPO steps (on the
tiny test model, --model overriding the YAML's: the config and the rewards are the point; with the embedded model
this took 67 s of a loaded run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reinlm.utils.jsonio import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "trl_migration"


def test_trl_keys_resolve_and_the_rewards_score_the_set(monkeypatch):
    from reinlm.cli.main import build_parser
    from reinlm.cli.train import config_from_args
    from reinlm.data import load_prompts
    from reinlm.rewards import parse_reward_spec

    monkeypatch.chdir(ROOT)
    cfg = config_from_args(build_parser().parse_args(["train", "--config", str(EXAMPLE / "grpo.yaml")]))
    assert (cfg.model, cfg.out, cfg.lr, cfg.samples_per_prompt, cfg.sampling.max_new_tokens, cfg.steps,
            cfg.kl.kl_coef) == ("smollm2-135m", "runs/gsm-mini", 5e-6, 4, 48, 3, 0.04)
    assert cfg.batch_prompts == 2 and cfg.update_epochs == 1 and cfg.log == "none"
    ps = load_prompts(cfg.prompts)
    assert len(ps) == 20 and ps.conversational and set(ps.columns) == {"answer"}
    rs = parse_reward_spec(cfg.reward)
    answers = ps.columns["answer"][:3]
    replies = [f"Let me think. Answer: {answers[0]}", "It is 100. Answer: 101", f"{answers[2]}"]
    res = rs.score(ps.prompts[:3], replies, {"answer": answers})
    assert res.components["correctness"].tolist() == [1.0, 0.0, 1.0]
    assert res.components["answer_format"].tolist() == pytest.approx([0.2, 0.2, 0.0])


def test_trl_style_yaml_trains_three_grpo_steps(monkeypatch, tmp_path, smol_tokenizer):
    from reinlm.cli.main import main
    from reinlm.testing import save_tiny_model

    tiny = save_tiny_model(smol_tokenizer, tmp_path / "tiny-model")
    monkeypatch.chdir(ROOT)
    out = tmp_path / "gsm-mini"
    assert main(["train", "--config", str(EXAMPLE / "grpo.yaml"), "--out", str(out), "--progress", "false",
                 "--model", tiny]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all("reward/correctness/mean" in r and "reward/answer_format/mean" in r for r in rows)
    sample = read_jsonl(out / "samples.jsonl")[0]
    assert "predicted" in sample["extra"]  # the reward's log_extra column
    assert json.loads((out / "train_eval.json").read_text())["final_step"] == 3


def test_trl_dataset_script_arguments_become_an_hf_prompt_spec(tmp_path):
    from reinlm.config.build import build_config
    from reinlm.errors import ConfigError
    from reinlm.trainer.config import TrainConfig

    cfg = build_config(TrainConfig, None, {"dataset_name": "openai/gsm8k", "dataset_config": "main"})
    assert cfg.prompts == "hf:openai/gsm8k:main:train"
    cfg = build_config(TrainConfig, None, {"dataset_name": "trl-lib/tldr", "dataset_train_split": "validation"})
    assert cfg.prompts == "hf:trl-lib/tldr::validation"
    with pytest.raises(ConfigError, match="needs dataset_name"):
        build_config(TrainConfig, None, {"dataset_config": "main"})
    with pytest.raises(ConfigError, match="keep one"):
        build_config(TrainConfig, None, {"dataset_name": "x", "prompts": "builtin:reviews"})
