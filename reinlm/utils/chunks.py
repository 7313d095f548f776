"""Consecutive chunks of a list (batches of prompts, texts to score)."""

from __future__ import annotations

from typing import Iterable


def chunked(items: list, size: int) -> Iterable[list]:
    """Split ``items`` into consecutive lists of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
