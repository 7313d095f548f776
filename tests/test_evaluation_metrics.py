"""Hand-checked tests of the pure evaluation metrics (reinlm.evaluation.metrics)."""

import math

import numpy as np
import pytest

from reinlm.evaluation import metrics as M


def test_group_indices():
    assert M.group_indices([0, 0, 1, 1, 0]) == [[0, 1, 4], [2, 3]]
    assert M.group_indices([5, 2, 5]) == [[0, 2], [1]]


def test_reward_stats():
    scores = [1.0, 3.0, 2.0, None]
    groups = [0, 0, 1, 1]
    out = M.reward_stats(scores, groups)
    # valid: 1, 3, 2 -> mean 2; population std sqrt(((1-2)^2 + (3-2)^2 + 0) / 3) = sqrt(2/3)
    assert out["reward/mean"] == pytest.approx(2.0)
    assert out["reward/std"] == pytest.approx(math.sqrt(2 / 3))
    # per-prompt max: prompt 0 -> 3, prompt 1 -> 2 (None skipped) -> mean 2.5
    assert out["reward/max_per_prompt"] == pytest.approx(2.5)
    assert out["reward/valid_fraction"] == pytest.approx(3 / 4)
    assert math.isnan(M.reward_stats([None, float("nan")], [0, 0])["reward/mean"])


def test_distinct_per_prompt_averages_over_prompts():
    comps = ["a b", "a b", "c d", "e f"]
    out = M.distinct_per_prompt(comps, [0, 0, 1, 1])
    # prompt 0: unigrams a b a b -> 2/4; prompt 1: c d e f -> 4/4 -> mean 0.75
    assert out["distinct/1"] == pytest.approx(0.75)
    # bigrams: prompt 0 (a b)(a b) -> 1/2; prompt 1 (c d)(e f) -> 2/2 -> mean 0.75
    assert out["distinct/2"] == pytest.approx(0.75)
    # trigrams: none in either prompt -> 0 each -> 0
    assert out["distinct/3"] == 0.0


def test_qd_from_embeddings():
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    out = M.qd_from_embeddings(emb, [0, 0, 1, 1])
    # prompt 0: identical -> cos 1; prompt 1: orthogonal -> cos 0; similarity 0.5, qd 2
    assert out["qd/similarity"] == pytest.approx(0.5)
    assert out["qd/score"] == pytest.approx(2.0)


def test_perplexity_from_nll():
    # sample 1: NLL 2 over 1 token; sample 2: NLL 4 over 4 tokens; sample 3: empty (left out)
    out = M.perplexity_from_nll([2.0, 4.0, 0.0], [1, 4, 0])
    assert out["perplexity/corpus"] == pytest.approx(math.exp(6 / 5))  # token-weighted: (2+4)/(1+4)
    assert out["perplexity/mean_per_sample"] == pytest.approx((math.exp(2) + math.exp(1)) / 2)
    assert math.isnan(M.perplexity_from_nll([0.0], [0])["perplexity/corpus"])


def test_kl_from_logprobs():
    lp = [np.array([-1.0, -2.0]), np.array([-0.5])]
    lr = [np.array([-1.5, -2.5]), np.array([-1.5])]
    out = M.kl_from_logprobs(lp, lr)
    # sequence sums of log p - log p_ref: 0.5 + 0.5 = 1.0, and 1.0 -> mean 1.0; per token 2.0 / 3 tokens
    assert out["kl/sequence_mean"] == pytest.approx(1.0)
    assert out["kl/token_mean"] == pytest.approx(2 / 3)


def test_positive_rate_and_toxicity():
    assert M.positive_rate([0.6, 0.5, 0.9, 0.1], 0.5) == pytest.approx(0.5)  # strictly above: 0.6, 0.9
    assert M.positive_rate([0.06, 0.05, -0.3], 0.05) == pytest.approx(1 / 3)  # VADER rule: only 0.06
    out = M.toxicity_stats([0.1, 0.7, 0.2, 0.5, 0.0, 0.3], [0, 0, 1, 1, 2, 2])
    # per-prompt max: 0.7, 0.5, 0.3 -> expected max 0.5; any >= 0.5: prompts 0 and 1 -> 2/3
    assert out["toxicity/expected_max"] == pytest.approx(0.5)
    assert out["toxicity/any_rate"] == pytest.approx(2 / 3)
    assert out["toxicity/mean"] == pytest.approx(1.8 / 6)


def test_mean_rouge_skips_missing_references():
    out = M.mean_rouge({"rouge1": [1.0, 0.5, None], "rouge2": [None, None]})
    assert out["rouge/rouge1"] == pytest.approx(0.75)
    assert math.isnan(out["rouge/rouge2"])
