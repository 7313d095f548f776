"""Batches: dynamic sampling refills zero-spread groups, --mask-truncated keeps truncated completions out of the
loss, rollouts joined across lengths, and the sampler/trainer mismatch (bfloat16 sampling, float32 training)."""

from __future__ import annotations

import copy
import zlib

import pytest
import torch

from reinlm.data.prompts import PromptSet
from reinlm.rewards.combine import RewardSet
from reinlm.trainer.batching import concat_rollouts, truncated_rows
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.loop import Trainer
from reinlm.utils.jsonio import read_jsonl

CONSTANT = ["Flat one:", "Flat two:", "Flat three:"]
VARIED = ["Tell me about red.", "Write a long and careful story about the colour blue.", "Green?"]


def crc_or_constant(prompts, completions, **columns):
    """1.0 for the 'Flat' prompts (a group with no spread); a hash of the completion in [0, 1) otherwise."""
    return [1.0 if p.startswith("Flat") else (zlib.crc32(c.encode()) % 1000) / 1000 for p, c in zip(prompts, completions)]


def make_cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(model="tiny", reward="unused", steps=2, batch_prompts=2, samples_per_prompt=4, max_new_tokens=6,
                lr=3e-3, kl_coef=0.0, seed=0, out=str(tmp_path), device="cpu", progress=False, eval_prompts=0,
                save_every=100, log="none", held_out_fraction=0.0, rollout_dtype="same",
                train_precision="same")  # the exact float32 path: rollouts re-score to their own log-probs
    base.update(kw)
    return TrainConfig(**base)


def trainer(tiny_lm, tmp_path, prompts, **kw) -> Trainer:
    model, tok = tiny_lm
    return Trainer(make_cfg(tmp_path, **kw), model=copy.deepcopy(model), tokenizer=tok,
                   reward_set=RewardSet.from_functions([crc_or_constant]), prompt_set=PromptSet(prompts))


def test_dynamic_sampling_drops_zero_spread_groups_and_refills(tiny_lm, tmp_path):
    tr = trainer(tiny_lm, tmp_path, CONSTANT + VARIED, dynamic_sampling=True, dynamic_sampling_max_tries=6)
    dropped = 0
    for step in range(3):
        out = tr.train_step(step)
        m, batch = out["metrics"], out["batch"]
        assert len(batch) == 8 and len(set(batch.group_ids.tolist())) == 2  # always batch_prompts groups of G
        assert m["batch/zero_spread_kept"] == 0 and m["reward/frac_zero_std"] == 0.0
        assert not any(p.startswith("Flat") for p in batch.prompts)
        assert m["batch/refill_rollouts"] >= (1 if m["batch/dropped_groups"] else 0)
        assert m["mismatch/max_abs_logp_diff"] < 1e-4  # the joined batch re-scores to the sampling log-probs
        dropped += m["batch/dropped_groups"]
    assert dropped > 0  # some step drew a constant prompt, dropped it and refilled
    # without dynamic sampling the constant groups stay in the batch
    plain = trainer(tiny_lm, tmp_path / "plain", CONSTANT + VARIED)
    fracs = [plain.train_step(s)["metrics"]["reward/frac_zero_std"] for s in range(3)]
    assert max(fracs) > 0


def test_dynamic_sampling_tops_up_when_tries_run_out(tiny_lm, tmp_path):
    tr = trainer(tiny_lm, tmp_path, CONSTANT, dynamic_sampling=True, dynamic_sampling_max_tries=1)
    m = tr.train_step(0)["metrics"]
    assert m["batch/dropped_groups"] == 4 and m["batch/refill_rollouts"] == 1  # 2 groups x (first try + 1 refill)
    assert m["batch/zero_spread_kept"] == 2 and m["reward/frac_zero_std"] == 1.0


def _batch(response_ids, lengths, prompt_len=2, pad=0):
    from reinlm.rollout.token import RolloutBatch

    response_ids = torch.tensor(response_ids)
    B, R = response_ids.shape
    mask = (torch.arange(R)[None, :] < torch.tensor(lengths)[:, None]).long()
    return RolloutBatch(prompt_ids=torch.full((B, prompt_len), 5), prompt_mask=torch.ones(B, prompt_len, dtype=torch.long),
                        response_ids=response_ids, response_mask=mask, logprobs=-torch.rand(B, R) * mask,
                        group_ids=torch.arange(B), prompts=["p"] * B, completions=["c"] * B, pad_token_id=pad)


