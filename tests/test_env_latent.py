"""Episodes in latent space (tiny backbone, real SmolLM2 tokenizer): the latent policy picks each turn's actions,
the frozen world model writes the text, only the policy trains; observation positions get exactly zero gradient;
a resumed run ends with the same policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reinlm.algorithms import build_algorithm
from reinlm.algorithms.base import AdvantageInputs, LossInputs, LossNorm
from reinlm.cli.main import main
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.loop import Trainer
from reinlm.utils.jsonio import read_jsonl


def _heads(d):
    from safetensors.torch import load_file

    return load_file(str(Path(d) / "heads.safetensors"))


def _cfg(latent_dir, out, **kw) -> TrainConfig:
    base = dict(space="latent", latent=str(latent_dir), environment="builtin:persuade", steps=2, batch_prompts=2,
                samples_per_prompt=2, max_turns=2, turn_tokens=6, max_new_tokens=12, lr=1e-2, kl_coef=0.05,
                seed=0, out=str(out), device="cpu", progress=False, eval_prompts=0, save_every=2, log="none",
                frozen_dtype="float32")
    base.update(kw)
    return TrainConfig(**base)


def test_latent_policy_trains_on_an_environment_from_the_cli(tiny_latent_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--space", "latent", "--latent", str(tiny_latent_dir), "--environment", "builtin:persuade",
                 "--out", str(out), "--steps", "2", "--batch-prompts", "2", "--samples-per-prompt", "2",
                 "--max-turns", "2", "--turn-tokens", "6", "--max-new-tokens", "12", "--lr", "1e-2",
                 "--eval-prompts", "0", "--progress", "false", "--device", "cpu", "--log", "none",
                 "--sample-every", "1"]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["env/turns"] == 2 and rows[0]["env/observation_tokens"] > 0 and rows[0]["latent/distinct_actions"] > 1
    t = read_jsonl(out / "samples.jsonl")[0]["extra"]["transcript"]
    assert t["model_tokens"] == t["model_mask"].count("1") > 0 and "0" in t["model_mask"]
    before, after = _heads(tiny_latent_dir), _heads(out / "final")
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(k.startswith("policy.") for k in moved)  # IDM and world model bit-identical


def test_latent_episodes_fold_what_was_sampled_and_observations_get_zero_gradient(tiny_latent_dir, tmp_path):
    trainer = Trainer(_cfg(tiny_latent_dir, tmp_path / "g"))
    policy = trainer.policy
    batch = trainer.episodes.rollout(trainer.train_prompts, [0, 1], 2, [11, 12])
    model, obs = batch.response_mask.bool(), (batch.response_attn == 1) & (batch.response_mask == 0)
    assert obs.sum() > 10 and model.sum() > 10
    # the fold's actions are the sampled ones, and the policy on one forward over the whole transcript gives the
    # log-probs the sampler recorded turn by turn (float32): actions and states line up with the tokens
    rec = torch.zeros_like(batch.logprobs)
    for b, ep in enumerate(batch.episodes):
        rec[b, : len(ep.ids) - ep.prompt_len] = torch.tensor(ep.logprobs[ep.prompt_len:])
        for (s, e), acts in zip(ep.turns, ep.turn_actions):
            assert batch.actions[b, s - ep.prompt_len: e - ep.prompt_len].tolist() == acts
    assert torch.allclose(batch.logprobs[model], rec[model], atol=1e-4)
    assert torch.all(batch.actions[~model] == 0)
    # the loss's gradient at the policy's logits: exactly zero at every observation position
    logits = []

    def keep(module, inputs, out):
        out.retain_grad()
        logits.append(out)

    hook = policy.policy.out.register_forward_hook(keep)
    scores = policy.score(batch)
    hook.remove()
    ref = policy.reference(batch)
    mask = batch.response_mask.float()
    algo = build_algorithm("grpo")
    algo.cfg.entropy_coef = 0.01
    inputs = AdvantageInputs(scores=torch.arange(4.0), valid=torch.ones(4, dtype=torch.bool), mask=mask,
                             group_ids=batch.group_ids)
    loss, _ = algo.loss(LossInputs(logp=scores.logp, old_logp=batch.logprobs, mask=mask,
                                   targets=algo.advantages(inputs), kl=policy.kl_loss(batch, scores, ref), kl_coef=0.1,
                                   entropy=scores.entropy), LossNorm.single(mask))
    loss.backward()
    P = batch.prompt_ids.shape[1]
    grad = logits[0].grad[:, P - 1:]  # (B, R, K): the logits of the response steps
    assert torch.all(grad[obs] == 0)
    assert grad[model].abs().sum() > 0


def test_latent_episode_run_resumes_to_the_same_policy_and_freezes_the_rest(tiny_latent_dir, tmp_path):
    straight = Trainer(_cfg(tiny_latent_dir, tmp_path / "a", save_every=1))
    backbone = {k: v.clone() for k, v in straight.policy.lam.backbone.state_dict().items()}
    a = straight.train()
    for k, v in straight.policy.lam.backbone.state_dict().items():
        assert torch.equal(backbone[k], v), k
    Trainer(_cfg(tiny_latent_dir, tmp_path / "b", steps=1, save_every=1)).train()
    b = Trainer(_cfg(tiny_latent_dir, tmp_path / "b", save_every=1)).train(resume=True)
    ha, hb = _heads(a / "final"), _heads(b / "final")
    for k in ha:
        assert torch.equal(ha[k], hb[k]), k
    ra = [(r["env/return"], r["env/model_tokens"]) for r in read_jsonl(a / "metrics.jsonl")]
    assert ra == [(r["env/return"], r["env/model_tokens"]) for r in read_jsonl(b / "metrics.jsonl")]
    start = _heads(tiny_latent_dir)
    assert any(not torch.equal(start[k], ha[k]) for k in ha if k.startswith("policy."))


def test_two_player_game_in_latent_space_against_the_frozen_latent_policy(tiny_latent_dir, tmp_path, monkeypatch):
    """``--opponent frozen`` in latent space: the latent model with the behaviour-cloned policy plays the other seat;
    the trained policy stays the latent model's, and the opponent's policy is not trained."""
    from reinlm.latent import turns

    calls, make = [], turns.frozen_latent_opponent

    def spy(lam, ref_policy, temperature):
        reply = make(lam, ref_policy, temperature)
        return lambda ids, n, gen: calls.append(reply.model.policy is ref_policy is not lam.policy) or reply(ids, n, gen)

    monkeypatch.setattr(turns, "frozen_latent_opponent", spy)
    monkeypatch.setattr("reinlm.trainer.episodes.frozen_latent_opponent", spy)
    trainer = Trainer(_cfg(tiny_latent_dir, tmp_path / "ttt", environment="textarena:TicTacToe-v0", opponent="frozen",
                           steps=1, max_turns=1, samples_per_prompt=2))
    ref = {k: v.clone() for k, v in trainer.policy.ref_policy.state_dict().items()}
    run = trainer.train()
    assert calls and all(calls)
    t = read_jsonl(run / "samples.jsonl")[0]["extra"]["transcript"]
    assert t["valid"] and "Tic Tac Toe" in t["observations"][0]
    assert trainer.policy.lam.policy is trainer.policy.trained
    assert all(torch.equal(trainer.policy.ref_policy.state_dict()[k], v) for k, v in ref.items())


def test_bwarea_policy_plays_episodes_and_the_fold_recomputes_its_log_probs(smol_tokenizer, tmp_path):
    """The BWArea family (its policy reads token ids): episodes play through its own stepper, and the fold's
    log-probs (the policy on the whole transcript's ids) are the ones recorded turn by turn."""
    from test_latent_bwarea import bwarea_config, bwarea_state, write_checkpoint

    src = write_checkpoint(tmp_path / "src", bwarea_state(len(smol_tokenizer)), bwarea_config(len(smol_tokenizer)),
                           "safetensors-sharded", smol_tokenizer)
    assert main(["latent", "import-bwarea", str(src), str(tmp_path / "lat")]) == 0
    trainer = Trainer(_cfg(tmp_path / "lat", tmp_path / "run", steps=1, max_new_tokens=8, turn_tokens=4))
    assert type(trainer.policy.lam).__name__ == "BWAreaModel"
    batch = trainer.episodes.rollout(trainer.train_prompts, [0, 1], 2, [11, 12])
    model = batch.response_mask.bool()
    assert model.sum() > 8 and ((batch.response_attn == 1) & ~model).sum() > 8
    rec = torch.zeros_like(batch.logprobs)
    for b, ep in enumerate(batch.episodes):
        rec[b, : len(ep.ids) - ep.prompt_len] = torch.tensor(ep.logprobs[ep.prompt_len:])
    assert torch.allclose(batch.logprobs[model], rec[model], atol=1e-4)
    assert (trainer.train() / "final" / "config.json").is_file()
