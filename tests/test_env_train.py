"""Training on episodes end to end (tiny random Llama, real SmolLM2 tokenizer): TRL's environment contract from
the CLI and from Python, resume to the same weights, faults and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reinlm.cli.main import main
from reinlm.envs.spec import load_object
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.loop import Trainer
from reinlm.utils.jsonio import read_jsonl

ASSETS = Path(__file__).parent / "assets"
COUNTER = ASSETS / "trl_counter.py"  # TRL's documented environment: a counter with an `increment` tool


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    from reinlm.testing import save_tiny_model

    return Path(save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("tiny-env-model"), seed=0))


def _flags(model_dir, out, *extra):
    return ["train", "--model", str(model_dir), "--out", str(out), "--steps", "2", "--batch-prompts", "2",
            "--samples-per-prompt", "2", "--max-turns", "2", "--turn-tokens", "6", "--max-new-tokens", "12",
            "--eval-prompts", "0", "--progress", "false", "--device", "cpu", "--log", "none", "--sample-every", "1",
            *extra]


def test_trl_counter_environment_trains_from_the_cli(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(_flags(tiny_model_dir, out, "--environment", f"{COUNTER}:IncrementEnv")) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("env/return", "env/turns", "env/model_tokens", "env/observation_tokens", "tools/call_frequency",
                "tools/failure_frequency", "env/invalid_frac", "env/timeout_frac", "env/invalid_move_frac"):
        assert key in rows[0], key
    assert rows[0]["env/turns"] >= 1 and rows[0]["env/model_tokens"] > 0
    sample = read_jsonl(out / "samples.jsonl")[0]
    t = sample["extra"]["transcript"]
    assert '"increment"' in sample["prompt"] and t["model_tokens"] == t["model_mask"].count("1") > 0
    from reinlm.evaluation.report import curve_keys, load_run

    assert {"env/return", "env/turns"} <= set(curve_keys([load_run(out)]))  # reinlm report draws them


def test_trl_environment_factory_from_python_gets_environments(tiny_model_dir, tmp_path):
    import reinlm

    seen = []

    def reward_func(environments, **kwargs):  # TRL: reward functions receive the instances
        seen.append(environments)
        return [env.counter + 0.5 for env in environments]

    dataset = [{"prompt": [{"role": "user", "content": "Increment the counter by 3."}]}] * 4
    trainer = reinlm.Trainer(args=dict(max_steps=2, num_generations=2, max_completion_length=12,
                                       output_dir=str(tmp_path / "py"), per_device_train_batch_size=4,
                                       max_tool_calling_iterations=1),
                             model=str(tiny_model_dir), reward_funcs=reward_func, train_dataset=dataset,
                             environment_factory=load_object(f"{COUNTER}:IncrementEnv"), eval_prompts=0,
                             progress=False, device="cpu",
                             log="none", max_turns=2, turn_tokens=6)
    run = trainer.train()
    assert len(seen) == 2 and all(len(envs) == 4 for envs in seen)
    assert all(type(e).__name__ == "IncrementEnv" for e in seen[0])
    rows = read_jsonl(run / "metrics.jsonl")
    # reward = get_reward() (0 without a call) + the reward function (counter + 0.5)
    assert rows[0]["reward/mean"] == pytest.approx(0.5 + 2 * rows[0]["env/return"])
    sample = read_jsonl(run / "samples.jsonl")[0]
    assert sample["prompt"].count("Increment the counter by 3.") == 1


def _cfg(model_dir, out, **kw):
    base = dict(model=str(model_dir), environment="builtin:persuade", steps=4, batch_prompts=2, samples_per_prompt=2,
                max_turns=2, turn_tokens=6, max_new_tokens=12, lr=3e-3, kl_coef=0.01, seed=0, out=str(out),
                device="cpu", progress=False, eval_prompts=0, save_every=2, log="none", rollout_dtype="same")
    base.update(kw)
    return TrainConfig(**base)


def test_episode_run_resumes_to_the_same_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    straight = Trainer(_cfg(tiny_model_dir, tmp_path / "a")).train()
    part = Trainer(_cfg(tiny_model_dir, tmp_path / "b", steps=2)).train()
    resumed = Trainer(_cfg(tiny_model_dir, part)).train(resume=True)
    wa, wb = load_file(str(straight / "final" / "model.safetensors")), load_file(str(resumed / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    ra = [(r["env/return"], r["env/model_tokens"]) for r in read_jsonl(straight / "metrics.jsonl")]
    rb = [(r["env/return"], r["env/model_tokens"]) for r in read_jsonl(resumed / "metrics.jsonl")]
    assert ra == rb
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    assert any(not torch.equal(start[k], wa[k]) for k in wa)  # it trained


def test_all_invalid_episodes_stop_with_a_clear_error(tiny_model_dir, tmp_path):
    src = tmp_path / "broken.py"
    src.write_text("class Broken:\n    def reset(self, **row):\n        return 'hi'\n"
                   "    def step(self, text):\n        raise RuntimeError('the game crashed')\n")
    from reinlm.errors import ReinlmError

    with pytest.raises(ReinlmError, match="every episode at step 1 was invalid.*the game crashed"):
        Trainer(_cfg(tiny_model_dir, tmp_path / "x", environment=f"{src}:Broken", steps=1)).train()


@pytest.mark.parametrize("extra, word", [
    (["--environment", "builtin:chess"], "builtin:chess"),
    (["--environment", "{d}/envs.py:NoReset"], "no reset"),
    (["--environment", "{d}/envs.py:BadTool"], "cannot be a tool"),
    (["--environment", "{d}/envs.py:IntObs"], "must be text"),
    (["--environment", "builtin:guess", "--opponent", "random"], "one-player"),
    (["--environment", "builtin:guess", "--turn-credit", "gae"], "gae"),
    (["--environment", "textarena:TicTacToe-v0", "--opponent", "{d}/no-such-model"], "no-such-model"),
    (["--environment", "textarena:TicTacToe-v0", "--opponent", "http://localhost:1/v1"], "HTTP"),
])
def test_bad_input_exits_2_and_writes_nothing(tiny_model_dir, tmp_path, capsys, extra, word):
    (tmp_path / "envs.py").write_text(
        "class NoReset:\n    def step(self, text):\n        return '', 0, True, {}\n\n"
        "class BadTool:\n    def reset(self, **kw):\n        return 'hi'\n    def poke(self, x):\n        return x\n\n"
        "class IntObs:\n    def reset(self, **kw):\n        return 7\n    def step(self, text):\n"
        "        return '', 0, True, {}\n")
    out = tmp_path / "run"
    assert main(_flags(tiny_model_dir, out, *[e.format(d=tmp_path) for e in extra])) == 2
    assert word in " ".join(capsys.readouterr().err.split())
    assert not out.exists()


def test_textarena_guess_the_number_trains_two_steps_without_a_dataset(tiny_model_dir, tmp_path):
    out = tmp_path / "ta"
    assert main(_flags(tiny_model_dir, out, "--environment", "textarena:GuessTheNumber-v0", "--turn-credit",
                       "discounted", "--gamma", "0.9")) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["env/turns"] >= 1
    t = read_jsonl(out / "samples.jsonl")[0]["extra"]["transcript"]
    assert "Guess The Number" in t["observations"][0] and len(t["turns"]) == len(t["turn_rewards"])


@pytest.mark.parametrize("opponent", ["frozen", "model"])
def test_two_player_game_against_a_frozen_opponent(tiny_model_dir, smol_tokenizer, tmp_path, monkeypatch, opponent):
    """``--opponent frozen``: a copy of the starting policy plays the other seat; ``--opponent MODEL``: that model
    (here another tiny model, told apart by its weights)."""
    from reinlm.trainer.episodes import FrozenOpponent

    calls, reply = [], FrozenOpponent.__call__
    monkeypatch.setattr(FrozenOpponent, "__call__",
                        lambda self, obs: calls.append((obs, self.model.lm_head.weight.clone())) or reply(self, obs))
    spec = "frozen"
    if opponent == "model":
        from reinlm.testing import save_tiny_model

        spec = str(save_tiny_model(smol_tokenizer, tmp_path / "opponent", seed=5))
    out = tmp_path / "ttt"
    assert main(_flags(tiny_model_dir, out, "--environment", "textarena:TicTacToe-v0", "--opponent", spec,
                       "--steps", "1", "--max-turns", "1")) == 0
    t = read_jsonl(out / "samples.jsonl")[0]["extra"]["transcript"]
    assert t["valid"] and "Tic Tac Toe" in t["observations"][0]
    assert calls and all("Tic Tac Toe" in c or "Board" in c or "[" in c for c, _ in calls)  # the opponent played
    from safetensors.torch import load_file

    want = load_file(str(Path(spec if opponent == "model" else tiny_model_dir) / "model.safetensors"))
    w = want.get("lm_head.weight", want["model.embed_tokens.weight"])
    assert torch.equal(calls[0][1], w.to(calls[0][1].dtype))  # in the frozen (or rollout) dtype
