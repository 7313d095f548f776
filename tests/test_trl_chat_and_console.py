"""TRL's chat_template_kwargs (extra chat-template variables) and log_completions / num_completions_to_print (the
step's completions printed on the console)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from reinlm.config.build import build_config
from reinlm.errors import ConfigError
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.logging import format_samples


def _cfg(**values):
    return build_config(TrainConfig, None, {"device": "cpu", "eval_prompts": 0, "log": "none", **values})


def test_trl_keys_map_to_their_fields():
    assert _cfg(log_completions=True, num_completions_to_print=2).print_completions == 2
    assert _cfg(log_completions=True).print_completions == -1  # TRL's None: all of them
    assert _cfg().print_completions == 0
    assert _cfg(log_completions=False).sample_every == 0
    assert _cfg(chat_template_kwargs={"enable_thinking": False}).chat_template_kwargs == {"enable_thinking": False}
    with pytest.raises(ConfigError, match="num_completions_to_print"):
        _cfg(log_completions=True, num_completions_to_print=0)


def test_chat_template_kwargs_flag_takes_a_json_object(capsys, tmp_path):
    from reinlm.cli.main import main

    cfg = build_config(TrainConfig, None, {"chat_template_kwargs": '{"enable_thinking": false, "n": 2}'})
    assert cfg.chat_template_kwargs == {"enable_thinking": False, "n": 2}
    assert main(["train", "--chat-template-kwargs", "{enable_thinking: no}", "--out", str(tmp_path / "x")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "chat_template_kwargs: got '{enable_thinking: no}', which is not JSON" in err
    assert not (tmp_path / "x").exists()


def test_training_prompts_are_rendered_with_the_template_variables(smol_tokenizer):
    import copy

    from reinlm.trainer.parts import prompt_texts

    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% if not enable_thinking %}<no-think>{% endif %}"
                         "{% endif %}")
    convs = [[{"role": "user", "content": "Hi"}]]
    prompts = SimpleNamespace(train=SimpleNamespace(prompts=convs))
    prompts.held_out = prompts.train
    plain, _ = prompt_texts(_cfg(), prompts, tok)
    off, _ = prompt_texts(_cfg(chat_template_kwargs={"enable_thinking": False}), prompts, tok)
    on, _ = prompt_texts(_cfg(chat_template_kwargs={"enable_thinking": True}), prompts, tok)
    assert (plain, off, on) == (["<user>Hi<assistant><no-think>"], ["<user>Hi<assistant><no-think>"],
                                ["<user>Hi<assistant>"])


def test_console_table_of_completions():
    text = format_samples(3, ["Tell me\na joke", "p2", "p3"], ["Why did the chicken " * 10, "c2", "c3"],
                          [0.5, -1.25, 2.0], limit=2, width=40)
    lines = text.splitlines()
    assert lines[0] == "step 3: 2 of 3 completions"
    assert lines[1:4] == ["  [1] reward 0.5000", "      prompt:     Tell me a joke",
                          "      completion: Why did the chicken..."]
    assert lines[4] == "  [2] reward -1.2500" and len(lines) == 7
    assert format_samples(1, ["a"] * 5, ["b"] * 5, [0.0] * 5, limit=-1).startswith("step 1: 5 of 5 completions")
