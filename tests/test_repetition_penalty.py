"""Repetition penalty (sampling convention 7): Hugging Face's rule, in the one decode engine, with the model's own
log-probs recorded; TRL's ``repetition_penalty`` key; refusals."""

from __future__ import annotations

import copy

import pytest
import torch

from reinlm.config.build import build_config
from reinlm.errors import ConfigError
from reinlm.rollout.sampling import apply_repetition_penalty
from reinlm.rollout.token import SamplingConfig, generate_rollouts, token_logprobs
from reinlm.trainer.config import TrainConfig


def test_penalty_equals_transformers_logits_processor():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g) * 3
    ids = torch.randint(0, 50, (4, 9), generator=g)
    seen = torch.zeros(4, 50, dtype=torch.bool)
    seen[torch.arange(4)[:, None].expand_as(ids), ids] = True
    for penalty in (1.3, 0.7):
        want = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
        got = apply_repetition_penalty(logits, seen, penalty)
        assert torch.equal(got, want)
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def _echo(model, scale: float = 1.0):
    """The tiny model with every block's output projections zeroed and its LM head set to its input embeddings:
    the last hidden state is the last token's normalised embedding, so greedy decoding repeats that token
    (``scale`` multiplies the head: a peaked distribution)."""
    echo = copy.deepcopy(model)
    with torch.no_grad():
        echo.lm_head.weight.copy_(echo.model.embed_tokens.weight * scale)
        for layer in echo.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return echo


def test_greedy_decode_with_a_penalty_equals_transformers_generate(tiny_lm):
    """Token for token against ``model.generate(repetition_penalty=...)`` (prompt tokens count as seen), on a model
    that repeats itself without the penalty."""
    model, tok = tiny_lm
    model = _echo(model)
    for prompt in ("Once upon a time there was", "The river"):
        enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
        got = {}
        for penalty in (1.0, 50.0):
            sampling = SamplingConfig(greedy=True, repetition_penalty=penalty, max_new_tokens=12, ignore_eos=True)
            got[penalty] = generate_rollouts(model, tok, [prompt], 1, sampling).response_ids[0]
            with torch.no_grad():
                want = model.generate(**enc, do_sample=False, repetition_penalty=penalty, max_new_tokens=12,
                                      min_new_tokens=12, pad_token_id=tok.pad_token_id)[0, enc["input_ids"].shape[1]:]
            assert got[penalty].tolist() == want.tolist()
        assert len(set(got[1.0].tolist())) == 1  # the echo: one token over and over
        assert len(set(got[50.0].tolist())) > 6  # the penalty breaks the loop


def test_recorded_logprobs_are_the_models_own(tiny_lm):
    """The penalty changes what is drawn, not what is recorded (convention 5): the training forward recomputes it."""
    model, tok = tiny_lm
    model = _echo(model, scale=20.0)  # seen tokens hold most of the mass: penalised and own log-probs differ
    sampling = SamplingConfig(repetition_penalty=3.0, max_new_tokens=8, temperature=1.0)
    batch = generate_rollouts(model, tok, ["Once upon a time", "The river"], 3, sampling,
                              generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    R = batch.response_ids.shape[1]
    with torch.no_grad():
        again = token_logprobs(model, batch.input_ids, batch.attention_mask, R).logp
    m = batch.response_mask.bool()
    assert torch.allclose(batch.logprobs[m], again[m], atol=1e-4)


def _cfg(**values):
    base = {"device": "cpu", "eval_prompts": 0, "log": "none"}
    return build_config(TrainConfig, None, {**base, **values})


def test_trl_key_and_refusals():
    assert _cfg(repetition_penalty=1.2).sampling.repetition_penalty == 1.2
    assert _cfg(generation_kwargs={"repetition_penalty": 1.1}).sampling.repetition_penalty == 1.1
    with pytest.raises(ConfigError, match="repetition_penalty"):
        _cfg(repetition_penalty=0)
    with pytest.raises(ConfigError, match="repetition_penalty: got 1.2, a token-space option"):
        TrainConfig(space="latent", latent="somewhere", repetition_penalty=1.2)


def test_training_rollouts_use_the_penalty(tiny_lm):
    from reinlm.trainer.token_policy import TokenPolicy

    model, tok = tiny_lm
    model = _echo(model)
    out = {}
    for penalty in (1.0, 50.0):
        cfg = _cfg(model="tiny", kl_coef=0.0, repetition_penalty=penalty, max_new_tokens=10, rollout_dtype="same")
        pol = TokenPolicy(cfg, torch.device("cpu"), model=copy.deepcopy(model), tokenizer=tok)
        out[penalty] = pol.rollout(["Once upon a time"], 4, [1], greedy=True).response_ids
    assert len(set(out[1.0][0].tolist())) == 1 and len(set(out[50.0][0].tolist())) > 5
