"""Span precision/recall of the critic on 30 hand-labelled sentences (written for this test).

A predicted span is *correct* when it overlaps (at least one character) a gold span with the same label;
precision = correct predictions / predictions, recall = gold spans overlapped by a same-label prediction.
"located" precision ignores the label (did the critic point at a sentiment-bearing phrase at all?).
Run the full set with ``pytest -m integration -k full -s tests/test_critic_precision.py``.
"""

from __future__ import annotations

import json

import pytest

from reinlm.critic.align import Span

# (sentence, [(label, gold phrase), ...]); phrases are exact substrings of the sentence.
GOLD: list[tuple[str, list[tuple[str, str]]]] = [
    ("The plot was dull but the acting was superb.", [("negative", "dull"), ("positive", "superb")]),
    ("I loved every minute of this film.", [("positive", "loved every minute")]),
    ("The service was slow and the soup was cold.", [("negative", "slow"), ("negative", "cold")]),
    ("What a beautiful, moving story.", [("positive", "beautiful"), ("positive", "moving story")]),
    ("The hotel room was dirty and smelled awful.", [("negative", "dirty"), ("negative", "smelled awful")]),
    ("Our guide was friendly and very helpful.", [("positive", "friendly"), ("positive", "very helpful")]),
    ("The battery dies within an hour, which is frustrating.", [("negative", "dies within an hour"),
                                                               ("negative", "frustrating")]),
    ("The train leaves at nine from platform four.", []),
    ("A brilliant cast wasted on a lazy script.", [("positive", "brilliant cast"), ("negative", "wasted"),
                                                   ("negative", "lazy script")]),
    ("The dessert was delicious, but the main course was bland.", [("positive", "delicious"), ("negative", "bland")]),
    ("I regret buying this blender; it broke after two days.", [("negative", "regret buying"), ("negative", "broke")]),
    ("The concert was absolutely fantastic.", [("positive", "absolutely fantastic")]),
    ("The instructions were confusing and the parts did not fit.", [("negative", "confusing"),
                                                                   ("negative", "did not fit")]),
    ("She gave a warm and generous speech.", [("positive", "warm"), ("positive", "generous")]),
    ("The meeting is scheduled for Tuesday afternoon.", []),
    ("This is the worst pizza I have ever eaten.", [("negative", "worst pizza")]),
    ("The garden looks lovely in the spring.", [("positive", "lovely")]),
    ("The app is fast, simple and reliable.", [("positive", "fast"), ("positive", "simple"), ("positive", "reliable")]),
    ("The movie was far too long and painfully boring.", [("negative", "far too long"), ("negative", "painfully boring")]),
    ("I am grateful for your kind help.", [("positive", "grateful"), ("positive", "kind help")]),
    ("The staff were rude and the prices were outrageous.", [("negative", "rude"), ("negative", "outrageous")]),
    ("The sunset over the lake was breathtaking.", [("positive", "breathtaking")]),
    ("The sequel is a disappointing mess.", [("negative", "disappointing mess")]),
    ("The book has a clever twist and charming characters.", [("positive", "clever twist"),
                                                              ("positive", "charming characters")]),
    ("The road was closed, so we waited for an hour in the rain.", [("negative", "waited for an hour in the rain")]),
    ("It is an excellent camera with a terrible menu.", [("positive", "excellent camera"), ("negative", "terrible menu")]),
    ("The new update fixed the bug and made everything smoother.", [("positive", "fixed the bug"),
                                                                    ("positive", "smoother")]),
    ("The report contains twelve pages and three tables.", []),
    ("The kids had a wonderful time at the zoo.", [("positive", "wonderful time")]),
    ("The coffee was weak and overpriced, but the cake was great.", [("negative", "weak"), ("negative", "overpriced"),
                                                                    ("positive", "great")]),
]


def gold_spans(text: str, phrases: list[tuple[str, str]]) -> list[Span]:
    out = []
    for label, phrase in phrases:
        start = text.index(phrase)
        out.append(Span(start, start + len(phrase), label, label, phrase))
    return out


def _overlap(a: Span, b: Span) -> bool:
    return a.start < b.end and b.start < a.end


def span_scores(preds: list[list[Span]], golds: list[list[Span]]) -> dict:
    """Micro precision / recall / located precision over sentences (see the module docstring)."""
    n_pred = n_gold = correct = located = recalled = 0
    for pred, gold in zip(preds, golds):
        n_pred, n_gold = n_pred + len(pred), n_gold + len(gold)
        correct += sum(any(_overlap(p, g) and p.label == g.label for g in gold) for p in pred)
        located += sum(any(_overlap(p, g) for g in gold) for p in pred)
        recalled += sum(any(_overlap(p, g) and p.label == g.label for p in pred) for g in gold)
    return {"predicted": n_pred, "gold": n_gold,
            "precision": correct / n_pred if n_pred else float("nan"),
            "located_precision": located / n_pred if n_pred else float("nan"),
            "recall": recalled / n_gold if n_gold else float("nan")}


def test_gold_set_is_consistent():
    assert len(GOLD) == 30
    for text, phrases in GOLD:
        assert len(gold_spans(text, phrases)) == len(phrases)


def test_span_scores_by_hand():
    g = [[Span(0, 4, "positive", "positive", ""), Span(10, 14, "negative", "negative", "")]]
    p = [[Span(2, 6, "positive", "positive", ""), Span(10, 12, "positive", "positive", ""),
          Span(20, 25, "negative", "negative", "")]]
    s = span_scores(p, g)
    assert (s["precision"], s["located_precision"], s["recall"]) == (1 / 3, 2 / 3, 1 / 2)


def _measure(smol_lm, items) -> tuple[dict, list]:
    from reinlm.critic.local import LocalCritic

    critic = LocalCritic(smol_lm[0], smol_lm[1], max_answer_tokens=40, batch_size=8)
    results = critic.critique([t for t, _ in items], "sentiment")
    scores = span_scores([r.spans for r in results], [gold_spans(t, ph) for t, ph in items])
    scores["statuses"] = {s: sum(r.status == s for r in results) for s in {r.status for r in results}}
    scores["phrases_not_found"] = sum(len(r.missing) for r in results)
    return scores, results


@pytest.mark.integration
def test_embedded_critic_spans_fast(smol_lm):
    scores, results = _measure(smol_lm, GOLD[:3])
    print(json.dumps(scores))
    assert len(results) == 3 and all(r.raw is not None for r in results)
    assert scores["statuses"].get("ok", 0) >= 2  # the embedded critic follows the answer format
    assert scores["located_precision"] >= 0.5  # it points at sentiment-bearing phrases


@pytest.mark.integration
@pytest.mark.slow
def test_embedded_critic_spans_full(smol_lm):
    scores, results = _measure(smol_lm, GOLD)
    print(json.dumps(scores))
    for (text, _), r in zip(GOLD, results):
        print(f"{r.status:11s} {text!r} -> {[(s.label, s.text) for s in r.spans]}")
    assert scores["statuses"].get("ok", 0) >= 20
