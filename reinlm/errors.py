"""User-facing errors.

Every problem a user can cause (a bad model name, a missing file, a malformed reward spec) raises
:class:`ReinlmError` with one paragraph that names the bad value and what is allowed. The CLI prints
that paragraph and exits with status 2, without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")

class ReinlmError(Exception):
    """A problem with the user's input or environment, explained in one paragraph."""

    exit_code = 2


class ConfigError(ReinlmError, ValueError):
    """A configuration field holds a value that is not allowed. ``field`` names it (when known), so that an
    error about a value read from a YAML file can name the file."""

    def __init__(self, message: str = "", *, field: str | None = None):
        super().__init__(message)
        self.field = field


def required(value: T | None, what: str) -> T:
    """``value``; a :class:`ReinlmError` saying ``what`` is missing when it is None. The one check for an optional
    value a caller needs set (a chooser's logits in its mode, the fields a rollout always records)."""
    if value is None:
        raise ReinlmError(f"{what} is needed here; got None.")
    return value


def bad_value(field: str, value, allowed: str) -> ConfigError:
    """Build the standard error for a field with a value that is not allowed.

    >>> str(bad_value("algo", "ppo2", "one of reinforce, grpo, rloo, ppo"))
    "algo: got 'ppo2'; allowed: one of reinforce, grpo, rloo, ppo."
    """
    return ConfigError(f"{field}: got {value!r}; allowed: {allowed}.", field=field)
