"""Checks on a reward set that need no model and no sample: run before any model loads (and by ``--dry-run``).

A reward function that requires a dataset column the prompts lack would otherwise fail at the first scored
batch, after the model loaded and the first rollout ran.
"""

from __future__ import annotations

from typing import Iterable

from reinlm.rewards.call import RESERVED_KWARGS, select_kwargs


def check_reward_inputs(reward_set, columns: Iterable[str]) -> None:
    """Raise :class:`~reinlm.errors.ReinlmError` naming the reward and the argument when a component requires a
    keyword argument that neither reinlm (TRL's reserved names) nor a dataset column in ``columns`` provides."""
    given = {k: None for k in (*RESERVED_KWARGS, *columns)}
    for comp in getattr(reward_set, "components", []):
        inner = comp.fn
        if hasattr(inner, "components"):  # a nested reward set
            check_reward_inputs(inner, columns)
        else:
            select_kwargs(inner, comp.name, given)
