"""`reinlm generate --model RUN/final` generates the way the run trained (issue 23, item 1): with the chat template
when the run's config.yaml says chat_template: true (unless --chat-template is given), and the text output puts
the reply on a line of its own after a chat prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import reinlm.data
from reinlm.cli.generate import format_samples, trained_with_chat_template
from reinlm.cli.main import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smol_tokenizer):
    from reinlm.testing import save_tiny_model

    run = tmp_path_factory.mktemp("run")
    save_tiny_model(smol_tokenizer, run / "final", seed=0)
    (run / "config.yaml").write_text(yaml.safe_dump({"chat_template": True, "model": "smollm2-135m"}))
    (run / "checkpoints" / "step-1" / "policy").mkdir(parents=True)
    (run / "checkpoints" / "step-1" / "config.yaml").write_text(yaml.safe_dump({"chat_template": True}))
    return run


def test_a_runs_models_know_their_chat_template(run_dir, tmp_path, monkeypatch):
    assert trained_with_chat_template(str(run_dir)) and trained_with_chat_template(str(run_dir / "final"))
    assert trained_with_chat_template(str(run_dir / "checkpoints" / "step-1" / "policy"))
    assert not trained_with_chat_template("smollm2-135m") and not trained_with_chat_template(str(tmp_path))
    monkeypatch.chdir(run_dir)  # an alias is no run, even inside a run directory
    assert not trained_with_chat_template("smollm2-135m") and trained_with_chat_template("final")


@pytest.mark.parametrize("flags,expected", [([], True), (["--chat-template", "false"], False)])
def test_generate_from_final_uses_the_runs_template(run_dir, monkeypatch, capsys, flags, expected):
    seen = []
    real = reinlm.data.render_prompts
    monkeypatch.setattr(reinlm.data, "render_prompts", lambda p, tok, chat: seen.append(chat) or real(p, tok, chat))
    assert main(["generate", "--model", str(run_dir / "final"), "--prompt", "Hi", "--max-new-tokens", "2",
                 "--device", "cpu", *flags]) == 0
    assert seen == [expected]
    out = capsys.readouterr().out
    assert out.startswith("Hi\n") == expected


def test_chat_output_separates_prompt_and_reply():
    rec = [{"prompt_index": 0, "sample_index": 0, "prompt": "Hi", "completion": "Hello"}]
    assert format_samples(rec, 1, chat=True) == "Hi\nHello" and format_samples(rec, 1) == "HiHello"
