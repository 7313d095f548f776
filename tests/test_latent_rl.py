"""Latent-space RL on a tiny backbone: only the policy learns; backbone and world model stay bit-identical;
bad latent input fails before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reinlm.errors import ConfigError, ReinlmError
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.loop import Trainer
from reinlm.utils.jsonio import read_jsonl

ASSETS = Path(__file__).parent / "assets"
SPACE_REWARD = f"{ASSETS / 'toy_rewards.py'}:space_share"


def latent_cfg(latent_dir, out, **kw) -> TrainConfig:
    base = dict(space="latent", latent=str(latent_dir), reward=SPACE_REWARD, prompts="builtin:neutral", steps=2,
                batch_prompts=2, samples_per_prompt=4, max_new_tokens=6, lr=1e-2, kl_coef=0.05, seed=0,
                out=str(out), device="cpu", progress=False, eval_prompts=2, eval_samples=2, save_every=100,
                log="none")
    base.update(kw)
    return TrainConfig(**base)


def heads(d):
    from safetensors.torch import load_file

    return load_file(str(Path(d) / "heads.safetensors"))


@pytest.mark.parametrize("algo", ["grpo", "reinforce", "ppo", "remax"])
def test_only_the_policy_moves(algo, tiny_latent_dir, tmp_path):
    trainer = Trainer(latent_cfg(tiny_latent_dir, tmp_path / algo, algo=algo))
    backbone_before = {k: v.clone() for k, v in trainer.policy.lam.backbone.state_dict().items()}
    run_dir = trainer.train()
    before, after = heads(tiny_latent_dir), heads(run_dir / "final")
    policy_keys = [k for k in before if k.startswith("policy.")]
    frozen_keys = [k for k in before if not k.startswith("policy.")]
    assert sum(not torch.equal(before[k], after[k]) for k in policy_keys) >= len(policy_keys) // 2
    for k in frozen_keys:  # IDM and world model: bit-identical
        assert torch.equal(before[k], after[k]), k
    for k, v in trainer.policy.lam.backbone.state_dict().items():
        assert torch.equal(backbone_before[k], v), k
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[-1]["step"] == 2 and "kl/mean" in rows[0] and rows[0]["latent/distinct_actions"] >= 1
    ev = json.loads((run_dir / "train_eval.json").read_text())
    assert ev["before"]["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)  # untrained policy == BC policy
    assert ev["after"]["perplexity_frozen"] > 1.0


@pytest.mark.parametrize("what", ["head", "lora"])
def test_latent_train_head_or_lora_moves_only_that_part(what, tiny_latent_dir, tmp_path):
    """--latent-train head: only the policy's output layer moves; lora: only its blocks' linear layers (the
    adapters merged into them), in the frozen-backbone family as in BWArea's (tests/test_latent_bwarea.py)."""
    cfg = latent_cfg(tiny_latent_dir, tmp_path / what, latent_train=what, lora_r=4 if what == "lora" else 0)
    run_dir = Trainer(cfg).train()
    before, after = heads(tiny_latent_dir), heads(run_dir / "final")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    if what == "head":
        assert moved and all(k.startswith("policy.out.") for k in moved)
    else:
        linear = ("qkv.weight", "proj.weight", "mlp.gate.weight", "mlp.up.weight", "mlp.down.weight")
        blocks = {k for k in before if k.startswith("policy.blocks.") and k.endswith(linear)}
        assert blocks and moved == blocks


