"""Tests for ``reinlm generate`` (run through reinlm.cli.main.main, as a user would)."""

from __future__ import annotations

import json

import pytest

from reinlm.cli import generate as generate_cli
from reinlm.cli.main import main
from reinlm.testing import save_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer):
    return save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("gen") / "tiny", seed=1)


def _gen_json(capsys, *argv):
    rc = main(["generate", "--device", "cpu", "--json", *argv])
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(out)


def test_generate_json_is_seeded(capsys, tiny_dir):
    args = ["--model", tiny_dir, "--prompt", "Hello there", "--num-samples", "3", "--max-new-tokens", "6"]
    a = _gen_json(capsys, *args, "--seed", "5")
    b = _gen_json(capsys, *args, "--seed", "5")
    c = _gen_json(capsys, *args, "--seed", "6")
    assert a == b and [r["completion"] for r in a] != [r["completion"] for r in c]
    assert [r["sample_index"] for r in a] == [0, 1, 2] and {r["prompt"] for r in a} == {"Hello there"}
    for r in a:
        assert 1 <= r["num_tokens"] <= 6 and r["logprob"] < 0
    # a random 49152-token model is nearly uniform: about log(49152) = 10.8 nats per token
    per_token = -sum(r["logprob"] for r in a) / sum(r["num_tokens"] for r in a)
    assert 9.5 < per_token < 12.0


def test_prompts_file_batch_size_does_not_change_samples(capsys, tmp_path, tiny_dir):
    f = tmp_path / "p.txt"
    f.write_text("The old lighthouse\n\nA quiet street\nThe river\n")
    base = ["--model", tiny_dir, "--prompts", str(f), "--num-samples", "2", "--max-new-tokens", "4", "--temperature", "0.7"]
    one = _gen_json(capsys, *base, "--batch-size", "1")
    three = _gen_json(capsys, *base, "--batch-size", "3")
    # the same samples; their summed log-probs agree to float32 rounding (prompts padded to another length round
    # the attention's sums differently in the last bits)
    strip = lambda recs: [{k: v for k, v in r.items() if k != "logprob"} for r in recs]  # noqa: E731
    assert strip(one) == strip(three) and len(one) == 6
    assert [r["logprob"] for r in one] == pytest.approx([r["logprob"] for r in three], abs=1e-4)
    assert [r["prompt_index"] for r in one] == [0, 0, 1, 1, 2, 2]
    limited = _gen_json(capsys, *base, "--limit", "1", "--prompt", "First")
    assert [r["prompt"] for r in limited] == ["First", "First", "The old lighthouse", "The old lighthouse"]


def test_plain_output_format(capsys, tiny_dir):
    rc = main(["generate", "--device", "cpu", "--model", tiny_dir, "--prompt", "Alpha", "--prompt", "Beta",
               "--num-samples", "2", "--max-new-tokens", "3"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0] == "=== prompt 1: 'Alpha'" and out[3] == "=== prompt 2: 'Beta'"
    assert out[1].startswith("[1] Alpha") and out[5].startswith("[2] Beta")


def test_yaml_config_and_flag_override(capsys, tmp_path, tiny_dir):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(f"model: {tiny_dir}\nmax_new_tokens: 2\nnum_samples: 2\nprompt: From yaml\n")
    recs = _gen_json(capsys, "--config", str(cfg), "--num-samples", "1")
    assert len(recs) == 1 and recs[0]["prompt"] == "From yaml" and recs[0]["num_tokens"] <= 2


def test_long_prompt_fails_or_truncates(capsys, tiny_dir):
    long = " ".join(f"w{i}" for i in range(600))  # > 512 positions of the tiny model
    rc = main(["generate", "--device", "cpu", "--model", tiny_dir, "--prompt", long, "--max-new-tokens", "4"])
    err = capsys.readouterr().err
    assert rc == 2 and "limit is 508" in err and "truncate" in err and "Traceback" not in err
    recs = _gen_json(capsys, "--model", tiny_dir, "--prompt", long, "--max-new-tokens", "4",
                     "--max-prompt-tokens", "16", "--truncate-prompts")
    assert recs[0]["prompt"] == long and len(recs[0]["completion"]) > 0


def test_unknown_model_exit_2_lists_aliases(capsys):
    rc = main(["generate", "--model", "definitely-not-a-model", "--prompt", "Hi", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "definitely-not-a-model" in err and "smollm2-135m" in err and "Traceback" not in err


@pytest.mark.parametrize("argv,needle", [
    (["--prompts", "missing-file.txt"], "does not exist"),
    ([], "--prompt TEXT"),
    (["--prompt", "x", "--show-actions"], "--latent"),
    (["--prompt", "x", "--num-samples", "0"], "num_samples"),
])
def test_bad_input_exit_2(capsys, tiny_dir, argv, needle):
    rc = main(["generate", "--device", "cpu", "--model", tiny_dir, *argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.startswith("reinlm: error:")


def test_latent_flag_delegates(monkeypatch, tiny_dir):
    seen = {}

    def run_latent_generate(args):
        seen.update(latent=args.latent, show=args.show_actions, prompt=args.prompt)
        return 7

    monkeypatch.setattr(generate_cli, "run_latent_generate", run_latent_generate)
    rc = main(["generate", "--latent", "some/dir", "--show-actions", "--prompt", "Hi"])
    assert rc == 7 and seen == {"latent": "some/dir", "show": True, "prompt": ["Hi"]}


@pytest.mark.integration
def test_smollm_continuation_is_fluent(capsys):
    rc = main(["generate", "--model", "smollm2-135m", "--prompt", "I like eating", "--max-new-tokens", "12",
               "--seed", "0", "--device", "cpu"])
    out = capsys.readouterr().out.strip()
    assert rc == 0 and out.startswith("I like eating")
    continuation = out[len("I like eating"):]
    words = continuation.split()
    assert continuation.isascii() and len(words) >= 4
    assert sum(w.strip(".,!?;:'\"").isalpha() for w in words) >= 3
