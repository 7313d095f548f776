"""Text statistics with no model dependency: diversity, repetition, punctuation, embedding similarity.

Pure functions shared by the evaluation metrics (``reinlm.evaluation``) and the trainer's degeneration
alarm (``reinlm.trainer.degeneration``). Words are whitespace tokens (``text.split()``), so the numbers do
not depend on any model's tokenizer and are comparable across models.

Legend: M = samples in a group, D = embedding width.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np


def words(text: str) -> list[str]:
    """Whitespace tokens of ``text`` (the unit of every word-level statistic here)."""
    return text.split()


def ngrams(tokens: Sequence[Any], n: int) -> list[tuple]:
    """Consecutive ``n``-grams of ``tokens`` (empty when there are fewer than ``n`` tokens)."""
    if n < 1:
        raise ValueError(f"n: got {n}; allowed: an integer >= 1.")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams / total word n-grams, pooled over ``texts``.

    The n-grams of all texts are pooled (an n-gram never spans two texts), so a set of samples that repeat
    each other scores low even when each sample alone is varied. Defined as 0.0 when the texts hold no
    n-gram at all (empty list, or every text shorter than ``n`` words): no evidence of diversity.
    """
    grams = [g for t in texts for g in ngrams(words(t), n)]
    if not grams:
        return 0.0
    return len(set(grams)) / len(grams)


def repeated_ngram_fraction(text: str, n: int, unit: Literal["word", "char"] = "word") -> float:
    """Share of the n-grams of ``text`` that repeat an n-gram seen earlier in it: 1 - unique / total.

    ``unit="word"`` uses whitespace tokens; ``unit="char"`` uses the characters with whitespace removed,
    which also catches collapse inside one long "word" (``"iiiiiiii"``, ``",\\"!,\\"!,\\"!"``).
    0.0 when the text has fewer than ``n`` units.
    """
    if unit == "word":
        units: Sequence[str] = words(text)
    elif unit == "char":
        units = "".join(text.split())
    else:
        raise ValueError(f"unit: got {unit!r}; allowed: word, char.")
    grams = ngrams(units, n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def is_punctuation(ch: str) -> bool:
    """True for Unicode punctuation (categories P*) and symbols (S*: ``$ + < = > ^ ` | ~`` and the like)."""
    return unicodedata.category(ch)[0] in ("P", "S")


def punctuation_fraction(text: str) -> float:
    """Share of the non-whitespace characters of ``text`` that are punctuation or symbols (0.0 if none)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(is_punctuation(c) for c in chars) / len(chars)


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def mean_pairwise_cosine(embeddings: Any) -> float:
    """Mean cosine similarity over the M*(M-1)/2 unordered pairs of rows of ``embeddings`` (M, D).

    Accepts a NumPy array or a torch tensor. A zero row has cosine 0 with everything. Needs M >= 2.
    """
    e = _as_array(embeddings)
    if e.ndim != 2 or e.shape[0] < 2:
        raise ValueError(f"embeddings: got shape {tuple(e.shape)}; allowed: (M, D) with M >= 2.")
    norms = np.linalg.norm(e, axis=1, keepdims=True)  # (M, 1)
    unit = e / np.where(norms > 0, norms, 1.0)  # (M, D)
    sim = unit @ unit.T  # (M, M)
    m = e.shape[0]
    iu = np.triu_indices(m, k=1)
    return float(sim[iu].mean())


def quality_diversity(embeddings_per_group: Sequence[Any]) -> dict[str, float]:
    """Quality-diversity of the CoLA card (DESIGN.md section 4).

    For each group (the M samples of one prompt) take the mean pairwise cosine similarity of their sentence
    embeddings; ``similarity`` is the mean over groups and ``qd = 1 / similarity`` (higher = more diverse;
    ``inf`` when the similarity is <= 0). Groups with fewer than 2 samples are skipped; at least one group
    must have 2 or more.
    """
    sims = [mean_pairwise_cosine(g) for g in embeddings_per_group if _as_array(g).shape[0] >= 2]
    if not sims:
        raise ValueError("quality_diversity needs at least one group with 2 or more samples.")
    s = float(np.mean(sims))
    return {"similarity": s, "qd": 1.0 / s if s > 0 else float("inf")}