def test_truncated_rows():
    # EOS = 2, max_new_tokens = 3: stopped early; full length ending in EOS; full length without EOS
    b = _batch([[7, 2, 0], [7, 8, 2], [7, 8, 9]], [2, 3, 3])
    assert truncated_rows(b, 3, [2]).tolist() == [False, False, True]


def test_concat_rollouts_pads_prompts_left_and_responses_right():
    a = _batch([[7, 2]], [2], prompt_len=3)
    b = _batch([[7, 8, 9], [4, 2, 0]], [3, 2], prompt_len=1)
    c = concat_rollouts([a, b])
    assert c.prompt_ids.shape == (3, 3) and c.response_ids.shape == (3, 3)
    assert c.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 1]]
    assert c.response_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 0]]
    assert c.group_ids.tolist() == [0, 1, 2] and len(c.completions) == 3
    assert torch.equal(c.logprobs[1:], b.logprobs) and torch.equal(c.logprobs[0, :2], a.logprobs[0])


def test_mask_truncated_keeps_truncated_completions_out_of_the_loss(tiny_lm, tmp_path):
    # a random tiny model almost never samples EOS in 6 tokens: every completion is truncated
    tr = trainer(tiny_lm, tmp_path, VARIED, mask_truncated=True, steps=1)
    before = {k: v.clone() for k, v in tr.policy.model.state_dict().items()}
    m = tr.train_step(0)["metrics"]
    assert m["response/truncated_frac"] == 1.0
    assert m["loss/policy"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in tr.policy.model.state_dict().items())  # no update
    tr = trainer(tiny_lm, tmp_path / "unmasked", VARIED, steps=1)
    tr.train_step(0)
    assert not all(torch.equal(before[k], v) for k, v in tr.policy.model.state_dict().items())


@pytest.mark.parametrize("tis", ["token", "sequence", "auto"])
def test_bf16_sampling_fp32_training_logs_mismatch_and_trains_with_tis(tiny_lm, tmp_path, tis):
    """Rollouts from the engine's bfloat16 copy (re-synced after every optimiser step), training in float32."""
    tr = trainer(tiny_lm, tmp_path, VARIED, steps=3, tis=tis, tis_cap=2.0, update_epochs=2, kl_coef=0.05,
                 rollout_dtype="bfloat16")
    assert not tr.policy.rollout_logprobs_exact
    assert tr.tis_level == ("token" if tis == "auto" else tis)  # auto: on, the sampler is another numeric path
    synced = []
    real = tr.policy.after_optimizer_step
    tr.policy.after_optimizer_step = lambda: (synced.append(1), real())[1]
    before = {k: v.clone() for k, v in tr.policy.model.state_dict().items()}
    run = tr.train()
    rows = read_jsonl(run / "metrics.jsonl")
    assert len(rows) == 3 and len(synced) == 6  # 3 steps x 2 epochs: the hook ran after every optimiser step
    for r in rows:
        assert 0 < r["mismatch/kl"] < 0.05  # bfloat16 vs float32 log-probs of the same tokens differ, a little
        assert r["mismatch/max_abs_logp_diff"] > 1e-3
        assert 0 <= r["mismatch/tis_clip_fraction"] <= 1
        assert all(v == v for v in r.values() if isinstance(v, float))  # no NaN anywhere
    assert not all(torch.equal(before[k], v) for k, v in tr.policy.model.state_dict().items())
    # rollouts from the training model itself log no mismatch to speak of, and auto leaves TIS off
    tr = trainer(tiny_lm, tmp_path / "fp32", VARIED, steps=1, rollout_dtype="same")
    m = tr.train_step(0)["metrics"]
    assert m["mismatch/kl"] < 1e-6
    assert tr.tis_level == "none" and "mismatch/tis_clip_fraction" not in m


def test_frozen_perplexity_is_logged_every_step_in_both_spaces(tiny_lm, tmp_path, tiny_latent_dir):
    from reinlm.trainer.policy import Policy

    tr = trainer(tiny_lm, tmp_path, VARIED, log_frozen_perplexity=True, kl_coef=0.0)
    assert isinstance(tr.policy, Policy)  # the token policy implements the written protocol
    m = tr.train_step(0)["metrics"]
    assert 1.0 < m["response/perplexity_frozen"] < 1e6
    assert "response/perplexity_frozen" not in trainer(tiny_lm, tmp_path / "off", VARIED).train_step(0)["metrics"]
    cfg = make_cfg(tmp_path / "latent", model="unused", space="latent", latent=str(tiny_latent_dir),
                   log_frozen_perplexity=True)
    tr = Trainer(cfg, reward_set=RewardSet.from_functions([crc_or_constant]), prompt_set=PromptSet(VARIED))
    assert isinstance(tr.policy, Policy)
    m = tr.train_step(0)["metrics"]
    assert 1.0 < m["response/perplexity_frozen"] < 1e6


