"""The Python API: reinlm.Trainer / TrainConfig / train with Python prompts and rewards; what config.yaml records;
resumes that continue (also with `reinlm train --resume`) and resumes refused because they would train something else."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import reinlm
from reinlm.api import build_reward_set
from reinlm.errors import ConfigError, ReinlmError
from reinlm.rewards import contains_words, parse_reward_spec
from reinlm.rewards.refs import reward_ref, reward_set_spec
from reinlm.utils.jsonio import read_jsonl


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    from reinlm.testing import save_tiny_model

    return Path(save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("tiny-model"), seed=0))


def space_share(completions, **kwargs):
    """A module-level reward in a file of ours: recorded as /abs/path/test_python_api.py:space_share."""
    return [c.count(" ") / max(1, len(c)) for c in completions]


def small(model_dir, out, **kw) -> dict:
    base = dict(model=str(model_dir), steps=2, batch_prompts=2, samples_per_prompt=2, max_new_tokens=6, lr=1e-3,
                kl_coef=0.01, seed=0, out=str(out), device="cpu", progress=False, eval_prompts=1, eval_samples=2,
                save_every=1, log="none", held_out_fraction=0.25)
    base.update(kw)
    return base


ROWS = [{"question": f"Question {i}: what is {i} + {i}?", "answer": str(2 * i)} for i in range(8)]


def test_reward_refs_rebuild_the_reward():
    assert reward_ref(space_share) == f"{Path(__file__).resolve()}:space_share"
    assert reward_ref(contains_words(["red", "blue"], normalize=True)) == "contains_words:red,blue,normalize=true"
    assert reward_ref(parse_reward_spec('embedding_similarity:target="Hi, there"').components[0].fn) == \
        'embedding_similarity:target="Hi, there"'
    assert reward_ref(lambda completions, **kw: [0.0]) is None
    trl_rewards = pytest.importorskip("trl.rewards")
    overlong = trl_rewards.get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)
    ref = reward_ref(overlong)
    assert ref == "trl.rewards.other_rewards:_SoftOverlongPunishment:max_completion_len=10,soft_punish_cache=4"
    rebuilt = parse_reward_spec(ref)
    assert rebuilt.score(["", ""], ["a", "b"], completion_ids=[[1] * 3, [1] * 8]).total.tolist() == [0.0, -0.5]
    assert parse_reward_spec("trl.rewards:think_format_reward").names == ["think_format_reward"]
    spec = reward_set_spec(build_reward_set([space_share, "0.5*contains_words:red"], [2.0, 1.0], "fail"))
    assert spec == f"2*{Path(__file__).resolve()}:space_share + 0.5*contains_words:red"
    with pytest.raises(ReinlmError, match="cannot import the module 'no_such_module_xyz.sub'"):
        parse_reward_spec("no_such_module_xyz.sub:fn")


def test_train_from_python_objects_records_them_and_resumes_from_the_cli(tiny_model_dir, tmp_path):
    import datasets

    from reinlm.cli.main import main

    ds = datasets.Dataset.from_list(ROWS)
    out = tmp_path / "run"
    run_dir = reinlm.train(reward=[space_share, contains_words(["two"])], reward_weights=[1.0, 0.5], prompts=ds,
                           prompt_column="question", **small(tiny_model_dir, out))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["reward"] == f"{Path(__file__).resolve()}:space_share + 0.5*contains_words:two"
    assert saved["prompts"] == str((out / "prompts.jsonl").resolve()) and saved["prompt_column"] == "prompt"
    copied = read_jsonl(out / "prompts.jsonl")
    assert copied[3] == {"prompt": ROWS[3]["question"], "answer": "6"}
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    assert main(["train", "--resume", str(run_dir), "--steps", "3"]) == 0
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
    # the same run resumed from Python with other prompts is refused, naming what changed
    with pytest.raises(ReinlmError, match="the prompts differ: the run started on 8 prompts"):
        reinlm.train(reward=[space_share, contains_words(["two"])], reward_weights=[1.0, 0.5], prompts=ds.select(range(6)),
                     prompt_column="question", resume=True, **small(tiny_model_dir, out, steps=4))
    with pytest.raises(ReinlmError, match="the rewards differ"):
        reinlm.train(reward=space_share, prompts=ds, prompt_column="question", resume=True,
                     **small(tiny_model_dir, out, steps=4))


def test_unrebuildable_reward_resumes_from_python_only(tiny_model_dir, tmp_path):
    from reinlm.cli.main import main

    out = tmp_path / "lam"
    reward = lambda completions, **kw: [float(len(c)) for c in completions]  # noqa: E731
    trainer = reinlm.Trainer(reinlm.TrainConfig(**small(tiny_model_dir, out)), reward_funcs=reward,
                             train_dataset=[r["question"] for r in ROWS])
    run_dir = trainer.train()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["reward"].startswith("python:function test_python_api.") and "<lambda>" in saved["reward"]
    assert main(["train", "--resume", str(run_dir), "--steps", "3"]) == 2  # a clear error, exit 2
    run_dir = reinlm.train(reward=reward, prompts=[r["question"] for r in ROWS], resume=True,
                           **small(tiny_model_dir, out, steps=3))
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="unknown key 'stpes'; did you mean 'steps'"):
        reinlm.Trainer(stpes=3)
    from reinlm.api import make_config

    cfg = make_config(reinlm.TrainConfig(steps=4), learning_rate="2e-5", num_generations=4, kl_coef=0.1)
    assert (cfg.steps, cfg.lr, cfg.samples_per_prompt, cfg.kl.kl_coef) == (4, 2e-5, 4, 0.1)  # TRL names, flat names
    with pytest.raises(ConfigError, match="given both as reward= and as reward_funcs="):
        reinlm.Trainer(reward="sentiment", reward_funcs=[space_share])
    with pytest.raises(ConfigError, match="reward_weights: got 1 weights for 2 rewards"):
        build_reward_set([space_share, space_share], [1.0], "fail")


def test_a_loaded_model_object_with_its_tokenizer(tiny_model_dir, tmp_path):
    from reinlm.hub import load_causal_lm

    model, tok = load_causal_lm(str(tiny_model_dir), device="cpu")
    run_dir = reinlm.train(model=model, tokenizer=tok, reward=space_share, prompts=["a b", "c d", "e f"],
                           **{k: v for k, v in small(tiny_model_dir, tmp_path / "obj", steps=1).items() if k != "model"})
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"] == str(tiny_model_dir)  # recorded by its name_or_path
    with pytest.raises(ConfigError, match="needs its tokenizer"):
        reinlm.Trainer(model=model, reward=space_share, prompts=["x"])
