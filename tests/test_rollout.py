"""The token rollout engine: exact log-probs, EOS handling, groups, stop strings, character spans."""

import copy
from types import SimpleNamespace

import pytest
import torch

from reinlm.errors import ConfigError
from reinlm.rollout.sampling import choose, filter_logits, inverse_cdf_sample
from reinlm.rollout.token import (SamplingConfig, decode_completions, eos_ids, generate_rollouts, pad_token_id,
                                  sequence_logprobs, token_char_spans, token_logprobs)

PROMPTS = ["The weather today is", "Hi", "Once upon a time, in a small village by the sea, there lived"]


@pytest.fixture
def eos_prone_lm(tiny_lm):
    """The tiny model with +9 added to the EOS logit (about 15% per step; a hook, removed afterwards): many
    completions stop early, at different lengths. The hook acts in generation and recompute alike, so the
    log-probs must still agree."""
    model, tok = tiny_lm
    eos = tok.eos_token_id

    def boost(module, inputs, output):
        output = output.clone()
        output[..., eos] += 9.0
        return output

    handle = model.lm_head.register_forward_hook(boost)
    yield model, tok
    handle.remove()


def assert_logprobs_match(model, batch):
    fresh = sequence_logprobs(model, batch)  # (B, R), one teacher-forced forward at the batch's temperature
    m = batch.response_mask.bool()
    assert (fresh[m] - batch.logprobs[m]).abs().max().item() < 1e-4
    assert (batch.logprobs[~m] == 0).all()


@pytest.mark.parametrize("sampling", [
    SamplingConfig(max_new_tokens=16, temperature=0.7),
    SamplingConfig(max_new_tokens=16, temperature=1.3, top_k=5000, top_p=0.95),
])
def test_sampled_logprobs_equal_fresh_forward(eos_prone_lm, sampling):
    model, tok = eos_prone_lm
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2: pad == EOS, the case that breaks naive masks
    batch = generate_rollouts(model, tok, PROMPTS, 4, sampling, generator=torch.Generator().manual_seed(1))
    B, R = batch.response_ids.shape
    assert B == 12 and batch.logprobs.shape == (B, R) and batch.temperature == sampling.temperature
    assert batch.input_ids.shape == batch.attention_mask.shape == (B, batch.prompt_ids.shape[1] + R)
    lengths = batch.response_lengths
    assert lengths.min() < lengths.max()  # different stops, so right padding is exercised
    # left padding: prompts of different lengths
    assert len(set(batch.prompt_lengths.tolist())) == 3
    assert_logprobs_match(model, batch)


def test_eos_is_kept_in_the_mask_when_pad_equals_eos(eos_prone_lm):
    model, tok = eos_prone_lm
    eos = tok.eos_token_id
    batch = generate_rollouts(model, tok, PROMPTS, 4, SamplingConfig(max_new_tokens=16),
                              generator=torch.Generator().manual_seed(2))
    R = batch.response_ids.shape[1]
    stopped = 0
    for ids, mask in zip(batch.response_ids.tolist(), batch.response_mask.tolist()):
        n = sum(mask)
        assert mask == [1] * n + [0] * (R - n)  # a prefix mask
        assert eos not in ids[: n - 1]  # no EOS before the last real token
        if ids[n - 1] == eos:
            stopped += 1
            assert ids[n:] == [eos] * (R - n)  # padding (= EOS) after the real EOS, masked out
        else:
            assert n == 16  # not stopped: ran to max_new_tokens
    assert stopped >= 3
    # the EOS is a real response token but not part of the completion text
    assert all(tok.eos_token not in c for c in batch.completions)


