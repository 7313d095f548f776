"""The fused bfloat16 decode step (reinlm/rollout/fused.py) computes what transformers' Llama step computes.

Compared step by step with the Hugging Face forward on the same bfloat16 weights (same prompts, left padding,
grouped-query heads, rows dropped midway, weights changed in place as a rollout copy's sync does), then
through the decode engine (token rollouts and latent generation).
"""

import pytest
import torch

from reinlm.rollout.decode import LMStepper, decode, position_ids_from_mask
from reinlm.rollout.fused import fused_decoder, unsupported_reason
from reinlm.rollout.sampling import Chooser, SamplingConfig
from reinlm.rollout.token import encode_prompts
from reinlm.testing import tiny_causal_lm
from reinlm.utils.devices import cast_parameters

PROMPTS = ["The weather today is", "Once upon a time, in a small village by the sea,", "Hi"]


def _bf16_model(tok, **kw):
    return cast_parameters(tiny_causal_lm(tok, hidden=64, heads=4, kv_heads=2, seed=5, **kw), "bfloat16").eval()


def _needs_fused(model):
    why = unsupported_reason(model)
    if why is not None:
        pytest.skip(f"fused decoding not available here: {why}")


def _hf_steps(model, ids, mask, tokens):
    """Final normalised hidden states of each fed token (b, S, H) by the Hugging Face forward with its cache."""
    with torch.no_grad():
        out = model.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=True)
        cache, attn, pos = out.past_key_values, mask, position_ids_from_mask(mask)[:, -1:] + 1
        hs = []
        for t in range(tokens.shape[1]):
            attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], 1)
            o = model.model(input_ids=tokens[:, t:t + 1], attention_mask=attn, position_ids=pos,
                            past_key_values=cache, use_cache=True)
            cache, pos = o.past_key_values, pos + 1
            hs.append(o.last_hidden_state[:, 0])
    return torch.stack(hs, 1)


def test_fused_steps_equal_the_hugging_face_steps(smol_tokenizer):
    tok = smol_tokenizer
    model = _bf16_model(tok)
    _needs_fused(model)
    ids, mask = encode_prompts(tok, PROMPTS, tok.pad_token_id)  # left-padded, lengths differ
    tokens = torch.randint(0, len(tok), (len(PROMPTS), 5), generator=torch.Generator().manual_seed(0))
    ref = _hf_steps(model, ids, mask, tokens)  # (b, 5, H)
    fd = fused_decoder(model)
    with torch.no_grad():
        out = model.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=True)
    P = ids.shape[1]
    fd.begin(out.past_key_values, P + 6)
    attn, pos = mask, position_ids_from_mask(mask)[:, -1] + 1
    for t in range(5):
        attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], 1)
        h = fd.step(tokens[:, t], pos, attn)
        pos = pos + 1
        err = (h.float() - ref[:, t].float()).abs().max() / ref[:, t].float().abs().max()
        assert err < 2e-2, (t, float(err))  # bfloat16 rounding of differently blocked products, nothing more
        logits, ref_logits = fd.logits(h).float(), model.lm_head(ref[:, t]).float()
        assert (logits.argmax(-1) == ref_logits.argmax(-1)).all()
    # dropping a row keeps the others' caches (rows 0 and 2 continue)
    fd.select(torch.tensor([0, 2]))
    h = fd.step(tokens[[0, 2], 4], pos[[0, 2]], torch.cat([attn[[0, 2]], attn.new_ones(2, 1)], 1))
    full = _hf_steps(model, ids, mask, torch.cat([tokens, tokens[:, 4:5]], 1))[[0, 2], 5]
    assert float((h.float() - full.float()).abs().max() / full.float().abs().max()) < 2e-2


def test_fused_decoder_follows_weights_changed_in_place(smol_tokenizer):
    """A rollout copy is re-synced by in-place copies: the fused weights are rebuilt before the next steps."""
    tok = smol_tokenizer
    model = _bf16_model(tok)
    _needs_fused(model)
    fd = fused_decoder(model)
    before = fd.layers[0]["qkv"]
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight.mul_(0.5)
    assert fused_decoder(model) is fd and fd.layers[0]["qkv"] is not before  # rebuilt once
    again = fd.layers[0]["qkv"]
    assert fused_decoder(model).layers[0]["qkv"] is again  # and not when nothing changed


def test_rollouts_and_latent_generation_agree_with_and_without_fusion(smol_tokenizer, tiny_latent_dir):
    tok = smol_tokenizer
    model = _bf16_model(tok)
    _needs_fused(model)
    ids, mask = encode_prompts(tok, PROMPTS, tok.pad_token_id)
    runs = []
    for fused in (False, True):
        st = LMStepper(model, Chooser.from_sampling(SamplingConfig(max_new_tokens=6, greedy=True)), fused=fused)
        assert (st.fused is not None) == fused
        runs.append(decode(st, ids, mask, samples_per_prompt=2, max_new_tokens=6, stop_ids=[], pad_id=0))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert (runs[0].logprobs - runs[1].logprobs).abs().max() < 0.05
    # latent generation on a bfloat16 backbone: fused backbone + bfloat16 world-model copy, same greedy actions
    from reinlm.latent.model import LatentActionModel
    from reinlm.latent.stepper import LatentStepper

    lam = LatentActionModel.from_pretrained(tiny_latent_dir, dtype="bfloat16")
    lam.set_action_sampling(greedy=True)
    ids, mask = encode_prompts(lam.tokenizer, PROMPTS, lam.tokenizer.pad_token_id)
    out = lam.generate(ids, mask, max_new_tokens=5, return_dict=True, eos_token_id=[])
    st = LatentStepper(lam, Chooser("greedy"), Chooser("greedy", record_logprob=False))
    with st.context():
        assert st.fused is not None and st.wm is not lam.world_model and st.wm.dtype == torch.bfloat16
    # the recorded actions are the float32 policy's argmax over the kept states (what RL recomputes)
    P = ids.shape[1]
    pol = lam.policy_logits_from_hidden(out.hidden, out.attention_mask[:, : out.hidden.shape[1]])
    assert torch.equal(pol[:, P - 1: P - 1 + out.actions.shape[1]].argmax(-1), out.actions)
