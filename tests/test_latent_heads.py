"""Head architectures: the cola preset (Llama-layer heads with the backbone's RoPE and grouped-query attention),
bfloat16 heads, the incremental policy API (prefill / step) the decode engine uses, and directories written
before the architecture fields existed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from reinlm.latent.config import LatentConfig
from reinlm.latent.model import LatentActionModel
from reinlm.testing import tiny_causal_lm

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(scope="module")
def gqa_lm(smol_tokenizer):
    """A tiny Llama with grouped-query attention (4 query heads, 2 key/value heads) and RMSNorm eps 1e-5."""
    return tiny_causal_lm(smol_tokenizer, hidden=64, heads=4, kv_heads=2, seed=5), smol_tokenizer


def _cola(gqa_lm, **over):
    torch.manual_seed(0)
    cfg = LatentConfig(backbone="tiny", preset="cola", num_actions=8, idm_layers=2, policy_layers=2, **over)
    lam = LatentActionModel(cfg, *gqa_lm)
    with torch.no_grad():  # make the merge blocks matter (their output projection starts at zero)
        for blk in lam.world_model.blocks:
            blk.ff.down.weight.normal_(0.0, 0.05)
    return lam


def test_cola_preset_takes_its_widths_from_the_backbone(gqa_lm):
    lam = _cola(gqa_lm)
    c, bc = lam.config, gqa_lm[0].config
    assert (c.d_model, c.n_heads, c.n_kv_heads, c.head_dim) == (64, 4, 2, 16)
    assert c.mlp_ffn == c.wm_ffn == bc.intermediate_size and c.norm_eps == bc.rms_norm_eps
    assert (c.idm_layers, c.policy_layers, c.wm_layers) == (2, 2, 2)  # explicit fields override the preset (4, 8)
    keys = lam.heads_state_dict()
    assert "policy.inp.weight" not in keys and "policy.out.bias" not in keys  # no input projection, no bias
    assert not any(".norm." in k for k in keys if k.startswith("world_model."))  # no norm inside merge blocks
    assert keys["policy.blocks.0.qkv.weight"].shape == ((4 + 2 * 2) * 16, 64)  # grouped-query projections
    assert keys["world_model.blocks.0.ff.gate.weight"].shape == (bc.intermediate_size, 128)
    # the rotary frequencies are the backbone's own, and never saved
    assert torch.equal(lam.policy.rotary.inv_freq, gqa_lm[0].model.rotary_emb.inv_freq)
    assert not any("rotary" in k for k in keys)
    assert LatentConfig(preset="cola").policy_layers == 8 and LatentConfig(preset="cola").idm_layers == 4


def test_cola_world_model_reads_ln_f_of_s_minus_h(gqa_lm):
    lam = _cola(gqa_lm)
    h = torch.randn(2, 5, 64)
    a = torch.randint(0, 8, (2, 5))
    s = h.clone()
    c = lam.world_model.codebook.weight.t()[a]  # (2, 5, H)
    for blk in lam.world_model.blocks:
        x = torch.cat([s, c], -1)
        s = s + blk.ff.down(torch.nn.functional.silu(blk.ff.gate(x)) * blk.ff.up(x))
    want = gqa_lm[0].model.norm(s) - h
    torch.testing.assert_close(lam.world_model_state_from_hidden(h, a), want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lam.world_model_logits_from_hidden(h, a), gqa_lm[0].lm_head(want), atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("preset", ["cpu", "cola"])
def test_prefill_and_step_equal_the_full_forward(gqa_lm, preset):
    """The incremental API: prefill a left-padded prompt, step position by position (RoPE positions count
    real tokens), drop a row and repeat rows: every step's logits equal the full forward at that position."""
    over = dict(preset="custom", d_model=32, n_heads=4, n_kv_heads=2, rope=True) if preset == "cpu" else {}
    lam = _cola(gqa_lm, **over) if preset == "cola" else LatentActionModel(
        LatentConfig(backbone="tiny", num_actions=8, idm_layers=1, policy_layers=2, **over), *gqa_lm)
    pol = lam.policy
    torch.manual_seed(1)
    N, P, R = 3, 4, 5
    h = torch.randn(N, P + R, 64)
    mask = torch.ones(N, P + R, dtype=torch.long)
    mask[0, :2] = 0  # left padding
    mask[2, :1] = 0
    full = pol(h, mask)  # (N, P+R, K)
    cache, logits = lam.policy_prefill(h[:, :P], mask[:, :P], P + R)
    torch.testing.assert_close(logits, full[:, P - 1], atol=1e-5, rtol=1e-5)
    G = 2
    cache = cache.repeat(G)
    rows = torch.arange(N).repeat_interleave(G)  # the original row of each cache row
    for t in range(P, P + R):
        if t == P + 2:  # rows 1 and 4 finished: drop them
            keep = torch.tensor([0, 2, 3, 5])
            cache, rows = cache.select(keep), rows[keep]
        logits = lam.policy_step(h[rows, t: t + 1], mask[rows, : t + 1], cache, t)
        torch.testing.assert_close(logits, full[rows, t], atol=1e-5, rtol=1e-5)
    # RoPE is relative: more left padding leaves the real positions' logits unchanged
    padded = torch.cat([torch.randn(N, 3, 64), h], 1)
    pmask = torch.cat([torch.zeros(N, 3, dtype=torch.long), mask], 1)
    torch.testing.assert_close(pol(padded, pmask)[:, 3:][mask.bool()], full[mask.bool()], atol=1e-5, rtol=1e-5)


