"""A tolerant parser for the critic's answer format.

The templates ask for one line per label, ``Label: "phrase"; "phrase"`` or ``Label: None``. Small critics
drift from that, so the parser also accepts:

- label lines in any case, with decoration: ``**Negative spans:**``, ``- positive:``, ``2. Toxic -``;
- items on the label line or on the following lines as bullets (``-``, ``*``, ``•``), numbers (``1.``, ``2)``)
  or lines that start with a quote; the first other line after the answer (an explanation) ends it;
- items in straight or curly double quotes, single quotes around a whole item, or unquoted items split on
  ``;`` / ``|`` (unquoted commas are kept: the aligner splits on them only if the whole item is not found);
- "None", "None identified", "none found", "N/A", "nothing", "-" as "no span for this label".

An answer with no recognisable label line is *unparseable*, unless the whole answer says "none".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from reinlm.critic.template import CritiqueTemplate

_NONE_RE = re.compile(r"^\W*(none|no|n/?a|nothing|null|empty|no spans?|none (identified|found|detected)|"
                      r"there (are|is) no \w+( spans?)?|-+)\W*$", re.IGNORECASE)
_DECOR = " \t*#_>`-•·"  # characters stripped around a label
_ITEM_PREFIX = re.compile(r"^\s*(?:[-*•·+]|\d+[.)]|\(\d+\)|[a-z][.)])\s+", re.IGNORECASE)
_QUOTED = re.compile(r'"([^"\n]+)"|“([^”\n]+)”|«([^»\n]+)»')
_SUFFIXES = ("spans", "span", "phrases", "phrase", "words", "parts", "segments")


@dataclass
class ParsedAnswer:
    """Parsed items as (label, phrase) pairs, in answer order; ``ok`` is False when nothing was recognised."""

    items: list[tuple[str, str]] = field(default_factory=list)
    ok: bool = True


def _label_lookup(template: CritiqueTemplate) -> dict[str, str]:
    table: dict[str, str] = {}
    for lab in template.labels:
        for alias in (lab.name, *lab.aliases):
            table[alias.lower()] = lab.name
    return table


def _match_label(head: str, table: dict[str, str]) -> str | None:
    key = " ".join(head.strip(_DECOR).lower().split())
    key = key.rstrip(" *_")
    if key in table:
        return table[key]
    for suffix in _SUFFIXES:  # "Negative spans" -> "negative"
        if key.endswith(" " + suffix) and key[: -len(suffix) - 1].strip() in table:
            return table[key[: -len(suffix) - 1].strip()]
    return None


def split_items(rest: str) -> list[str]:
    """The phrases on one line: quoted ones if any, else the line split on ``;`` or ``|``; "None" -> []."""
    rest = rest.strip()
    if not rest or _NONE_RE.match(rest):
        return []
    quoted = [next(g for g in m.groups() if g is not None) for m in _QUOTED.finditer(rest)]
    if quoted:
        return [q.strip() for q in quoted if q.strip() and not _NONE_RE.match(q)]
    out = []
    for piece in re.split(r"[;|]", rest):
        piece = piece.strip().strip(_DECOR).strip()
        if len(piece) >= 2 and piece[0] == piece[-1] and piece[0] in "'`":
            piece = piece[1:-1].strip()
        if piece and not _NONE_RE.match(piece):
            out.append(piece)
    return out


def parse_answer(answer: str, template: CritiqueTemplate) -> ParsedAnswer:
    """Parse a critic answer into (label, phrase) items for ``template``'s labels."""
    table = _label_lookup(template)
    items: list[tuple[str, str]] = []
    current: str | None = None
    seen_label = False
    for raw_line in (answer or "").splitlines():
        line = raw_line.strip()
        if not line:
            continue
        label, rest = None, ""
        m = re.match(r"^(.{1,40}?)\s*[:：]\s*(.*)$", line)  # "Label: rest"
        if m:
            label, rest = _match_label(m.group(1), table), m.group(2)
        if label is None:
            m = re.match(r"^([^\"“]{1,40}?)\s+[-–—]\s+(.*)$", line)  # "Label - rest"
            if m:
                label, rest = _match_label(m.group(1), table), m.group(2)
        if label is None and _match_label(line, table):  # a bare header line: "Positive spans"
            label, rest = _match_label(line, table), ""
        if label is not None:
            current, seen_label = label, True
            items += [(label, p) for p in split_items(rest)]
            continue
        if current is not None and (_ITEM_PREFIX.match(line) or _QUOTED.match(line)):
            items += [(current, p) for p in split_items(_ITEM_PREFIX.sub("", line, count=1))]
        elif current is not None and _NONE_RE.match(line):
            continue
        elif current is not None:
            break  # prose after the answer (e.g. an explanation): stop reading
    if not seen_label:
        whole = " ".join((answer or "").split())
        return ParsedAnswer([], ok=bool(_NONE_RE.match(whole)))
    # the same phrase listed twice under one label is kept twice: the aligner gives it the next occurrence
    return ParsedAnswer(items, ok=True)
