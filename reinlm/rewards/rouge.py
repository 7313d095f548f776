"""``rouge``: ROUGE F-measure of the completion against a reference column (the ``rouge-score`` package)."""

from __future__ import annotations

import functools
from typing import Literal

from reinlm.config.coerce import check_choice
from reinlm.errors import ReinlmError
from reinlm.rewards.base import register_reward, reward_function

ROUGE_KINDS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@functools.lru_cache(maxsize=8)
def _scorer(kind: str, use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=use_stemmer)


def rouge_f(prediction: str, references: str | list[str], kind: str = "rougeL", use_stemmer: bool = True) -> float:
    """ROUGE-``kind`` F-measure of ``prediction``; with several references, the best one counts."""
    refs = [references] if isinstance(references, str) else list(references)
    return max(_scorer(kind, use_stemmer).score(str(r), prediction)[kind].fmeasure for r in refs)


@register_reward("rouge")
def rouge(kind: Literal["rouge1", "rouge2", "rougeL", "rougeLsum"] = "rougeL", reference_column: str = "reference",
          use_stemmer: bool = True):
    """ROUGE F-measure in [0, 1] of the completion against the ``reference_column`` column (a text or a list).

    ``kind``: rouge1 (unigrams), rouge2 (bigrams), rougeL (longest common subsequence) or rougeLsum.
    """
    check_choice("rouge.kind", kind, ROUGE_KINDS)

    @reward_function("rouge")
    def reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]:
        if reference_column not in columns:
            raise ReinlmError(
                f"reward rouge: needs the column {reference_column!r} with one reference per sample, but got "
                f"columns {sorted(columns) or 'none'}; allowed: pass --reference on the command line, a prompt set "
                f"with a {reference_column!r} column, or rouge:reference_column=NAME.")
        refs = columns[reference_column]
        return [None if r is None else rouge_f(c, r, kind, use_stemmer) for c, r in zip(completions, refs)]

    return reward