def test_the_pad_rule_and_a_rollout_without_a_pad_token(eos_prone_lm):
    """One pad rule (rollout.token.pad_token_id, used by rollouts, episodes, vLLM, the teacher's dataset steps):
    the tokenizer's pad token, else the first EOS id, else 0."""
    assert pad_token_id(SimpleNamespace(pad_token_id=None), [3, 7]) == 3
    assert pad_token_id(SimpleNamespace(pad_token_id=None), []) == 0
    assert pad_token_id(SimpleNamespace(pad_token_id=9), [3, 7]) == 9
    model, tok = eos_prone_lm
    tok = copy.deepcopy(tok)
    tok.pad_token = None
    assert tok.pad_token_id is None
    batch = generate_rollouts(model, tok, PROMPTS, 2, SamplingConfig(max_new_tokens=16),
                              generator=torch.Generator().manual_seed(2))
    first_eos = eos_ids(model, tok)[0]
    assert batch.pad_token_id == first_eos
    padded = batch.response_ids[batch.response_mask == 0]
    assert len(padded) > 0 and (padded == first_eos).all()
    assert (batch.prompt_ids[batch.prompt_mask == 0] == first_eos).all()


def test_groups_prompts_and_select(tiny_lm):
    model, tok = tiny_lm
    batch = generate_rollouts(model, tok, PROMPTS[:2], 3, SamplingConfig(max_new_tokens=4),
                              generator=torch.Generator().manual_seed(0))
    assert batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch.prompts == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    assert len(batch.completions) == len(batch) == 6
    assert batch.completions == decode_completions(tok, batch.response_ids, batch.response_mask)
    # the G samples of a group differ (sampling, not copies)
    assert len({tuple(r) for r in batch.response_ids[:3].tolist()}) > 1
    sub = batch.select([4, 0])
    assert sub.group_ids.tolist() == [1, 0] and sub.prompts == [PROMPTS[1], PROMPTS[0]]
    assert torch.equal(sub.response_ids, batch.response_ids[[4, 0]])
    assert sub.completions == [batch.completions[4], batch.completions[0]]
    assert batch.to("cpu").response_ids.device.type == "cpu"


