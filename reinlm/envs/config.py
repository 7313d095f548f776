"""Settings of multi-turn training against an environment (nested in ``TrainConfig`` as ``env``: flat flags)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reinlm.config.schema import Config, opt


@dataclass
class EnvConfig(Config):
    """``reinlm train --environment SPEC`` and its limits (docs/environments.md)."""

    environment: str | None = opt(
        None, "train against an environment, SPEC: builtin:guess|negotiate|persuade, path.py:Class (a text env "
        "with reset/step, or TRL's environment_factory class with tool methods), textarena:ENV_ID, "
        "openenv:path.py:Class (an OpenEnv Environment, in process; verifiers:MODULE is not wired yet). The "
        "dataset (--prompts) is optional: without one each episode is reset from its seed")
    tools: str = opt("", "TRL's tools=: path.py:fn,fn2 (functions with annotations and Google docstrings)")
    max_turns: int = opt(4, "model turns per episode", lo=1)
    turn_tokens: int = opt(32, "tokens the model may write in one turn (the episode's total is --max-new-tokens, "
                                "TRL's max_completion_length)", lo=1)
    max_tool_calling_iterations: int | None = opt(
        None, "rounds of tool calls per episode before it ends (TRL's name; None: only --max-turns)", lo=0)
    env_timeout: float = opt(30.0, "seconds one environment call may take before its episode is invalid (0: no limit)",
                             lo=0)
    turn_credit: Literal["outcome", "discounted", "gae"] = opt(
        "outcome", "credit of each turn: outcome (the episode's return on every model token, TRL's), discounted "
        "(each turn's discounted return-to-go, --gamma), gae (turn-level GAE with PPO's value head)")
    opponent: str | None = opt(None, "two-player games: frozen (a frozen copy of the starting policy), random "
                                     "(random moves) or a model name or path (frozen); the trained seat alternates")
    env_rows: int = opt(64, "distinct episode seeds per pass when no --prompts dataset is given", lo=1)
