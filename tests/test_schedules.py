"""The one learning-rate formula (reinlm/schedules.py) against the formulas it replaced, with real numbers."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from reinlm.schedules import lr_multiplier


def test_latent_pretraining_schedule_is_the_old_warmup_times_cosine():
    for total in (1, 7, 100, 1000):
        warm = max(1, int(0.03 * total))
        old = [min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / max(total, 1)))
               for s in range(total + 3)]
        new = [lr_multiplier(total, warm, "cosine", warmup_inside=True)(s) for s in range(total + 3)]
        assert new == pytest.approx(old, abs=1e-15)
    f = lr_multiplier(100, 3, "cosine", warmup_inside=True)
    assert f(0) == pytest.approx(1 / 3 * 0.5 * (1 + math.cos(0.0)))  # 0.3333
    assert f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-12)


def test_finetune_cosine_without_warmup_is_the_same_in_both_forms():
    for inside in (False, True):
        f = lr_multiplier(10, 0, "cosine", warmup_inside=inside)
        assert [round(f(s), 6) for s in (0, 5, 10, 12)] == [1.0, 0.5, 0.0, 0.0]


def test_trainer_form_matches_trainer_lr_lambda():
    from types import SimpleNamespace

    from reinlm.trainer.loop import lr_lambda

    for decay in ("constant", "linear", "cosine"):
        cfg = SimpleNamespace(steps=20, warmup_steps=4, warmup_ratio=None, lr_schedule=decay)
        assert [lr_multiplier(20, 4, decay)(s) for s in range(25)] == pytest.approx(
            [lr_lambda(cfg)(s) for s in range(25)], abs=1e-15)
    f = lr_multiplier(20, 4, "linear")
    assert [f(s) for s in (0, 3, 4, 12, 20)] == pytest.approx([0.25, 1.0, 1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="allowed: constant, linear, cosine"):
        lr_multiplier(10, 0, "step")


@pytest.mark.parametrize("warmup", [{"warmup_ratio": 0.25}, {"warmup_steps": 2}])
def test_trls_warmup_counts_optimiser_steps(tiny_lm, tmp_path, warmup):
    """warmup_ratio and warmup_steps as in TRL: the warm-up (ceil(ratio x all optimiser steps), or warmup_steps) and
    the decay count optimiser steps, the schedule stepped per optimiser step. 2 rollout steps x 2 epochs x 2
    minibatches = 8 optimiser steps; warm-up ceil(8 x 0.25) = 2 (or 2), then the linear decay over the 6 after it:
    multipliers (s + 1) / 2 for s < 2, then 1 - (s - 2) / 6."""
    from reinlm.trainer.config import TrainConfig
    from reinlm.trainer.loop import Trainer

    model, tok = tiny_lm
    reward = f"{Path(__file__).parent / 'assets' / 'toy_rewards.py'}:space_share"
    cfg = TrainConfig(model="tiny", reward=reward, prompts="builtin:neutral", steps=2, batch_prompts=2,
                      samples_per_prompt=2, minibatch_size=2, update_epochs=2, max_new_tokens=4, lr=1e-3,
                      **warmup, lr_schedule="linear", seed=0, device="cpu", progress=False,
                      eval_prompts=0, log="none", out=str(tmp_path / "run"))
    tr = Trainer(cfg, model=copy.deepcopy(model), tokenizer=tok)
    seen: list[float] = []  # the learning rate each optimiser step uses
    tr.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    for s in range(cfg.steps):
        tr.train_step(s)
    want = [1e-3 * m for m in (0.5, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6)]
    assert seen == pytest.approx(want, rel=1e-12)


def test_one_step_seed_for_the_trainer_and_latent_pretraining():
    import numpy as np

    from reinlm.utils.rng import step_seed

    # the formula both used: SeedSequence([seed, a, b]) -> 63 bits; latent pretraining passes (seed, stage, step)
    want = int(np.random.SeedSequence([7, 1, 12]).generate_state(1, dtype=np.uint64)[0] >> 1)
    assert step_seed(7, 1, 12) == want and 0 <= want < 2**63
    assert step_seed(7, 12, 1) != want  # the order of step and salt matters
    from reinlm.trainer import loop

    assert loop.step_seed(3, 4, 5) == step_seed(3, 4, 5)
