"""End-to-end training on a tiny random Llama (real SmolLM2 tokenizer): every algorithm moves the reward,
checkpoints resume to the same weights, bad input fails before heavy work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reinlm.errors import ConfigError, ReinlmError
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.loop import Trainer, choose_prompts, lr_lambda
from reinlm.utils.jsonio import read_jsonl

ASSETS = Path(__file__).parent / "assets"
SPACE_REWARD = f"{ASSETS / 'toy_rewards.py'}:space_share"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama saved as an ordinary model directory (loadable by --model DIR)."""
    from reinlm.testing import save_tiny_model

    return Path(save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("tiny-model"), seed=0))


def tiny_cfg(model_dir, out, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), reward=SPACE_REWARD, prompts="builtin:neutral", steps=3, batch_prompts=2,
                samples_per_prompt=4, max_new_tokens=8, lr=3e-3, kl_coef=0.01, seed=0, out=str(out), device="cpu",
                progress=False, eval_prompts=2, eval_samples=2, save_every=100, log="none")
    base.update(kw)
    return TrainConfig(**base)


def weights(model_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


@pytest.mark.parametrize("algo", ["reinforce", "grpo", "rloo", "ppo", "reinforce_pp", "remax"])
def test_every_algorithm_trains_and_writes_a_run(algo, tiny_model_dir, tmp_path):
    cfg = tiny_cfg(tiny_model_dir, tmp_path / algo, algo=algo, steps=2,
                   update_epochs=2 if algo == "ppo" else 1)
    run_dir = Trainer(cfg).train()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward/mean", "kl/mean", "kl/beta", "perf/completions_per_s", "loss/policy", "policy/entropy"):
        assert key in rows[0], key
    assert rows[0]["kl/beta"] == pytest.approx(0.01)
    if algo == "ppo":
        assert "loss/value" in rows[0]
    before, after = weights(tiny_model_dir), weights(run_dir / "final")
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2, "most parameter tensors should move"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "train_eval.json").is_file()
    assert (run_dir / "checkpoints" / "step-2" / "trainer_state.json").is_file()


