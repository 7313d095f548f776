"""``--json`` means JSON on stdout and nothing else, for every command that has the flag.

Each command runs in this process with tiny settings; ``capfd`` captures file descriptors 1 and 2, so what child
processes and C libraries write counts too. stdout must parse as one JSON value as a whole (``| jq`` works).
``bench token-rl`` and ``bench reward-hacking`` are checked the same way by their own tests in test_bench.py and
test_latent_posttrain.py (``capfd``), which already run them.
"""

from __future__ import annotations

import json

import pytest

from reinlm.cli.main import main

DOCS = ["I watched this film last night and it was a delight from start to finish.",
        "The director's latest film is a slow, beautiful story about two brothers.",
        "This movie tells the story of a small town and the people who never left it.",
        "A warm and funny film with a great cast and a very good script."]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    from reinlm.testing import save_tiny_model

    return save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("tiny-json-model"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("json-files")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    (root / "gens.jsonl").write_text("".join(json.dumps({"prompt": "p", "completion": d}) + "\n" for d in DOCS))
    return root


def _argv(name: str, model: str, latent: str, root, tmp) -> list[str]:
    """Tiny settings of command ``name``."""
    tiny_rl = ["--steps", "1", "--batch-prompts", "1", "--samples-per-prompt", "2", "--max-new-tokens", "2"]
    return {
        "generate": ["generate", "--model", model, "--prompt", "Hi", "--max-new-tokens", "2", "--device", "cpu"],
        "reward": ["reward", "--reward", "sentiment", "good", "bad"],
        "eval": ["eval", "--generations", str(root / "gens.jsonl"), "--metrics", "distinct", "--out", str(tmp / "e")],
        "explore": ["explore", "--latent", latent, "I like", "--new-tokens", "1", "--top", "2"],
        "search": ["search", "--latent", latent, "--reward", "contains_words:the", "--budget", "8", "--max-depth",
                   "2", "x"],
        "latent qd": ["latent", "qd", "--latent", latent, "--num-prefixes", "1", "--samples", "2", "--new-tokens",
                      "2", "--prefixes", "builtin:neutral"],
        "latent finetune": ["latent", "finetune", "--latent", latent, "--data", str(root / "docs.jsonl"), "--out",
                            str(tmp / "ft"), "--epochs", "0.5", "--bc-epochs", "0", "--max-len", "16",
                            "--eval-train-docs", "1", "--held-out-fraction", "0.25", "--batch-size", "4"],
        "latent train-q": ["latent", "train-q", "--latent", latent, "--out", str(tmp / "q"), "--reward",
                           "contains_words:the", "--num-prompts", "2", "--samples-per-prompt", "2",
                           "--max-new-tokens", "2", "--epochs", "1", "--progress", "false"],
        "bench generation": ["bench", "generation", "--model", model, "--backends", "reinlm-float32",
                             "--batch-sizes", "2", "--group", "2", "--new-tokens", "2", "--repeats", "1"],
        "bench multiturn": ["bench", "multiturn", "--model", model, "--dtype", "float32", "--batch", "2", "--turns", "2",
                            "--turn-tokens", "2", "--repeats", "1"],
        "bench latent-vs-token": ["bench", "latent-vs-token", "--latent", latent, "--sides", "token", *tiny_rl,
                                  "--eval-prompts", "0", "--out", str(tmp / "lvt")],
    }[name]


NAMES = ["generate", "reward", "eval", "explore", "search", "latent qd", "latent finetune", "latent train-q",
         "bench generation", "bench multiturn", "bench latent-vs-token"]


@pytest.mark.parametrize("name", NAMES)
def test_json_flag_prints_json_and_nothing_else_on_stdout(name, tiny_model_dir, tiny_latent_dir, files, tmp_path,
                                                          capfd):
    assert main(_argv(name, str(tiny_model_dir), str(tiny_latent_dir), files, tmp_path) + ["--json"]) == 0
    out, err = capfd.readouterr()
    json.loads(out)  # the whole of stdout is one JSON value


def test_critique_json_through_a_local_server(tiny_lm, capfd):
    from critic_server import CriticServer

    model, tok = tiny_lm
    with CriticServer(model, tok) as server:
        assert main(["critique", "--critic-url", server.url, "--critic-model", "tiny", "--critic-max-answer-tokens",
                     "2", "--json", "Nice cast."]) == 0
    json.loads(capfd.readouterr().out)


def test_json_only_stdout_sends_prints_file_descriptor_and_children_to_stderr(capfd):
    """Python prints, raw writes to descriptor 1 and a child process's stdout all end on stderr; print_json alone
    reaches stdout; stdout is restored afterwards."""
    import os
    import subprocess
    import sys

    from reinlm.cli.jsonout import json_only_stdout, print_json

    with json_only_stdout():
        print("progress from python")
        os.write(1, b"progress from C\n")
        subprocess.run([sys.executable, "-c", "print('progress from a child')"], check=True)
        print_json({"a": 1})
    print("after")
    out, err = capfd.readouterr()
    assert out == '{"a": 1}\nafter\n'
    assert "progress from python" in err and "progress from C" in err and "progress from a child" in err
