"""The reward SPEC grammar: names, arguments, quoting and escaping, weights, and its errors."""

from __future__ import annotations

import pytest

from reinlm.errors import ConfigError, ReinlmError
from reinlm.rewards import available_rewards, parse_reward_spec
from reinlm.rewards.spec import split_top, unquote


def parts(spec, **kw):
    rs = parse_reward_spec(spec, **kw)
    return [(c.name, c.weight) for c in rs.components], rs


def totals(spec, completions, **columns):
    return parse_reward_spec(spec).score([""] * len(completions), completions, columns or None).total.tolist()


def test_registry_holds_every_builtin():
    assert available_rewards() == ["contains_words", "embedding_similarity", "overlong_penalty", "reward_model", "rouge", "sentiment",
                                   "target_length", "toxicity"]


def test_bare_name_and_positional_list():
    assert parts("sentiment")[0] == [("sentiment", 1.0)]
    _, rs = parts("contains_words:red,blue,green")
    assert rs.components[0].fn.words == ["blue", "green", "red"]
    assert totals("contains_words:red, blue ,green", ["Red and GREEN", "none"]) == [2.0, 0.0]
    assert totals("contains_words:words=red", ["red"]) == [1.0]


def test_numbers_are_parsed_to_the_parameter_type():
    assert totals("target_length:20", ["x" * 15]) == [-5.0]
    assert totals("target_length:n=3,unit=words", ["a b c d e"]) == [-2.0]
    assert totals("target_length:4,words,true", ["a b"]) == [-0.5]  # normalize parsed as a bool
    assert totals("contains_words:42,7", ["route 42"]) == [1.0]  # words stay words
    with pytest.raises(ConfigError, match="target_length.n: got 'abc'; allowed: a whole number"):
        parse_reward_spec("target_length:abc")
    with pytest.raises(ConfigError, match="target_length.n: got '20.5'"):
        parse_reward_spec("target_length:20.5")
    with pytest.raises(ConfigError, match="normalize: got 'maybe'; allowed: true or false"):
        parse_reward_spec("target_length:5,normalize=maybe")


def test_key_value_text_with_spaces_and_punctuation():
    _, rs = parts("embedding_similarity:target=Hi there!")
    fn = rs.components[0].fn
    assert (fn.target, fn.metric) == ("Hi there!", "cosine")
    _, rs = parts("embedding_similarity:Hello,metric=neg_l2")
    assert (rs.components[0].fn.target, rs.components[0].fn.metric) == ("Hello", "neg_l2")
    assert parts("sentiment:backend=vader,label=positive")[0] == [("sentiment", 1.0)]
    assert totals("sentiment:label=negative", ["What a wonderful film"]) == pytest.approx([(1 - 0.5719) / 2], abs=1e-4)


def test_quotes_and_backslashes_protect_commas_and_plus():
    names, rs = parts('embedding_similarity:target="Hi, there + you" + 0.5*sentiment')
    assert names == [("embedding_similarity", 1.0), ("sentiment", 0.5)]
    assert rs.components[0].fn.target == "Hi, there + you"
    _, rs = parts("embedding_similarity:target=' keep  spaces '")
    assert rs.components[0].fn.target == " keep  spaces "
    _, rs = parts(r"embedding_similarity:target=C\+\+\, and \"more\"")
    assert rs.components[0].fn.target == 'C++, and "more"'
    assert totals('contains_words:"new york",paris', ["New York in spring"]) == [1.0]
    assert split_top('a,"b,c",d\\,e', ",", "s") == ["a", '"b,c"', "d\\,e"]
    assert unquote('  "x\\"y"  ') == ('x"y', True) and unquote(" 3 ") == ("3", False)


