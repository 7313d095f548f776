"""TRL's Python habits (issue 23, item 8): ``trainer.train(resume_from_checkpoint=True)`` resumes (and prints the
step it resumed from, as the CLI does); a YAML config file can be handed to ``reinlm.Trainer`` / ``make_config``
(TRL keys included)."""

from __future__ import annotations

import copy

import pytest

from reinlm.api import Trainer, make_config
from reinlm.errors import ConfigError
from reinlm.utils.jsonio import read_jsonl

SETTINGS = dict(steps=1, batch_prompts=2, samples_per_prompt=2, max_new_tokens=4, device="cpu", eval_prompts=0,
                log="none", progress=False, reward="target_length:3", save_every=1)
PROMPTS = [f"Say {i}" for i in range(6)]


def test_a_yaml_file_from_python(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("learning_rate: 3.0e-4\nnum_generations: 4\nbeta: 0.0\nmax_steps: 5\n")
    cfg = make_config(path, seed=3)
    assert (cfg.lr, cfg.samples_per_prompt, cfg.kl.kl_coef, cfg.steps, cfg.seed) == (3e-4, 4, 0.0, 5, 3)
    path.write_text("learning_rte: 1\n")
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        make_config(str(path))


def test_resume_from_checkpoint_true_resumes_and_says_so(tmp_path, tiny_lm, capsys):
    model, tok = tiny_lm
    model = copy.deepcopy(model)
    out = tmp_path / "run"
    Trainer(out=str(out), model=copy.deepcopy(model), tokenizer=tok, prompts=PROMPTS, **SETTINGS).train()
    capsys.readouterr()
    more = {**SETTINGS, "steps": 2}
    trainer = Trainer(out=str(out), model=copy.deepcopy(model), tokenizer=tok, prompts=PROMPTS, **more)
    with pytest.raises(ConfigError, match="not in this run's directory"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "elsewhere"))
    trainer.train(resume_from_checkpoint=True)
    assert f"resumed {out} from step 1" in capsys.readouterr().err
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
