"""The decode engine and its sampling conventions (reinlm/rollout/decode.py, reinlm/rollout/sampling.py)."""

import math

import pytest
import torch

from reinlm.rollout.decode import LMStepper, decode
from reinlm.rollout.sampling import Chooser, choose, draw_uniforms, filter_logits, inverse_cdf_sample
from reinlm.rollout.token import encode_prompts


def test_top_p_keeps_the_token_that_crosses_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    # mass before each token: 0, 0.5, 0.8. p = 0.5 is reached by token 0 alone; p = 0.51 needs token 1 too
    assert torch.isfinite(filter_logits(logits, top_p=0.5)[0]).tolist() == [True, False, False]
    assert torch.isfinite(filter_logits(logits, top_p=0.51)[0]).tolist() == [True, True, False]
    u = torch.tensor([0.99])
    assert choose(logits, u, top_p=0.5)[0].item() == 0
    assert choose(logits, u, top_p=0.51)[0].item() == 1


def test_fast_draw_equals_filter_then_inverse_cdf():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 300, generator=g) * 3
    u = torch.rand(64, generator=g)
    for top_k, top_p, temp in [(0, 1.0, 1.0), (20, 1.0, 0.7), (0, 0.8, 1.3), (50, 0.6, 1.0)]:
        got, _ = choose(logits, u, temperature=temp, top_k=top_k, top_p=top_p)
        probs = torch.softmax(filter_logits(logits / temp, top_k, top_p), -1)
        assert torch.isfinite(filter_logits(logits / temp, top_k, top_p).gather(-1, got[:, None])).all()
        # with a filter on, the fast path walks the CDF in descending order of probability (over the kept
        # tokens only); without one, in vocabulary order
        order = (torch.argsort(logits, dim=-1, descending=True, stable=True) if top_k or top_p < 1
                 else torch.arange(300).expand(64, 300))
        ref = order.gather(-1, inverse_cdf_sample(probs.gather(-1, order), u)[:, None])[:, 0]
        assert torch.equal(got, ref), (top_k, top_p, temp)


def test_recorded_logprob_is_before_filtering_unless_asked():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    u = torch.tensor([0.9])  # with top-k 2: 0.9 * 0.8 = 0.72 >= 0.5 -> token 1
    idx, lp = choose(logits, u, top_k=2)
    assert idx.item() == 1 and lp.item() == pytest.approx(math.log(0.3), abs=1e-6)
    idx, lp = choose(logits, u, top_k=2, filtered_logprobs=True)
    assert idx.item() == 1 and lp.item() == pytest.approx(math.log(0.3 / 0.8), abs=1e-6)
    # temperature scales the recorded distribution, greedy included
    idx, lp = choose(logits, None, temperature=0.5, greedy=True)
    p = torch.tensor([0.5, 0.3, 0.2]) ** 2
    assert idx.item() == 0 and lp.item() == pytest.approx(math.log(p[0] / p.sum()), abs=1e-6)


def test_uniform_and_fixed_choosers():
    u = torch.tensor([0.0, 0.5, 0.999])
    idx, lp = Chooser("uniform")(None, u, None, 8)
    assert idx.tolist() == [0, 4, 7] and torch.allclose(lp, torch.full((3,), -math.log(8)))
    fixed = Chooser("fixed", fixed=torch.tensor([5, 6, 7, 8]))
    assert fixed(None, None, torch.tensor([3, 1]))[0].tolist() == [8, 6]


def test_uniforms_per_prompt_generator():
    a = draw_uniforms([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], 2, 3, 5)
    b = draw_uniforms([torch.Generator().manual_seed(2)], 1, 3, 5)
    assert a.shape == (6, 5) and torch.equal(a[3:], b)


