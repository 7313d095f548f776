"""Built-in rewards (ordered hand-picked pairs), RewardSet validation in both on_error modes, user files."""

from __future__ import annotations

import math

import pytest
import torch

from reinlm.errors import ConfigError, ReinlmError
from reinlm.rewards import (RewardSet, contains_words, embedding_similarity, parse_reward_spec, reward_function,
                            reward_model, rouge, sentiment, target_length, toxicity, toxicity_probability, weighted)
from reinlm.rewards.user import load_user_function


def score(fn, completions, prompts=None, **columns):
    return fn(prompts or [""] * len(completions), completions, **columns)


# ---------------------------------------------------------------------------------------------- text rewards


def test_contains_words_counts_distinct_whole_words_case_insensitively():
    fn = contains_words(["red", "blue", "green"])
    got = score(fn, ["Red, blue! and more red", "redder bluegreen", "nothing here", "GREEN red BLUE."])
    assert got == [2.0, 0.0, 0.0, 3.0]
    assert score(contains_words("red,blue", normalize=True), ["a red car"]) == [0.5]
    assert fn.name == "contains_words"
    with pytest.raises(ConfigError, match="contains_words.words"):
        contains_words([" ", ""])


def test_target_length_chars_words_and_normalised():
    assert score(target_length(10), ["abc", "0123456789", "x" * 14]) == [-7.0, 0.0, -4.0]
    assert score(target_length(3, unit="words"), ["a b c d", "a  b c"]) == [-1.0, 0.0]
    assert score(target_length(10, normalize=True), ["", "x" * 5]) == [-1.0, -0.5]
    with pytest.raises(ConfigError, match="target_length.n"):
        target_length(0)
    with pytest.raises(ConfigError, match="target_length.unit"):
        target_length(5, unit="tokens")


# ---------------------------------------------------------------------------------------------- classifiers


def test_sentiment_vader_orders_positive_above_negative():
    texts = ["What a wonderful film", "A dull, painful mess"]
    prob = score(sentiment(), texts)
    assert prob[0] > 0.75 and prob[1] < 0.15  # VADER compound 0.5719 / -0.7964, mapped by (c + 1) / 2
    assert prob == pytest.approx([(0.5719 + 1) / 2, (-0.7964 + 1) / 2], abs=1e-4)
    assert score(sentiment(score="logit"), texts) == pytest.approx([0.5719, -0.7964], abs=1e-4)
    neg = score(sentiment(label="negative"), texts)
    assert neg == pytest.approx([1 - p for p in prob])
    with pytest.raises(ConfigError, match="sentiment.label"):
        sentiment(label="joyful")
    with pytest.raises(ConfigError, match="sentiment.score"):
        sentiment(score="probability")


def test_toxicity_scores_clean_text_above_profane_text():
    texts = ["Thank you, that was a lovely afternoon.", "you stupid fucking idiot"]
    got = score(toxicity(), texts)
    assert got[0] > 0.8 and got[1] < 0.2
    assert [1 - p for p in toxicity_probability(texts)] == pytest.approx(got)
    assert toxicity_probability([]) == []


def test_hf_sentiment_backend_that_cannot_load_names_the_model():
    fn = sentiment(backend="/no/such/classifier")
    with pytest.raises(ReinlmError, match="/no/such/classifier"):
        score(fn, ["fine"])


# ---------------------------------------------------------------------------------------------- rouge


def test_rouge_close_summary_scores_above_unrelated_text():
    ref = "the cat sat on the mat"
    fn = rouge(kind="rouge1")
    got = score(fn, ["a cat sat on a mat", "stocks fell sharply today"], reference=[ref, ref])
    assert got == pytest.approx([2 / 3, 0.0])  # 4 of 6 unigrams shared both ways
    assert score(rouge(kind="rougeL"), ["the cat sat"], reference=[ref]) == pytest.approx([2 * 0.5 * 1 / 1.5])
    multi = score(fn, ["a cat sat on a mat"], reference=[["unrelated words", ref]])
    assert multi == pytest.approx([2 / 3])  # best of several references
    with pytest.raises(ReinlmError, match="'reference'"):
        score(fn, ["a cat"])
    with pytest.raises(ConfigError, match="rouge.kind"):
        rouge(kind="rouge3")


