"""``reinlm latent import-cola``: a tiny random checkpoint in CoLA's key layout (IntentionModel_v1 on a tiny Llama
with SmolLM2's tokenizer) is converted, and the imported model's IDM actions, world-model logits and policy
logits equal an independent reference forward of CoLA's equations written here (plain tensor code on the
checkpoint's own keys). The imported directory then runs explore, latent generation and latent RL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reinlm.errors import ReinlmError
from reinlm.latent.import_cola import ImportColaConfig, import_cola
from reinlm.latent.model import LatentActionModel
from reinlm.testing import tiny_causal_lm

H, NH, NKV, HD, INTER, K = 64, 4, 2, 16, 128, 8
N_ACTION, N_DYNA, N_POLICY = 2, 2, 3


def _cola_heads(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random head tensors under CoLA's Hugging Face key names."""
    g = torch.Generator().manual_seed(seed)

    def lin(o, i, scale=1.0):
        return torch.randn(o, i, generator=g) * scale / math.sqrt(i)

    def norm(d):
        return 1.0 + 0.2 * torch.randn(d, generator=g)

    w = {}
    for stack, n in (("action", N_ACTION), ("policy", N_POLICY)):
        for i in range(n):
            p = f"model.{stack}_layers.{i}."
            w.update({p + "input_layernorm.weight": norm(H), p + "post_attention_layernorm.weight": norm(H),
                      p + "self_attn.q_proj.weight": lin(NH * HD, H, 2.0), p + "self_attn.k_proj.weight": lin(NKV * HD, H, 2.0),
                      p + "self_attn.v_proj.weight": lin(NKV * HD, H), p + "self_attn.o_proj.weight": lin(H, NH * HD),
                      p + "mlp.gate_proj.weight": lin(INTER, H), p + "mlp.up_proj.weight": lin(INTER, H),
                      p + "mlp.down_proj.weight": lin(H, INTER)})
    w.update({"model.action_norm.weight": norm(H), "model.action_head.weight": lin(K, H, 4.0),
              "model.policy_norm.weight": norm(H), "model.policy_head.weight": lin(K, H, 4.0),
              "model.action_code_book.weight": torch.randn(H, K, generator=g)})
    for i in range(N_DYNA):
        p = f"model.action_merge_layers.{i}."
        w.update({p + "gate_proj.weight": lin(INTER, 2 * H), p + "up_proj.weight": lin(INTER, 2 * H),
                  p + "down_proj.weight": lin(H, INTER)})
    return w


def write_cola_checkpoint(tok, root: Path, layout: str, dtype=torch.float32, config_over=None, extra=None):
    """A CoLA-format directory: config.json (Llama + num_code, num_*_layer, v), weights as ``layout``
    (safetensors | safetensors-sharded | bin | bin-sharded), the tokenizer. Returns (root, backbone, tensors)."""
    from safetensors.torch import save_file

    backbone = tiny_causal_lm(tok, hidden=H, heads=NH, kv_heads=NKV, seed=7)
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    state.update(_cola_heads())
    state.update(extra or {})
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}
    root.mkdir(parents=True)
    cfg = {**backbone.config.to_dict(), "architectures": ["IntentionForCausalLM"], "num_code": K,
           "num_action_layer": N_ACTION, "num_dyna_layer": N_DYNA, "num_policy_layer": N_POLICY, "v": 1}
    cfg.update(config_over or {})
    (root / "config.json").write_text(json.dumps(cfg, default=str))
    tok.save_pretrained(root)
    keys = sorted(state)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2:]] if layout.endswith("sharded") else [keys]
    st = layout.startswith("safetensors")
    names = []
    for i, part in enumerate(shards):
        if len(shards) == 1:
            name = "model.safetensors" if st else "pytorch_model.bin"
        else:
            name = f"model-{i + 1:05d}-of-00002.safetensors" if st else f"pytorch_model-{i + 1:05d}-of-00002.bin"
        tensors = {k: state[k] for k in part}
        save_file(tensors, str(root / name)) if st else torch.save(tensors, root / name)
        names.append(name)
    if len(shards) > 1:
        index = "model.safetensors.index.json" if st else "pytorch_model.bin.index.json"
        (root / index).write_text(json.dumps({"metadata": {}, "weight_map": {k: names[i] for i, part in
                                                                             enumerate(shards) for k in part}}))
    return root, backbone, state


# ---------------------------------------------------------------------------------------------- reference