def test_per_prompt_generators_make_groups_independent_of_the_batch(tiny_lm):
    model, tok = tiny_lm
    cfg = SamplingConfig(max_new_tokens=6)
    both = generate_rollouts(model, tok, ["Hi", PROMPTS[2]], 2, cfg,
                             generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    alone = generate_rollouts(model, tok, ["Hi"], 2, cfg, generator=[torch.Generator().manual_seed(5)])
    R = alone.response_ids.shape[1]
    assert torch.equal(both.response_ids[:2, :R], alone.response_ids)
    with pytest.raises(Exception, match="generator"):
        generate_rollouts(model, tok, ["Hi", "Yo"], 2, cfg, generator=[torch.Generator()])


def test_top_k_one_is_greedy(tiny_lm):
    model, tok = tiny_lm
    a = generate_rollouts(model, tok, PROMPTS, 2, SamplingConfig(max_new_tokens=5, top_k=1))
    b = generate_rollouts(model, tok, PROMPTS, 1, SamplingConfig(max_new_tokens=5, greedy=True, temperature=0.5))
    assert torch.equal(a.response_ids[::2], b.response_ids) and torch.equal(a.response_ids[1::2], b.response_ids)
    assert_logprobs_match(model, b)  # greedy records log-probs at its temperature too


def test_filtering_by_hand():
    # probs (0.5, 0.3, 0.15, 0.05); top-p 0.7 keeps tokens whose preceding mass <= 0.7: {0 (0), 1 (0.5)};
    # token 2 has 0.8 before it. Inverse CDF over the kept (0.5, 0.3): u * 0.8 < 0.5 -> token 0, else token 1.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(3, 4)
    u = torch.tensor([0.0, 0.6, 0.7])  # targets 0, 0.48, 0.56
    assert choose(logits, u, top_p=0.7)[0].tolist() == [0, 0, 1]
    # top-k 3 renormalises (0.5, 0.3, 0.15) / 0.95; u = 0.99 -> 0.9405 falls in (0.8, 0.95] -> token 2, never 3
    assert choose(logits, torch.tensor([0.99, 0.99, 0.99]), top_k=3)[0].tolist() == [2, 2, 2]
    # no filtering: u = 0.99 reaches the last token
    assert choose(logits, torch.tensor([0.99, 0.1, 0.5]))[0].tolist() == [3, 0, 1]


def test_stop_strings_stop_after_the_completing_token(tiny_lm):
    model, tok = tiny_lm
    gen = lambda: [torch.Generator().manual_seed(11)]  # noqa: E731
    free = generate_rollouts(model, tok, ["Hello"], 1, SamplingConfig(max_new_tokens=12), generator=gen())
    ids = free.response_ids[0].tolist()
    spans = token_char_spans(tok, free.response_ids, free.response_mask)[0]
    text = free.completions[0]
    # stop string: the last three characters of token 5's text (a string the model is known to produce)
    k = next(i for i in range(5, 12) if spans[i][1] - spans[i][0] >= 3)
    stop = text[spans[k][1] - 3: spans[k][1]]
    first = next(j for j in range(12) if stop in tok.decode(ids[: j + 1], skip_special_tokens=True))
    cut = generate_rollouts(model, tok, ["Hello"], 1, SamplingConfig(max_new_tokens=12, stop_strings=[stop]),
                            generator=gen())
    assert cut.response_mask.sum().item() == first + 1  # the completing token is kept, nothing after it
    assert cut.response_ids[0, : first + 1].tolist() == ids[: first + 1]
    assert stop in cut.completions[0]
    assert_logprobs_match(model, cut)


def test_token_char_spans_partition_the_completion(tiny_lm):
    model, tok = tiny_lm
    batch = generate_rollouts(model, tok, PROMPTS, 2, SamplingConfig(max_new_tokens=10),
                              generator=torch.Generator().manual_seed(3))
    all_spans = token_char_spans(tok, batch.response_ids, batch.response_mask)
    for spans, text, n in zip(all_spans, batch.completions, batch.response_lengths.tolist()):
        assert len(spans) == n
        assert "".join(text[s:e] for s, e in spans) == text
        assert all(s <= e for s, e in spans) and spans[0][0] == 0 and spans[-1][1] == len(text)


def test_token_char_spans_multibyte_and_eos(smol_tokenizer):
    tok = smol_tokenizer
    text = " café 😀 ok"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    pieces = len(ids)
    response = torch.tensor([ids + [tok.pad_token_id] * 2])
    mask = torch.tensor([[1] * pieces + [0, 0]])
    (spans,) = token_char_spans(tok, response, mask)
    (completion,) = decode_completions(tok, response, mask)
    assert completion == text
    assert len(spans) == pieces and spans[-1] == (len(text), len(text))  # EOS: empty span at the end
    assert "".join(text[s:e] for s, e in spans) == text
    # the emoji (4 UTF-8 bytes, split over byte-level tokens) belongs to the token that completes it
    emoji_at = text.index("😀")
    owner = [i for i, (s, e) in enumerate(spans) if s <= emoji_at < e]
    assert len(owner) == 1 and text[spans[owner[0]][0]:spans[owner[0]][1]].strip().endswith("😀")


def test_rollout_tensors_work_in_autograd(tiny_lm):
    import copy

    model, tok = tiny_lm
    model = copy.deepcopy(model)
    batch = generate_rollouts(model, tok, PROMPTS[:1], 2, SamplingConfig(max_new_tokens=3))
    scores = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_ids.shape[1],
                            return_entropy=True)
    ratio = (scores.logp - batch.logprobs).exp() * batch.response_mask
    (ratio.sum() - scores.entropy.mean()).backward()  # inference-mode tensors would raise here
    assert model.lm_head.weight.grad is not None
    model.zero_grad(set_to_none=True)
    assert torch.allclose(ratio[batch.response_mask.bool()], torch.ones(()), atol=1e-4)


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": 0.0}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"stop_strings": [""]}, "stop_strings"),
])
def test_sampling_config_validation(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SamplingConfig(**kwargs)


def test_bad_arguments(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate_rollouts(model, tok, ["Hi"], 1, SamplingConfig(max_new_tokens=600))  # context 512
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        generate_rollouts(model, tok, ["Hi"], 0)
    with pytest.raises(Exception, match="prompts"):
        generate_rollouts(model, tok, "Hi", 1)


@pytest.mark.integration
def test_smollm2_logprobs_match(smol_lm):
    model, tok = smol_lm
    batch = generate_rollouts(model, tok, ["I watched this film last night and", "The old lighthouse"], 2,
                              SamplingConfig(max_new_tokens=12, temperature=0.8),
                              generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_logprobs_match(model, batch)
