"""Environments for multi-turn training: one text protocol, adapters for outside contracts, built-ins.

Below the trainer, beside rollout (DESIGN.md 5b): nothing here imports the trainer or rollout. The driver
that plays episodes with a model is :mod:`reinlm.rollout.multiturn`; turn credit is
:mod:`reinlm.algorithms.turn_credit`. docs/environments.md is the user's guide.
"""

from reinlm.envs.builtins import BUILTINS
from reinlm.envs.config import EnvConfig
from reinlm.envs.protocol import EnvFault, EnvTimeout, StepResult, TextEnv, guarded_call
from reinlm.envs.spec import ADAPTERS, EnvSpec, from_python, resolve_environment
from reinlm.envs.trl import ToolEnv, parse_tool_calls

__all__ = ["BUILTINS", "ADAPTERS", "EnvConfig", "EnvFault", "EnvTimeout", "EnvSpec", "StepResult", "TextEnv",
           "ToolEnv", "from_python", "guarded_call", "parse_tool_calls", "resolve_environment"]
