"""Parsing critic answers, locating phrases by character offsets, and token values (hand-made cases)."""

from __future__ import annotations

import pytest

from reinlm.critic.align import Span, fuzzy_candidates, locate, locate_spans, token_offsets, token_values
from reinlm.critic.parse import parse_answer
from reinlm.critic.template import load_template

SENT = load_template("sentiment")
SUMM = load_template("summarization")
POL = {"positive": "positive", "negative": "negative"}
VALUES = {"positive": 0.5, "negative": -0.5}


# ---------------------------------------------------------------------------------------------- parser
@pytest.mark.parametrize("answer, items", [
    ('Positive: "the acting was superb"\nNegative: "The plot was dull"',
     [("positive", "the acting was superb"), ("negative", "The plot was dull")]),
    ('POSITIVE SPANS: None identified\nnegative spans: “dull”; "slow"',
     [("negative", "dull"), ("negative", "slow")]),
    ("**Positive spans:**\n- \"superb\"\n* 'great cast'\n1. loved it\n\n**Negative spans:**\nNone",
     [("positive", "superb"), ("positive", "great cast"), ("positive", "loved it")]),
    ("Positive: superb; great cast\nNegative: n/a", [("positive", "superb"), ("positive", "great cast")]),
    ("Negative - \"boring\"\nPositive: none.", [("negative", "boring")]),
    ('Positive: "good"; "good"\nNegative: None\nThis is because the text is mostly positive: "bad".',
     [("positive", "good"), ("positive", "good")]),
])
def test_parser_accepts_quotes_bullets_numbers_and_none(answer, items):
    parsed = parse_answer(answer, SENT)
    assert parsed.ok
    assert parsed.items == items


def test_parser_flags_answers_without_labels_as_unparseable():
    assert not parse_answer("I think this review is quite nice overall.", SENT).ok
    assert not parse_answer("", SENT).ok
    none = parse_answer("None identified.", SENT)  # a bare "none" is a valid empty answer
    assert none.ok and none.items == []


def test_parser_summarization_labels_and_aliases():
    parsed = parse_answer('Irrelevant: "my cat"\nIncoherent: None\nFactually incorrect: "on Friday"', SUMM)
    assert parsed.items == [("irrelevant", "my cat"), ("incorrect", "on Friday")]


# ---------------------------------------------------------------------------------------------- locating
def test_exact_match_is_case_insensitive_and_prefers_whole_words():
    text = "Goodness, the movie was GOOD."
    assert locate("good", text)[:2] == (24, 28)  # not the "Good" inside "Goodness"
    assert locate("the MOVIE", text) == (10, 19, "exact")
    assert locate("the movie was good.", text)[:2] == (10, 29)
    assert locate("the movie was good!!", text)[:2] == (10, 28)  # trailing punctuation stripped


def test_repeated_phrases_claim_successive_occurrences():
    text = "good food, good wine, bad bread"
    spans, missing = locate_spans([("positive", "good"), ("positive", "good"), ("positive", "good")], text, POL)
    assert [(s.start, s.end) for s in spans] == [(0, 4), (11, 15)]
    assert missing == [("positive", "good")]  # a third "good" does not exist
    # the same phrase under another label may take the same characters
    spans, _ = locate_spans([("positive", "good"), ("negative", "good")], text, POL)
    assert [(s.start, s.label) for s in spans] == [(0, "negative"), (0, "positive")] or \
           sorted((s.start, s.label) for s in spans) == [(0, "negative"), (0, "positive")]


def test_fuzzy_match_above_threshold_only():
    text = "The acting was superb and the plot was dull."
    s, e, how = locate("the actin was superb", text)  # one letter dropped: ratio 0.97
    assert (text[s:e], how) == ("The acting was superb", "fuzzy")
    assert locate("the acting is superb", text)[2] == "fuzzy"  # ratio 0.9
    assert locate("a wonderful soundtrack", text) is None
    assert locate("the actin was superb", text, fuzzy_threshold=1.0) is None  # exact only
    best = fuzzy_candidates("plot was dul", text)[0]
    assert text[best[1]:best[2]] == "plot was dull" and best[0] == pytest.approx(24 / 25)


def test_unquoted_comma_list_is_split_when_whole_not_found():
    text = "A boring, clumsy film with one charming scene."
    spans, missing = locate_spans([("negative", "boring, clumsy film")], text, POL)
    assert [s.text for s in spans] == ["boring, clumsy film"] and not missing
    spans, missing = locate_spans([("negative", "clumsy film, boring")], text, POL)
    assert [s.text for s in spans] == ["boring", "clumsy film"] and not missing


# ---------------------------------------------------------------------------------------------- token values
def test_short_tokens_outside_a_span_get_nothing():
    # The reference implementation's substring test would reward "a" and "," (both occur inside the span
    # text "a truly great, moving film"); offsets give them nothing unless they lie inside the span.
    text = "It was a truly great, moving film, a gem."
    spans, _ = locate_spans([("positive", "a truly great, moving film")], text, POL)
    tokens = ["It", " was", " a", " truly", " great", ",", " moving", " film", ",", " a", " gem", "."]
    offsets, pos = [], 0
    for t in tokens:
        offsets.append((pos, pos + len(t)))
        pos += len(t)
    assert "".join(tokens) == text
    vals = token_values(spans, offsets, VALUES)
    assert dict(zip(tokens[:8], vals[:8]))[" truly"] == 0.5
    assert vals == [0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]  # the 2nd " a" and "," get 0


def test_overlapping_spans_and_default():
    spans = [Span(0, 10, "positive", "positive", ""), Span(5, 15, "negative", "negative", ""),
             Span(6, 8, "positive", "positive", "")]
    toks = [(0, 3), (4, 7), (10, 12), (15, 18), (9, 9)]
    # (4,7): both polarities -> 0.5 - 0.5 (positive counted once); (10,12) only negative; (15,18) touches the
    # end of the negative span only -> default; (9,9) is an empty token -> default
    assert token_values(spans, toks, VALUES, default=0.1) == [0.5, 0.0, -0.5, 0.1, 0.1]


def test_token_offsets_with_the_real_tokenizer(smol_tokenizer):
    text = "The plot was dull but the acting was superb."
    toks, offs = token_offsets(smol_tokenizer, text)
    assert toks[:4] == ["The", " plot", " was", " dull"] and offs[-1] == (43, 44)
    spans, _ = locate_spans([("positive", "acting was superb"), ("negative", "plot was dull")], text, POL)
    vals = token_values(spans, offs, VALUES)
    assert vals == [0.0, -0.5, -0.5, -0.5, 0.0, 0.0, 0.5, 0.5, 0.5, 0.0]
