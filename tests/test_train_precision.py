"""--train-precision bf16-autocast (the default, auto, where bfloat16 is native): bfloat16 mixed precision for the
token policy's training forward/backward.

The weights, their gradients and AdamW's state stay float32; the loss and the gradients must stay close to the
float32 ones (the autocast pass is still a different numeric path: rollouts are then not "exact" and TIS is on).
"""

import copy

import pytest
import torch

from reinlm.errors import ConfigError
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.token_policy import TokenPolicy

PROMPTS = ["Tell me about red.", "Tell me about the sea and", "A short story:"]


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(model="tiny", reward="unused", steps=1, batch_prompts=3, samples_per_prompt=4, max_new_tokens=8,
                lr=1e-3, kl_coef=0.0, seed=0, out=str(tmp_path), device="cpu", progress=False, eval_prompts=0,
                log="none", held_out_fraction=0.0, rollout_dtype="same")
    base.update(kw)
    return TrainConfig(**base)


def _loss_and_grads(policy: TokenPolicy, batch, adv: torch.Tensor):
    policy.model.zero_grad(set_to_none=True)
    scores = policy.score(batch)
    mask = batch.response_mask.float()
    loss = -(scores.logp * adv[:, None] * mask).sum() / mask.sum()
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in policy.model.parameters() if p.grad is not None])
    return float(loss.detach()), scores.logp.detach(), grads


def test_default_training_is_bf16_autocast_and_stays_close_to_float32(tiny_lm, tmp_path):
    """The default (auto) trains in bfloat16 mixed precision where the CPU has native bfloat16 (elsewhere the test
    asks for it explicitly: emulated, slower, the same numbers); the issue's bar: loss within 2%, gradient cosine
    above 0.999 against the exact float32 path (train_precision same)."""
    from reinlm.utils.devices import native_bfloat16

    model, tok = tiny_lm
    fp32 = TokenPolicy(_cfg(tmp_path, train_precision="same"), torch.device("cpu"),
                       model=copy.deepcopy(model), tokenizer=tok)
    default = _cfg(tmp_path) if native_bfloat16("cpu") else _cfg(tmp_path, train_precision="bf16-autocast")
    assert default.train_precision == "bf16-autocast"
    mixed = TokenPolicy(default, torch.device("cpu"), model=copy.deepcopy(model), tokenizer=tok)
    batch = fp32.rollout(PROMPTS, 4, seeds=[1, 2, 3])
    adv = torch.linspace(-1.0, 1.0, len(batch))
    loss32, logp32, g32 = _loss_and_grads(fp32, batch, adv)
    loss16, logp16, g16 = _loss_and_grads(mixed, batch, adv)
    mask = batch.response_mask.bool()
    diff = (logp16 - logp32)[mask].abs()
    assert 1e-4 < float(diff.max()) < 0.02  # bfloat16 products really ran, and stayed close
    assert abs(loss16 - loss32) < 0.02 * abs(loss32)
    cos = float(torch.nn.functional.cosine_similarity(g16.double(), g32.double(), dim=0))
    assert cos > 0.999, cos
    assert abs(float(g16.norm() / g32.norm()) - 1) < 0.01
    # mixed precision: the trained weights and their gradients are float32
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in mixed.model.parameters() if p.grad is not None)
    assert fp32.rollout_logprobs_exact and not mixed.rollout_logprobs_exact  # TIS (auto) corrects the mixed one


