"""The critic backend interface: ``critique(texts, task, extrinsic_scores) -> list[CritiqueResult]``.

A backend only turns chat conversations into answer strings (:meth:`CriticBackend.complete`); rendering
the template, parsing the answer and locating the spans are shared here, so every backend behaves the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from reinlm.critic.align import FUZZY_THRESHOLD, Span, locate_spans
from reinlm.critic.parse import parse_answer
from reinlm.critic.template import CritiqueTemplate, load_template

STATUSES = ("ok", "timeout", "unparseable", "error")


@dataclass
class Completion:
    """One raw backend answer: the text (None when there is none), a status and a short error message."""

    text: str | None
    status: str = "ok"  # ok | timeout | unparseable | error
    error: str | None = None


@dataclass
class CritiqueResult:
    """The critique of one text: located spans, the raw answer and how it went.

    ``status`` is ``ok`` (answer parsed; ``spans`` may be empty), ``timeout`` (no answer in time),
    ``unparseable`` (an answer, or an HTTP reply, that does not follow the format) or ``error`` (any
    other failure, e.g. HTTP 500 after the retries). ``missing`` lists the (label, phrase) items the
    critic named that are not in the text.
    """

    text: str
    spans: list[Span] = field(default_factory=list)
    raw: str | None = None
    status: str = "ok"
    missing: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class CriticBackend:
    """Base class: subclasses implement :meth:`complete` (a batch of chats -> answers)."""

    fuzzy_threshold: float = FUZZY_THRESHOLD

    def complete(self, conversations: list[list[dict]]) -> list[Completion]:
        raise NotImplementedError

    def critique(self, texts: Sequence[str], task: str | CritiqueTemplate,
                 extrinsic_scores: Sequence[float | None] | None = None,
                 sources: Sequence[str | None] | None = None) -> list[CritiqueResult]:
        """Critique each text with ``task`` (a built-in task name, template path or loaded template).

        ``extrinsic_scores`` and ``sources`` fill the template's ``{score}`` and ``{source}`` slots. Never
        raises for a failed request or a bad answer: the result's ``status`` says what happened.
        """
        template = load_template(task)
        n = len(texts)
        scores = list(extrinsic_scores) if extrinsic_scores is not None else [None] * n
        srcs = list(sources) if sources is not None else [None] * n
        convs = [template.messages(t, s, sc) for t, s, sc in zip(texts, srcs, scores)]
        answers = self.complete(convs) if convs else []
        return [interpret(text, ans, template, self.fuzzy_threshold) for text, ans in zip(texts, answers)]


def interpret(text: str, answer: Completion, template: CritiqueTemplate,
              fuzzy_threshold: float = FUZZY_THRESHOLD) -> CritiqueResult:
    """Parse one raw answer and locate its phrases in ``text``."""
    if answer.status != "ok" or answer.text is None:
        return CritiqueResult(text, raw=answer.text, status=answer.status if answer.status != "ok" else "error",
                              error=answer.error)
    parsed = parse_answer(answer.text, template)
    if not parsed.ok:
        return CritiqueResult(text, raw=answer.text, status="unparseable",
                              error="the answer has no line starting with a known label")
    polarity = {lab.name: lab.polarity for lab in template.labels}
    spans, missing = locate_spans(parsed.items, text, polarity, fuzzy_threshold)
    return CritiqueResult(text, spans=spans, raw=answer.text, status="ok", missing=missing)
