"""Latent-action model on a tiny random backbone: IDM shift, straight-through gradient, generation and action
recording, save/load round trip, mismatch errors."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest
import torch

from reinlm.errors import ReinlmError
from reinlm.latent.config import LatentConfig
from reinlm.latent.model import LatentActionModel
from reinlm.latent.modules import filter_logits, straight_through_gumbel
from reinlm.testing import save_tiny_model, tiny_causal_lm

SMALL = dict(preset="custom", d_model=32, n_heads=2, idm_layers=1, policy_layers=1, wm_layers=1, wm_ffn=64,
             num_actions=16)


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory, smol_tokenizer):
    return save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("bb") / "tiny")


@pytest.fixture()
def model(backbone_dir, tiny_lm):
    torch.manual_seed(0)
    return LatentActionModel(LatentConfig(backbone=backbone_dir, **SMALL), *tiny_lm)


def _ids(tok, text="The old lighthouse on the hill was painted white and red"):
    return tok([text], return_tensors="pt", add_special_tokens=False)["input_ids"]


def test_idm_action_t_depends_on_token_t_plus_1_not_t_plus_2(model):
    ids = _ids(model.tokenizer)[:, :8]  # (1, 8)
    t = 3

    def idm(x):
        h, _ = model.backbone_hidden(x)
        return model.idm_logits_from_hidden(h)  # (1, 7, K)

    base = idm(ids)
    later = ids.clone()
    later[0, t + 2] = (later[0, t + 2] + 17) % 49152
    assert torch.equal(idm(later)[:, : t + 1], base[:, : t + 1])  # steps <= t never see token t+2
    nxt = ids.clone()
    nxt[0, t + 1] = (nxt[0, t + 1] + 17) % 49152
    changed = idm(nxt)
    assert torch.equal(changed[:, :t], base[:, :t])  # steps < t do not see token t+1
    assert (changed[0, t] - base[0, t]).abs().max() > 1e-4  # step t does


def test_straight_through_gradient_reaches_idm(model):
    logits = torch.randn(4, 16, requires_grad=True)
    hard = straight_through_gumbel(logits, tau=2.0)
    assert torch.equal(hard.sum(-1), torch.ones(4)) and set(hard.unique().tolist()) == {0.0, 1.0}
    (hard * torch.arange(16.0)).sum().backward()
    assert logits.grad.abs().sum() > 0

    from reinlm.latent.pretrain import PretrainConfig, Reducer, gumbel_noise, stage1_loss

    ids = _ids(model.tokenizer)
    h, _ = model.backbone_hidden(ids)
    model.zero_grad()
    noise = gumbel_noise((1, ids.shape[1], 16), 0)
    loss, stats = stage1_loss(model, h, ids, torch.ones_like(ids), PretrainConfig(), None, None, noise, Reducer())
    # a first step: the merge blocks' output projection is zero-initialised, so update it once
    loss.backward()
    with torch.no_grad():
        for blk in model.world_model.blocks:
            blk.ff.down.weight.add_(torch.randn_like(blk.ff.down.weight) * 0.1)
    model.zero_grad()
    loss, _ = stage1_loss(model, h, ids, torch.ones_like(ids), PretrainConfig(), None, None, noise, Reducer())
    loss.backward()
    assert model.idm.out.weight.grad.abs().sum() > 0
    assert model.world_model.codebook.weight.grad.abs().sum() > 0
    assert stats["idm/codes_used_batch"] >= 1


def test_untrained_world_model_equals_backbone(model):
    ids = _ids(model.tokenizer)
    wm = model.forward_world_model(ids, action_idx=5)
    ref = model.backbone(input_ids=ids).logits
    assert torch.allclose(wm, ref, atol=1e-5)


def test_filter_logits_top_k_top_p():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.isinf(filter_logits(x, top_k=2)[0, :2]).all() and torch.isfinite(filter_logits(x, top_k=2)[0, 2:]).all()
    # softmax of [1,2,3,4] = [.032,.087,.237,.644]: top_p 0.7 keeps the 2 most likely
    kept = torch.isfinite(filter_logits(x, top_p=0.7)[0]).tolist()
    assert kept == [False, False, True, True]


def test_generate_records_actions_and_matches_policy(model):
    tok = model.tokenizer
    enc = tok(["I like eating", "The train pulled into the station and"], return_tensors="pt", padding=True,
              add_special_tokens=False)
    model.set_action_sampling(greedy=True)
    out = model.generate(**enc, max_new_tokens=6, return_dict=True, eos_token_id=[])
    acts, probs = model.get_action_info(prob=True)
    assert acts.shape == (2, 6) and torch.equal(acts, out.actions)
    assert ((acts >= 0) & (acts < 16)).all() and ((probs > 0) & (probs <= 1)).all()
    # the recorded actions are the policy's argmax recomputed from the kept hidden states (RL needs this)
    P = out.prompt_length
    pol = model.policy_logits_from_hidden(out.hidden, out.attention_mask[:, :-1])  # (B, P+R-1, K)
    assert torch.equal(pol[:, P - 1:].argmax(-1), acts)
    assert torch.allclose(pol[:, P - 1:].log_softmax(-1).gather(-1, acts[..., None])[..., 0], out.action_logprobs,
                          atol=1e-5)
    # kept hidden states equal a fresh backbone pass over the generated sequences
    h, _ = model.backbone_hidden(out.sequences[:, :-1], out.attention_mask[:, :-1])
    m = out.attention_mask[:, :-1].bool()
    assert torch.allclose(h[m], out.hidden[m], atol=1e-4)
    model.reset_action_info()
    assert model.get_action_info().numel() == 0


def test_generate_stops_at_eos_and_pads(model):
    tok = model.tokenizer
    enc = tok(["I like eating"] * 2, return_tensors="pt", add_special_tokens=False)
    first = model.generate(**enc, max_new_tokens=1, fixed_action=torch.tensor([0, 1]))[:, -1]
    out = model.generate(**enc, max_new_tokens=4, fixed_action=torch.tensor([0, 1]), eos_token_id=int(first[0]),
                         pad_token_id=7, return_dict=True)
    assert out.response_mask[0].tolist()[:1] == [1]  # the EOS itself is kept
    if out.response_ids.shape[1] > 1 and int(first[1]) != int(first[0]):
        assert out.response_mask[0, 1:].sum() == 0 and (out.response_ids[0, 1:] == 7).all()
        assert (out.actions[0, 1:] == -1).all()


def test_save_load_round_trip_generates_identically(model, tmp_path, tiny_lm):
    tok = model.tokenizer
    with torch.no_grad():
        for p in model.world_model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "lat")
    cfg = json.loads((tmp_path / "lat" / "config.json").read_text())
    assert cfg["backbone"] == model.config.backbone and cfg["num_actions"] == 16
    saved = set(__import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(tmp_path / "lat" / "heads.safetensors")))
    assert saved and not any(k.startswith("backbone") for k in saved)
    enc = tok(["I like eating"] * 3, return_tensors="pt", add_special_tokens=False)
    model.set_action_sampling(greedy=False, tau=1.0)
    torch.manual_seed(3)
    a = model.generate(**enc, max_new_tokens=8, eos_token_id=[])
    loaded = LatentActionModel.from_pretrained(tmp_path / "lat")  # loads the backbone from config.json
    loaded.set_action_sampling(greedy=False, tau=1.0)
    torch.manual_seed(3)
    b = loaded.generate(**enc, max_new_tokens=8, eos_token_id=[])
    assert torch.equal(a, b)


def test_mismatched_backbone_and_k_fail_clearly(model, tmp_path, smol_tokenizer):
    model.save_pretrained(tmp_path / "lat")
    narrow = tiny_causal_lm(smol_tokenizer, hidden=32, heads=2)
    with pytest.raises(ReinlmError, match="hidden size 64 .* hidden size 32"):
        LatentActionModel.from_pretrained(tmp_path / "lat", backbone=(narrow, smol_tokenizer))
    with pytest.raises(ReinlmError, match="holds 16 actions"):
        LatentActionModel.from_pretrained(tmp_path / "lat", num_actions=64)
    cfg_path = tmp_path / "lat" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "num_actions": 64}))
    with pytest.raises(ReinlmError, match="K = 64 .* holds 16"):
        LatentActionModel.from_pretrained(tmp_path / "lat")
    cfg_path.write_text(json.dumps({**cfg, "vocab_size": 32000}))
    with pytest.raises(ReinlmError, match="vocabulary 32000"):
        LatentActionModel.from_pretrained(tmp_path / "lat")
    with pytest.raises(ReinlmError, match="not a latent model directory"):
        LatentActionModel.from_pretrained(tmp_path / "nope")


def test_explore_and_latent_generate_cli(model, tmp_path, capsys):
    from reinlm.cli.main import main

    model.save_pretrained(tmp_path / "lat")
    assert main(["explore", "--latent", str(tmp_path / "lat"), "I like eating", "--new-tokens", "2"]) == 0
    text = capsys.readouterr().out
    assert text.count("I like eating|") == 16 and "policy's top actions" in text

    from reinlm.cli.generate_latent import run_latent_generate

    args = Namespace(latent=str(tmp_path / "lat"), prompt=["I like eating"], prompts=None, num_samples=2,
                     max_new_tokens=5, temperature=1.0, top_k=None, top_p=None, seed=0, device="cpu", json=True,
                     show_actions=True)
    assert run_latent_generate(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(len(r["actions"]) >= 1 for r in rows)


def test_categorical_kl_exact():
    from reinlm.algorithms.kl import categorical_kl  # the one exact KL over actions (latent RL uses it)

    p = torch.tensor([[0.5, 0.5]]).log()
    q = torch.tensor([[0.9, 0.1]]).log()
    # 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5108256
    assert categorical_kl(p, q).item() == pytest.approx(0.5108256, abs=1e-6)
    assert categorical_kl(q, q).item() == pytest.approx(0.0, abs=1e-7)


def _check_generation_consistent(model, out):
    """Recorded action log-probs = the policy recomputed from the kept states; kept states = a fresh pass."""
    P, m = out.prompt_length, out.attention_mask[:, :-1].bool()
    assert out.hidden.shape[:2] == (out.sequences.shape[0], out.sequences.shape[1] - 1)
    pol = model.policy_logits_from_hidden(out.hidden, out.attention_mask[:, :-1])[:, P - 1:].log_softmax(-1)
    rm = out.response_mask.bool()
    rec = pol.gather(-1, out.actions.clamp(min=0)[..., None])[..., 0]
    assert torch.allclose(rec[rm], out.action_logprobs[rm], atol=1e-5)
    assert (out.actions[~rm] == -1).all() and (out.action_logprobs[~rm] == 0).all()
    h, _ = model.backbone_hidden(out.sequences[:, :-1], out.attention_mask[:, :-1])
    assert torch.allclose(h[m], out.hidden[m], atol=1e-4)


def test_generate_num_return_sequences_equals_repeated_prompts(model):
    tok = model.tokenizer
    prompts = ["I like eating", "The train pulled into the station and"]
    G = 3
    one = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    rep = tok([p for p in prompts for _ in range(G)], return_tensors="pt", padding=True, add_special_tokens=False)
    model.set_action_sampling(greedy=False, tau=1.0)
    a = model.generate(**one, max_new_tokens=7, num_return_sequences=G, eos_token_id=[], return_dict=True,
                       generator=torch.Generator().manual_seed(11))
    b = model.generate(**rep, max_new_tokens=7, eos_token_id=[], return_dict=True,
                       generator=torch.Generator().manual_seed(11))
    assert a.sequences.shape == (2 * G, rep["input_ids"].shape[1] + 7)
    for f in ("sequences", "attention_mask", "actions"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert torch.allclose(a.action_logprobs, b.action_logprobs, atol=1e-6)
    assert torch.allclose(a.hidden, b.hidden, atol=1e-5)
    _check_generation_consistent(model, a)


def test_generate_incremental_policy_exact_when_rows_stop_early(model):
    """Rows that stop are dropped from the caches; what is kept must still match a full recompute."""
    tok = model.tokenizer
    enc = tok(["I like eating", "The train pulled into the station and"], return_tensors="pt", padding=True,
              add_special_tokens=False)
    model.set_action_sampling(greedy=False, tau=1.0)
    kw = dict(max_new_tokens=8, num_return_sequences=4, return_dict=True, do_sample=True)
    free = model.generate(**enc, eos_token_id=[], generator=torch.Generator().manual_seed(5), **kw)
    stop_tok = int(free.response_ids[0, 2])  # row 0 stops by step 2: the later steps run on fewer rows
    out = model.generate(**enc, eos_token_id=stop_tok, generator=torch.Generator().manual_seed(5), **kw)
    lengths = out.response_mask.sum(-1)
    assert int(lengths[0]) <= 3 and int(lengths.min()) < out.response_ids.shape[1]
    _check_generation_consistent(model, out)
    # determinism under a seed
    again = model.generate(**enc, eos_token_id=stop_tok, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(out.sequences, again.sequences) and torch.equal(out.actions, again.actions)
    # the other action modes take the same path
    rnd = model.generate(**enc, eos_token_id=stop_tok, action_mode="random", generator=torch.Generator().manual_seed(5),
                         **kw)
    assert ((rnd.actions[rnd.response_mask.bool()] >= 0)).all()
    fx = model.generate(**enc, eos_token_id=stop_tok, fixed_action=torch.arange(8) % 16, **kw)
    assert (fx.actions[:, 0] == torch.arange(8)).all()
