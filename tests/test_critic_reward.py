"""CriticReward: token values, threshold, cache, failures (zero reward, counted, warned once), scaling."""

from __future__ import annotations

import logging

import pytest

from reinlm.critic import CriticConfig, critic_from_args, parse_values
from reinlm.critic.base import Completion, CriticBackend
from reinlm.critic.reward import CriticReward
from reinlm.errors import ConfigError


class ScriptedCritic(CriticBackend):
    """A backend whose answer to a text is looked up in a dict (the rendering/parsing path is the real one)."""

    def __init__(self, answers: dict[str, Completion | str]):
        self.answers, self.calls = answers, []

    def complete(self, conversations):
        out = []
        for conv in conversations:
            text = conv[-1]["content"].removeprefix("Text: ")
            self.calls.append(text)
            ans = self.answers[text]
            out.append(ans if isinstance(ans, Completion) else Completion(ans))
        return out


def char_tokens(text: str, tokens: list[str]) -> list[tuple[int, int]]:
    assert "".join(tokens) == text
    out, pos = [], 0
    for t in tokens:
        out.append((pos, pos + len(t)))
        pos += len(t)
    return out


TEXT = "The plot was dull but the acting was superb."
TOKS = ["The", " plot", " was", " dull", " but", " the", " acting", " was", " superb", "."]


def test_token_rewards_threshold_and_metrics():
    backend = ScriptedCritic({TEXT: 'Positive: "the acting was superb"\nNegative: "dull"',
                              "Fine.": "Positive: None\nNegative: None"})
    reward = CriticReward(backend, "sentiment", 0.5, -0.5, default_value=0.01, threshold=0.0)
    spans = [char_tokens(TEXT, TOKS), char_tokens("Fine.", ["Fine", "."]), char_tokens("Great!", ["Great", "!"])]
    out = reward(["p"] * 3, [TEXT, "Fine.", "Great!"], completion_token_spans=spans, extrinsic=[-0.3, 0.0, 0.9])
    assert out[0] == [0.01, 0.01, 0.01, -0.5, 0.01, 0.5, 0.5, 0.5, 0.5, 0.01]
    assert out[1] == [0.01, 0.01]  # critiqued, nothing flagged: default everywhere
    assert out[2] == [0.0, 0.0]  # above the threshold: not sent, no intrinsic reward
    assert backend.calls == [TEXT, "Fine."]
    m = reward.metrics()
    assert (m["critic/queried"], m["critic/spans_found"], m["critic/failures"], m["critic/cache_hits"]) == (2, 2, 0, 0)
    assert reward.is_token_level and reward.name == "critic"


def test_cache_by_template_and_text():
    backend = ScriptedCritic({TEXT: 'Positive: "superb"\nNegative: None'})
    reward = CriticReward(backend, "sentiment")
    spans = [char_tokens(TEXT, TOKS)] * 2
    first = reward(["p", "p"], [TEXT, TEXT], completion_token_spans=spans)
    assert backend.calls == [TEXT]  # a duplicate inside a batch is asked once
    assert reward.metrics()["critic/cache_hits"] == 1
    again = reward(["p"], [TEXT], completion_token_spans=spans[:1])
    assert backend.calls == [TEXT] and again[0] == first[0] and reward.metrics()["critic/cache_hits"] == 1
    assert first[0][8] == 0.5 and sum(first[0]) == 0.5


def test_failures_give_zero_reward_count_and_warn_once(caplog):
    answers = {"a b": Completion(None, "timeout", "no reply"), "c d": "I cannot tell.",
               "e f": 'Positive: "not there"', "g h": Completion(None, "timeout", "no reply"),
               "i j": 'Positive: "i"; "absent"'}
    reward = CriticReward(ScriptedCritic(answers), "sentiment", default_value=0.2)
    texts = list(answers)
    spans = [char_tokens(t, [t[0], t[1:]]) for t in texts]
    with caplog.at_level(logging.WARNING, logger="reinlm.critic.reward"):
        out = reward(["p"] * 5, texts, completion_token_spans=spans)
        reward(["p"] * 5, texts, completion_token_spans=spans)  # timeouts are retried (not cached), no new warning
    assert out[:4] == [[0.0, 0.0]] * 4  # timeout, unparseable, span not found, timeout
    assert out[4] == [0.5, 0.2]  # one phrase found: kept; the missing one costs nothing
    m = reward.metrics()
    assert m["critic/failures/timeout"] == 2 and m["critic/failures/unparseable"] == 1
    assert m["critic/failures/span_not_found"] == 2 and m["critic/failures"] == 5
    assert m["critic/spans_found"] == 1 and m["critic/cache_hits"] == 3
    kinds = [r.getMessage().split("status ")[-1][:12] for r in caplog.records]
    assert len(caplog.records) == 3, kinds  # timeout, unparseable, span_not_found: one each


