"""Hand-checked tests of reinlm.textstats (the hand computation is written beside each assert)."""

import math

import numpy as np
import pytest
import torch

from reinlm.textstats import (distinct_n, mean_pairwise_cosine, ngrams, punctuation_fraction, quality_diversity,
                              repeated_ngram_fraction)


def test_distinct_n_pooled_over_texts():
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 7 total, {a, b, c} 3 unique -> 3/7
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    # bigrams: (a b)(b a)(a b) + (a b)(b c) -> 5 total, {ab, ba, bc} 3 unique -> 3/5
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    # trigrams: (a b a)(b a b) + (a b c) -> 3 total, 3 unique -> 1.0
    assert distinct_n(texts, 3) == pytest.approx(1.0)


def test_distinct_n_empty_is_zero():
    assert distinct_n([], 2) == 0.0
    assert distinct_n(["one", ""], 2) == 0.0  # no text has 2 words: no bigram at all


def test_ngrams_rejects_bad_n():
    assert ngrams(["a", "b"], 3) == []
    with pytest.raises(ValueError):
        ngrams(["a"], 0)


def test_repeated_ngram_fraction_word_and_char():
    # word bigrams of "a b a b a": ab ba ab ba -> 4 total, 2 unique -> 1 - 2/4 = 0.5
    assert repeated_ngram_fraction("a b a b a", 2) == pytest.approx(0.5)
    assert repeated_ngram_fraction("the cat sat", 2) == 0.0
    assert repeated_ngram_fraction("short", 4) == 0.0
    # chars of "ab ab ab" without spaces = "ababab"; 4-grams abab baba abab -> 3 total, 2 unique -> 1/3
    assert repeated_ngram_fraction("ab ab ab", 4, unit="char") == pytest.approx(1 / 3)
    # "iiiiii": 4-grams iiii x3 -> 1 unique of 3 -> 2/3
    assert repeated_ngram_fraction("iiiiii", 4, unit="char") == pytest.approx(2 / 3)


def test_punctuation_fraction():
    # "Hi, you!" non-space chars H i , y o u ! -> 7, punctuation , ! -> 2/7
    assert punctuation_fraction("Hi, you!") == pytest.approx(2 / 7)
    assert punctuation_fraction('!!,"') == 1.0
    assert punctuation_fraction("   ") == 0.0
    assert punctuation_fraction("a+b") == pytest.approx(1 / 3)  # '+' is a symbol (category Sm)


def test_mean_pairwise_cosine():
    e = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # cos(e0,e1) = 0; cos(e0,e2) = 1/sqrt2; cos(e1,e2) = 2/(2*sqrt2) = 1/sqrt2 -> mean = (2/sqrt2)/3
    assert mean_pairwise_cosine(e) == pytest.approx(math.sqrt(2) / 3)
    assert mean_pairwise_cosine(torch.tensor(e, dtype=torch.float32)) == pytest.approx(math.sqrt(2) / 3, abs=1e-6)
    # a zero row has cosine 0 with everything: pairs (0,1) = 1, (0,2) = 0, (1,2) = 0 -> 1/3
    assert mean_pairwise_cosine([[1.0, 0.0], [3.0, 0.0], [0.0, 0.0]]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        mean_pairwise_cosine([[1.0, 0.0]])


def test_quality_diversity_cola_protocol():
    g1 = np.array([[1.0, 0.0], [1.0, 0.0]])  # identical samples -> similarity 1
    g2 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # similarity sqrt2/3 (see above)
    single = np.array([[1.0, 0.0]])  # one sample: skipped
    out = quality_diversity([g1, g2, single])
    s = (1.0 + math.sqrt(2) / 3) / 2  # mean over the two usable groups
    assert out["similarity"] == pytest.approx(s)
    assert out["qd"] == pytest.approx(1 / s)
    assert quality_diversity([np.array([[1.0, 0.0], [-1.0, 0.0]])])["qd"] == math.inf  # similarity -1 <= 0
    with pytest.raises(ValueError):
        quality_diversity([single])
