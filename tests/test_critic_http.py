"""HTTPCritic against a real HTTP server on 127.0.0.1 serving a local model (tests/critic_server.py)."""

from __future__ import annotations

import json
import logging
import time

import pytest

from critic_server import CriticServer
from reinlm.critic.http import HTTPCritic
from reinlm.critic.local import LocalCritic
from reinlm.critic.reward import CriticReward

TEXTS = ["The plot was dull but the acting was superb.", "I loved it.", "Terrible food, rude staff."]


@pytest.fixture(scope="module")
def server(tiny_lm_session):
    model, tok = tiny_lm_session
    with CriticServer(model, tok) as srv:
        yield srv


def _critic(server, **kw):
    kw = {"timeout": 20.0, "max_retries": 0, "backoff": 0.01, "concurrency": 2, "max_answer_tokens": 6, **kw}
    return HTTPCritic(server.url, "tiny", **kw)


def test_http_answers_equal_local_generation_and_key_is_sent_not_shown(server, tiny_lm, monkeypatch):
    monkeypatch.setenv("REINLM_TEST_KEY", "sk-secret-123")
    critic = _critic(server, api_key_env="REINLM_TEST_KEY")
    n0 = len(server.requests)
    remote = critic.critique(TEXTS, "sentiment")
    local = LocalCritic(tiny_lm[0], tiny_lm[1], max_answer_tokens=6).critique(TEXTS, "sentiment")
    assert [r.raw for r in remote] == [r.raw for r in local]  # the server really ran the model
    assert all(r.raw for r in remote)
    seen = server.requests[n0:]
    assert {r["authorization"] for r in seen} == {"Bearer sk-secret-123"}
    assert seen[0]["body"]["model"] == "tiny" and seen[0]["body"]["max_tokens"] == 6
    assert "sk-secret" not in repr(critic)
    assert server.max_in_flight <= 2


def test_timeout_is_recorded_and_retry_recovers(server):
    server.delay_next(1.5)
    t0 = time.time()
    res = _critic(server, timeout=0.3).critique(TEXTS[:1], "sentiment")[0]
    assert res.status == "timeout" and res.spans == [] and time.time() - t0 < 1.4
    # the retry needs a generous deadline: on a loaded 2-core machine the undelayed answer itself can take
    # seconds, so the first attempt is delayed far past the timeout instead of the timeout being tight
    server.delay_next(8.0)
    res = _critic(server, timeout=4.0, max_retries=1).critique(TEXTS[:1], "sentiment")[0]
    assert res.status != "timeout" and res.raw  # the second attempt was not delayed


def test_malformed_reply_and_http_errors_never_raise(server, monkeypatch):
    monkeypatch.setenv("REINLM_TEST_KEY", "sk-secret-456")
    server.malform_next()
    res = _critic(server, api_key_env="REINLM_TEST_KEY").critique(TEXTS[:1], "sentiment")[0]
    assert res.status == "unparseable" and "malformed reply" in res.error and "sk-secret" not in res.error
    server.fail_next(503, count=1)
    res = _critic(server, max_retries=1).critique(TEXTS[:1], "sentiment")[0]
    assert res.raw and res.status != "error"  # 503 retried once, then answered
    server.fail_next(503, count=2)
    res = _critic(server, max_retries=1).critique(TEXTS[:1], "sentiment")[0]
    assert res.status == "error" and "HTTP 503" in res.error
    res = HTTPCritic("http://127.0.0.1:9/v1", max_retries=0, timeout=1).critique(TEXTS[:1], "sentiment")[0]
    assert res.status == "error" and "cannot reach" in res.error


def test_training_step_survives_timeout_and_malformed_reply(server, smol_tokenizer, caplog):
    """The reward call a PPO step makes: two failures and one real answer -> zeros, counted, no exception."""
    from reinlm.critic.align import token_offsets

    reward = CriticReward(_critic(server, timeout=0.4, concurrency=1), "sentiment", default_value=0.1)
    server.delay_next(1.2)
    server.malform_next()
    spans = [token_offsets(smol_tokenizer, t)[1] for t in TEXTS]
    with caplog.at_level(logging.WARNING, logger="reinlm.critic.reward"):
        out = reward(["p"] * 3, TEXTS, completion_token_spans=spans, extrinsic=[0.0, 0.0, 0.0])
    assert [len(o) for o in out] == [len(s) for s in spans]
    m = reward.metrics()
    assert m["critic/failures/timeout"] == 1 and m["critic/queried"] == 3
    assert m["critic/failures/unparseable"] >= 1  # the malformed reply (the tiny model's answer may be too)
    assert out[0] == [0.0] * len(spans[0]) and out[1] == [0.0] * len(spans[1])
    assert 1 <= len(caplog.records) <= 2
    time.sleep(1.0)


def test_cli_json_through_the_server(server, capsys):
    from reinlm.cli.main import main

    rc = main(["critique", "--critic-url", server.url, "--critic-model", "tiny", "--critic-max-answer-tokens", "4",
               "--json", "--raw", "Nice cast, weak plot."])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"spans", "tokens", "status", "raw"}
    assert "".join(t[0] for t in out["tokens"]) == "Nice cast, weak plot."
    assert all(len(t) == 4 and t[2] > t[1] for t in out["tokens"])
