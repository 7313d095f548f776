"""`reinlm eval --model RUN_DIR` (or RUN_DIR/final) writes its output into the run directory (issue 23, item 10),
not into evals/ of the working directory; other models keep evals/<name>-seed<S>; --out always wins."""

from __future__ import annotations

from pathlib import Path

from reinlm.evaluation.evaluate import EvalConfig


def test_eval_output_goes_to_the_run_directory(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("model: smollm2-135m\n")
    assert EvalConfig(model=str(run), seed=2).out_dir == run / "evals" / "seed2"
    assert EvalConfig(model=str(run / "final") + "/", seed=0).out_dir == run / "evals" / "seed0"
    assert EvalConfig(model="smollm2-135m", seed=1).out_dir == Path("evals") / "smollm2-135m-seed1"
    assert EvalConfig(model=str(run), out=str(tmp_path / "x")).out_dir == tmp_path / "x"


def test_eval_hands_rewards_messages_on_chat_data_as_training_does(tmp_path):
    """`reinlm eval` on conversational prompts: TRL-style rewards get the message lists and completions as
    [{"role": "assistant", ...}], as in training (they got the rendered text before)."""
    from types import SimpleNamespace

    from reinlm.evaluation.evaluate import metric_reward
    from reinlm.evaluation.generations import Generations

    rewards = tmp_path / "seen.py"
    rewards.write_text("SEEN = []\n\ndef kind(prompts, completions, **kw):\n"
                       "    SEEN.append((type(prompts[0]).__name__, type(completions[0]).__name__))\n"
                       "    return [1.0 for _ in completions]\n")
    chat = [{"role": "user", "content": "Hi"}]
    gens = Generations(prompts=["<|user|>Hi<|assistant|>"] * 2, completions=["a", "b"], group_ids=[0, 0],
                       raw_prompts=[chat, chat])
    out = metric_reward(SimpleNamespace(gens=gens, cfg=SimpleNamespace(reward=f"{rewards}:kind")))
    assert out.per_sample["reward"] == [1.0, 1.0]
    import sys

    module = next(m for m in sys.modules.values() if getattr(m, "__file__", None) == str(rewards))
    assert module.SEEN == [("list", "list")]
