"""The degeneration alarm fires on notebook-style collapse and stays quiet on varied text."""

import pytest

from reinlm.errors import ConfigError
from reinlm.trainer.degeneration import DegenerationConfig, DegenerationMonitor, batch_signals

HEALTHY = [
    "But there are now many different questions that are not yet known.",
    "The weather today is mild, with a light breeze coming from the west.",
    "I think the movie was great, although the ending felt a little rushed.",
    "She opened the door and saw that the garden was covered in fresh snow.",
    "In 1998 the company announced a merger with its biggest rival.",
    "He likes to read old books about sailing ships and distant islands.",
    "We walked along the river until the sun went down behind the hills.",
    "Most of the students finished the exam early and went home.",
]
# Samples from the REINFORCE notebook seed after a few steps without a KL anchor.
COLLAPSED = [
    ',"!!!!!,"!,"!,"!,"!!,"!?" I',
    "you you You you you you you you you you you you you you",
    ',"?"?"?","?"?","\'re,"\'d?"?",","',
    "iiii'di'd'd'd'd'd'd'd'd'd'd'd",
    "iiiiiiiiiiiiiii",
    '--""""""""""""',
    ",\"--'m'm'm'm'm'm'm'm'm'm'm'm'm'm'm",
    ",\",\",\",\",\",\",\",\",\",\",\",\",\",\",\"",
]


def _rotate(texts, k):
    return texts[k % len(texts):] + texts[:k % len(texts)]


def test_quiet_on_varied_text():
    mon = DegenerationMonitor(DegenerationConfig())
    for step in range(10):
        assert mon.observe(step, _rotate(HEALTHY, step)) is None
    assert mon.healthy


def test_fires_on_collapse_after_patience():
    mon = DegenerationMonitor(DegenerationConfig(patience=2))
    assert mon.observe(0, HEALTHY) is None
    assert mon.observe(1, HEALTHY) is None
    assert mon.observe(2, COLLAPSED) is None  # first bad step: patience 2 not reached
    assert not mon.healthy
    alarm = mon.observe(3, COLLAPSED)
    assert alarm is not None and alarm.step == 3 and alarm.bad_steps == 2
    assert {"repetition", "punctuation", "distinct_2"} <= set(alarm.signals)
    assert len(alarm.examples) == 3 and all(e in COLLAPSED for e in alarm.examples)
    # thresholds are the documented defaults (start values are far below them)
    assert alarm.thresholds["repetition"] == pytest.approx(0.35)
    assert alarm.thresholds["punctuation"] == pytest.approx(0.30)
    assert "step 3" in str(alarm)
    # one good step resets the count
    assert mon.observe(4, HEALTHY) is None and mon.healthy


def test_distinct2_relative_floor_and_perplexity():
    mon = DegenerationMonitor(DegenerationConfig(patience=1))
    d0 = batch_signals(HEALTHY)["distinct_2"]
    assert mon.observe(0, HEALTHY, perplexity=10.0) is None
    assert mon.thresholds()["distinct_2"] == pytest.approx(max(0.5 * d0, 0.2))
    assert mon.thresholds()["perplexity"] == pytest.approx(40.0)  # 4.0 x start perplexity 10
    alarm = mon.observe(1, HEALTHY, perplexity=41.0)
    assert alarm is not None and alarm.signals == ["perplexity"]
    # the same sentence 8 times: bigrams 11 unique of 8*11 -> distinct-2 = 1/8 < floor
    alarm = mon.observe(2, [HEALTHY[0]] * 8, perplexity=10.0)
    assert alarm is not None and alarm.signals == ["distinct_2"]
    assert alarm.values["distinct_2"] == pytest.approx(1 / 8)


def test_relative_ceiling_for_a_model_that_starts_high():
    mon = DegenerationMonitor(DegenerationConfig(patience=1))
    code = ["x = f(a, b); y = g[x] + {k: v}"] * 4  # punctuation: 12 of 21 non-space chars (= ( , ) ; = [ ] + { : }) = 0.57 at the start
    mon.observe(0, code)
    assert mon.thresholds()["punctuation"] == pytest.approx(2 * batch_signals(code)["punctuation"])


def test_state_dict_round_trip_and_validation():
    mon = DegenerationMonitor()
    mon.observe(0, HEALTHY)
    mon.observe(1, COLLAPSED)
    other = DegenerationMonitor()
    other.load_state_dict(mon.state_dict())
    assert other.start == mon.start and other.bad_steps == 1
    assert other.observe(2, COLLAPSED) is not None  # the second bad step in a row, across the resume
    with pytest.raises(ConfigError):
        DegenerationConfig(patience=0)