def test_cola_generation_keeps_rope_caches_consistent(gqa_lm):
    """Generation with early-stopping rows: recorded action log-probs = the policy recomputed on the kept states."""
    lam = _cola(gqa_lm)
    tok = lam.tokenizer
    enc = tok(["I like eating", "The train pulled into the station and"], return_tensors="pt", padding=True,
              add_special_tokens=False)
    lam.set_action_sampling(greedy=False, tau=1.0)
    kw = dict(max_new_tokens=7, num_return_sequences=3, return_dict=True, do_sample=True)
    free = lam.generate(**enc, eos_token_id=[], generator=torch.Generator().manual_seed(5), **kw)
    out = lam.generate(**enc, eos_token_id=int(free.response_ids[0, 1]), generator=torch.Generator().manual_seed(5),
                       **kw)
    assert int(out.response_mask.sum(-1).min()) < out.response_ids.shape[1]  # some rows stopped early
    P = out.prompt_length
    pol = lam.policy_logits_from_hidden(out.hidden, out.attention_mask[:, :-1])[:, P - 1:].log_softmax(-1)
    rm = out.response_mask.bool()
    rec = pol.gather(-1, out.actions.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(rec[rm], out.action_logprobs[rm], atol=1e-5, rtol=1e-5)


def test_bfloat16_heads_save_load(gqa_lm, tmp_path):
    lam = _cola(gqa_lm, heads_dtype="bfloat16")
    assert {p.dtype for p in lam.heads_state_dict().values()} == {torch.bfloat16}
    assert lam.policy.rotary.inv_freq.dtype == torch.float32
    h = torch.randn(2, 6, 64)
    a = torch.randint(0, 8, (2, 6))
    pl = lam.policy_logits_from_hidden(h)
    assert pl.dtype == torch.float32
    lam.save_pretrained(tmp_path / "bf16")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "bf16" / "heads.safetensors"), "pt") as f:
        assert f.get_tensor("policy.blocks.0.qkv.weight").dtype == torch.bfloat16
    back = LatentActionModel.from_pretrained(tmp_path / "bf16", backbone=gqa_lm)
    assert torch.equal(back.policy_logits_from_hidden(h), pl)
    # the same weights in float32 agree to bfloat16 precision
    f32 = LatentActionModel.from_pretrained(tmp_path / "bf16", backbone=gqa_lm, heads_dtype="float32")
    assert f32.world_model.codebook.weight.dtype == torch.float32
    torch.testing.assert_close(f32.policy_logits_from_hidden(h), pl, atol=0.1, rtol=0.05)
    torch.testing.assert_close(f32.world_model_logits_from_hidden(h, a), back.world_model_logits_from_hidden(h, a),
                               atol=0.1, rtol=0.05)


def test_directory_written_before_the_architecture_fields_loads_unchanged(smol_tokenizer, tmp_path):
    """tests/assets/latent_v1 was saved by the code before the cola preset (config.json without the new
    fields); loading it gives the architecture and outputs it had (recorded in expected.safetensors)."""
    from safetensors.torch import load_file

    d = tmp_path / "v1"
    shutil.copytree(ASSETS / "latent_v1", d)
    raw = json.loads((d / "config.json").read_text())
    assert "rope" not in raw and "wm_output" not in raw
    lam = LatentActionModel.from_pretrained(d, backbone=(tiny_causal_lm(smol_tokenizer, seed=3), smol_tokenizer))
    c = lam.config
    assert (c.input_proj, c.rope, c.head_bias, c.wm_norm, c.wm_output, c.norm_eps) == (True, False, True, True,
                                                                                        "state", 1e-6)
    exp = load_file(str(d / "expected.safetensors"))
    h, mask, a = exp["h"], exp["mask"], exp["actions"]
    with torch.no_grad():
        torch.testing.assert_close(lam.policy_logits_from_hidden(h, mask), exp["policy_logits"], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(lam.idm_logits_from_hidden(h, mask), exp["idm_logits"], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(lam.world_model_state_from_hidden(h, a), exp["wm_state"], atol=1e-6, rtol=1e-6)


def test_backbone_kept_inside_the_directory_loads_by_a_relative_path(gqa_lm, tmp_path, monkeypatch):
    lam = _cola(gqa_lm)
    lam.config.backbone = "./backbone"
    lam.save_pretrained(tmp_path / "lam")
    gqa_lm[0].save_pretrained(tmp_path / "lam" / "backbone")
    gqa_lm[1].save_pretrained(tmp_path / "lam" / "backbone")
    shutil.move(tmp_path / "lam", tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    back = LatentActionModel.from_pretrained(tmp_path / "moved")
    h = torch.randn(1, 4, 64)
    torch.testing.assert_close(back.policy_logits_from_hidden(h), lam.policy_logits_from_hidden(h))
