"""Alias of :mod:`reinlm.algorithms.shaping` under the name docs/architecture.md uses."""

from reinlm.algorithms.shaping import RunningMoments, last_token_index, per_token_rewards  # noqa: F401
