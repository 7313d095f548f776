"""``CriticReward``: critic spans as a token-level reward (DESIGN.md section 5, the PPO-intrinsic-reward seed).

Called as ``fn(prompts, completions, completion_token_spans, **columns) -> list[list[float]]`` with one
value per completion token. For each sample:

- not sent to the critic (its extrinsic score, column ``extrinsic``, is above ``threshold``): all zeros;
- critique failed (timeout, error, unparseable answer) or none of the named phrases was found: all zeros;
- otherwise: tokens overlapping a positive span get ``positive_value``, a negative span ``negative_value``,
  the rest ``default_value`` (see :func:`reinlm.critic.align.token_values`).

With ``scale="running"`` every value is multiplied by the running standard deviation of the extrinsic
scores seen so far (Welford), so the values read as "fractions of the extrinsic reward's spread" whatever
its units. Answers are cached by (template, rendered critic input): a repeated text costs nothing.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, OrderedDict
from typing import Sequence

from reinlm.config.coerce import check_choice
from reinlm.critic.align import Span, token_values
from reinlm.critic.base import CriticBackend, CritiqueResult
from reinlm.critic.template import load_template

log = logging.getLogger(__name__)
SCALES = ("none", "running")
FAILURE_KINDS = ("timeout", "error", "unparseable", "span_not_found")


class CriticReward:
    """Token-level reward from span critiques (``is_token_level = True``, name ``critic``).

    Args:
        backend: a :class:`~reinlm.critic.base.CriticBackend` (LocalCritic or HTTPCritic).
        task: built-in task name or template path (or a loaded template).
        positive_value, negative_value: values for tokens in positive / negative spans.
        default_value: value for the other tokens of a successfully critiqued sample.
        threshold: only samples whose extrinsic score is <= this are sent (None: every sample).
        scale: ``none`` or ``running`` (multiply by the running std of extrinsic scores).
        cache_size: most cached critiques kept (least recently used dropped first).
    """

    is_token_level = True

    def __init__(self, backend: CriticBackend, task="sentiment", positive_value: float = 0.5,
                 negative_value: float = -0.5, default_value: float = 0.0, threshold: float | None = None,
                 scale: str = "none", cache_size: int = 10000):
        check_choice("critic_scale", scale, SCALES)
        self.backend = backend
        self.template = load_template(task)
        self.values = {"positive": float(positive_value), "negative": float(negative_value)}
        self.default_value = float(default_value)
        self.threshold = threshold
        self.scale = scale
        self.name = self.__name__ = "critic"
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = int(cache_size)
        self._warned: set[str] = set()
        self._last: Counter = Counter()
        self.totals: Counter = Counter()
        self._n, self._mean, self._m2 = 0, 0.0, 0.0  # Welford over extrinsic scores

    # ------------------------------------------------------------------ public
    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 completion_token_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
                 **columns) -> list[list[float]]:
        results = self.critique(prompts, completions, **columns)
        if completion_token_spans is None:
            raise TypeError("CriticReward is a token-level reward: pass completion_token_spans (the (start, end) "
                            "character span of each completion token), or use as_sequence_reward().")
        factor = self.current_scale()
        out = []
        for res, tok_spans in zip(results, completion_token_spans):
            if res is None or not res.ok or (not res.spans and res.missing):
                out.append([0.0] * len(tok_spans))
                continue
            vals = token_values(res.spans, list(tok_spans), self.values, self.default_value)
            out.append([v * factor for v in vals])
        return out

    def critique(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> list[CritiqueResult | None]:
        """Critique the selected samples (cache first); None for samples not sent. Updates the metrics."""
        n = len(completions)
        extrinsic = columns.get("extrinsic")
        if extrinsic is not None:
            self._observe([float(x) for x in extrinsic if x is not None and not math.isnan(float(x))])
        elif self.threshold is not None:
            self._warn_once("no_extrinsic", "critic: no `extrinsic` column was passed, so the threshold cannot "
                            "apply; every sample is sent to the critic.")
        selected = [i for i in range(n) if self._selected(extrinsic[i] if extrinsic is not None else None)]
        sources = self._sources(prompts, columns)
        stats: Counter = Counter(queried=len(selected))
        results: list[CritiqueResult | None] = [None] * n
        todo: dict[str, list[int]] = {}  # cache key -> sample indices (duplicates in a batch asked once)
        for i in selected:
            key = self._key(completions[i], sources[i], extrinsic[i] if extrinsic is not None else None)
            if key in self._cache:
                self._cache.move_to_end(key)
                results[i] = self._cache[key]
                stats["cache_hits"] += 1
            else:
                todo.setdefault(key, []).append(i)
        if todo:
            firsts = [idx[0] for idx in todo.values()]
            fresh = self.backend.critique([completions[i] for i in firsts], self.template,
                                          extrinsic_scores=[extrinsic[i] if extrinsic is not None else None
                                                            for i in firsts],
                                          sources=[sources[i] for i in firsts])
            for (key, idx), res in zip(todo.items(), fresh):
                stats["cache_hits"] += len(idx) - 1
                if res.status in ("ok", "unparseable"):  # deterministic outcomes; timeouts/errors are retried later
                    self._cache[key] = res
                    if len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
                for i in idx:
                    results[i] = res
        for i in selected:
            self._count(results[i], stats)
        self._last = stats
        self.totals.update(stats)
        return results

    def metrics(self) -> dict[str, float]:
        """Counts for the most recent call: ``critic/queried``, ``critic/cache_hits``, ``critic/spans_found``,
        ``critic/failures`` (failed samples + phrases not found), one ``critic/failures/<kind>`` per kind,
        and ``critic/scale``."""
        s = self._last
        out = {"critic/failures": float(sum(s[k] for k in FAILURE_KINDS)), "critic/spans_found": float(s["spans_found"]),
               "critic/queried": float(s["queried"]), "critic/cache_hits": float(s["cache_hits"])}
        out.update({f"critic/failures/{k}": float(s[k]) for k in FAILURE_KINDS})
        out["critic/scale"] = self.current_scale()
        return out

    def current_scale(self) -> float:
        """The factor applied to the token values (1 unless ``scale="running"``)."""
        if self.scale != "running" or self._n < 2:
            return 1.0
        std = math.sqrt(self._m2 / (self._n - 1))
        return std if std > 0 else 1.0

    def sequence_values(self, prompts, completions, **columns) -> list[float]:
        """Sequence-level values: each located span adds its polarity's value once (default tokens add 0)."""
        factor = self.current_scale()
        out = []
        for res in self.critique(prompts, completions, **columns):
            if res is None or not res.ok:
                out.append(0.0)
            else:
                out.append(factor * sum(self.values[sp.polarity] for sp in res.spans))
        return out

    def as_sequence_reward(self):
        """A sequence reward ``fn(prompts, completions, **columns) -> list[float]`` for REINFORCE/GRPO/RLOO."""
        def critic_sequence(prompts, completions, **columns):
            return self.sequence_values(prompts, completions, **columns)

        critic_sequence.__name__ = "critic"
        critic_sequence.metrics = self.metrics
        return critic_sequence

    # ------------------------------------------------------------------ helpers
    def _selected(self, score) -> bool:
        if self.threshold is None or score is None:
            return True
        score = float(score)
        return not math.isnan(score) and score <= self.threshold

    def _sources(self, prompts, columns) -> list[str | None]:
        if "source" not in self.template.slots:
            return [None] * len(prompts)
        src = columns.get("source") or columns.get("document")
        return list(src) if src is not None else list(prompts)

    def _key(self, text: str, source, score) -> tuple:
        slots = self.template.slots
        return (self.template.fingerprint, text, source if "source" in slots else None,
                self.template.render_user("", None, score) if "score" in slots else None)

    def _observe(self, xs: list[float]) -> None:
        for x in xs:
            self._n += 1
            d = x - self._mean
            self._mean += d / self._n
            self._m2 += d * (x - self._mean)

    def _count(self, res: CritiqueResult | None, stats: Counter) -> None:
        if res is None:
            return
        if not res.ok:
            stats[res.status] += 1
            self._warn_once(res.status, f"critic: a critique ended with status {res.status!r} ({res.error}); such "
                            "samples get zero intrinsic reward (counted in critic/failures; warned once).")
            return
        stats["spans_found"] += len(res.spans)
        if res.missing:
            stats["span_not_found"] += len(res.missing)
            label, phrase = res.missing[0]
            self._warn_once("span_not_found", f"critic: the critic named a {label} phrase {phrase!r} that is not in "
                            "the text; it gets no reward (counted in critic/failures; warned once).")

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message)


def spans_to_json(spans: list[Span]) -> list[dict]:
    """Spans as ``[{"text", "start", "end", "label"}]``."""
    return [sp.to_dict() for sp in spans]