def test_grpo_raises_a_learnable_reward(smol_tokenizer, tmp_path):
    # A random tiny model spreads its mass over all 49152 tokens, so no token is sampled twice and nothing
    # can be learned in a few steps; a sharper output layer (logits x30) gives it a few hundred likely
    # tokens per context, as a real LM has. Measured: space share 0.094 -> 0.167 in 12 steps.
    from reinlm.testing import tiny_causal_lm

    model = tiny_causal_lm(smol_tokenizer, seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model.save_pretrained(tmp_path / "sharp")
    smol_tokenizer.save_pretrained(tmp_path / "sharp")
    # rollout_dtype same: the trajectory was calibrated on float32 sampling; at lr 1e-2 the policy collapses within
    # ~6 steps onto whichever mode it samples, and a bfloat16 copy samples other tokens (it collapsed onto a
    # 0.1-reward mode, float32 onto a 0.333 one; the dtype mismatch itself was 0.001 nats of KL per token);
    # train_precision same for the same reason: with the bf16-autocast default it went 0.099 -> 0.147 (+0.047)
    cfg = tiny_cfg(tmp_path / "sharp", tmp_path / "learn", steps=12, lr=1e-2, kl_coef=0.0,
                   samples_per_prompt=8, max_new_tokens=10, rollout_dtype="same", train_precision="same")
    run_dir = Trainer(cfg).train()
    rewards = [r["reward/mean"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.05, rewards


def test_resume_matches_a_straight_run(tiny_model_dir, tmp_path):
    straight = Trainer(tiny_cfg(tiny_model_dir, tmp_path / "a", steps=4, save_every=2)).train()
    part = Trainer(tiny_cfg(tiny_model_dir, tmp_path / "b", steps=2, save_every=2)).train()
    resumed = Trainer(tiny_cfg(tiny_model_dir, part, steps=4, save_every=2)).train(resume=True)
    wa, wb = weights(straight / "final"), weights(resumed / "final")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    ra = [r["reward/mean"] for r in read_jsonl(straight / "metrics.jsonl")]
    rb = [r["reward/mean"] for r in read_jsonl(resumed / "metrics.jsonl")]
    assert ra == pytest.approx(rb, abs=1e-6)


def test_adaptive_kl_controller_moves_beta(tiny_model_dir, tmp_path):
    # rollout_dtype same: the k1 estimate is >= 0 on average only under the policy that sampled; with a bfloat16
    # copy sampling, 16 samples gave kl/mean = -0.016 at step 2 (the controller itself is dtype-blind)
    cfg = tiny_cfg(tiny_model_dir, tmp_path / "akl", steps=3, kl_coef=0.1, kl_target=1e-6, kl_horizon=10,
                   rollout_dtype="same", frozen_dtype="same", train_precision="same")  # exact float32: KL 0 at step 1
    rows = read_jsonl(Trainer(cfg).train() / "metrics.jsonl")
    betas = [r["kl/beta"] for r in rows]
    assert betas[0] == pytest.approx(0.1)
    # step 1: the policy is the reference, KL = 0 < target: e = clip(0/target - 1) = -0.2,
    # beta *= 1 - 0.2 * n_steps / horizon = 1 - 0.2 * 8 / 10 = 0.84
    assert rows[0]["kl/mean"] == pytest.approx(0.0, abs=1e-6)
    assert betas[1] == pytest.approx(0.1 * 0.84, rel=1e-6)
    # step 2: after an update KL >> 1e-6: e clipped at +0.2, beta *= 1.16
    assert rows[1]["kl/mean"] > 1e-4
    assert betas[2] == pytest.approx(0.1 * 0.84 * 1.16, rel=1e-6)


def test_sigkill_mid_training_then_resume_finishes(tiny_model_dir, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "reinlm.cli.main", "train", "--model", str(tiny_model_dir), "--reward", SPACE_REWARD,
           "--prompts", "builtin:neutral", "--steps", "40", "--batch-prompts", "2", "--samples-per-prompt", "2",
           "--max-new-tokens", "6", "--save-every", "1", "--device", "cpu", "--out", str(out), "--progress", "false",
           "--eval-prompts", "0", "--log", "none", "--kl-coef", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and not (out / "checkpoints" / "step-2" / "trainer_state.json").exists():
        time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    from reinlm.trainer.checkpoint import latest_checkpoint

    step, _ = latest_checkpoint(out)
    assert 2 <= step < 40
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    resume = subprocess.run([sys.executable, "-m", "reinlm.cli.main", "train", "--resume", str(out), "--steps",
                             str(step + 2), "--progress", "false"], env=env, capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stderr[-2000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert rows[-1]["step"] == step + 2
    assert [r["step"] for r in rows] == list(range(1, step + 3)), "no step lost or logged twice"
    assert (out / "final" / "config.json").is_file()
    del leftovers  # a half-written temp dir may remain from the kill; it is never mistaken for a checkpoint


@pytest.mark.parametrize("kw, field", [
    (dict(algo="ppo2"), "algo"),
    (dict(algo="grpo", samples_per_prompt=1), "samples_per_prompt"),
    (dict(space="latent"), "latent"),
    (dict(algo="rloo", samples_per_prompt=1), "samples_per_prompt"),
    (dict(loss_type="cispo", clip_ratio_c=0.5), "clip_ratio_c"),
    (dict(top_p=0.0), "top_p"),
    (dict(kl_target=1.0, kl_coef=0.0), "kl_coef"),
])
def test_bad_config_names_the_field(kw, field, tmp_path):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{"out": str(tmp_path), **kw})


def test_max_new_tokens_beyond_context_fails_before_training(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="max_new_tokens"):
        Trainer(tiny_cfg(tiny_model_dir, tmp_path / "ctx", max_new_tokens=10**6))
    assert not (tmp_path / "ctx").exists()


def test_reward_returning_none_everywhere_is_a_clear_error(tiny_model_dir, tmp_path):
    cfg = tiny_cfg(tiny_model_dir, tmp_path / "none", reward=f"{ASSETS / 'toy_rewards.py'}:always_none", steps=1,
                   eval_prompts=0)
    with pytest.raises(ReinlmError, match="always_none"):
        Trainer(cfg).train()


def test_prompt_choice_and_lr_schedule_are_deterministic():
    assert choose_prompts(50, 4, seed=1, step=3) == choose_prompts(50, 4, seed=1, step=3)
    assert choose_prompts(50, 4, seed=1, step=3) != choose_prompts(50, 4, seed=1, step=4)
    cfg = TrainConfig(steps=10, warmup_steps=2, lr_schedule="linear")
    f = lr_lambda(cfg)
    assert [round(f(s), 4) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]


def test_cli_train_then_generate_from_final(tiny_model_dir, tmp_path, capsys):
    from reinlm.cli.main import main

    out = tmp_path / "cli"
    rc = main(["train", "--model", str(tiny_model_dir), "--reward", SPACE_REWARD, "--prompts", "builtin:neutral",
               "--steps", "1", "--batch-prompts", "1", "--samples-per-prompt", "2", "--max-new-tokens", "4",
               "--device", "cpu", "--out", str(out), "--progress", "false", "--log", "none", "--print-completions", "1"])
    assert rc == 0
    printed = capsys.readouterr()
    assert "run directory" in printed.out
    assert "step 1: 1 of 2 completions" in printed.err and "  [1] reward " in printed.err  # TRL's log_completions
    final, last = out / "final" / "model.safetensors", out / "checkpoints" / "step-1" / "policy" / "model.safetensors"
    assert final.is_file() and final.stat().st_size > 1_000_000
    assert final.stat().st_ino == last.stat().st_ino  # one copy of the weights on disk, not two (a hard link)
    shutil.rmtree(out / "checkpoints")  # pruning the checkpoint leaves the final model whole
    assert main(["generate", "--model", str(out / "final"), "--max-new-tokens", "2", "--prompt", "Hello"]) == 0
    # an unknown algo is refused by the config layer (checked against the algorithm registry) with exit status 2
    assert main(["train", "--algo", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "algo: got 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_ppo_with_a_critic_runs_and_counts_critic_metrics(tiny_model_dir, tmp_path):
    # the tiny random critic answers gibberish: every critique is unparseable or finds no span, which must
    # give zero intrinsic reward and be counted, never stop training
    cfg = tiny_cfg(tiny_model_dir, tmp_path / "critic", algo="ppo", steps=2, critic=str(tiny_model_dir),
                   critic_task="sentiment", critic_values="0.5,-0.5")
    run_dir = Trainer(cfg).train()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[0]["critic/queried"] == 8
    assert rows[0]["critic/failures"] + rows[0]["critic/spans_found"] >= 1
    assert "reward/dense_mean" in rows[0]


def test_ppo_with_a_separate_value_model_resumes_to_the_same_weights(tiny_model_dir, tmp_path):
    kw = dict(algo="ppo", value_model="separate", save_every=1, update_epochs=2)
    straight = Trainer(tiny_cfg(tiny_model_dir, tmp_path / "a", steps=2, **kw)).train()
    Trainer(tiny_cfg(tiny_model_dir, tmp_path / "b", steps=1, **kw)).train()
    resumed = Trainer(tiny_cfg(tiny_model_dir, tmp_path / "b", steps=2, **kw)).train(resume=True)
    assert (resumed / "checkpoints" / "step-2" / "policy" / "value_model").is_dir()
    wa, wb = weights(straight / "final"), weights(resumed / "final")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_frozen_dtype_bfloat16_casts_only_the_frozen_copies(tiny_model_dir, tmp_path):
    from reinlm.trainer.token_policy import TokenPolicy

    cfg = tiny_cfg(tiny_model_dir, tmp_path / "bf16", algo="ppo", value_model="separate", frozen_dtype="bfloat16",
                   train_precision="same")  # bf16-autocast: test_train_precision.py
    assert cfg.frozen_dtype_name == "bfloat16"
    pol = TokenPolicy(cfg, torch.device("cpu"), with_value_head=True)
    dtypes = lambda m: {p.dtype for p in m.parameters()}  # noqa: E731
    assert dtypes(pol.ref_model) == {torch.bfloat16} and pol.frozen_lm is pol.ref_model
    assert dtypes(pol.model) == dtypes(pol.value_model) == {torch.float32}  # trained weights stay float32
    inv_freq = dict(pol.ref_model.named_buffers())["model.rotary_emb.inv_freq"]
    assert inv_freq.dtype == torch.float32  # buffers are not rounded (rotary positions keep their precision)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    from reinlm.rollout.token import token_logprobs

    with torch.no_grad():
        lp32 = token_logprobs(pol.model, ids, torch.ones_like(ids), 3).logp
        lp16 = token_logprobs(pol.ref_model, ids, torch.ones_like(ids), 3).logp
    assert not torch.equal(lp32, lp16)  # really computed in bf16 ...
    torch.testing.assert_close(lp16, lp32, atol=0.05, rtol=0)  # ... and close to the float32 log-probs
    assert TrainConfig(model="m", frozen_dtype="same", dtype="bfloat16").frozen_dtype_name == "bfloat16"


def test_bfloat16_reference_error_is_measured_once_at_the_start(tiny_model_dir, tmp_path):
    """mismatch/ref_logp_abs: the bfloat16 reference's log-probs against the float32 training forward's (the trained
    weights before any step), measured at the first reference call only; none with the float32 reference. (Under
    bf16-autocast training it is 0: test_train_precision.py.)"""
    from reinlm.rollout.token import token_logprobs
    from reinlm.trainer.token_policy import TokenPolicy

    pol = TokenPolicy(tiny_cfg(tiny_model_dir, tmp_path / "a", frozen_dtype="bfloat16", train_precision="same"),
                      torch.device("cpu"))
    batch = pol.rollout(["Tell me about red.", "The sea"], 2, seeds=[1, 2])
    R, mask = batch.response_ids.shape[1], batch.response_mask.float()
    ref = pol.reference(batch).logp
    with torch.no_grad():
        exact = token_logprobs(pol.model, batch.input_ids, batch.attention_mask, R).logp
    want = float(((ref - exact).abs() * mask).sum() / mask.sum())
    got = pol.step_metrics()
    assert want > 1e-4 and got == {"mismatch/ref_logp_abs": pytest.approx(want, rel=1e-5)}
    assert pol.step_metrics() == {}  # returned once
    pol.reference(batch)
    assert pol.step_metrics() == {}  # measured once
    same = TokenPolicy(tiny_cfg(tiny_model_dir, tmp_path / "b", frozen_dtype="same"), torch.device("cpu"))
    same.reference(batch)
    assert same.step_metrics() == {}  # the exact float32 path: nothing to measure


def test_reference_error_is_logged_at_the_first_step_only(tiny_model_dir, tmp_path):
    cfg = tiny_cfg(tiny_model_dir, tmp_path / "log", steps=2, frozen_dtype="bfloat16", eval_prompts=0,
                   samples_per_prompt=2, max_new_tokens=4, train_precision="same")
    rows = read_jsonl(Trainer(cfg).train() / "metrics.jsonl")
    assert rows[0]["mismatch/ref_logp_abs"] > 1e-4 and "mismatch/ref_logp_abs" not in rows[1]


def test_frozen_dtype_auto_resolves_by_hardware(monkeypatch):
    import reinlm.utils.devices as utils

    monkeypatch.setattr(utils, "native_bfloat16", lambda device="auto": True)
    assert TrainConfig(model="m", frozen_dtype="auto", device="cpu").frozen_dtype == "bfloat16"
    assert TrainConfig(model="m", device="cpu").frozen_dtype == "bfloat16"  # auto is the default
    monkeypatch.setattr(utils, "native_bfloat16", lambda device="auto": False)
    cfg = TrainConfig(model="m", frozen_dtype="auto", device="cpu")
    assert (cfg.frozen_dtype, cfg.frozen_dtype_name) == ("same", "float32")
    assert TrainConfig(model="m", device="cpu").frozen_dtype_name == "float32"
    with pytest.raises(ConfigError, match="frozen_dtype.*float16"):
        TrainConfig(model="m", frozen_dtype="float16")


def test_fresh_run_refuses_a_used_out_dir_unless_overwrite(tiny_model_dir, tmp_path):
    out = tmp_path / "used"
    Trainer(tiny_cfg(tiny_model_dir, out, steps=2, eval_prompts=0)).train()
    with pytest.raises(ReinlmError, match=r"already holds a run \(metrics.jsonl.*--resume.*--overwrite"):
        Trainer(tiny_cfg(tiny_model_dir, out, steps=1, eval_prompts=0)).train()
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]  # nothing of the old run lost
    Trainer(tiny_cfg(tiny_model_dir, out, steps=1, eval_prompts=0, overwrite=True)).train()
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1]  # replaced, not appended to
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1"]


def test_cli_train_refuses_a_used_out_before_loading_a_model(tmp_path, capsys):
    from reinlm.cli.main import main

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "final").mkdir()  # a run that saved nothing would be replaced (tests/test_restart.py)
    # the model does not exist: the error comes from the run-directory check, before any loading
    assert main(["train", "--model", "no-such-model", "--reward", "sentiment", "--out", str(tmp_path)]) != 0
    assert "already holds a run (metrics.jsonl, final)" in " ".join(capsys.readouterr().err.split())  # wrapped text
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'