def test_weights_and_signs():
    assert parts("0.5*sentiment+contains_words:red")[0] == [("sentiment", 0.5), ("contains_words", 1.0)]
    assert parts("-1*target_length:20")[0] == [("target_length", -1.0)]
    assert parts("-target_length:20")[0] == [("target_length", -1.0)]
    assert parts(" 2e-1 * sentiment + .5*toxicity ")[0] == [("sentiment", 0.2), ("toxicity", 0.5)]
    assert totals("-1*target_length:20", ["abc"]) == [17.0]
    assert totals("2*contains_words:a + -0.5*target_length:3", ["a b"]) == [2.0 - 0.5 * 0.0]
    assert totals("2*contains_words:a + -0.5*target_length:3", ["a"]) == [2.0 + 0.5 * 2.0]
    names, rs = parts("contains_words:red + contains_words:blue")
    assert names == [("contains_words", 1.0), ("contains_words_2", 1.0)]
    assert rs.components[1].spec == "contains_words:blue"


def test_options_reach_the_reward_set():
    rs = parse_reward_spec("embedding_similarity:target=x", on_error="skip", device="cpu")
    assert rs.on_error == "skip" and rs.components[0].fn.cache.device == "cpu"
    rs = parse_reward_spec("embedding_similarity:target=x,device=cuda:1", device="cpu")
    assert rs.components[0].fn.cache.device == "cuda:1"  # the SPEC wins; nothing is loaded yet
    assert parse_reward_spec("contains_words:a", device="cpu").names == ["contains_words"]  # no device arg


@pytest.mark.parametrize("spec, match", [
    ("", "the SPEC is empty"),
    ("sentimnt", "'sentimnt' is not a registered reward.*contains_words, embedding_similarity, overlong_penalty, reward_model"),
    ("sentiment+", "an empty term"),
    ("sentiment++toxicity", "an empty term"),
    ("0.5*", "has a weight but no reward"),
    ("0.5*sentiment*2", "is not a reward name"),
    ('embedding_similarity:target="Hi', "quote \" opened .* is never closed"),
    ("contains_words:red,,blue", "an empty argument in contains_words"),
    ("target_length:n=3,words", "positional argument 'words' after a key=value"),
])
def test_malformed_specs_name_the_spec_and_the_registered_rewards(spec, match):
    with pytest.raises(ConfigError, match=match) as err:
        parse_reward_spec(spec)
    assert repr(spec) in str(err.value) and "toxicity" in str(err.value)


@pytest.mark.parametrize("spec, match", [
    ("sentiment:colour=red", "unknown argument 'colour'.*allowed: backend, label, score, device, batch_size"),
    ("target_length:1,chars,true,4", "got 4 positional arguments.*at most 3"),
    ("target_length", "missing a required argument: 'n'"),
    ("rouge:kind=rouge3", "rouge.kind: got 'rouge3'; allowed: rouge1, rouge2, rougeL"),
    ("sentiment:score=probability", "sentiment.score: got 'probability'"),
    ("embedding_similarity:metric=dot,target=x", "embedding_similarity.metric"),
])
def test_bad_arguments_name_the_argument_and_the_allowed_values(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_reward_spec(spec)


def test_file_specs(tmp_path):
    path = tmp_path / "r.py"
    path.write_text("def f(prompts, completions, **kw):\n    return [1.0] * len(completions)\n"
                    "def scaled(k=1.0):\n    def g(prompts, completions, **kw):\n        return [k] * len(completions)\n"
                    "    return g\ndef const(k):\n    return k\n")
    assert parts(f"{path}:f")[0] == [("f", 1.0)]
    assert totals(f"0.5*{path}:f + {path}:scaled:k=3", ["a"]) == [3.5]
    with pytest.raises(ReinlmError, match="does not exist"):
        parse_reward_spec(f"{tmp_path}/nope.py:f")
    with pytest.raises(ReinlmError, match="returned a int; a function given arguments must be a factory"):
        parse_reward_spec(f"{path}:const:3")
    with pytest.raises(ConfigError, match="missing a required argument: 'completions'"):
        parse_reward_spec(f"{path}:f:3")