def test_train_precision_auto_resolves_by_hardware_space_and_dtype(monkeypatch, tmp_path):
    import reinlm.utils.devices as devices
    from reinlm.config.build import config_to_dict

    monkeypatch.setattr(devices, "native_bfloat16", lambda device="auto": True)
    cfg = TrainConfig(model="m", device="cpu")  # auto is the default
    assert cfg.train_precision == "bf16-autocast"
    assert config_to_dict(cfg)["train_precision"] == "bf16-autocast"  # config.yaml records what ran
    assert TrainConfig(model="m", device="cpu", train_precision="same").train_precision == "same"
    assert TrainConfig(model="m", device="cpu", dtype="bfloat16").train_precision == "same"  # weights in bf16
    latent = TrainConfig(model="m", device="cpu", space="latent", latent=str(tmp_path))
    assert latent.train_precision == "same"  # a token-space option
    # the frozen networks' auto dtype: the token-space reference follows the training forward's precision
    assert cfg.frozen_dtype == "bfloat16"
    assert TrainConfig(model="m", device="cpu", train_precision="same").frozen_dtype == "same"
    assert latent.frozen_dtype == "bfloat16"  # the latent backbone
    monkeypatch.setattr(devices, "native_bfloat16", lambda device="auto": False)  # emulated bf16 is slower
    assert TrainConfig(model="m", device="cpu").train_precision == "same"
    assert TrainConfig(model="m", device="cpu", train_precision="bf16-autocast").frozen_dtype == "same"
    assert TrainConfig(model="m", device="cpu", train_precision="auto").train_precision == "same"


def test_train_precision_is_refused_where_it_cannot_apply(tmp_path):
    with pytest.raises(ConfigError, match="train_precision.*--dtype float32"):
        _cfg(tmp_path, train_precision="bf16-autocast", dtype="bfloat16")
    with pytest.raises(ConfigError, match="train_precision"):
        _cfg(tmp_path, train_precision="bf16-autocast", space="latent", latent=str(tmp_path))
    with pytest.raises(ConfigError, match="train_precision"):
        _cfg(tmp_path, train_precision="fp16")


def test_reference_runs_the_training_forward_so_the_kl_starts_at_zero(tiny_lm, tmp_path):
    """Under bf16-autocast training the reference is the training forward at the starting weights: its linear
    weights stored in bfloat16 (what autocast computes them in), embeddings and norms float32, run under the same
    autocast. Its log-probs equal the policy's bit for bit, so a one-step run logs KL exactly 0 at step 1 (a pure
    bfloat16 reference made it -0.0027 here: samples from the bfloat16 rollout copy, k1 = -KL(ref || policy))."""
    from reinlm.trainer.loop import Trainer
    from reinlm.utils.jsonio import read_jsonl

    model, tok = tiny_lm
    kw = dict(train_precision="bf16-autocast", frozen_dtype="bfloat16", kl_coef=0.05)
    pol = TokenPolicy(_cfg(tmp_path, **kw), torch.device("cpu"), model=copy.deepcopy(model), tokenizer=tok)
    ref = pol.ref_model
    assert {p.dtype for n, p in ref.named_parameters() if "proj" in n or "lm_head" in n} == {torch.bfloat16}
    assert {p.dtype for n, p in ref.named_parameters() if "embed" in n or "norm" in n} == {torch.float32}
    batch = pol.rollout(PROMPTS, 4, seeds=[1, 2, 3])
    assert torch.equal(pol.reference(batch).logp, pol.score(batch).logp.detach())
    assert pol.step_metrics() == {"mismatch/ref_logp_abs": 0.0}  # logged at the first step of every such run
    cfg = _cfg(tmp_path / "run", prompts="builtin:neutral", reward="target_length:20", batch_prompts=2,
               rollout_dtype="bfloat16", **kw)
    rows = read_jsonl(Trainer(cfg, model=copy.deepcopy(model), tokenizer=tok).train() / "metrics.jsonl")
    assert rows[0]["kl/mean"] == 0.0 and rows[0]["kl/per_token"] == 0.0
    assert rows[0]["mismatch/kl"] > 0  # the rollouts did come from another numeric path (the bfloat16 copy)


def test_autocast_storage_keeps_a_tied_embedding_float32(tiny_lm):
    """A tied LM head (SmolLM2's) is the input embedding, which autocast leaves in float32: it stays float32."""
    from reinlm.utils.devices import cast_autocast_weights

    m = copy.deepcopy(tiny_lm[0])
    m.lm_head.weight = m.model.embed_tokens.weight
    cast_autocast_weights(m, torch.bfloat16)
    assert m.lm_head.weight is m.model.embed_tokens.weight and m.lm_head.weight.dtype == torch.float32
    assert m.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
