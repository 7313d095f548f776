"""Rewards: sequence- and token-level reward functions, their registry, and the reward SPEC grammar.

A sequence reward is any callable called as TRL calls it (keyword arguments ``prompts``, ``completions``,
``completion_ids``, the dataset columns, ``trainer_state``, ``log_extra``, ``log_metric``; sync or async)
returning ``list[float | None]``; a token-level reward has ``is_token_level = True``. :func:`parse_reward_spec` turns a SPEC string
such as ``0.5*sentiment+contains_words:red,blue`` into a :class:`RewardSet`. See docs/rewards.md.
"""

from reinlm.rewards.base import (REWARDS, RewardEntry, RewardFunction, available_rewards, get_reward_entry,
                                 is_token_level, register_reward, reward_function, reward_name, wants_text)
from reinlm.rewards.call import RewardLog, RewardTrainerState, is_async_reward
from reinlm.rewards.classifiers import sentiment, toxicity, toxicity_probability
from reinlm.rewards.combine import RewardComponent, RewardScores, RewardSet, weighted
from reinlm.rewards.embedding import embedding_similarity
from reinlm.rewards.reward_model import reward_model
from reinlm.rewards.rouge import rouge
from reinlm.rewards.spec import parse_reward_spec
from reinlm.rewards.text import contains_words, target_length
from reinlm.rewards.user import load_user_function

__all__ = [
    "REWARDS", "RewardComponent", "RewardLog", "RewardTrainerState", "is_async_reward", "wants_text", "RewardEntry", "RewardFunction", "RewardScores", "RewardSet", "available_rewards",
    "contains_words", "embedding_similarity", "get_reward_entry", "is_token_level", "load_user_function",
    "parse_reward_spec", "register_reward", "reward_function", "reward_model", "reward_name", "rouge", "sentiment",
    "target_length", "toxicity", "toxicity_probability", "weighted",
]
