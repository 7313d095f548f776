"""The rollout engine: a rollout-dtype copy kept in sync with the trained weights (LoRA merged), and vLLM.

The vLLM tests need the ``vllm`` extra (``make install`` installs it); one engine per model is shared by
every test of the session (``reinlm.rollout.vllm_backend.get_engine``), since starting one is the slow part.
"""

import copy

import pytest
import torch

from reinlm.rollout.config import RolloutConfig
from reinlm.rollout.engine import TokenRolloutEngine, policy_weights
from reinlm.rollout.sampling import SamplingConfig
from reinlm.rollout.token import generate_rollouts, sequence_logprobs
from reinlm.rollout.vllm_backend import vllm_available
from reinlm.utils.devices import cast_parameters

PROMPTS = ["The weather today is", "Once upon a time, in a small village by the sea, there lived"]
needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (pip install 'reinlm[vllm]')")


def _gens(n=len(PROMPTS), base=0):
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def _perturb(model, scale=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def assert_logprobs_match(model, batch, tol=1e-4):
    with torch.no_grad():
        fresh = sequence_logprobs(model, batch)  # one teacher-forced forward at the batch's temperature
    m = batch.response_mask.bool()
    assert (fresh[m] - batch.logprobs[m]).abs().max().item() < tol
    assert (batch.logprobs[~m] == 0).all()


def test_bfloat16_copy_follows_the_trained_weights(tiny_lm):
    model, tok = tiny_lm
    model = copy.deepcopy(model)
    engine = TokenRolloutEngine(model, tok, RolloutConfig(rollout_dtype="bfloat16"))
    s = SamplingConfig(max_new_tokens=8)
    assert engine.dtype == torch.bfloat16 and engine.uses_copy
    first = engine.generate(PROMPTS, 3, s, _gens())
    assert engine.syncs == 1
    _perturb(model, 0.5)
    stale = engine.generate(PROMPTS, 3, s, _gens())  # no weights_changed(): the copy is not re-synced
    assert torch.equal(stale.response_ids, first.response_ids) and engine.syncs == 1
    engine.weights_changed()
    fresh = engine.generate(PROMPTS, 3, s, _gens())
    assert engine.syncs == 2
    ref_model = cast_parameters(copy.deepcopy(model), "bfloat16").eval()  # the perturbed weights, cast anew
    ref = generate_rollouts(ref_model, tok, PROMPTS, 3, s, generator=_gens())
    assert torch.equal(fresh.response_ids, ref.response_ids) and torch.equal(fresh.logprobs, ref.logprobs)
    assert not torch.equal(fresh.response_ids, first.response_ids)
    for (name, p), q in zip(engine._copy.named_parameters(), ref_model.parameters()):
        assert torch.equal(p, q), name
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the trained weights stay float32


def test_same_dtype_samples_from_the_trained_model(tiny_lm):
    model, tok = tiny_lm
    engine = TokenRolloutEngine(model, tok, RolloutConfig(rollout_dtype="same"))
    s = SamplingConfig(max_new_tokens=6, temperature=0.9)
    batch = engine.generate(PROMPTS, 2, s, _gens())
    assert not engine.uses_copy and engine._copy is None
    assert torch.equal(batch.response_ids, generate_rollouts(model, tok, PROMPTS, 2, s, generator=_gens()).response_ids)
    assert_logprobs_match(model, batch)


def test_lora_weights_are_merged_into_the_rollout_copy(tiny_lm):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_lm
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                 lora_dropout=0.0))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # B starts at zero: make the adapter matter
    merged = copy.deepcopy(peft_model).merge_and_unload()
    got = dict(policy_weights(peft_model))
    want = dict(merged.named_parameters())
    assert set(got) == set(want)
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6), name
    # a step on the adapter only: the bfloat16 rollout copy sees it after weights_changed()
    engine = TokenRolloutEngine(peft_model, tok, RolloutConfig(rollout_dtype="bfloat16"))
    s = SamplingConfig(max_new_tokens=6)
    engine.generate(PROMPTS, 2, s, _gens())
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_A" in n:
                p.mul_(-3.0)
    engine.weights_changed()
    batch = engine.generate(PROMPTS, 2, s, _gens())
    merged = cast_parameters(copy.deepcopy(peft_model).merge_and_unload(), "bfloat16").eval()
    ref = generate_rollouts(merged, tok, PROMPTS, 2, s, generator=_gens())
    assert torch.equal(batch.response_ids, ref.response_ids) and torch.equal(batch.logprobs, ref.logprobs)
    assert all(p.dtype == torch.float32 for p in peft_model.parameters())