# ---------------------------------------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory, smol_tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, num_labels=1,
                         pad_token_id=smol_tokenizer.pad_token_id, eos_token_id=smol_tokenizer.eos_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_rm")
    LlamaForSequenceClassification(config).save_pretrained(out)
    smol_tokenizer.save_pretrained(out)
    return str(out)


def test_reward_model_scores_prompt_plus_completion_batched_like_unbatched(tiny_rm_dir):
    prompts = ["Review:", "Review:", "Q: 2+2?"]
    completions = [" great", " a very long and rather dull film that goes on", " 4"]
    batched = score(reward_model(tiny_rm_dir, batch_size=8), completions, prompts)
    single = [score(reward_model(tiny_rm_dir), [c], [p])[0] for p, c in zip(prompts, completions)]
    assert len(batched) == 3 and all(math.isfinite(x) for x in batched)
    assert batched == pytest.approx(single, abs=1e-4)
    assert len(set(round(x, 6) for x in batched)) == 3  # the texts really differ in score
    chunks = score(reward_model(tiny_rm_dir, batch_size=2), completions, prompts)
    assert chunks == pytest.approx(batched, abs=1e-4)
    same_text = score(reward_model(tiny_rm_dir), ["Review: great"], [""])
    assert same_text == pytest.approx(batched[:1], abs=1e-4)  # it scores prompt + completion


# ---------------------------------------------------------------------------------------------- embeddings


@pytest.mark.integration
def test_embedding_similarity_with_real_minilm_orders_and_caches():
    fn = embedding_similarity("How are you?")
    texts = ["How are you doing?", "Beethoven was a great composer."]
    cos = score(fn, texts)
    assert cos[0] > cos[1] + 0.3 and -1 <= cos[1] <= cos[0] <= 1
    assert score(fn, ["How are you?"])[0] == pytest.approx(1.0, abs=1e-5)
    assert fn.cache.misses == 3 and fn.cache.hits == 2  # the second call finds the target twice in the cache
    l2 = score(embedding_similarity("How are you?", metric="neg_l2", cache_size=2), texts)
    assert l2[0] > l2[1] and max(l2) <= 0
    with pytest.raises(ConfigError, match="embedding_similarity.metric"):
        embedding_similarity("x", metric="dot")


def test_embedding_cache_is_lru_and_encodes_only_misses():
    from reinlm.rewards.embedding import EmbeddingCache

    calls = []

    class FakeEncoder:
        def encode(self, texts, **kw):
            calls.append(list(texts))
            return torch.tensor([[float(len(t)), 1.0] for t in texts])

    cache = EmbeddingCache(size=2)
    cache._encoder = FakeEncoder()
    assert cache.encode(["a", "bb", "a"]).tolist() == [[1, 1], [2, 1], [1, 1]]
    cache.encode(["ccc"])  # evicts "bb": "a" was used after it
    cache.encode(["bb", "a"])
    assert calls == [["a", "bb"], ["ccc"], ["bb"]]
    assert cache.hits == 2 and cache.misses == 4


# ---------------------------------------------------------------------------------------------- RewardSet


def make(values):
    """A reward returning ``values`` (or calling it, when callable) whatever the batch."""

    @reward_function("fixed")
    def fn(prompts, completions, **columns):
        return values(completions) if callable(values) else list(values)

    return fn


def test_weighted_total_and_unweighted_components():
    rs = weighted(contains_words(["red"]), (0.5, target_length(4)), (-2.0, make([1.0, 3.0])))
    res = rs.score(["", ""], ["red!", "ab"])
    assert res.components["contains_words"].tolist() == [1.0, 0.0]
    assert res.components["target_length"].tolist() == [0.0, -2.0]
    assert res.total.tolist() == [1.0 + 0 - 2.0, 0 - 1.0 - 6.0]
    assert res.valid.tolist() == [True, True] and res.total.dtype == torch.float32
    maybe = make(lambda c: [None if "x" in t else 1.0 for t in c])
    trl_call = weighted(contains_words(["red"]), maybe, on_error="skip")
    assert trl_call(["", ""], ["red", "x"], trainer_state=object()) == [2.0, 0.0]  # None skipped (nansum)
    assert weighted(maybe)(["", ""], ["red", "x"]) == [1.0, None]  # no reward scored sample 1
    dup = weighted(contains_words(["a"]), contains_words(["b"]))
    assert dup.names == ["contains_words", "contains_words_2"]


