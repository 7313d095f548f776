"""Task templates: built-ins render, user templates are checked for their required slots at load time."""

from __future__ import annotations

import pytest

from reinlm.critic.template import BUILTIN_TASKS, load_template
from reinlm.errors import ConfigError


@pytest.mark.parametrize("task", BUILTIN_TASKS)
def test_builtin_templates_render_examples_as_chat_turns(task):
    tpl = load_template(task)
    msgs = tpl.messages("Some text here.", source="The source.", score=3.0)
    assert msgs[0]["role"] == "system" and len(tpl.examples) >= 3
    assert [m["role"] for m in msgs[1:-1]] == ["user", "assistant"] * len(tpl.examples)
    assert msgs[-1]["role"] == "user" and "Some text here." in msgs[-1]["content"]
    assert "{" not in msgs[-1]["content"]  # every slot filled
    if task == "summarization":
        assert "Source: The source." in msgs[-1]["content"] and "Score: 3/10" in msgs[-1]["content"]


def _write(tmp_path, body: str):
    p = tmp_path / "mine.yaml"
    p.write_text(body)
    return str(p)


def test_user_template_missing_a_required_slot_is_rejected(tmp_path):
    path = _write(tmp_path, "task: summarization\nlabels: {wrong: negative}\nsystem: s\n"
                            "user: 'Summary: {text} Score: {score}'\n")
    with pytest.raises(ConfigError, match=r"required slot \{source\}"):
        load_template(path)
    with pytest.raises(ConfigError, match=r"required slot \{text\}"):
        load_template(_write(tmp_path, "labels: {bad: negative}\nsystem: s\nuser: 'no slot'\n"))
    with pytest.raises(ConfigError, match=r"unknown slot \{txt\}"):
        load_template(_write(tmp_path, "labels: {bad: negative}\nsystem: s\nuser: '{txt}'\n"))
    with pytest.raises(ConfigError, match="polarity"):
        load_template(_write(tmp_path, "labels: {bad: awful}\nsystem: s\nuser: '{text}'\n"))


def test_user_template_is_used(tmp_path):
    path = _write(tmp_path, "labels:\n  cliche: {polarity: negative, aliases: [cliches]}\nsystem: Find cliches.\n"
                            "user: 'Text: {text}'\nexamples:\n  - {text: 'At the end of the day.', "
                            "answer: 'Cliches: \"at the end of the day\"'}\n")
    tpl = load_template(path)
    assert tpl.task == "custom" and tpl.label("cliche").polarity == "negative"
    assert tpl.messages("Hi")[-1]["content"] == "Text: Hi"


def test_unknown_task_names_the_allowed_values():
    with pytest.raises(ConfigError, match="sentiment, toxicity, summarization"):
        load_template("sentimnet")
