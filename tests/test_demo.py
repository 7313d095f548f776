"""`reinlm demo`'s first picture: the moving average and the reward-curve PNG; its run settings are valid."""

from __future__ import annotations

import pytest

from reinlm.cli.demo import REWARD_CURVE, moving_average, plot_reward_curve


def test_moving_average_and_plot(tmp_path):
    assert moving_average([1.0, 2.0, 3.0, 4.0]) == pytest.approx([1.0, 1.5, 2.0, 3.0])
    rows = [{"step": i + 1, "reward/mean": 0.5 + 0.02 * i} for i in range(12)]
    png = plot_reward_curve(rows, tmp_path / "curve.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_reward_curve_settings_are_a_valid_config_on_conversational_prompts():
    from reinlm.cli.demo import DEMO_TOPICS, demo_prompts
    from reinlm.trainer.config import TrainConfig

    cfg = TrainConfig(**REWARD_CURVE, seed=0, out="unused")
    ps = demo_prompts()
    assert len(ps) == len(DEMO_TOPICS) == 8 and ps.conversational and ps.columns["topic"] == list(DEMO_TOPICS)
    train, held = ps.split(cfg.held_out_fraction, cfg.seed)
    assert len(train) == cfg.batch_prompts == 4 and len(held) == cfg.eval_prompts  # every step: all 4 prompts
