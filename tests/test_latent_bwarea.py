"""BWArea's model family: a tiny random checkpoint in BWArea's key layout and config (all four file layouts) is
imported and checked against an independent reference of BWArea's equations written here from the published
code's structure (``bwareaModel/model_hf.py``: ``IntentionVQModel``); this file never imports reinlm's model
code for the reference. Also: bad inputs name the layout / the key / the damaged shard, and RL trains only the
policy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reinlm.cli.main import main

H, NH, NKV, L, FF, K, DP, EPS, THETA = 32, 4, 2, 4, 48, 64, 6, 1e-5, 10000.0  # K = 64 as the card's snippets
HS = H // NH


# ---------------------------------------------------------------------------------------------- the checkpoint

def bwarea_state(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 tensors under BWArea's names (IntentionForCausalLM.state_dict())."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {"lm_head.weight": r(vocab, H), "model.embed_tokens.weight": r(vocab, H)}
    for stack, n in (("transformer", L), ("transformer_action_enc", L // 2), ("transformer_policy", L)):
        sd[f"model.{stack}.wte.weight"] = r(vocab, H, scale=1.0)
        sd[f"model.{stack}.ln_f.weight"] = 1 + r(H, scale=0.1)
        for i in range(n):
            p = f"model.{stack}.h.{i}."
            sd[p + "self_attn.q_proj.weight"] = r(NH * HS, H)
            sd[p + "self_attn.k_proj.weight"] = r(NKV * HS, H)
            sd[p + "self_attn.v_proj.weight"] = r(NKV * HS, H)
            sd[p + "self_attn.o_proj.weight"] = r(H, NH * HS)
            sd[p + "mlp.gate_proj.weight"] = r(FF, H)
            sd[p + "mlp.up_proj.weight"] = r(FF, H)
            sd[p + "mlp.down_proj.weight"] = r(H, FF)
            sd[p + "input_layernorm.weight"] = 1 + r(H, scale=0.1)
            sd[p + "post_attention_layernorm.weight"] = 1 + r(H, scale=0.1)
    sd["model.transformer_policy_layer.weight"] = r(K, H, scale=0.3)  # logits of a few units: float32 error < 1e-5
    sd["model.press_layer.weight"] = r(DP, H, scale=1.0)
    sd["model.action_code_book.embed.weight"] = r(K, DP, scale=1.0)
    sd["model.unpress_layer.weight"] = r(H, DP, scale=1.0)
    sd["model.dynamics_layer.weight"] = r(H, 2 * H)
    sd["model.dynamics_norm.weight"] = 1 + r(H, scale=0.1)
    return sd


def bwarea_config(vocab: int) -> dict:
    return {"architectures": ["IntentionForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": H,
            "intermediate_size": FF, "num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": NKV,
            "rms_norm_eps": EPS, "rope_theta": THETA, "max_position_embeddings": 256, "hidden_act": "silu",
            "num_code": K, "num_dim": DP, "action_dim": H, "use_cache": True, "torch_dtype": "float32"}


def write_checkpoint(dest: Path, sd: dict, cfg: dict, layout: str, tokenizer=None) -> Path:
    """``layout``: safetensors | safetensors-sharded | bin | bin-sharded."""
    from safetensors.torch import save_file

    dest.mkdir(parents=True)
    (dest / "config.json").write_text(json.dumps(cfg))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(dest))
    fmt, sharded = layout.split("-")[0], layout.endswith("sharded")
    ext = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if fmt == "safetensors" else "pytorch_model"

    def save(part, name):
        if fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in part.items()}, str(dest / name))
        else:
            torch.save(part, str(dest / name))

    if not sharded:
        save(sd, f"{stem}.{ext}")
        return dest
    keys = list(sd)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, ks in enumerate(halves):
        name = f"{stem}-{i + 1:05d}-of-00002.{ext}"
        save({k: sd[k] for k in ks}, name)
        weight_map.update({k: name for k in ks})
    (dest / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dest


# ---------------------------------------------------------------------------------------------- the reference
# BWArea's equations, from model_hf.py's structure: LlamaDecoderLayer (pre-norm attention with RoPE and
# grouped-query heads, SwiGLU MLP), LlamaRMSNorm, VQ (nearest code by |z|^2 + |e|^2 - 2 z.e), forward_with_idx
# (policy logits -> argmax or forced index -> one-hot @ code book), the dynamics merge after layer L/2 - 1.

def rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def rope(x, pos):
    inv = 1.0 / THETA ** (torch.arange(0, HS, 2, dtype=torch.float) / HS)
    ang = pos[..., None].float() * inv  # (T, HS/2)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x[..., : HS // 2], x[..., HS // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def layer(sd, p, x, allowed, pos, past=None):
    """One Llama decoder layer over x (B, T, H); ``allowed`` (T, S) bool over [past keys; these keys];
    ``past`` = (k, v) (B, NKV, S0, HS) or None. Returns (y, (k_all, v_all))."""
    B, T, _ = x.shape
    h = rms(x, sd[p + "input_layernorm.weight"])
    q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(B, T, NH, HS).transpose(1, 2)
    k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(B, T, NKV, HS).transpose(1, 2)
    v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(B, T, NKV, HS).transpose(1, 2)
    q, k = rope(q, pos), rope(k, pos)
    if past is not None:
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
    kk, vv = k.repeat_interleave(NH // NKV, 1), v.repeat_interleave(NH // NKV, 1)
    scores = (q @ kk.transpose(-1, -2)) / math.sqrt(HS)
    scores = scores.masked_fill(~allowed, float("-inf"))
    a = scores.softmax(-1) @ vv  # (B, NH, T, HS)
    x = x + a.transpose(1, 2).reshape(B, T, NH * HS) @ sd[p + "self_attn.o_proj.weight"].T
    h = rms(x, sd[p + "post_attention_layernorm.weight"])
    mlp = (F.silu(h @ sd[p + "mlp.gate_proj.weight"].T) * (h @ sd[p + "mlp.up_proj.weight"].T))
    return x + mlp @ sd[p + "mlp.down_proj.weight"].T, (k, v)


def stack(sd, name, ids, n):
    x = sd[f"model.{name}.wte.weight"][ids]
    T = ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(n):
        x, _ = layer(sd, f"model.{name}.h.{i}.", x, causal, torch.arange(T))
    return rms(x, sd[f"model.{name}.ln_f.weight"])


def ref_policy_logits(sd, ids):
    return stack(sd, "transformer_policy", ids, L) @ sd["model.transformer_policy_layer.weight"].T  # (B, T, K)


def ref_idm_actions(sd, ids):
    z = stack(sd, "transformer_action_enc", ids, L // 2)
    z = torch.cat([z[:, 1:], z[:, -1:]], 1)  # x[:, :-1] = x[:, 1:]
    z = z @ sd["model.press_layer.weight"].T
    e = sd["model.action_code_book.embed.weight"]
    dist = z.pow(2).sum(-1, keepdim=True) + e.pow(2).sum(-1) - 2 * z @ e.T
    return (-dist).argmax(-1)  # (B, T)


def code(sd, a):
    return F.one_hot(a, K).float() @ sd["model.action_code_book.embed.weight"] @ sd["model.unpress_layer.weight"].T


def merge(sd, x, c):
    return x + rms(torch.cat([x, c], -1) @ sd["model.dynamics_layer.weight"].T, sd["model.dynamics_norm.weight"])


def ref_world_logits(sd, ids, actions, current=None):
    """use_cache=True semantics (``current`` None): every position merged with ``actions``; use_cache=False:
    the 2T sequence [IDM-merged history; current-merged] with mask [[tril, 0], [tril - eye, eye]]."""
    T = ids.shape[1]
    x = sd["model.transformer.wte.weight"][ids]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    pos = torch.arange(T)
    for i in range(L):
        if i == L // 2:
            hist = merge(sd, x, code(sd, actions))
            if current is None:
                x = hist
            else:
                x = torch.cat([hist, merge(sd, x, code(sd, current))], 1)
                eye = torch.eye(T, dtype=torch.bool)
                causal = torch.cat([torch.cat([causal, torch.zeros_like(causal)], -1),
                                    torch.cat([causal & ~eye, eye], -1)], 0)
                pos = torch.cat([pos, pos])
        x, _ = layer(sd, f"model.transformer.h.{i}.", x, causal, pos)
    if current is not None:
        x = x[:, T:]
    return rms(x, sd["model.transformer.ln_f.weight"]) @ sd["lm_head.weight"].T


def ref_greedy_decode(sd, ids, steps):
    """KV-cached greedy generation: the prompt's history merged with the IDM's actions, then at each new position
    the policy's argmax action (its own KV cache), the world model's upper layers with their KV cache, argmax
    token. Returns (tokens (B, steps), actions (B, steps), per-step token logits, per-step policy logits)."""
    B, P = ids.shape
    caches = {}

    def run(name, first, last, x, pos, key):
        for i in range(first, last):
            T = x.shape[1]
            S0 = caches[key, i][0].shape[2] if (key, i) in caches else 0
            allowed = torch.ones(T, S0 + T, dtype=torch.bool).tril(S0)
            x, caches[key, i] = layer(sd, f"model.{name}.h.{i}.", x, allowed, pos, caches.get((key, i)))
        return x

    pol = run("transformer_policy", 0, L, sd["model.transformer_policy.wte.weight"][ids], torch.arange(P), "pol")
    low = run("transformer", 0, L // 2, sd["model.transformer.wte.weight"][ids], torch.arange(P), "low")
    hist = ref_idm_actions(sd, ids)[:, :-1]
    run("transformer", L // 2, L, merge(sd, low[:, :-1], code(sd, hist)), torch.arange(P - 1), "up")
    s_last, pol_last = low[:, -1:], pol[:, -1:]
    toks, acts, tok_logits, pol_logits = [], [], [], []
    for t in range(steps):
        p = P - 1 + t
        pl = rms(pol_last, sd["model.transformer_policy.ln_f.weight"]) @ sd["model.transformer_policy_layer.weight"].T
        a = pl[:, 0].argmax(-1)
        x = run("transformer", L // 2, L, merge(sd, s_last, code(sd, a)[:, None]), torch.tensor([p]), "up")
        logits = rms(x, sd["model.transformer.ln_f.weight"]) @ sd["lm_head.weight"].T
        tok = logits[:, 0].argmax(-1)
        toks.append(tok), acts.append(a), tok_logits.append(logits[:, 0]), pol_logits.append(pl[:, 0])
        s_last = run("transformer", 0, L // 2, sd["model.transformer.wte.weight"][tok[:, None]], torch.tensor([p + 1]),
                     "low")
        pol_last = run("transformer_policy", 0, L, sd["model.transformer_policy.wte.weight"][tok[:, None]],
                       torch.tensor([p + 1]), "pol")
    return torch.stack(toks, 1), torch.stack(acts, 1), torch.stack(tok_logits, 1), torch.stack(pol_logits, 1)


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ckpt(smol_tokenizer, tmp_path_factory):
    vocab = len(smol_tokenizer)
    sd = bwarea_state(vocab)
    root = tmp_path_factory.mktemp("bwarea")
    src = write_checkpoint(root / "src", sd, bwarea_config(vocab), "safetensors-sharded", smol_tokenizer)
    assert main(["latent", "import-bwarea", str(src), str(root / "lat")]) == 0
    return sd, root / "lat", root


@pytest.fixture(scope="module")
def model(ckpt):
    from reinlm.latent.model import LatentActionModel

    m = LatentActionModel.from_pretrained(ckpt[1])  # the family dispatch: a BWArea directory
    assert type(m).__name__ == "BWAreaModel"
    return m


def ref_frozen_lm_logprobs(sd, ids, R):
    """log p(x_{t+1} | x_<=t) of the last R tokens (B, R): logsumexp_a [log pi(a | x_<=t) + log p_WM(x_{t+1} | x_<=t,
    a)], the world model's history merged with the IDM's actions (BWArea's training forward)."""
    T = ids.shape[1]
    hist = ref_idm_actions(sd, ids)
    pol = torch.log_softmax(ref_policy_logits(sd, ids), -1)[:, T - R - 1:T - 1]  # (B, R, K)
    per_action = []
    for a in range(K):
        lp = torch.log_softmax(ref_world_logits(sd, ids, hist, current=torch.full_like(ids, a)), -1)
        per_action.append(pol[..., a] + lp[:, T - R - 1:T - 1].gather(-1, ids[:, T - R:, None]).squeeze(-1))
    return torch.logsumexp(torch.stack(per_action), 0)


def ids_batch():
    g = torch.Generator().manual_seed(3)
    return torch.randint(5, 2000, (2, 7), generator=g)


# ---------------------------------------------------------------------------------------------- parity

def test_all_four_file_layouts_import_to_the_same_weights(ckpt, tmp_path, smol_tokenizer):
    from safetensors.torch import load_file

    sd, lat, _ = ckpt
    want = load_file(str(lat / "model.safetensors"))
    cfg = bwarea_config(len(smol_tokenizer))
    for layout in ("safetensors", "bin", "bin-sharded"):
        src = write_checkpoint(tmp_path / layout, sd, cfg, layout)
        assert main(["latent", "import-bwarea", str(src), str(tmp_path / f"out-{layout}")]) == 0
        got = load_file(str(tmp_path / f"out-{layout}" / "model.safetensors"))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert "model.embed_tokens.weight" not in want and len(want) == len(sd) - 1 - 2 * (2 * L + L // 2)
    assert torch.equal(want["world.blocks.1.qkv.weight"][: NH * HS], sd["model.transformer.h.1.self_attn.q_proj.weight"])


def test_idm_actions_and_policy_logits_match_the_reference(ckpt, model):
    sd, _, _ = ckpt
    ids = ids_batch()
    with torch.no_grad():
        inv = model.forward_inverse(ids)
        pol = model.forward_policy(ids).logits
    ref_a = ref_idm_actions(sd, ids)
    assert torch.equal(inv.action_index, ref_a[:, :-1])
    assert len(set(ref_a.flatten().tolist())) >= 3  # the codes are not all one (the check would be weak)
    assert torch.allclose(pol, ref_policy_logits(sd, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("forced", [None, 5, "tensor"])
def test_world_model_logits_match_the_reference_without_a_cache(ckpt, model, forced):
    """No KV cache: the full sequence at once, BWArea's use_cache=True path (action at every position: the policy's
    argmax, a forced int, a forced (B, T) tensor) and its use_cache=False two-stream path (IDM history)."""
    sd, _, _ = ckpt
    ids = ids_batch()
    B, T = ids.shape
    if forced is None:
        a = ref_policy_logits(sd, ids).argmax(-1)
    elif forced == "tensor":
        a = torch.randint(0, K, (B, T), generator=torch.Generator().manual_seed(1))
    else:
        a = torch.full((B, T), forced)
    with torch.no_grad():
        got = model.world_logits(ids, None, a)
        got_two = model.world_logits(ids, None, model.idm_logits(ids).argmax(-1), current_actions=a)
    want = ref_world_logits(sd, ids, a)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    want_two = ref_world_logits(sd, ids, ref_idm_actions(sd, ids), current=a)
    assert torch.allclose(got_two, want_two, atol=1e-5, rtol=0)
    assert (want_two - want).abs().max() > 1e-3  # the two semantics differ: each check sees its own
    if forced == 5:
        with torch.no_grad():
            assert torch.allclose(model.forward_world_model(ids, action_idx=5), want, atol=1e-5, rtol=0)


def test_generation_with_kv_caches_matches_the_reference(ckpt, model):
    """With KV caches (policy, world model's lower and upper layers): every step's policy and token logits within
    1e-5 of the reference's cached decode, and the same actions and tokens."""
    from reinlm.latent.bwarea import BWAreaStepper
    from reinlm.rollout.decode import decode

    sd, _, _ = ckpt
    ids = ids_batch()
    seen = {"tok": [], "pol": []}

    class Greedy:
        mode = "greedy"

        def __init__(self, key):
            self.key = key

        def __call__(self, logits, u, rows, num_categories=None):
            seen[self.key].append(logits.clone())
            return logits.argmax(-1), torch.zeros(logits.shape[0])

    out = decode(BWAreaStepper(model, Greedy("pol"), Greedy("tok")), ids, torch.ones_like(ids), max_new_tokens=5,
                 stop_ids=[], pad_id=0)
    toks, acts, tok_logits, pol_logits = ref_greedy_decode(sd, ids, 5)
    assert torch.equal(out.tokens, toks) and torch.equal(out.extras["action"], acts)
    assert torch.allclose(torch.stack(seen["tok"], 1), tok_logits, atol=1e-5, rtol=0)
    assert torch.allclose(torch.stack(seen["pol"], 1), pol_logits, atol=1e-5, rtol=0)
    assert torch.equal(out.states["hidden"], torch.cat([ids, toks[:, :-1]], 1))  # what the policy reads: ids
    # the public generate takes the same path
    model.set_action_sampling(greedy=True)
    gen = model.generate(ids, max_new_tokens=5, eos_token_id=[], return_dict=True)
    assert torch.equal(gen.response_ids, toks) and torch.equal(model.get_action_info(), acts)


# ---------------------------------------------------------------------------------------------- bad inputs

def err_text(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())  # the message is wrapped to the terminal width


def test_bad_sources_name_the_layout_the_key_or_the_shard(ckpt, tmp_path, capsys, smol_tokenizer):
    sd, lat, root = ckpt
    cfg = bwarea_config(len(smol_tokenizer))
    # a CoLA directory given to import-bwarea, and the reverse
    cola = tmp_path / "cola"
    cola.mkdir()
    (cola / "config.json").write_text(json.dumps({"num_code": 8, "num_action_layer": 1, "num_dyna_layer": 1,
                                                  "num_policy_layer": 1, "v": 1}))
    assert main(["latent", "import-bwarea", str(cola), str(tmp_path / "o1")]) == 2
    assert "is a CoLA checkpoint" in err_text(capsys) and not (tmp_path / "o1").exists()
    assert main(["latent", "import-cola", str(root / "src"), str(tmp_path / "o2")]) == 2
    assert "is a BWArea checkpoint" in err_text(capsys) and not (tmp_path / "o2").exists()
    assert main(["latent", "import-bwarea", str(lat), str(tmp_path / "o3")]) == 2
    assert "already a reinlm latent model directory" in err_text(capsys)
    # an unknown key, a missing key: the first one named
    bad = dict(sd, **{"model.transformer.h.0.self_attn.extra.weight": torch.zeros(2)})
    write_checkpoint(tmp_path / "unknown", bad, cfg, "safetensors")
    assert main(["latent", "import-bwarea", str(tmp_path / "unknown"), str(tmp_path / "o4")]) == 2
    assert "unknown tensor 'model.transformer.h.0.self_attn.extra.weight'" in err_text(capsys)
    short = {k: v for k, v in sd.items() if k != "model.dynamics_norm.weight"}
    write_checkpoint(tmp_path / "missing", short, cfg, "bin")
    assert main(["latent", "import-bwarea", str(tmp_path / "missing"), str(tmp_path / "o5")]) == 2
    assert "missing tensor for 'world.dynamics_norm.weight'" in err_text(capsys)
    # a truncated shard is named
    src = write_checkpoint(tmp_path / "trunc", sd, cfg, "safetensors-sharded")
    shard = src / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    assert main(["latent", "import-bwarea", str(src), str(tmp_path / "o6")]) == 2
    err = err_text(capsys)
    assert "model-00002-of-00002.safetensors" in err and "truncated" in err and not (tmp_path / "o6").exists()


# ---------------------------------------------------------------------------------------------- RL

def test_rl_trains_only_the_policy(ckpt, tmp_path):
    """reinlm's latent RL path (LatentPolicy: rollout through generate, the policy recomputed on what generation
    recorded, its trainable parameters) on BWArea: one policy-gradient step moves the policy; the world model,
    the inverse dynamics model and the code book stay bit-identical."""
    from reinlm.latent.model import LatentActionModel
    from reinlm.trainer.config import TrainConfig
    from reinlm.trainer.latent_policy import LatentPolicy

    m = LatentActionModel.from_pretrained(ckpt[1])
    frozen = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("policy.")}
    pol_before = {k: v.clone() for k, v in m.policy.state_dict().items()}
    cfg = TrainConfig(space="latent", latent=str(ckpt[1]), reward="length", prompts="builtin:neutral", steps=1,
                      batch_prompts=2, samples_per_prompt=2, max_new_tokens=4, lr=1e-2, out=str(tmp_path / "rl"),
                      device="cpu", progress=False, log="none")
    lp = LatentPolicy(cfg, torch.device("cpu"), latent_model=m)
    assert {id(p) for p in lp.trainable_parameters()} == {id(p) for p in m.rl_parameters()}
    batch = lp.rollout(["I like eating", "The sky is"], 2, seeds=[0, 1])
    logp_all = lp.action_logp_all(lp.lam.policy, batch)  # (B, R, K) recomputed from the recorded token ids
    assert torch.allclose(logp_all.detach(), batch.old_logp_all, atol=1e-5)
    reward = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None]
    logp = logp_all.gather(-1, batch.actions[..., None]).squeeze(-1)
    loss = -(reward * logp * batch.response_mask).sum() / batch.response_mask.sum()
    opt = torch.optim.AdamW(lp.trainable_parameters(), lr=1e-2)
    loss.backward()
    opt.step()
    after = m.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    moved = [k for k, v in m.policy.state_dict().items() if not torch.equal(pol_before[k], v)]
    assert len(moved) >= len(pol_before) // 2


def test_head_mode_reference_shares_the_frozen_trunk(ckpt, tmp_path):
    """``--latent-train head``: the KL reference shares the policy's frozen trunk (no copy of the 1.1 B-parameter
    stack at 2.7B) and holds its own frozen copy of the output layer, so after the head moves the reference still
    computes the starting policy."""
    from reinlm.latent.model import LatentActionModel
    from reinlm.trainer.config import TrainConfig
    from reinlm.trainer.latent_policy import LatentPolicy

    m = LatentActionModel.from_pretrained(ckpt[1])
    cfg = TrainConfig(space="latent", latent=str(ckpt[1]), reward="length", prompts="builtin:neutral", steps=1,
                      latent_train="head", out=str(tmp_path / "rl"), device="cpu", progress=False, log="none")
    lp = LatentPolicy(cfg, torch.device("cpu"), latent_model=m)
    ref, pol = lp.ref_policy, m.policy
    assert ref.blocks is pol.blocks and ref.inp is pol.inp and ref.norm is pol.norm and ref.out is not pol.out
    assert {id(p) for p in ref.parameters()} - {id(p) for p in pol.parameters()} == {id(ref.out.weight)}
    ids = ids_batch()
    with torch.no_grad():
        start = pol(ids)
        pol.out.weight.add_(0.1)  # what training the head does
        assert torch.equal(ref(ids), start) and not torch.allclose(pol(ids), start)
    assert pol.out.weight.requires_grad and not ref.out.weight.requires_grad


# ---------------------------------------------------------------------------------------------- reinlm train

SPACE_REWARD = f"{Path(__file__).parent / 'assets' / 'toy_rewards.py'}:space_share"


def test_frozen_perplexity_is_the_world_model_marginalised_over_the_policy(ckpt, model):
    """``perplexity_frozen`` on BWArea (no backbone LM): log p(x_{t+1} | x_<=t) = logsumexp_a [log pi(a | x_<=t) +
    log p_WM(x_{t+1} | x_<=t, a)], the history merged with the IDM's actions; checked against the reference."""
    ids = ids_batch()
    B, T = ids.shape
    R = 3
    with torch.no_grad():
        got = model.frozen_lm_logprobs(ids, torch.ones_like(ids), R, model.policy)
    assert got.shape == (B, R) and torch.allclose(got, ref_frozen_lm_logprobs(ckpt[0], ids, R), atol=1e-5, rtol=0)


LORA_WEIGHTS = {f"policy.blocks.{i}.{n}.weight" for i in range(L) for n in ("qkv", "proj", "mlp.gate", "mlp.up", "mlp.down")}


@pytest.mark.parametrize("what", ["policy", "head", "lora"])
def test_reinlm_train_on_a_bwarea_directory_trains_only_what_it_is_told(ckpt, tmp_path, what):
    """``reinlm train --space latent --latent BWAREA_DIR``: the run finishes, its final directory is a BWArea model
    whose world model, IDM and code book are bit-identical to the imported ones; ``--latent-train policy`` moves
    the policy (embeddings, layers, head), ``head`` only ``transformer_policy_layer``; the frozen-LM perplexity
    is logged every step and in the held-out evaluation."""
    from safetensors.torch import load_file

    from reinlm.latent.model import LatentActionModel
    from reinlm.utils.jsonio import read_jsonl

    run = tmp_path / what
    argv = ["train", "--space", "latent", "--latent", str(ckpt[1]), "--latent-train", what, "--reward", SPACE_REWARD,
            "--prompts", "builtin:neutral", "--steps", "2", "--batch-prompts", "2", "--samples-per-prompt", "2",
            "--max-new-tokens", "4", "--lr", "1e-2", "--eval-prompts", "1", "--eval-samples", "2",
            "--log-frozen-perplexity", "true", "--device", "cpu", "--log", "none", "--progress", "false",
            "--out", str(run)] + (["--lora-r", "4"] if what == "lora" else [])
    assert main(argv) == 0
    before = load_file(str(ckpt[1] / "model.safetensors"))
    after = load_file(str(run / "final" / "model.safetensors"))
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    if what == "head":
        assert moved == {"policy.out.weight"}
    elif what == "lora":  # the adapters merged into every linear layer of the policy's blocks, nothing else
        assert moved == LORA_WEIGHTS
    else:
        assert all(k.startswith("policy.") for k in moved)
        assert {"policy.out.weight", "policy.inp.weight", "policy.norm.weight"} <= moved
        assert len([k for k in moved if k.startswith("policy.blocks.")]) >= 4 * L
    rows = read_jsonl(run / "metrics.jsonl")
    assert rows[-1]["step"] == 2
    assert all(1.0 < r["response/perplexity_frozen"] < float("inf") for r in rows)
    ev = json.loads((run / "train_eval.json").read_text())
    assert ev["before"]["kl_to_reference"] == pytest.approx(0.0, abs=1e-6) and ev["after"]["kl_to_reference"] > 0
    assert 1.0 < ev["after"]["perplexity_frozen"] < float("inf")
    assert type(LatentActionModel.from_pretrained(run / "final")).__name__ == "BWAreaModel"


@pytest.mark.parametrize("what", ["policy", "lora"])
def test_a_bwarea_run_resumes_to_the_same_policy(ckpt, tmp_path, what):
    """A checkpoint of a BWArea run is a complete BWArea directory; resuming from it (the policy read back from
    its model.safetensors, or with --latent-train lora the adapters from policy_lora.safetensors) ends where the
    uninterrupted run ends. With LoRA the saved policy is the trained one with its adapters merged."""
    from safetensors.torch import load_file

    from reinlm.trainer.config import TrainConfig
    from reinlm.trainer.loop import Trainer

    def cfg(out, steps):
        return TrainConfig(space="latent", latent=str(ckpt[1]), reward=SPACE_REWARD, prompts="builtin:neutral",
                           steps=steps, batch_prompts=2, samples_per_prompt=2, max_new_tokens=4, lr=1e-2, seed=0,
                           out=str(out), device="cpu", progress=False, eval_prompts=0, save_every=1, log="none",
                           latent_train=what, lora_r=4 if what == "lora" else 0)

    trainer = Trainer(cfg(tmp_path / "a", 2))
    a = trainer.train()
    Trainer(cfg(tmp_path / "b", 1)).train()
    b = Trainer(cfg(tmp_path / "b", 2)).train(resume=True)
    wa, wb, w0 = (load_file(str(d / "model.safetensors")) for d in (a / "final", b / "final", ckpt[1]))
    assert any(not torch.equal(wa[k], w0[k]) for k in wa)  # the runs trained
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    from reinlm.latent.model import LatentActionModel

    ids = ids_batch()
    with torch.no_grad():  # the saved (merged) policy computes what the trained one does
        saved = LatentActionModel.from_pretrained(a / "final").policy(ids)
        assert torch.allclose(saved, trainer.policy.lam.policy(ids), atol=1e-5, rtol=0)


def test_the_latent_benches_run_their_latent_side_on_a_bwarea_directory(ckpt, tmp_path, capfd):
    """The benches' token side trains the latent model's backbone, which BWArea does not have: with it (the default
    sides) each bench exits 2 naming ``--sides latent`` before writing anything; with ``--sides latent`` they run on
    BWArea (reward-hacking run here, end to end), and reward-hacking's per-step perplexity is the trainer's frozen-LM figure (the world model marginalised
    over the starting policy), its before/after figures the held-out evaluation's."""
    d = str(ckpt[1])
    for bench in ("latent-vs-token", "reward-hacking"):
        assert main(["bench", bench, "--latent", d, "--out", str(tmp_path / "o")]) == 2
        err = " ".join(capfd.readouterr().err.split())
        assert f"is a BWArea model (`reinlm latent import-bwarea`); the token side of `reinlm bench {bench}` trains the " \
               f"latent model's backbone" in err and "allowed: --sides latent" in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written
    small = ["--latent", d, "--sides", "latent", "--reward", SPACE_REWARD, "--steps", "2", "--batch-prompts", "1",
             "--samples-per-prompt", "2", "--max-new-tokens", "4", "--json"]
    from reinlm.bench.latent_vs_token import backbone_of  # latent-vs-token's latent side is `reinlm train` (above)

    assert backbone_of(d, sides=["latent"]) == ""
    assert main(["bench", "reward-hacking", *small, "--seeds", "3", "--eval-prompts", "1", "--eval-samples", "2",
                 "--out", str(tmp_path / "rh")]) == 0
    report = json.loads(capfd.readouterr().out)
    (run,) = report["runs"]
    rows = [json.loads(x) for x in (tmp_path / "rh" / "latent-seed3" / "metrics.jsonl").read_text().splitlines()]
    assert [s["perplexity"] for s in run["steps"]] == [r["response/perplexity_frozen"] for r in rows]
    assert all(1 < s["perplexity"] < float("inf") for s in run["steps"])
    ev = json.loads((tmp_path / "rh" / "latent-seed3" / "train_eval.json").read_text())
    assert (run["ppl_before"], run["ppl_after"]) == (ev["before"]["perplexity_frozen"], ev["after"]["perplexity_frozen"])
    assert set(report["summary"]) == {"latent"}


# ---------------------------------------------------------------------------------------------- Q-model and search

EARNED = "target_length:20,normalize=true"  # -|len - 20| / 20: differs between the tiny model's texts


def test_train_q_and_search_run_on_a_bwarea_directory(ckpt, model, tmp_path, capsys):
    """``reinlm latent train-q`` then ``reinlm search --q --compare best-of-n`` on a BWArea directory, end to end: the
    Q-model (a copy of BWArea's policy: it reads token ids through its own embeddings) learns the scored rollouts,
    and search with it finds better texts than best-of-N sampling at no more world-model forwards."""
    from safetensors.torch import load_file

    from reinlm.latent.qmodel import QModel

    d, q = str(ckpt[1]), tmp_path / "q"
    assert main(["latent", "train-q", "--latent", d, "--reward", EARNED, "--prompts", "builtin:reviews",
                 "--num-prompts", "4", "--samples-per-prompt", "4", "--max-new-tokens", "6", "--epochs", "30",
                 "--batch-size", "8", "--lr", "1e-3", "--target-every", "5", "--held-out-fraction", "0.25",
                 "--progress", "false", "--out", str(q), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = [json.loads(x) for x in (q / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(len(r["actions"]) == len(r["response_ids"]) >= 1 for r in rows)
    assert [r["reward"] for r in rows] == [pytest.approx(-abs(len(r["completion"]) - 20) / 20) for r in rows]
    assert max(r["reward"] for r in rows) - min(r["reward"] for r in rows) > 0.3  # something to learn
    order = np.random.default_rng(0).permutation(16)  # train-q's split: 4 held out, 12 trained on
    train = [rows[i] for i in order[4:]]
    zero_q = sum(r["reward"] ** 2 for r in train) / sum(len(r["actions"]) for r in train)  # TD loss of Q = 0
    assert result["train_after"]["td_loss"] < 0.2 * zero_q, (result["train_after"], zero_q)
    qm = QModel.from_pretrained(q, model)  # Q at each rollout's last step, recomputed from its token ids: the reward
    last = []
    for r in train:
        p = model.tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            qs = qm(torch.tensor([p + r["response_ids"][:-1]]))[0]  # (T, K)
        last.append(float(qs[len(p) + len(r["actions"]) - 2, r["actions"][-1]]))
    err = np.mean([(x - r["reward"]) ** 2 for x, r in zip(last, train)])
    assert err < 0.2 * np.mean([r["reward"] ** 2 for r in train]), (err, last)
    w = load_file(str(q / "q.safetensors"))
    assert w["inp.weight"].shape == (len(ckpt[0]["lm_head.weight"]), H)  # token embeddings: it reads ids
    assert w["out.weight"].shape == (K, H)

    argv = ["search", "--latent", d, "--reward", EARNED, "--q", str(q), "--budget", "64", "--max-depth", "6",
            "--rounds", "8", "--compare", "best-of-n", "--prompts", "builtin:reviews", "--num-prompts", "3", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    for r in report["prompts"]:
        s, b = r["search"], r["best_of_n"]
        assert s["reward"] == pytest.approx(-abs(len(s["text"]) - 20) / 20) and len(s["actions"]) >= 1
        assert b["wm_forwards"] <= s["stats"]["wm_forwards"] <= 64 and s["stats"]["q_model"]
    m = report["summary"]
    assert m["search_mean_best_reward"] >= m["best_of_n_mean_best_reward"], m
    assert m["search_wins"] >= 2, m


def test_search_nodes_follow_bwareas_world_model_and_the_td_rule(ckpt, model):
    """Search's tree on BWArea: every node's tokens are the world model's argmax under the node's actions (the
    prompt's history merged with the IDM's actions, as BWArea generates), and with a Q-model every node stops
    growing at its first step whose squared TD error (Q(s_t, a_t) - gamma max Q(s_t+1))^2 reaches the threshold
    (or at max_segment), recomputed here from the Q-model over the node's token ids."""
    from reinlm.latent.qmodel import QModel
    from reinlm.latent.search import LatentSearch, SearchConfig, tree_nodes
    from reinlm.rewards import parse_reward_spec

    q = QModel.from_policy(model, gamma=0.9)
    with torch.no_grad():  # a Q-model with varied values (a fresh one is 0 everywhere: every TD error 0)
        q.net.out.weight.copy_(torch.randn(q.net.out.weight.shape, generator=torch.Generator().manual_seed(1)) * 0.03)
    thr = 0.05
    cfg = SearchConfig(latent="x", reward=EARNED, budget=120, max_depth=8, rounds=8, branching_root=3, branching=2,
                       max_segment=4, td_threshold=thr)
    prompt = "The old house"
    res = LatentSearch(model, parse_reward_spec(EARNED), cfg, q).search(prompt)
    p_ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    P = len(p_ids)
    with torch.no_grad():
        hist = model.idm_logits_from_hidden(torch.tensor([p_ids]))[0].argmax(-1).tolist()  # (P-1,)
    nodes = tree_nodes(res.root)[1:]
    lengths = []
    for n in nodes:
        ids = torch.tensor([p_ids + n.tokens])
        with torch.no_grad():
            logits = model.world_logits(ids, None, torch.tensor([hist + n.actions + [0]]))[0]  # (T, V)
            qs = q(ids)[0]  # (T, K)
        assert logits[P - 1: P - 1 + len(n.tokens)].argmax(-1).tolist() == n.tokens
        d0, d1 = n.parent.depth, n.depth
        td = [float((qs[P - 1 + j, n.actions[j]] - 0.9 * qs[P + j].max()) ** 2) for j in range(d0, d1)]
        if not n.terminal:
            assert all(x < thr + 1e-5 for x in td[:-1]), td
            assert td[-1] >= thr - 1e-5 or d1 - d0 == cfg.max_segment, td
        lengths.append(d1 - d0)
    assert len(nodes) >= 6 and len(set(lengths)) >= 2  # the TD rule cut nodes at different lengths


# ---------------------------------------------------------------------------------------------- fine-tuning

def test_finetune_stage1_loss_is_bwareas_two_stream_training_forward(ckpt, model):
    """Fine-tuning's stage-1 loss on BWArea: the next-token cross-entropy of BWArea's training forward, the history
    merged with the IDM's actions and step t's own state with the given action a_t (the reference's use_cache=False
    semantics), for fta-p's sampled actions and fta-i's IDM actions."""
    from reinlm.latent.finetune import lm_loss

    sd, ids = ckpt[0], ids_batch()
    mask = torch.ones_like(ids)
    hist = ref_idm_actions(sd, ids)
    g = torch.Generator().manual_seed(5)
    for actions in (torch.randint(0, K, (2, ids.shape[1] - 1), generator=g), hist[:, :-1]):
        with torch.no_grad():
            got = lm_loss(model, model.head_input(ids, mask), ids, mask, actions)
        logits = ref_world_logits(sd, ids, hist, current=torch.cat([actions, hist[:, -1:]], 1))[:, :-1]
        want = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        assert abs(got.item() - want.item()) < 1e-5


def test_finetune_runs_on_a_bwarea_directory(ckpt, tmp_path, capsys):
    """``reinlm latent finetune`` (fta-p) on a BWArea directory: stage 1 trains the world model (its stack and the
    code book's unpress), stage 2 re-clones the policy; the IDM and the code book's entries are bit-identical in
    the output, which loads as a BWArea model; the task NLL and BC accuracy improve. ``--train backbone``
    (BWArea has none) is refused before anything is written."""
    from safetensors.torch import load_file

    from reinlm.latent.model import LatentActionModel

    docs = tmp_path / "docs.jsonl"
    texts = [f"The old lighthouse on the hill was painted white and red {i}." for i in range(10)]
    texts += [f"Every morning the baker on the corner sold {i} loaves of bread." for i in range(10)]
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    d, out = str(ckpt[1]), tmp_path / "fta"
    argv = ["latent", "finetune", "--latent", d, "--data", str(docs), "--mode", "fta-p", "--epochs", "2",
            "--bc-epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--max-len", "16", "--eval-train-docs", "6",
            "--progress", "false",
            "--out", str(out)]
    assert main(argv + ["--train", "backbone"]) == 2
    assert "allowed: world_model (BWArea has no frozen backbone" in err_text(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]
    assert main(argv + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # --json: the JSON alone on stdout
    before, after = load_file(str(ckpt[1] / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {k for k in before if k.startswith(("world.", "codebook.unpress.", "policy."))}
    assert result["trained"] == ["world", "codebook.unpress", "policy"]
    assert result["steps"] == {"stage1": 5, "stage2": 5}  # ceil(2 epochs x 18 training documents / 8)
    b, a = result["before"]["train"], result["after"]["train"]
    assert a["nll_world_model_idm"] < b["nll_world_model_idm"] - 1.0 and a["nll_world_model_policy"] < b["nll_world_model_policy"] - 1.0
    assert a["bc_top1_accuracy"] > b["bc_top1_accuracy"] + 0.2
    m = LatentActionModel.from_pretrained(out)
    assert type(m).__name__ == "BWAreaModel" and m.tokenizer is not None


# ---------------------------------------------------------------------------------------------- QD table

class CharEncoder:
    """Bag-of-characters sentence embedding: no encoder model needed."""

    def encode(self, texts):
        return np.array([[t.count(c) + 1e-3 for c in "etaoinshrdlu ."] for t in texts])


def test_qd_table_runs_on_a_bwarea_directory(ckpt, model, capsys, monkeypatch):
    """``reinlm latent qd`` on a BWArea directory (which holds no held-out pretraining text: --prefixes is asked
    for): every row's samples are what the row says (token_sampling = BWArea's own generation with the policy's
    actions and world-model tokens both sampled at temperature 1) and every row's perplexity is the frozen model's,
    the world model marginalised over the policy, recomputed here with the reference."""
    import reinlm.hub
    from reinlm.data import load_prompts
    from reinlm.latent.qd import ROWS, sample_row

    monkeypatch.setattr(reinlm.hub, "load_sentence_encoder", lambda *a, **k: CharEncoder())
    d = str(ckpt[1])
    assert main(["latent", "qd", "--latent", d]) == 2
    assert "--prefixes SPEC" in err_text(capsys)
    M, P, R = 3, 3, 4
    assert main(["latent", "qd", "--latent", d, "--prefixes", "builtin:neutral", "--num-prefixes", "2", "--samples",
                 str(M), "--prefix-tokens", str(P), "--new-tokens", str(R), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert list(rows) == list(ROWS)
    tok = model.tokenizer
    prefixes = [tok(t, add_special_tokens=False)["input_ids"][:P] for t in load_prompts("builtin:neutral", limit=2).prompts]
    ids = torch.tensor([p for p in prefixes for _ in range(M)])  # (6, P): no padding
    model.set_action_sampling(greedy=False, tau=1.0, top_k=0, top_p=1.0)
    conts = []
    for i, row in enumerate(ROWS):  # qd_rows seeds row i's generator with seed * 1000 + i
        r = rows[row]
        assert r["qd"] == pytest.approx(1 / r["similarity"]) and 0 <= r["distinct_2"] <= 1
        cont = sample_row(model, row, ids, torch.ones_like(ids), R, torch.Generator().manual_seed(i))
        assert cont.shape == (2 * M, R) and not (cont == tok.eos_token_id).any()
        assert tok.batch_decode(cont, skip_special_tokens=True)[0] == r["example"]
        conts.append(torch.cat([ids, cont], 1))
    lp = ref_frozen_lm_logprobs(ckpt[0], torch.cat(conts), R).view(len(ROWS), 2 * M, R)  # every row in one batch
    for i, row in enumerate(ROWS):
        assert rows[row]["perplexity"] == pytest.approx(math.exp(-lp[i].mean().item()), rel=1e-4), row
    gen = model.generate(ids, max_new_tokens=R, do_sample=True, eos_token_id=[], generator=torch.Generator().manual_seed(2))
    assert torch.equal(sample_row(model, "token_sampling", ids, torch.ones_like(ids), R, torch.Generator().manual_seed(2)),
                       gen[:, P:])


# ---------------------------------------------------------------------------------------------- the cards' code

SNIPPETS = Path(__file__).parent / "assets" / "seed_snippets"


def run_card(name: str, model_dir: Path, capsys) -> dict:
    code = (SNIPPETS / name).read_text().replace("__MODEL_PATH__", str(model_dir))
    scope: dict = {"__name__": "card"}
    torch.manual_seed(0)
    exec(compile(code, name, "exec"), scope)  # noqa: S102 - the seed cards' own usage code
    capsys.readouterr()
    return scope


@pytest.fixture(scope="module")
def backbone_latent_dir_k64(tmp_path_factory, smol_tokenizer):
    """A frozen-backbone latent directory with K = 64 (the cards' snippets draw actions in 0..63)."""
    from conftest import make_tiny_latent_dir

    root = tmp_path_factory.mktemp("lam64")
    return make_tiny_latent_dir(root, smol_tokenizer, num_actions=64).save_pretrained(root / "lam")


@pytest.mark.parametrize("family", ["bwarea", "backbone"])
def test_the_bwarea_cards_code_runs_and_trains_only_the_policy(family, ckpt, backbone_latent_dir_k64, capsys):
    d = ckpt[1] if family == "bwarea" else backbone_latent_dir_k64
    s = run_card("bwarea_card.py", d, capsys)
    model, B = s["model"], 4
    assert s["action_idx"].shape == (B, s["action_logits"].shape[1]) and s["action_logits"].shape[-1] == 64
    assert s["logits"].shape[-1] == len(s["tokenizer"]) or s["logits"].shape[-1] >= 49152
    assert math.isfinite(s["loss"].item())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("policy" in n for n in trainable)
    # the REINFORCE step of the card moved the policy only: compare with a fresh load
    from reinlm.latent.compat import create_intention_model

    fresh = dict(create_intention_model(str(d), tokenizer=s["tokenizer"], dtype=torch.bfloat16).named_parameters())
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, fresh[n])}
    assert moved and moved <= trainable


@pytest.mark.parametrize("family", ["bwarea", "backbone"])
def test_the_cola_cards_code_runs(family, ckpt, backbone_latent_dir_k64, capsys):
    d = ckpt[1] if family == "bwarea" else backbone_latent_dir_k64
    s = run_card("cola_card.py", d, capsys)
    assert s["next_token"].shape == (1, 1) and s["action_index"].shape == (1, 1)
    assert s["action_logits"].shape[-1] == 64
    assert 1 <= len(s["action_idx"]) <= 8 and all(0 <= a < 64 for a in s["action_idx"])
    assert isinstance(s["results"][0], str)


def test_compat_forward_matches_the_reference(ckpt):
    """The compat wrapper's BWArea forward (int / tensor action_idx, policy actions) is the reference's
    use_cache=True forward; forward_inverse is BWArea's (T positions, the last reading its own)."""
    from reinlm.latent.compat import create_intention_model

    sd = ckpt[0]
    model = create_intention_model(str(ckpt[1]))
    model.set_action_sampling(greedy=True)
    ids = ids_batch()
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), action_idx=2)
    assert torch.allclose(out.logits, ref_world_logits(sd, ids, torch.full_like(ids, 2)), atol=1e-5, rtol=0)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    greedy = ref_policy_logits(sd, ids).argmax(-1)
    assert torch.equal(out.action_index, greedy)
    assert torch.allclose(out.logits, ref_world_logits(sd, ids, greedy), atol=1e-5, rtol=0)
    assert torch.equal(model.forward_inverse(input_ids=ids).action_index, ref_idm_actions(sd, ids))


def test_left_padded_and_repeated_rows_generate_as_each_row_alone(model):
    """Generation over a left-padded batch (prompts of 4 and 7 tokens) and with num_return_sequences = 2 gives
    each row what it gets alone: positions count real tokens, padding keys are hidden, caches repeat per row."""
    ids = ids_batch()
    short, long_ = ids[0, 3:], ids[1]
    model.set_action_sampling(greedy=True)
    alone = [model.generate(r[None], max_new_tokens=4, eos_token_id=[], return_dict=True) for r in (short, long_)]
    padded = torch.stack([torch.cat([torch.zeros(3, dtype=torch.long), short]), long_])
    mask = torch.ones_like(padded)
    mask[0, :3] = 0
    both = model.generate(padded, mask, max_new_tokens=4, eos_token_id=[], return_dict=True, num_return_sequences=2)
    for i, a in enumerate(alone):
        for j in (2 * i, 2 * i + 1):
            assert torch.equal(both.response_ids[j], a.response_ids[0])
            assert torch.equal(both.actions[j], a.actions[0])
    with torch.no_grad():  # the full-sequence forwards agree with the padded batch too
        lp = model.policy(padded, mask)[0, 3:]
        assert torch.allclose(lp, model.policy(short[None])[0], atol=1e-5, rtol=0)
        wl = model.world_logits(padded, mask, torch.full_like(padded, 7))[0, 3:]
        assert torch.allclose(wl, model.world_logits(short[None], None, torch.full((1, 4), 7))[0], atol=1e-5, rtol=0)