def test_from_functions_accepts_trl_style_callables():
    def trl_len(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    rs = RewardSet.from_functions([trl_len, contains_words(["x"])], weights=[0.1, 1.0])
    assert rs.score(["p", "p"], ["x", "abc"]).total.tolist() == pytest.approx([1.1, 0.3])
    with pytest.raises(ConfigError, match="reward_weights"):
        RewardSet.from_functions([trl_len], weights=[1.0, 2.0])


@pytest.mark.parametrize("bad, problem", [(float("nan"), "returned nan"), (float("inf"), "returned inf"),
                                          ("high", "not a number"), (1e39, "beyond the float32 range"),
                                          (-(10**400), "an integer with 401 digits, beyond the float32 range"),
                                          (torch.tensor([1.0, 2.0]), "a tensor of shape (2,)")])
def test_bad_value_fails_naming_reward_and_sample_or_is_skipped(bad, problem):
    completions = ["first text", "the second completion, which is long enough to be truncated somewhere", "x"]
    fn = make([1.0, bad, 2.0])
    with pytest.raises(ReinlmError) as err:
        RewardSet.from_functions([fn]).score([""] * 3, completions)
    msg = str(err.value)
    assert "'fixed'" in msg and problem in msg and "sample 1" in msg and "the second completion" in msg
    assert "..." in msg and "somewhere" not in msg  # the text is truncated
    res = RewardSet.from_functions([fn], on_error="skip").score([""] * 3, completions)
    assert res.valid.tolist() == [True, False, True]
    assert res.total.tolist() == [1.0, 0.0, 2.0] and res.n_invalid == 1
    assert len(res.problems) == 1 and "sample 1" in res.problems[0]


def test_none_for_every_sample_fails_the_batch_or_invalidates_it_with_skip():
    with pytest.raises(ReinlmError, match="returned None for every one of the 2 samples"):
        RewardSet.from_functions([make([None, None])]).score(["", ""], ["a", "b"])
    res = RewardSet.from_functions([make([None, None])], on_error="skip").score(["", ""], ["a", "b"])
    assert res.valid.tolist() == [False, False] and res.unscorable == 2 and res.problems == []


def test_exception_is_traced_to_the_sample_that_raises():
    def boom(prompts, completions, **kw):
        if any("boom" in c for c in completions):
            raise ValueError("cannot score boom")
        return [float(len(c)) for c in completions]

    with pytest.raises(ReinlmError, match=r"'boom' raised ValueError: cannot score boom on sample 1 \(completion 'boom!'\)"):
        RewardSet.from_functions([boom]).score([""] * 3, ["aa", "boom!", "cccc"])
    res = RewardSet.from_functions([boom], on_error="skip").score([""] * 3, ["aa", "boom!", "cccc"])
    assert res.valid.tolist() == [True, False, True] and res.total.tolist() == [2.0, 0.0, 4.0]
    with pytest.raises(ReinlmError, match="failed on every one of the 2 samples"):
        RewardSet.from_functions([boom], on_error="skip").score([""] * 2, ["boom", "boom"])


def test_wrong_length_fails_or_is_isolated_per_sample():
    def drops_empty(prompts, completions, **kw):
        return [1.0 for c in completions if c]

    with pytest.raises(ReinlmError, match="'drops_empty' returned 2 values for a batch of 3 samples"):
        RewardSet.from_functions([drops_empty]).score([""] * 3, ["a", "", "b"])
    res = RewardSet.from_functions([drops_empty], on_error="skip").score([""] * 3, ["a", "", "b"])
    assert res.valid.tolist() == [True, False, True] and "returned 0 values for 1 sample" in res.problems[0]


def test_user_errors_raised_inside_a_reward_pass_through_unchanged():
    rs = parse_reward_spec("rouge", on_error="skip")
    with pytest.raises(ReinlmError, match="needs the column 'reference'"):
        rs.score(["", ""], ["a", "b"])


def test_inputs_are_checked():
    rs = parse_reward_spec("contains_words:a")
    with pytest.raises(ConfigError, match="2 prompts for 1 completions"):
        rs.score(["", ""], ["a"])
    with pytest.raises(ConfigError, match="column 'reference': got 1 values for 2"):
        rs.score(["", ""], ["a", "b"], {"reference": ["r"]})
    with pytest.raises(ConfigError, match="on_error"):
        parse_reward_spec("sentiment", on_error="ignore")


# ---------------------------------------------------------------------------------------------- token level


@reward_function("red_tokens", token_level=True)
def red_tokens(prompts, completions, completion_token_spans, **columns):
    """+1 on every token overlapping the word 'red' (by character offsets)."""
    out = []
    for text, spans in zip(completions, completion_token_spans):
        hits = [(m, m + 3) for m in range(len(text)) if text.startswith("red", m)]
        out.append([float(any(s < e2 and s2 < e for s2, e2 in hits)) for s, e in spans])
    return out


def test_token_level_components_are_kept_apart_and_weighted():
    rs = weighted(contains_words(["red"]), (2.0, red_tokens))
    assert [c.name for c in rs.sequence] == ["contains_words"] and [c.name for c in rs.token_level] == ["red_tokens"]
    assert rs.has_token_level
    completions = ["a red hat", "blue"]
    spans = [[(0, 1), (1, 5), (5, 9)], [(0, 2), (2, 4)]]
    assert rs.score_tokens(["", ""], completions, spans) == [[0.0, 2.0, 0.0], [0.0, 0.0]]
    res = rs.score(["", ""], completions)
    assert list(res.components) == ["contains_words"] and res.total.tolist() == [1.0, 0.0]
    assert parse_reward_spec("sentiment").score_tokens([""], ["ab"], [[(0, 1), (1, 2)]]) == [[0.0, 0.0]]


def test_token_level_wrong_row_length_fails_or_zeroes_the_row():
    @reward_function("short_rows", token_level=True)
    def short_rows(prompts, completions, completion_token_spans, **columns):
        return [[1.0] * min(len(s), 2) for s in completion_token_spans]

    spans = [[(0, 1)], [(0, 1), (1, 2), (2, 3)]]
    with pytest.raises(ReinlmError, match="2 token values for 3 tokens on sample 1"):
        RewardSet.from_functions([short_rows]).score_tokens(["", ""], ["a", "abc"], spans)
    got = RewardSet.from_functions([short_rows], on_error="skip").score_tokens(["", ""], ["a", "abc"], spans)
    assert got == [[1.0], [0.0, 0.0, 0.0]]


# ---------------------------------------------------------------------------------------------- user files


USER_FILE = '''
def length_reward(prompts, completions, **columns):
    return [float(len(c)) for c in completions]

def make_bonus(bonus):
    def bonus_reward(prompts, completions, **columns):
        return [float(bonus)] * len(completions)
    return bonus_reward

THRESHOLD = 3
'''


def test_user_function_from_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    rs = parse_reward_spec(f"{path}:length_reward + 0.5*{path}:make_bonus:4")
    assert rs.names == ["length_reward", "bonus_reward"]
    assert rs.score(["", ""], ["abc", "a"]).total.tolist() == [5.0, 3.0]
    with pytest.raises(ReinlmError, match="does not exist"):
        load_user_function(str(tmp_path / "missing.py"), "f")
    with pytest.raises(ReinlmError, match="defines no 'nope'; allowed: one of its functions length_reward, make_bonus"):
        load_user_function(str(path), "nope")
    with pytest.raises(ReinlmError, match="'THRESHOLD' .* is a int, not a function"):
        load_user_function(str(path), "THRESHOLD")
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    with pytest.raises(ReinlmError, match="importing .* failed with SyntaxError"):
        load_user_function(str(broken), "f")


def test_reward_function_decorator_wraps_bound_methods():
    class Scorer:
        def score(self, prompts, completions, **columns):
            return [2.0] * len(completions)

    fn = reward_function("scorer", token_level=False)(Scorer().score)
    assert (fn.name, fn.is_token_level, fn([""], ["a"])) == ("scorer", False, [2.0])
    assert RewardSet.from_functions([fn]).names == ["scorer"]
