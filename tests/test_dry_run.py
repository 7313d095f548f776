"""``reinlm train --dry-run`` checks everything that needs no model weights, prints the resolved config and what
each TRL key became, writes nothing and exits 0; each bad input exits 2 naming it. A reward needing a column the
prompts lack is refused before any model loads (dry run or not)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reinlm.cli.main import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "trl_migration" / "grpo.yaml"
NEEDS_ANSWER = "def needs_answer(completions, answer, **kwargs):\n    return [1.0 for _ in completions]\n"


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dry_run_of_a_trl_config_prints_the_plan_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the example's paths are relative to the repository root
    before = sorted(p.name for p in REPO.iterdir())
    code, out, err = _run(["train", "--config", str(EXAMPLE), "--dry-run", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert "kl_coef: 0.04" in out and "lr: 5.0e-06" in out  # the resolved config
    assert "kl_coef: 0.04, kl_in: 'loss', kl_estimator: 'k3', use_bias_correction_kl: True" in out
    assert "TRL's beta defaults to 0.0" in out
    assert "per_device_train_batch_size: 8, max_steps: 3" in out and "batch_prompts: 2" in out
    assert "checks passed: 20 prompts (columns: answer); rewards: correctness, answer_format" in out
    assert not (tmp_path / "run").exists() and sorted(p.name for p in REPO.iterdir()) == before


@pytest.mark.parametrize("change,words", [
    ({"prompts": "missing.jsonl"}, ["prompts: 'missing.jsonl' does not exist"]),
    ({"reward": "REWARDS:needs_answer", "prompts": "builtin:neutral"},
     ["reward 'needs_answer' requires the argument(s) 'answer'", "dataset columns (none)"]),
    ({"model_name_or_path": "no-such-org/no-such-model"}, ["model: 'no-such-org/no-such-model'", "no local directory"]),
    ({"reward": "REWARDS:nope"}, ["nope"]),
    ({"num_generations": 3}, ["not a multiple of num_generations = 3"]),
])
def test_dry_run_refuses_each_bad_input(tmp_path, capsys, monkeypatch, change, words):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rewards = tmp_path / "rewards.py"
    rewards.write_text(NEEDS_ANSWER)
    values = yaml.safe_load(EXAMPLE.read_text())
    values.update({k: v.replace("REWARDS", str(rewards)) if isinstance(v, str) else v for k, v in change.items()})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(values))
    code, out, err = _run(["train", "--config", str(cfg), "--dry-run", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and all(w in err for w in words), err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_dry_run_refuses_an_out_that_holds_a_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    (tmp_path / "run" / "final").mkdir(parents=True)
    code, _, err = _run(["train", "--config", str(EXAMPLE), "--dry-run", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "already holds a run" in err


def test_a_missing_reward_column_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import reinlm.trainer.loop as loop

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the reward check")

    monkeypatch.setattr(loop, "make_policy", no_model)
    rewards = tmp_path / "rewards.py"
    rewards.write_text(NEEDS_ANSWER)
    code, _, err = _run(["train", "--reward", f"{rewards}:needs_answer", "--prompts", "builtin:neutral",
                         "--out", str(tmp_path / "run"), "--device", "cpu"], capsys)
    assert code == 2 and "requires the argument(s) 'answer'" in err, err



def test_a_run_prints_what_its_trl_keys_became(tmp_path, capsys, monkeypatch):
    """Printed once at the start of a fresh run (here a run that stops at once on a bad --out)."""
    monkeypatch.chdir(REPO)
    (tmp_path / "run" / "final").mkdir(parents=True)  # refused before any model loads
    code, _, err = _run(["train", "--config", str(EXAMPLE), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and f"TRL keys in {EXAMPLE}" in err and "kl_in: 'loss'" in err


@pytest.mark.parametrize("eval_prompts,held", [(0, 0), (2, 2)])
def test_eval_prompts_0_holds_out_nothing(tmp_path, tiny_lm, eval_prompts, held, capsys):
    """A TRL user trains on the whole dataset: with --eval-prompts 0 (no evaluation) no prompt is held out."""
    import copy

    from reinlm.data import PromptSet
    from reinlm.trainer.config import TrainConfig
    from reinlm.trainer.loop import Trainer

    model, tok = tiny_lm
    cfg = TrainConfig(out=str(tmp_path / "run"), device="cpu", eval_prompts=eval_prompts, reward="target_length:5",
                      progress=False, log="none")
    tr = Trainer(cfg, model=copy.deepcopy(model), tokenizer=tok, prompt_set=PromptSet([f"p{i}" for i in range(10)]))
    assert len(tr.train_prompts) == 10 - held
    assert ("none held out" in capsys.readouterr().err) == (held == 0)
