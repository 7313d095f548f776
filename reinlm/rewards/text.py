"""Rewards computed from the completion text alone: ``contains_words`` and ``target_length``.

Both come from the notebook seed (seeds/002, cells 8 and 9: ``sentence_contains_one_of`` and
``has_length``); ``contains_words`` matches on word boundaries instead of splitting on spaces, so
"red," and "Red!" count as "red".
"""

from __future__ import annotations

import re
from typing import Literal

from reinlm.config.coerce import check_choice
from reinlm.errors import bad_value
from reinlm.rewards.base import register_reward, reward_function


@register_reward("contains_words", variadic="words")
def contains_words(words: list[str] | str, normalize: bool = False):
    """Count of distinct target words present in the completion (case-insensitive, whole words).

    ``words``: a list of words or phrases (a single string is split on commas). ``normalize``: divide by the
    number of target words, so the reward lies in [0, 1].
    """
    if isinstance(words, str):
        words = words.split(",")
    targets = sorted({str(w).strip().lower() for w in words if str(w).strip()})
    if not targets:
        raise bad_value("contains_words.words", list(words), "at least one non-empty word, e.g. contains_words:red,blue")
    # (?<!\w) / (?!\w): word boundaries that also work for targets that start or end with punctuation.
    patterns = [re.compile(rf"(?<!\w){re.escape(t)}(?!\w)", re.IGNORECASE) for t in targets]
    scale = 1.0 / len(targets) if normalize else 1.0

    @reward_function("contains_words")
    def reward(prompts: list[str], completions: list[str], **columns) -> list[float]:
        return [scale * sum(1 for p in patterns if p.search(c)) for c in completions]

    reward.words = targets
    return reward


def _length(text: str, unit: str) -> int:
    return len(text.split()) if unit == "words" else len(text)


@register_reward("target_length")
def target_length(n: int, unit: Literal["chars", "words"] = "chars", normalize: bool = False):
    """Negative distance to a target length: ``-|len(completion) - n|`` in characters or words.

    ``normalize``: divide by ``n``, so a completion twice too long scores -1.
    """
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n != int(n) or n <= 0:
        raise bad_value("target_length.n", n, "a positive whole number, e.g. target_length:80")
    n = int(n)
    check_choice("target_length.unit", unit, ("chars", "words"))
    scale = 1.0 / n if normalize else 1.0

    @reward_function("target_length")
    def reward(prompts: list[str], completions: list[str], **columns) -> list[float]:
        return [-scale * abs(_length(c, unit) - n) for c in completions]

    return reward
