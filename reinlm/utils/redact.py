"""Secret redaction: API keys, tokens and ``Authorization`` values removed from text before it is shown or logged."""

from __future__ import annotations

import os
import re


REDACTED = "[REDACTED]"


_SECRET_PATTERNS = [
    # an Authorization header value, whatever its scheme: "Authorization: Bearer xyz", 'authorization': 'Basic ...'
    re.compile(r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?)(?:(bearer|basic|token)\s+)?[^\s\"',;}]+"),
    re.compile(r"(?i)(\bbearer\s+)(?=[A-Za-z._~+/=\-]*\d)[A-Za-z0-9._~+/=\-]{8,}"),  # a token has a digit
    # key=value / "api_key": "value" forms
    re.compile(r"(?i)(\b(?:api[_-]?key|access[_-]?token|secret|password|x-api-key)[\"']?\s*[:=]\s*[\"']?)"
               r"[^\s\"',;}]{4,}"),
    # well-known key shapes: OpenAI/Anthropic sk-..., Hugging Face hf_..., GitHub, Slack, AWS, Google
    re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{16,}"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"\bxox[abpr]-[A-Za-z0-9\-]{10,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"),
]


_SECRET_ENV_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")


_registered_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Add ``value`` (e.g. an API key read from the environment) to the strings :func:`redact_secrets` removes."""
    if value and len(value) >= 6:
        _registered_secrets.add(value)


def _env_secrets() -> list[str]:
    out = []
    for name, value in os.environ.items():
        if value and len(value) >= 8 and any(w in name.upper() for w in _SECRET_ENV_WORDS):
            out.append(value)
    return out


def redact_secrets(text: str) -> str:
    """``text`` with API keys, tokens and ``Authorization`` / ``Bearer`` values replaced by ``[REDACTED]``.

    Removes, in this order: the exact values of registered secrets and of environment variables whose name
    says KEY/TOKEN/SECRET/PASSWORD (longest first), then well-known key shapes (``sk-...``, ``hf_...``, ...)
    and ``Authorization:`` / ``Bearer`` / ``api_key=`` values. Apply it to a message *before* cutting it to a
    length, so that no part of a key survives the cut.
    """
    if not text:
        return text
    text = str(text)
    for secret in sorted(_registered_secrets | set(_env_secrets()), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.re.groups and m.group(1) else "") + REDACTED, text)
    return text
