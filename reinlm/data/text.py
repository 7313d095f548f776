"""Preparing prompt text for a model: context-length checks (chat templates: :mod:`reinlm.data.chat`)."""

from __future__ import annotations

import logging
from typing import Sequence

from reinlm.errors import ReinlmError

log = logging.getLogger(__name__)


def context_length(model_or_config) -> int | None:
    """The model's maximum number of positions (``max_position_embeddings`` or alike), or ``None``."""
    cfg = getattr(model_or_config, "config", model_or_config)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_prompt_lengths(prompts: Sequence[str], tokenizer, max_prompt_tokens: int | None, max_new_tokens: int,
                         context: int | None, truncate: bool = False) -> list[str]:
    """Make sure every prompt fits: ``tokens(prompt) <= min(max_prompt_tokens, context - max_new_tokens)``.

    Token counts include the special tokens the tokenizer adds. A prompt that does not fit raises
    :class:`ReinlmError` naming it, its length and the limit; with ``truncate=True`` it is instead cut
    from the left (its beginning is dropped, the end next to the generation is kept, on a token boundary)
    and a warning says how many prompts were cut. Returns the (possibly truncated) prompts.
    """
    limit = _limit(max_prompt_tokens, max_new_tokens, context)
    if limit is None:
        return list(prompts)
    n_special = len(tokenizer("")["input_ids"])  # e.g. a BOS token added to every prompt
    counts = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]] if len(prompts) else []
    out, too_long = [], []
    for i, (p, n) in enumerate(zip(prompts, counts)):
        if n <= limit:
            out.append(p)
            continue
        too_long.append((i, n))
        if truncate:
            out.append(_truncate_left(p, tokenizer, limit - n_special))
    if too_long and not truncate:
        i, n = too_long[0]
        preview = prompts[i][:60] + ("..." if len(prompts[i]) > 60 else "")
        raise ReinlmError(
            f"prompts: {len(too_long)} prompt(s) do not fit; prompt {i} ({preview!r}) has {n} tokens but the "
            f"limit is {limit} ({_limit_text(max_prompt_tokens, max_new_tokens, context)}); allowed: shorter "
            f"prompts, a larger max-prompt-tokens, fewer max-new-tokens, or truncate=True to cut prompts from "
            f"the left.")
    if too_long:
        log.warning("reinlm: truncated %d prompt(s) from the left to %d tokens", len(too_long), limit)
    return out


def _limit(max_prompt_tokens: int | None, max_new_tokens: int, context: int | None) -> int | None:
    limits = []
    if max_prompt_tokens is not None:
        limits.append(max_prompt_tokens)
    if context is not None:
        limits.append(context - max_new_tokens)
    if not limits:
        return None
    limit = min(limits)
    if limit < 1:
        raise ReinlmError(f"max_new_tokens: got {max_new_tokens}, which leaves {limit} prompt tokens "
                          f"({_limit_text(max_prompt_tokens, max_new_tokens, context)}); allowed: values that "
                          f"leave at least one token for the prompt.")
    return limit


def _limit_text(max_prompt_tokens, max_new_tokens, context) -> str:
    parts = []
    if max_prompt_tokens is not None:
        parts.append(f"max-prompt-tokens {max_prompt_tokens}")
    if context is not None:
        parts.append(f"model context {context} - max-new-tokens {max_new_tokens}")
    return ", ".join(parts)


def _truncate_left(text: str, tokenizer, keep: int) -> str:
    """The shortest suffix of ``text`` cut on a token boundary whose re-tokenization has <= ``keep`` tokens."""
    keep = max(keep, 1)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    k = min(keep, len(offsets))
    while k > 0:
        cut = text[offsets[-k][0]:]
        if len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= keep:
            return cut
        k -= 1
    return text[offsets[-1][0]:]