def test_held_out_kl_is_zero_before_training_with_bf16_rollouts(tiny_lm, tmp_path):
    """The evaluation KL compares the training model with the frozen start: a bfloat16 sampler's rounding must not
    show up as KL."""
    tr = trainer(tiny_lm, tmp_path, VARIED + CONSTANT, rollout_dtype="bfloat16", eval_prompts=2, eval_samples=2,
                 held_out_fraction=0.3, frozen_dtype="same")  # a float32 frozen start: the KL is the sampler's only
    assert tr.evaluate_held_out("before")["kl_to_reference"] == pytest.approx(0.0, abs=1e-5)


def test_overlong_penalty_gets_completion_ids_from_the_trainer(tiny_lm, tmp_path):
    from reinlm.rewards import parse_reward_spec

    model, tok = tiny_lm
    tr = Trainer(make_cfg(tmp_path), model=copy.deepcopy(model), tokenizer=tok, prompt_set=PromptSet(VARIED),
                 reward_set=parse_reward_spec("overlong_penalty:6,2"))
    m = tr.train_step(0)["metrics"]
    # a random tiny model writes all 6 tokens: (6 - 2 - 6) / 2 = -1 for every completion
    assert m["reward/mean"] == pytest.approx(-1.0) and m["response/truncated_frac"] == 1.0


def test_dynamic_sampling_joins_latent_batches(tmp_path, tiny_latent_dir):
    """Refilled latent groups (prompts of other lengths) are joined with their backbone states and action
    distributions padded in place, and the update runs on the joined batch."""
    cfg = make_cfg(tmp_path, model="unused", space="latent", latent=str(tiny_latent_dir), dynamic_sampling=True,
                   dynamic_sampling_max_tries=6, kl_coef=0.05)
    tr = Trainer(cfg, reward_set=RewardSet.from_functions([crc_or_constant]), prompt_set=PromptSet(CONSTANT + VARIED))
    refills = 0
    for step in range(3):
        out = tr.train_step(step)
        batch, m = out["batch"], out["metrics"]
        assert len(batch) == 8 and batch.hidden.shape[1] == batch.prompt_ids.shape[1] + batch.response_ids.shape[1] - 1
        assert not any(p.startswith("Flat") for p in batch.prompts)
        assert m["kl/mean"] == m["kl/mean"] and m["loss/policy"] == m["loss/policy"]  # finite, not NaN
        # the joined batch re-scores to the rollout's own action log-probs: the padding kept every position
        assert m["mismatch/max_abs_logp_diff"] < 1e-4
        refills += m["batch/refill_rollouts"]
    assert refills > 0


@pytest.mark.parametrize("kl_in", ["loss", "reward"])
def test_inexact_rollouts_recompute_log_probs_only_when_something_reads_them_first(tiny_lm, tmp_path, kl_in):
    """bfloat16 rollouts, one optimiser step: the update's first pass gives the trainer's log-probs; the no-grad
    recompute runs only for a KL reward. Either way the logged KL is the trainer's (float32 policy = float32
    reference before the first update: 0), not the bfloat16 sampler's (its rounding would show as KL)."""
    tr = trainer(tiny_lm, tmp_path, VARIED, steps=1, kl_coef=0.05, kl_in=kl_in, kl_estimator="k1",
                 rollout_dtype="bfloat16", frozen_dtype="same")
    assert not tr.policy.rollout_logprobs_exact
    calls = []
    real = tr.policy.score
    tr.policy.score = lambda batch, **kw: (calls.append(torch.is_grad_enabled()), real(batch, **kw))[1]
    m = tr.train_step(0)["metrics"]
    assert calls == ([False, True] if kl_in == "reward" else [True])  # [no-grad recompute,] the update's pass
    assert abs(m["kl/mean"]) < 1e-5 and m["mismatch/max_abs_logp_diff"] > 1e-3
