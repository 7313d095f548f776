"""Imports every module that registers a built-in reward factory (heavy libraries load lazily inside them)."""

from reinlm.rewards import classifiers, embedding, overlong, reward_model, rouge, text  # noqa: F401