def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _llama_layer(x, w, p, pos, keep, eps, theta):
    """One Llama decoder layer as CoLA's heads use it: RMSNorm, GQA attention with RoPE, RMSNorm, SwiGLU."""
    B, T, _ = x.shape
    y = _rms(x, w[p + "input_layernorm.weight"], eps)
    q = (y @ w[p + "self_attn.q_proj.weight"].T).view(B, T, NH, HD).transpose(1, 2)
    k = (y @ w[p + "self_attn.k_proj.weight"].T).view(B, T, NKV, HD).transpose(1, 2)
    v = (y @ w[p + "self_attn.v_proj.weight"].T).view(B, T, NKV, HD).transpose(1, 2)
    inv = 1.0 / theta ** (torch.arange(0, HD, 2).float() / HD)
    ang = pos[..., None].float() * inv  # (B, T, HD/2)
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]

    def rot(z):
        return z * cos + torch.cat([-z[..., HD // 2:], z[..., : HD // 2]], -1) * sin

    q, k = rot(q), rot(k)
    k, v = k.repeat_interleave(NH // NKV, 1), v.repeat_interleave(NH // NKV, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(HD)  # (B, NH, T, T)
    allowed = torch.ones(T, T, dtype=torch.bool).tril() & keep[:, None, None, :].bool()
    allowed = allowed | torch.eye(T, dtype=torch.bool)  # padding queries: any finite row (ignored)
    att = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    x = x + att.transpose(1, 2).reshape(B, T, NH * HD) @ w[p + "self_attn.o_proj.weight"].T
    y = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
    return x + (F.silu(y @ w[p + "mlp.gate_proj.weight"].T) * (y @ w[p + "mlp.up_proj.weight"].T)) @ \
        w[p + "mlp.down_proj.weight"].T


def cola_reference(w, backbone, ids, mask, actions):
    """CoLA's IntentionModel_v1 equations: h = backbone's final normalised state; IDM / policy = Llama layers,
    norm, head (IDM shifted: step t read at t+1); world model ``lm_head(ln_f(s) - h)``,
    ``s <- s + down(silu(gate([s; c])) * up([s; c]))``, c = codebook(onehot(a))."""
    cfg = backbone.config
    eps, theta = cfg.rms_norm_eps, cfg.rope_parameters["rope_theta"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        h = backbone.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        out = {}
        for stack, n, norm, head in (("action", N_ACTION, "model.action_norm.weight", "model.action_head.weight"),
                                     ("policy", N_POLICY, "model.policy_norm.weight", "model.policy_head.weight")):
            x = h
            for i in range(n):
                x = _llama_layer(x, w, f"model.{stack}_layers.{i}.", pos, mask, eps, theta)
            out[stack] = _rms(x, w[norm], eps) @ w[head].T  # (B, T, K)
        shifted = out["action"].clone()
        shifted[:, :-1] = out["action"][:, 1:]
        c = F.one_hot(actions, K).float() @ w["model.action_code_book.weight"].T  # (B, T, H)
        s = h
        for i in range(N_DYNA):
            p = f"model.action_merge_layers.{i}."
            sc = torch.cat([s, c], -1)
            s = s + (F.silu(sc @ w[p + "gate_proj.weight"].T) * (sc @ w[p + "up_proj.weight"].T)) @ \
                w[p + "down_proj.weight"].T
        wm = (_rms(s, w["model.norm.weight"], eps) - h) @ w["lm_head.weight"].T  # (B, T, V)
    return {"idm_actions": shifted[:, :-1].argmax(-1), "idm_logits": shifted[:, :-1], "policy": out["policy"],
            "wm": wm}


# ---------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("layout,check", [("safetensors", True), ("safetensors-sharded", False), ("bin", False),
                                          ("bin-sharded", True)])
def test_imported_model_equals_the_reference_forward(smol_tokenizer, tmp_path, layout, check):
    src, backbone, w = write_cola_checkpoint(smol_tokenizer, tmp_path / "cola", layout)
    bb_arg = ""
    if check:  # the backbone as its own model directory, checked tensor by tensor
        backbone.save_pretrained(tmp_path / "llama")
        smol_tokenizer.save_pretrained(tmp_path / "llama")
        bb_arg = str(tmp_path / "llama")
    summary = import_cola(ImportColaConfig(src=str(src), out=str(tmp_path / "lat"), backbone=bb_arg))
    assert summary["num_actions"] == K and summary["heads_dtype"] == "float32"
    assert ("backbone_check" in summary) == check and ("backbone_export" in summary) == (not check)
    lam = LatentActionModel.from_pretrained(tmp_path / "lat")
    c = lam.config
    assert (c.preset, c.idm_layers, c.policy_layers, c.wm_layers, c.n_kv_heads) == ("cola", N_ACTION, N_POLICY,
                                                                                   N_DYNA, NKV)
    tok = lam.tokenizer
    enc = tok(["I like eating pizza with my friends on", "The river"], return_tensors="pt", padding=True,
              add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert mask[1, 0] == 0  # left padding is exercised
    actions = torch.randint(0, K, ids.shape, generator=torch.Generator().manual_seed(3))
    ref = cola_reference(w, backbone, ids, mask, actions)
    real, steps = mask.bool(), (mask[:, :-1] * mask[:, 1:]).bool()
    with torch.no_grad():
        inv = lam.forward_inverse(ids, mask)
        pol = lam.forward_policy(ids, mask).logits
        wm = lam.forward_world_model(ids, mask, action_idx=actions)
    torch.testing.assert_close(inv.logits[steps], ref["idm_logits"][steps], atol=1e-5, rtol=1e-5)
    assert torch.equal(inv.action_index[steps], ref["idm_actions"][steps])
    assert len(set(ref["idm_actions"][steps].tolist())) > 1  # the IDM's actions are not trivially constant
    torch.testing.assert_close(pol[real], ref["policy"][real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wm[real], ref["wm"][real], atol=1e-5, rtol=1e-5)
    # the actions matter: another action changes the world model's logits
    other = lam.forward_world_model(ids, mask, action_idx=(actions + 1) % K)
    assert (other[real] - wm[real]).abs().max() > 1e-2


def test_bfloat16_checkpoint_gives_bfloat16_heads(smol_tokenizer, tmp_path):
    src, backbone, w = write_cola_checkpoint(smol_tokenizer, tmp_path / "cola", "safetensors", dtype=torch.bfloat16)
    summary = import_cola(ImportColaConfig(src=str(src), out=str(tmp_path / "lat")))
    assert summary["heads_dtype"] == "bfloat16" and summary["checkpoint_dtype"] == "bfloat16"
    lam = LatentActionModel.from_pretrained(tmp_path / "lat")  # bfloat16 heads: the backbone loads in bfloat16 too
    assert lam.policy.norm.weight.dtype == torch.bfloat16 and lam.backbone.dtype == torch.bfloat16
    ids = lam.tokenizer(["I like eating"], return_tensors="pt")["input_ids"]
    ref = cola_reference({k: v.float() for k, v in w.items()}, lam.backbone, ids, torch.ones_like(ids),
                         torch.zeros_like(ids))
    torch.testing.assert_close(lam.forward_policy(ids).logits, ref["policy"], atol=0.15, rtol=0.05)


def test_imported_model_runs_explore_generate_and_latent_rl(smol_tokenizer, tmp_path, capsys):
    from reinlm.cli.main import main

    src, _, _ = write_cola_checkpoint(smol_tokenizer, tmp_path / "cola", "safetensors")
    lat = tmp_path / "lat"
    assert main(["latent", "import-cola", str(src), str(lat)]) == 0
    assert json.loads(capsys.readouterr().out.split("\nlatent model:")[0])["backbone"] == "./backbone"
    assert main(["explore", "--latent", str(lat), "I like eating", "--new-tokens", "2"]) == 0
    assert capsys.readouterr().out.count("I like eating|") == K
    assert main(["generate", "--latent", str(lat), "--prompt", "I like eating", "--num-samples", "2",
                 "--max-new-tokens", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(1 <= len(r["actions"]) <= 4 for r in rows)

    from reinlm.trainer.config import TrainConfig
    from reinlm.trainer.loop import Trainer

    reward = f"{Path(__file__).parent / 'assets' / 'toy_rewards.py'}:space_share"
    cfg = TrainConfig(space="latent", latent=str(lat), reward=reward, prompts="builtin:neutral", steps=2,
                      batch_prompts=2, samples_per_prompt=2, max_new_tokens=4, lr=1e-2, kl_coef=0.05, seed=0,
                      out=str(tmp_path / "rl"), device="cpu", progress=False, eval_prompts=0, save_every=100,
                      log="none")
    run = Trainer(cfg).train()
    from safetensors.torch import load_file

    before, after = load_file(str(lat / "heads.safetensors")), load_file(str(Path(run) / "final" / "heads.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("policy."))
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("policy."))


def test_other_layouts_fail_clearly(smol_tokenizer, tmp_path):
    # BWArea / IntentionModel: the action enters inside the backbone
    bw, _, _ = write_cola_checkpoint(smol_tokenizer, tmp_path / "bw", "safetensors", config_over={"v": None},
                                     extra={"model.action_state_norm.weight": torch.ones(H),
                                            "model.action_action_norm.weight": torch.ones(H)})
    with pytest.raises(ReinlmError, match="BWArea"):
        import_cola(ImportColaConfig(src=str(bw), out=str(tmp_path / "o1")))
    # the policy-only variant has no IDM
    v0, _, _ = write_cola_checkpoint(smol_tokenizer, tmp_path / "v0", "safetensors", config_over={"v": 0})
    with pytest.raises(ReinlmError, match="no inverse dynamics"):
        import_cola(ImportColaConfig(src=str(v0), out=str(tmp_path / "o2")))
    # a plain language model
    plain = tmp_path / "plain"
    tiny_causal_lm(smol_tokenizer).save_pretrained(plain)
    with pytest.raises(ReinlmError, match="not a CoLA checkpoint.*num_code"):
        import_cola(ImportColaConfig(src=str(plain), out=str(tmp_path / "o3")))
    with pytest.raises(ReinlmError, match="no config.json"):
        import_cola(ImportColaConfig(src=str(tmp_path), out=str(tmp_path / "o4")))
    # a backbone that is not the checkpoint's
    ok, _, _ = write_cola_checkpoint(smol_tokenizer, tmp_path / "ok", "safetensors")
    other = tmp_path / "other"
    tiny_causal_lm(smol_tokenizer, hidden=H, heads=NH, kv_heads=NKV, seed=8).save_pretrained(other)
    smol_tokenizer.save_pretrained(other)
    with pytest.raises(ReinlmError, match="differs from .* at '"):
        import_cola(ImportColaConfig(src=str(ok), out=str(tmp_path / "o5"), backbone=str(other)))
    assert not (tmp_path / "o5").exists()  # nothing half-written
    # an existing OUT is not replaced without --overwrite (exit 2 from the CLI)
    from reinlm.cli.main import main

    (tmp_path / "o6").mkdir()
    assert main(["latent", "import-cola", str(ok), str(tmp_path / "o6")]) == 2


def test_latent_rl_on_bfloat16_heads_trains_a_float32_policy(smol_tokenizer, tmp_path):
    """An imported bfloat16 CoLA model: latent RL trains the policy in float32 (AdamW steps of lr 1e-4 are below
    bfloat16's resolution for most weights: trained in bfloat16, most policy weights would not move at all); the
    frozen heads stay bfloat16 and bit-identical."""
    from safetensors.torch import load_file

    from reinlm.trainer.config import TrainConfig
    from reinlm.trainer.loop import Trainer

    src, _, _ = write_cola_checkpoint(smol_tokenizer, tmp_path / "cola", "safetensors", dtype=torch.bfloat16)
    lat = tmp_path / "lat"
    import_cola(ImportColaConfig(src=str(src), out=str(lat)))
    reward = f"{Path(__file__).parent / 'assets' / 'toy_rewards.py'}:space_share"
    cfg = TrainConfig(space="latent", latent=str(lat), reward=reward, prompts="builtin:neutral", steps=2,
                      batch_prompts=2, samples_per_prompt=2, max_new_tokens=4, lr=1e-4, kl_coef=0.05, seed=0,
                      out=str(tmp_path / "rl"), device="cpu", progress=False, eval_prompts=0, save_every=100,
                      log="none")
    trainer = Trainer(cfg)
    policy = trainer.policy
    assert all(p.dtype == torch.float32 for p in policy.policy.parameters())
    assert all(p.dtype == torch.bfloat16 for p in policy.lam.world_model.parameters())
    run = trainer.train()
    before, after = load_file(str(lat / "heads.safetensors")), load_file(str(Path(run) / "final" / "heads.safetensors"))
    moved = [float((after[k].float() != before[k].float()).float().mean()) for k in before
             if k.startswith("policy.") and before[k].dim() == 2]
    assert min(moved) > 0.5, moved  # float32 training moves (almost) every weight of every matrix
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("policy."))