def test_a_stopping_row_never_shifts_the_other_rows(tiny_lm):
    model, tok = tiny_lm
    ids, mask = encode_prompts(tok, ["The weather today is", "Hi"], tok.pad_token_id)
    stepper = lambda: LMStepper(model, Chooser("sample"))  # noqa: E731
    free = decode(stepper(), ids, mask, samples_per_prompt=3, max_new_tokens=8, stop_ids=None,
                  generator=torch.Generator().manual_seed(4))
    stop_tok = int(free.tokens[0, 1])  # row 0 stops at its second token
    cut = decode(stepper(), ids, mask, samples_per_prompt=3, max_new_tokens=8, stop_ids=[stop_tok],
                 generator=torch.Generator().manual_seed(4))
    assert cut.lengths[0].item() <= 2 and cut.lengths.max().item() == 8
    for r in range(6):
        n = int(cut.lengths[r])
        assert torch.equal(cut.tokens[r, :n], free.tokens[r, :n])  # same draws up to its own stop
        assert (cut.tokens[r, n:] == 0).all() and (cut.logprobs[r, n:] == 0).all()
        assert torch.allclose(cut.logprobs[r, :n], free.logprobs[r, :n], atol=1e-5)
    assert not free.tokens.requires_grad and not torch.is_inference(cut.tokens)


def test_recording_stepper_feeds_the_stop_token_once(tiny_lm):
    """A stepper that records states gets the stop token's state; positions after it stay zero."""
    model, tok = tiny_lm
    ids, mask = encode_prompts(tok, ["Hi there", "Once upon a time"], tok.pad_token_id)
    free = decode(LMStepper(model, Chooser("sample"), record_hidden=True), ids, mask, samples_per_prompt=2,
                  max_new_tokens=6, generator=torch.Generator().manual_seed(0))
    stop_tok = int(free.tokens[1, 2])
    out = decode(LMStepper(model, Chooser("sample"), record_hidden=True), ids, mask, samples_per_prompt=2,
                 max_new_tokens=6, stop_ids=[stop_tok], generator=torch.Generator().manual_seed(0))
    P, h = ids.shape[1], out.states["hidden"]
    n = int(out.lengths[1])
    assert n <= 3 and h.shape[1] == P + out.tokens.shape[1]
    full = torch.cat([ids.repeat_interleave(2, 0)[1], out.tokens[1, :n]])[None]
    m = torch.cat([mask.repeat_interleave(2, 0)[1], torch.ones(n, dtype=torch.long)])[None]
    with torch.no_grad():
        ref = model.base_model(input_ids=full, attention_mask=m,
                               position_ids=(m.cumsum(-1) - 1).clamp(min=0)).last_hidden_state[0]
    real = m[0].bool()
    assert torch.allclose(h[1, : P + n][real], ref[real], atol=1e-4)  # the stop token's state included
    assert (h[1, P + n:] == 0).all()


def test_prefill_hands_the_lm_head_one_contiguous_position(tiny_lm):
    """The prefill computes logits at the last position only, from a contiguous input: a sliced (strided) input
    sends a frozen bfloat16 head on the CPU down a path that copies its weight per row (decode.py, LMStepper)."""
    model, tok = tiny_lm
    seen = []
    hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda mod, args: seen.append((tuple(args[0].shape), args[0].is_contiguous())))
    try:
        ids, mask = encode_prompts(tok, ["The weather today is", "Hi"], tok.pad_token_id)
        decode(LMStepper(model.eval(), Chooser("sample")), ids, mask, max_new_tokens=2,
               generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert seen[0] == ((2, 1, model.config.hidden_size), True)  # the prefill: one position per row


def test_a_chooser_without_what_its_mode_needs_names_it():
    """One check (reinlm.errors.required) for every value a caller needs set: the chooser's logits, u, fixed."""
    import pytest

    from reinlm.errors import ReinlmError, required
    from reinlm.rollout.sampling import Chooser

    assert required(0, "zero") == 0  # a falsy value is a value
    with pytest.raises(ReinlmError, match="chooser: fixed is needed here; got None"):
        Chooser("fixed")(None, None)
    with pytest.raises(ReinlmError, match="chooser: u is needed here; got None"):
        Chooser("uniform")(None, None, num_categories=4)