# ----------------------------------------------------------------------------------------------- vLLM
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama (head dim 64, which vLLM's CPU attention supports) saved with the SmolLM2 tokenizer."""
    from reinlm.testing import save_tiny_model

    return save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("tiny_vllm"), hidden=64, heads=1, seed=7)


@needs_vllm
def test_vllm_logprobs_equal_a_fresh_forward_after_a_weight_push_tiny(tiny_model_dir):
    from reinlm.hub import load_causal_lm

    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    engine = TokenRolloutEngine(model, tok, RolloutConfig(generation_backend="vllm", rollout_dtype="float32"),
                                model_dir=tiny_model_dir)
    s = SamplingConfig(max_new_tokens=12, temperature=0.8)
    before = engine.generate(PROMPTS, 3, s, _gens())
    assert_logprobs_match(model, before)
    _perturb(model, 0.2, seed=1)
    engine.weights_changed()
    after = engine.generate(PROMPTS, 3, s, _gens())
    assert_logprobs_match(model, after)  # the engine samples from the pushed weights
    assert not torch.equal(before.response_ids, after.response_ids)
    # reproducible per prompt generator, independent of the batch
    again = engine.generate(PROMPTS[:1], 3, s, _gens(1))
    assert torch.equal(again.response_ids, after.response_ids[:3, : again.response_ids.shape[1]])
    assert after.group_ids.tolist() == [0, 0, 0, 1, 1, 1] and after.prompts[3] == PROMPTS[1]


@needs_vllm
@pytest.mark.integration
def test_vllm_logprobs_equal_a_fresh_forward_after_a_weight_push_smollm2(smol_lm):
    from reinlm.hub import resolve_model_dir

    model, tok = smol_lm
    model = copy.deepcopy(model)
    engine = TokenRolloutEngine(model, tok, RolloutConfig(generation_backend="vllm", rollout_dtype="float32"),
                                model_dir=resolve_model_dir("smollm2-135m"))
    s = SamplingConfig(max_new_tokens=12, temperature=0.8)
    assert_logprobs_match(model, engine.generate(PROMPTS, 2, s, _gens()))
    _perturb(model, 0.01, seed=2)  # every weight moves, the tied embedding / LM head included
    engine.weights_changed()
    batch = engine.generate(PROMPTS, 2, s, _gens())
    assert_logprobs_match(model, batch)
    assert all(c.strip() for c in batch.completions)


@needs_vllm
@pytest.mark.integration
def test_grpo_with_vllm_pushes_the_weights_after_every_step(tmp_path, monkeypatch):
    """GRPO on SmolLM2 with --generation-backend vllm: before every rollout after an optimiser step the engine
    gets the new weights, and at the end vLLM samples from exactly the trained model (float32, 1e-4)."""
    from reinlm.trainer.config import TrainConfig
    from reinlm.trainer.loop import Trainer

    cfg = TrainConfig(model="smollm2-135m", algo="grpo", reward="sentiment", prompts="builtin:reviews", steps=3,
                      batch_prompts=1, samples_per_prompt=4, max_new_tokens=8, lr=1e-4, kl_coef=0.0, seed=0,
                      out=str(tmp_path / "run"), device="cpu", progress=False, eval_prompts=0, save_every=100,
                      log="none", generation_backend="vllm", rollout_dtype="float32")
    trainer = Trainer(cfg)
    policy = trainer.policy
    engine = policy.rollout_engine
    # the vLLM engine is shared by the process (another test may have pushed into it): count this run's pushes
    from reinlm.rollout.vllm_backend import VLLMEngine

    loads = []
    real_load = VLLMEngine.load_weights

    def counting_load(self, named_tensors):
        loads.append(1)
        return real_load(self, named_tensors)

    monkeypatch.setattr(VLLMEngine, "load_weights", counting_load)
    pushes = []
    real_sync = engine.sync

    def counting_sync():
        real_sync()
        pushes.append(len(loads))

    engine.sync = counting_sync
    trainer.train()
    assert pushes == [1, 2, 3]  # the start weights, then after each of the first two optimiser steps
    policy.after_optimizer_step()  # as after the third step: the next rollout pushes again
    batch = policy.rollout(PROMPTS, 2, [0, 1])
    assert pushes[-1] == 4
    model = policy._unwrapped
    was = model.training
    model.eval()
    assert_logprobs_match(model, batch)
    model.train(was)
