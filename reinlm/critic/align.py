"""Locating the critic's phrases in the policy text, and turning located spans into per-token values.

Alignment works on character offsets, never on decoded-token substrings (the reference implementation's
``token in span_text`` test rewards every "a" and "," in the text; see docs/critic.md).

Locating one phrase in the text (:func:`locate`), in order:

1. case-insensitive exact match on word boundaries (the phrase is not part of a longer word);
2. case-insensitive exact match anywhere;
3. the same two with the phrase's trailing punctuation stripped (critics add a final "." or ",");
4. fuzzy: every window of consecutive words of the text whose word count is within 2 of the phrase's,
   with leading/trailing punctuation trimmed, scored by ``difflib.SequenceMatcher(None, phrase,
   window).ratio()`` on lower-cased strings; the best window wins if its ratio is at least
   ``fuzzy_threshold`` (default :data:`FUZZY_THRESHOLD` = 0.8: one wrong character in a 10-character
   phrase scores 0.9, a different word of the same length usually scores below 0.6).

A phrase that occurs several times takes the first occurrence not already claimed by an earlier phrase
with the same label, so a critic that lists "good" twice flags both "good"s, and one that lists it once
flags the first. An unquoted phrase with commas that is not found is retried as its comma-separated parts.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

FUZZY_THRESHOLD = 0.8
_WORD_RE = re.compile(r"\S+")
_TRIM = ".,;:!?\"'“”‘’()[]{}"


@dataclass(frozen=True)
class Span:
    """A located span: ``text[start:end]`` with its critic label and reward polarity."""

    start: int
    end: int
    label: str
    polarity: str
    text: str
    match: str = "exact"  # exact | fuzzy

    def to_dict(self) -> dict:
        return {"text": self.text, "start": self.start, "end": self.end, "label": self.label}


def _find_all(pattern: re.Pattern, text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in pattern.finditer(text)]


def _exact_candidates(phrase: str, text: str) -> list[tuple[int, int]]:
    esc = re.escape(phrase)
    bounded = _find_all(re.compile(rf"(?<!\w){esc}(?!\w)", re.IGNORECASE), text)
    anywhere = _find_all(re.compile(esc, re.IGNORECASE), text)
    return bounded + [c for c in anywhere if c not in bounded]


def _windows(text: str, n_words: int) -> list[tuple[int, int]]:
    words = [(m.start(), m.end()) for m in _WORD_RE.finditer(text)]
    out = []
    for k in range(max(1, n_words - 2), n_words + 3):
        for i in range(0, len(words) - k + 1):
            s, e = words[i][0], words[i + k - 1][1]
            while s < e and text[s] in _TRIM:
                s += 1
            while e > s and text[e - 1] in _TRIM:
                e -= 1
            if e > s:
                out.append((s, e))
    return out


def fuzzy_candidates(phrase: str, text: str, threshold: float = FUZZY_THRESHOLD) -> list[tuple[float, int, int]]:
    """Windows of ``text`` scoring ``>= threshold`` against ``phrase``, best first (ties: earliest first)."""
    p = " ".join(phrase.lower().split())
    scored = set()
    for s, e in _windows(text, len(p.split())):
        ratio = difflib.SequenceMatcher(None, p, " ".join(text[s:e].lower().split())).ratio()
        if ratio >= threshold:
            scored.add((ratio, s, e))
    return sorted(scored, key=lambda t: (-t[0], t[1], t[2]))


def locate(phrase: str, text: str, claimed: set[tuple[int, int]] | None = None,
           fuzzy_threshold: float = FUZZY_THRESHOLD) -> tuple[int, int, str] | None:
    """``(start, end, "exact"|"fuzzy")`` of ``phrase`` in ``text``, skipping ``claimed`` ranges; None if absent."""
    claimed = claimed or set()
    phrase = phrase.strip()
    variants = [phrase]
    stripped = phrase.rstrip(_TRIM).lstrip(_TRIM).strip()
    if stripped and stripped != phrase:
        variants.append(stripped)
    for v in variants:
        for s, e in _exact_candidates(v, text):
            if (s, e) not in claimed:
                return s, e, "exact"
    if fuzzy_threshold < 1.0 and len(stripped) >= 3:
        for _, s, e in fuzzy_candidates(stripped, text, fuzzy_threshold):
            if (s, e) not in claimed:
                return s, e, "fuzzy"
    return None


def locate_spans(items: list[tuple[str, str]], text: str, polarity: dict[str, str],
                 fuzzy_threshold: float = FUZZY_THRESHOLD) -> tuple[list[Span], list[tuple[str, str]]]:
    """Locate every (label, phrase) item in ``text``; returns (spans, items not found)."""
    spans: list[Span] = []
    missing: list[tuple[str, str]] = []
    claimed: dict[str, set[tuple[int, int]]] = {}
    for label, phrase in items:
        taken = claimed.setdefault(label, set())
        hit = locate(phrase, text, taken, fuzzy_threshold)
        parts = [p.strip() for p in phrase.split(",") if p.strip()]
        if hit is None and len(parts) > 1:  # "boring, clumsy" listed as one unquoted item
            found = [h for h in (locate(p, text, taken, fuzzy_threshold) for p in parts) if h is not None]
            if not found:
                missing.append((label, phrase))
            for s, e, how in found:
                taken.add((s, e))
                spans.append(Span(s, e, label, polarity[label], text[s:e], how))
            continue
        if hit is None:
            missing.append((label, phrase))
            continue
        s, e, how = hit
        taken.add((s, e))
        spans.append(Span(s, e, label, polarity[label], text[s:e], how))
    spans.sort(key=lambda sp: (sp.start, sp.end))
    return spans, missing


def token_values(spans: list[Span], token_spans: list[tuple[int, int]], values: dict[str, float],
                 default: float = 0.0) -> list[float]:
    """One value per token: tokens whose characters overlap a span get that span polarity's value.

    A token overlaps ``[start, end)`` when ``tok_start < end and tok_end > start`` (so a token that only
    touches a span's edge, like the "," after it, gets nothing). A token overlapping spans of both
    polarities gets the sum of the two values (each polarity counted once); a token overlapping none, or
    an empty token (``start == end``, e.g. a special token), gets ``default``.
    """
    out = []
    for ts, te in token_spans:
        hit = {sp.polarity for sp in spans if ts < te and ts < sp.end and te > sp.start}
        out.append(sum(values[p] for p in sorted(hit)) if hit else default)
    return out


def token_offsets(tokenizer, text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Token texts and character spans of ``text`` under ``tokenizer`` (a fast tokenizer's offset mapping)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(map(int, o)) for o in enc["offset_mapping"]]
    return [text[s:e] for s, e in offsets], offsets
