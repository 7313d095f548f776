"""No API key in any output when the critic server echoes the request headers (issue 18, "Secrets").

The server (tests/critic_server.py with ``echo``) quotes the ``Authorization: Bearer KEY`` header back, in
its answers (which then name a "positive phrase" that is the key) or after 250 characters of an HTTP 500
body (so that a cut to 300 characters before redaction would leak part of the key). Nothing the commands
print, log or write may hold 8 consecutive characters of the key.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from critic_server import CriticServer  # noqa: E402

KEY = "sk-reliab-TEST-0123456789abcdefXYZ"


def leaks(text: str) -> list[str]:
    """Every 8-character window of the key found in ``text``."""
    return sorted({KEY[i:i + 8] for i in range(len(KEY) - 7) if KEY[i:i + 8] in text})


@pytest.fixture
def echo_server(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with CriticServer(model, tok) as srv:
        yield srv


@pytest.mark.parametrize("mode", ["answer", "error"])
def test_critique_output_and_logs_hold_no_key(echo_server, mode, capsys, caplog):
    from reinlm.cli.main import main

    echo_server.echo = mode
    with caplog.at_level(logging.DEBUG):
        code = main(["critique", "--critic-url", echo_server.url, "--critic-max-retries", "0", "--raw",
                     "--tokenizer", "smollm2-135m", "The food was good and the service friendly."])
    out = capsys.readouterr()
    everything = out.out + out.err + caplog.text
    assert echo_server.requests and echo_server.requests[0]["authorization"] == f"Bearer {KEY}"  # it was sent
    assert code == 0
    assert "[REDACTED]" in everything  # the echo came back, redacted
    assert not leaks(everything), leaks(everything)


def test_training_with_an_echoing_critic_writes_no_key(echo_server, tmp_path, capsys, caplog, smol_tokenizer):
    from reinlm.cli.main import main
    from reinlm.testing import save_tiny_model

    model_dir = save_tiny_model(smol_tokenizer, tmp_path / "model", seed=2)
    echo_server.echo = "answer"
    out = tmp_path / "run"
    with caplog.at_level(logging.DEBUG):
        code = main(["train", "--model", str(model_dir), "--reward", "target_length:5", "--prompts",
                     "builtin:neutral", "--steps", "2", "--batch-prompts", "1", "--samples-per-prompt", "2",
                     "--max-new-tokens", "4", "--device", "cpu", "--out", str(out), "--progress", "false",
                     "--eval-prompts", "1", "--eval-samples", "2", "--log", "none", "--algo", "ppo",
                     "--critic-url", echo_server.url, "--critic-max-retries", "0", "--sample-every", "1"])
    assert code == 0
    streams = capsys.readouterr()
    assert len(echo_server.requests) >= 2
    written = "".join(p.read_bytes().decode("utf-8", "replace") for p in out.rglob("*") if p.is_file()
                      and p.suffix in (".json", ".jsonl", ".yaml", ".txt", ""))
    everything = streams.out + streams.err + caplog.text + written
    assert not leaks(everything), leaks(everything)
