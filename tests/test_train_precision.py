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
    monkeypatch.setattr(devices, "native_bfloat16", lambda device="auto": False)  # emulated bf16 is slower
    assert TrainConfig(model="m", device="cpu").train_precision == "same"
    assert TrainConfig(model="m", device="cpu", train_precision="auto").train_precision == "same"


def test_train_precision_is_refused_where_it_cannot_apply(tmp_path):
    with pytest.raises(ConfigError, match="train_precision.*--dtype float32"):
        _cfg(tmp_path, train_precision="bf16-autocast", dtype="bfloat16")
    with pytest.raises(ConfigError, match="train_precision"):
        _cfg(tmp_path, train_precision="bf16-autocast", space="latent", latent=str(tmp_path))
    with pytest.raises(ConfigError, match="train_precision"):
        _cfg(tmp_path, train_precision="fp16")
