"""DAPO's soft overlong punishment: a length penalty that only bites near the completion limit.

Yu et al. 2025, "DAPO", eq. 13, with L_max the longest completion allowed and L_cache the soft buffer before it
(|y| counted in tokens, the EOS included, as ``completion_ids`` gives them):

    R_length(y) = 0                                  |y| <= L_max - L_cache
                = ((L_max - L_cache) - |y|) / L_cache  L_max - L_cache < |y| <= L_max
                = -1                                 |y| > L_max

Add it to a task reward in the SPEC, e.g. ``accuracy.py:score+overlong_penalty:20,5``. It penalises long
completions without rewarding short ones; TRL ships the same as ``get_soft_overlong_punishment``.
"""

from __future__ import annotations

from reinlm.errors import ReinlmError, bad_value
from reinlm.rewards.base import register_reward, reward_function


def overlong_value(length: int, max_len: int, cache: int) -> float:
    """R_length for a completion of ``length`` tokens (module docstring)."""
    if length <= max_len - cache:
        return 0.0
    if length <= max_len:
        return ((max_len - cache) - length) / cache
    return -1.0


@register_reward("overlong_penalty")
def overlong_penalty(max_len: int, cache: int):
    """DAPO's soft overlong punishment: 0 up to max_len - cache tokens, then down linearly to -1 at max_len
    (set max_len to --max-new-tokens)."""
    for name, v in (("max_len", max_len), ("cache", cache)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad_value(f"overlong_penalty.{name}", v, "a whole number >= 1, e.g. overlong_penalty:20,5")
    if cache > max_len:
        raise bad_value("overlong_penalty.cache", cache, f"at most max_len = {max_len}")

    @reward_function("overlong_penalty")
    def reward(prompts, completions, completion_ids=None, **columns) -> list[float]:
        if completion_ids is None:
            raise ReinlmError("reward 'overlong_penalty' needs the completions' token ids (completion_ids), which "
                              "the trainer passes; call it as reward(prompts, completions, completion_ids=...).")
        return [overlong_value(len(ids), max_len, cache) for ids in completion_ids]

    return reward
