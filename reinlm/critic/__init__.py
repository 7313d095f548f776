"""LLM-critic dense rewards: a critic LLM names the spans of a text that earned or lost reward, and those
spans become per-token rewards (DESIGN.md section 5; docs/critic.md).

Modules: ``template`` (task templates), ``parse`` (answer parser), ``align`` (phrases -> character spans ->
token values), ``base`` / ``local`` / ``http`` (backends), ``reward`` (``CriticReward``), ``config``.
"""

from __future__ import annotations

from reinlm.critic.align import FUZZY_THRESHOLD, Span, locate, locate_spans, token_offsets, token_values
from reinlm.critic.base import CriticBackend, CritiqueResult
from reinlm.critic.config import CriticConfig, parse_values
from reinlm.critic.parse import parse_answer
from reinlm.critic.template import BUILTIN_TASKS, CritiqueTemplate, load_template

__all__ = [
    "BUILTIN_TASKS", "CriticBackend", "CriticConfig", "CritiqueResult", "CritiqueTemplate", "FUZZY_THRESHOLD",
    "HTTPCritic", "LocalCritic", "CriticReward", "Span", "critic_from_args", "load_template", "locate",
    "locate_spans", "parse_answer", "parse_values", "token_offsets", "token_values",
]


def __getattr__(name):  # heavy modules (torch, urllib) on first use only
    if name == "LocalCritic":
        from reinlm.critic.local import LocalCritic

        return LocalCritic
    if name == "HTTPCritic":
        from reinlm.critic.http import HTTPCritic

        return HTTPCritic
    if name == "CriticReward":
        from reinlm.critic.reward import CriticReward

        return CriticReward
    raise AttributeError(name)


def critic_from_args(critic: str | None = None, critic_url: str | None = None, critic_model: str | None = None,
                     critic_task: str = "sentiment", critic_values: str = "0.5,-0.5",
                     critic_threshold: float | None = None, critic_default: float = 0.0, **more):
    """Build the ``CriticReward`` from ``reinlm train``'s ``--critic*`` flags (any other
    :class:`CriticConfig` field may be passed by name, e.g. ``critic_timeout=10``)."""
    cfg = CriticConfig(critic=critic, critic_url=critic_url, critic_model=critic_model, critic_task=critic_task,
                       critic_values=critic_values, critic_threshold=critic_threshold,
                       critic_default=critic_default, **{k: v for k, v in more.items() if v is not None})
    return cfg.build()