def test_running_scale_and_sequence_reward():
    backend = ScriptedCritic({TEXT: 'Positive: "superb"; "acting"\nNegative: "dull"'})
    reward = CriticReward(backend, "sentiment", 1.0, -2.0, scale="running")
    spans = [char_tokens(TEXT, TOKS)]
    out = reward(["p"], [TEXT], completion_token_spans=spans, extrinsic=[1.0])
    assert reward.current_scale() == 1.0 and out[0][3] == -2.0  # one score: no std yet
    out = reward(["p"], [TEXT], completion_token_spans=spans, extrinsic=[3.0])  # scores 1, 3: std sqrt(2)
    assert out[0][6] == pytest.approx(2 ** 0.5)
    out = reward(["p"], [TEXT], completion_token_spans=spans, extrinsic=[5.0])  # scores 1, 3, 5: std 2
    assert reward.current_scale() == pytest.approx(2.0)
    assert out[0][6] == pytest.approx(2.0) and out[0][3] == pytest.approx(-4.0)
    seq = CriticReward(ScriptedCritic(backend.answers), "sentiment", 1.0, -2.0).as_sequence_reward()
    assert seq(["p"], [TEXT]) == [1.0 + 1.0 - 2.0] and seq.__name__ == "critic"


def test_config_and_critic_from_args():
    assert parse_values("0.5,-0.5") == (0.5, -0.5) and parse_values("0.3") == (0.3, -0.3)
    with pytest.raises(ConfigError, match="critic_values"):
        parse_values("a,b")
    with pytest.raises(ConfigError, match="not both"):
        CriticConfig(critic="smollm2-135m", critic_url="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="critic_scale"):
        CriticConfig(critic_scale="log")
    r = critic_from_args(critic_url="http://127.0.0.1:9/v1", critic_model="m", critic_task="toxicity",
                         critic_values="0,-1", critic_threshold=0.5, critic_default=0.0, critic_timeout=2.0)
    assert (r.values, r.threshold, r.template.task, r.backend.timeout) == ({"positive": 0.0, "negative": -1.0}, 0.5,
                                                                           "toxicity", 2.0)
    assert r.backend.url == "http://127.0.0.1:9/v1/chat/completions"
    local = critic_from_args(critic="smollm2-135m")  # nothing loaded until the first critique
    assert local.backend._model is None and local.template.task == "sentiment"


def test_train_config_carries_every_critic_setting():
    # reinlm train used to copy 7 of the 17 critic fields: --critic-scale, timeouts etc. could not be set
    from reinlm.trainer.config import TrainConfig, add_train_args
    import argparse

    cfg = TrainConfig(critic_url="http://127.0.0.1:9/v1", critic_scale="running", critic_timeout=2.5,
                      critic_concurrency=1, critic_values="0.2,-0.4")
    reward = cfg.critic_config.build()
    assert (reward.scale, reward.backend.timeout, reward.values) == ("running", 2.5,
                                                                      {"positive": 0.2, "negative": -0.4})
    assert cfg.llm_critic.critic_model == "default"  # CriticConfig's own defaulting ran
    with pytest.raises(ConfigError, match="critic_scale: got 'log'"):
        TrainConfig(critic_scale="log")
    parser = argparse.ArgumentParser()
    add_train_args(parser)
    args = parser.parse_args(["--critic-scale", "running", "--critic-fuzzy-threshold", "0.9", "--steps", "3"])
    assert (args.critic_scale, args.critic_fuzzy_threshold, args.steps) == ("running", 0.9, 3)
