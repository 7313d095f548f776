"""A run that fails at start (a reward error on step 1) leaves no trap (issue 23, item 2): it saved no checkpoint,
so a fresh start in the same --out replaces its leftovers without --overwrite; a run that saved one is still
refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from reinlm.cli.main import main
from reinlm.utils.jsonio import read_jsonl

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smol_tokenizer):
    from reinlm.testing import save_tiny_model

    return Path(save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("tiny-model"), seed=0))


def _args(model_dir, out, reward):
    return ["train", "--model", str(model_dir), "--reward", reward, "--prompts", "builtin:neutral", "--steps", "1",
            "--batch-prompts", "2", "--samples-per-prompt", "2", "--max-new-tokens", "4", "--device", "cpu",
            "--out", str(out), "--progress", "false", "--eval-prompts", "0", "--log", "tensorboard"]


def test_a_run_that_failed_at_start_restarts_without_overwrite(model_dir, tmp_path, capsys):
    boom = tmp_path / "boom.py"
    boom.write_text("def boom(completions, **kwargs):\n    raise RuntimeError('reward broke')\n")
    out = tmp_path / "run"
    assert main(_args(model_dir, out, f"{boom}:boom")) != 0
    left = sorted(p.name for p in out.iterdir())
    assert "config.yaml" in left and "tb" in left  # what a failed start leaves behind
    capsys.readouterr()
    good = f"{ASSETS / 'toy_rewards.py'}:space_share"
    assert main(_args(model_dir, out, good)) == 0
    assert "held a run that saved no checkpoint" in capsys.readouterr().err
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1]
    # now the run has a checkpoint and a final model: a fresh start is refused as before
    assert main(_args(model_dir, out, good)) == 2
    assert "already holds a run" in capsys.readouterr().err
