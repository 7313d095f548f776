"""reinlm eval end to end on tiny models and generations files (offline, CPU, seconds)."""

import json
import math

import numpy as np
import pytest
import torch

from reinlm.cli.main import main
from reinlm.errors import ConfigError, ReinlmError
from reinlm.evaluation.evaluate import EvalConfig, evaluate
from reinlm.evaluation.generations import read_generations
from reinlm.evaluation.lm import completion_logprobs

GENS = [
    {"prompt": "The weather", "completion": " is nice and warm today", "reference": "nice and warm"},
    {"prompt": "The weather", "completion": " is nice and cold", "reference": "nice and warm"},
    {"prompt": "My cat", "completion": " sleeps all day long", "reference": "sleeps all day"},
    {"prompt": "My cat", "completion": " hates this damn rain", "reference": "sleeps all day"},
]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, smol_tokenizer):
    from reinlm.testing import save_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return (save_tiny_model(smol_tokenizer, root / "policy", seed=0),
            save_tiny_model(smol_tokenizer, root / "reference", seed=1))


def write_gens(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_completion_logprobs_match_a_manual_forward_and_ignore_padding(tiny_lm):
    model, tok = tiny_lm
    prompts, comps = ["Hello there", "A much longer prompt than the other one"], [" my friend", " ok"]
    lp = completion_logprobs(model, tok, prompts, comps, batch_size=2)  # right padding inside the batch
    lp1 = completion_logprobs(model, tok, prompts, comps, batch_size=1)  # no padding
    for a, b in zip(lp, lp1):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # manual: log softmax at the positions before each completion token
    p_ids = tok(prompts[0])["input_ids"]
    c_ids = tok(comps[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p_ids + c_ids])).logits[0]
    logp = torch.log_softmax(logits, -1)
    manual = [float(logp[len(p_ids) - 1 + j, c]) for j, c in enumerate(c_ids)]
    assert len(lp[0]) == len(c_ids)
    np.testing.assert_allclose(lp[0], manual, atol=1e-5)
    assert len(completion_logprobs(model, tok, ["x"], [""])[0]) == 0


def test_read_generations_groups_by_prompt(tmp_path):
    g = read_generations(write_gens(tmp_path / "g.jsonl", GENS))
    assert g.group_ids == [0, 0, 1, 1] and g.columns["reference"][2] == "sleeps all day" and g.n_prompts == 2
    with pytest.raises(ReinlmError, match="empty"):
        read_generations(write_gens(tmp_path / "e.jsonl", []))
    with pytest.raises(ReinlmError, match="line 1"):
        read_generations(write_gens(tmp_path / "bad.jsonl", [{"prompt": "x"}]))


def test_eval_generations_file(tmp_path, tiny_dirs):
    policy, _ = tiny_dirs
    cfg = EvalConfig(generations=str(write_gens(tmp_path / "g.jsonl", GENS)), reference_model=policy,
                     metrics="reward,distinct,perplexity,sentiment,toxicity,rouge",
                     reward="contains_words:nice", out=str(tmp_path / "out"), device="cpu")
    res = evaluate(cfg)
    m = res.metrics
    # contains_words:nice -> 1, 1, 0, 0: mean 0.5, per-prompt max (1 + 0)/2 = 0.5
    assert m["reward/mean"] == pytest.approx(0.5) and m["reward/max_per_prompt"] == pytest.approx(0.5)
    # distinct-1, prompt 0: "is nice and warm today" + "is nice and cold" -> 9 words, 6 unique (is nice and warm
    # today cold) -> 6/9; prompt 1: 8 words all unique -> 1; mean (2/3 + 1)/2 = 5/6
    assert m["distinct/1"] == pytest.approx(5 / 6)
    assert math.isfinite(m["perplexity/corpus"]) and m["perplexity/corpus"] > 1
    assert 0 <= m["sentiment/positive_rate"] <= 1 and res.info["sentiment_backend"] == "vader"
    assert 0 <= m["toxicity/expected_max"] <= 1
    assert m["rouge/rouge1"] > 0.5
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["metrics"]["distinct/1"] == pytest.approx(5 / 6)
    rows = [json.loads(l) for l in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["reward"] == 1.0 and "perplexity" in rows[0] and rows[3]["group"] == 1


def test_eval_model_samples_and_kl(tmp_path, tiny_dirs):
    policy, reference = tiny_dirs
    common = dict(model=policy, prompts="builtin:neutral", num_prompts=2, samples_per_prompt=2, max_new_tokens=4,
                  device="cpu", seed=3)
    res = evaluate(EvalConfig(**common, metrics="distinct,perplexity,kl", reference_model=reference,
                              out=str(tmp_path / "a")))
    assert res.info["n_samples"] == 4 and res.info["n_prompts"] == 2
    assert math.isfinite(res.metrics["kl/sequence_mean"])
    # same seed -> same samples; KL of a model to itself is exactly 0
    res2 = evaluate(EvalConfig(**common, metrics="kl", reference_model=policy, out=str(tmp_path / "b")))
    assert [s["completion"] for s in res2.samples] == [s["completion"] for s in res.samples]
    assert res2.metrics["kl/sequence_mean"] == pytest.approx(0.0, abs=1e-6)


def test_bad_input_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="allowed: a comma-separated list of reward, distinct"):
        EvalConfig(generations="x.jsonl", metrics="distinct,bleu")
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        EvalConfig()
    empty = write_gens(tmp_path / "empty.jsonl", [])
    assert main(["eval", "--generations", str(empty), "--metrics", "distinct", "--out", str(tmp_path / "o")]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["eval", "--generations", str(empty), "--metrics", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_eval_json(tmp_path, capsys):
    gens = write_gens(tmp_path / "g.jsonl", GENS)
    assert main(["eval", "--generations", str(gens), "--metrics", "distinct", "--out", str(tmp_path / "o"),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["distinct/1"] == pytest.approx(5 / 6)


@pytest.mark.integration
def test_qd_with_minilm(tmp_path):
    gens = write_gens(tmp_path / "g.jsonl", GENS)
    res = evaluate(EvalConfig(generations=str(gens), metrics="qd", out=str(tmp_path / "o")))
    assert 0 < res.metrics["qd/similarity"] < 1
    assert res.metrics["qd/score"] == pytest.approx(1 / res.metrics["qd/similarity"])


def test_eval_latent_model(tmp_path, tiny_dirs):
    from reinlm.latent.model import LatentActionModel

    backbone, _ = tiny_dirs
    lat = LatentActionModel.from_backbone(backbone, preset="custom", d_model=32, n_heads=2, idm_layers=1,
                                          policy_layers=1, wm_layers=1, wm_ffn=64, num_actions=16)
    lat.save_pretrained(tmp_path / "lat")
    res = evaluate(EvalConfig(latent=str(tmp_path / "lat"), prompts="builtin:neutral", num_prompts=2,
                              samples_per_prompt=2, max_new_tokens=4, metrics="distinct,perplexity", device="cpu",
                              out=str(tmp_path / "o")))
    assert res.info["n_samples"] == 4 and res.info["reference_model"] == backbone  # the backbone by default
    assert math.isfinite(res.metrics["perplexity/corpus"])
