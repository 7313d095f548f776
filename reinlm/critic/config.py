"""``CriticConfig``: every critic setting, one field each (the ``--critic-*`` flags), and the builder."""

from __future__ import annotations

import math
from typing import Any
from dataclasses import dataclass

from reinlm.config.schema import Config, check_device, opt
from reinlm.errors import ConfigError, bad_value
from reinlm.critic.align import FUZZY_THRESHOLD


def parse_values(text: str | tuple | list, field: str = "critic_values") -> tuple[float, float]:
    """``"0.5,-0.5"`` -> (positive value, negative value); a single number ``x`` means ``x,-x``."""
    parts = [p for p in (text.split(",") if isinstance(text, str) else list(text)) if str(p).strip() != ""]
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise bad_value(field, text, "two numbers 'POSITIVE,NEGATIVE' such as 0.5,-0.5 (or one number x = x,-x)") from None
    if not all(math.isfinite(x) for x in nums):
        raise bad_value(field, text, "finite numbers 'POSITIVE,NEGATIVE' such as 0.5,-0.5")
    if len(nums) == 1:
        return nums[0], -nums[0]
    if len(nums) != 2:
        raise bad_value(field, text, "two numbers 'POSITIVE,NEGATIVE' such as 0.5,-0.5 (or one number x = x,-x)")
    return nums[0], nums[1]


@dataclass
class CriticConfig(Config):
    """How to build the critic reward from flags (``reinlm train --critic ...``)."""

    critic: str | None = opt(None, "local critic model (alias, HF id or path), e.g. smollm2-135m")
    critic_url: str | None = opt(None, "OpenAI-compatible endpoint for the critic, e.g. http://127.0.0.1:8000/v1")
    critic_model: str | None = opt(None, "model name sent to --critic-url")
    critic_task: str = opt("sentiment", "template: sentiment, toxicity, summarization, or a YAML template file")
    critic_values: str = opt("0.5,-0.5", "values of tokens in positive,negative spans", sep=",")
    critic_default: float = opt(0.0, "value of the other tokens of a critiqued sample")
    critic_threshold: float | None = opt(None, "send only samples whose extrinsic reward is <= this (None: all)")
    critic_scale: str = opt("none", "none, or running: multiply values by the running std of extrinsic rewards",
                            choices=("none", "running"))
    critic_api_key_env: str = opt("OPENAI_API_KEY", "environment variable holding the endpoint's API key")
    critic_timeout: float = opt(30.0, "seconds per critic HTTP request", lo=0, lo_open=True)
    critic_max_retries: int = opt(2, "retries of a failed critic HTTP request", lo=0)
    critic_backoff: float = opt(1.0, "base seconds of the exponential backoff between retries", lo=0)
    critic_concurrency: int = opt(4, "most critic HTTP requests in flight", lo=1)
    critic_max_answer_tokens: int = opt(48, "token limit of each critic answer", lo=1)
    critic_batch_size: int = opt(8, "texts per local critic generation batch", lo=1)
    critic_device: str = opt("auto", "device of the local critic: cpu, cuda, cuda:N, auto", check=check_device)
    critic_fuzzy_threshold: float = opt(FUZZY_THRESHOLD, "difflib ratio a fuzzy phrase match needs (1: exact only)",
                                         lo=0, lo_open=True, hi=1)

    def __post_init__(self):
        super().__post_init__()  # every field checked and coerced first
        if self.critic and self.critic_url:
            raise ConfigError("critic: give either --critic (a local model) or --critic-url (an endpoint), not both.")
        if self.critic_url and not self.critic_model:
            self.critic_model = "default"
        parse_values(self.critic_values)

    def build_backend(self):
        """The backend these settings describe (LocalCritic, default smollm2-135m, or HTTPCritic)."""
        if self.critic_url:
            from reinlm.critic.http import HTTPCritic

            return HTTPCritic(self.critic_url, self.critic_model, api_key_env=self.critic_api_key_env,
                              timeout=self.critic_timeout, max_retries=self.critic_max_retries,
                              backoff=self.critic_backoff, concurrency=self.critic_concurrency,
                              max_answer_tokens=self.critic_max_answer_tokens,
                              fuzzy_threshold=self.critic_fuzzy_threshold)
        from reinlm.critic.local import LocalCritic

        return LocalCritic(self.critic or "smollm2-135m", max_answer_tokens=self.critic_max_answer_tokens,
                           batch_size=self.critic_batch_size, device=self.critic_device,
                           fuzzy_threshold=self.critic_fuzzy_threshold)

    def build(self, backend: Any = None) -> Any:
        """The :class:`~reinlm.critic.reward.CriticReward` (template checked now, model loaded lazily)."""
        from reinlm.critic.reward import CriticReward

        pos, neg = parse_values(self.critic_values)
        return CriticReward(backend if backend is not None else self.build_backend(), self.critic_task,
                            positive_value=pos, negative_value=neg, default_value=self.critic_default,
                            threshold=self.critic_threshold, scale=self.critic_scale)