def test_exact_kl_is_zero_at_start_and_positive_after_an_update(tiny_latent_dir, tmp_path):
    trainer = Trainer(latent_cfg(tiny_latent_dir, tmp_path / "kl", steps=3, lr=5e-2))
    trainer.train()
    rows = read_jsonl(Path(trainer.run_dir) / "metrics.jsonl")
    assert rows[0]["kl/mean"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["kl/mean"] > 1e-4


def test_latent_run_resumes_to_the_same_policy(tiny_latent_dir, tmp_path):
    a = Trainer(latent_cfg(tiny_latent_dir, tmp_path / "a", steps=4, save_every=2)).train()
    Trainer(latent_cfg(tiny_latent_dir, tmp_path / "b", steps=2, save_every=2)).train()
    b = Trainer(latent_cfg(tiny_latent_dir, tmp_path / "b", steps=4, save_every=2)).train(resume=True)
    ha, hb = heads(a / "final"), heads(b / "final")
    for k in ha:
        torch.testing.assert_close(ha[k], hb[k], rtol=1e-5, atol=1e-6)


def test_final_latent_dir_generates(tiny_latent_dir, tmp_path):
    from reinlm.latent.model import LatentActionModel

    run_dir = Trainer(latent_cfg(tiny_latent_dir, tmp_path / "gen", steps=1)).train()
    lam = LatentActionModel.from_pretrained(run_dir / "final")
    enc = lam.tokenizer(["The old lighthouse"], return_tensors="pt")
    out = lam.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=4)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_bad_latent_input(tiny_latent_dir, tmp_path):
    with pytest.raises(ConfigError, match="lora_r"):
        latent_cfg(tiny_latent_dir, tmp_path / "x", lora_r=8)
    # --latent-train: a latent-space option; lora needs a rank and adapts the blocks' linear layers itself
    with pytest.raises(ConfigError, match="latent_train: got 'head', a latent-space option"):
        TrainConfig(space="token", latent_train="head")
    with pytest.raises(ConfigError, match="lora_r: --latent-train lora needs a LoRA rank"):
        latent_cfg(tiny_latent_dir, tmp_path / "x", latent_train="lora")
    with pytest.raises(ConfigError, match="lora_targets: got 'all-linear' with --latent-train lora"):
        latent_cfg(tiny_latent_dir, tmp_path / "x", latent_train="lora", lora_r=4, lora_targets="all-linear")
    assert latent_cfg(tiny_latent_dir, tmp_path / "x", latent_train="lora", lora_r=4).lora_r == 4
    with pytest.raises(ReinlmError, match="latent"):
        Trainer(latent_cfg(tmp_path / "missing", tmp_path / "y"))
    assert not (tmp_path / "y").exists()
    with pytest.raises(ReinlmError, match="num_actions|K ="):
        Trainer(latent_cfg(tiny_latent_dir, tmp_path / "z", num_actions=64))
    assert not (tmp_path / "z").exists()


def test_frozen_dtype_bfloat16_puts_the_backbone_in_bf16_and_keeps_the_policy_float32(tiny_latent_dir, tmp_path):
    trainer = Trainer(latent_cfg(tiny_latent_dir, tmp_path / "bf16", frozen_dtype="bfloat16", steps=2, lr=5e-2))
    lam = trainer.policy.lam
    assert {p.dtype for p in lam.backbone.parameters()} == {torch.bfloat16}
    assert {p.dtype for m in (lam.policy, lam.world_model, trainer.policy.ref_policy) for p in m.parameters()} == {
        torch.float32}
    run_dir = trainer.train()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    # the BC reference sees the same bf16 states as the policy: the exact KL still starts at 0
    assert rows[0]["kl/mean"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["kl/mean"] > 1e-4


def test_action_stats_count_the_actions_a_batch_used():
    """The collapse diagnostics: distinct actions, effective number of actions, top action probability, padding
    ignored (a collapsed batch reads 1 / 1.0 / near 1)."""
    import math
    from types import SimpleNamespace

    from reinlm.trainer.latent_policy import LatentPolicy

    actions = torch.tensor([[0, 0, 1, 3], [2, 2, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # the 3 is padding
    probs = torch.full((2, 4, 4), 0.1)
    probs[..., 0] = 0.7
    batch = SimpleNamespace(actions=actions, response_mask=mask, old_logp_all=probs.log())
    st = LatentPolicy.action_stats(SimpleNamespace(num_actions=4), batch)
    assert st["latent/distinct_actions"] == 3
    p = torch.tensor([3, 1, 3]) / 7  # actions 0, 1, 2 taken 3, 1, 3 times
    assert st["latent/action_perplexity"] == pytest.approx(math.exp(float(-(p * p.log()).sum())), rel=1e-5)
    assert st["latent/max_action_prob"] == pytest.approx(0.7, rel=1e-5)
    collapsed = SimpleNamespace(actions=torch.full((2, 4), 5), response_mask=mask, old_logp_all=probs.log())
    st = LatentPolicy.action_stats(SimpleNamespace(num_actions=8), collapsed)
    assert st["latent/distinct_actions"] == 1 and st["latent/action_perplexity"] == pytest.approx(1.0)
