"""Seed groups of `reinlm compare --group-seeds`: grouping by config, smoothing, steps to reach a target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reinlm.errors import ReinlmError
from reinlm.evaluation.report import RunData, write_comparison
from reinlm.evaluation.seed_groups import (first_step_reaching, group_curve, group_name, group_runs,
                                           moving_average, steps_to_reach)


def _run(tmp: Path, name: str, seed: int, algo: str, rewards: list[float], after: float | None = None) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "config.yaml").write_text(f"algo: {algo}\nlr: 2.0e-05\nseed: {seed}\nout: {d}\n")
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "reward/mean": r}) + "\n"
                                             for i, r in enumerate(rewards)))
    if after is not None:
        (d / "train_eval.json").write_text(json.dumps({"before": {"reward_mean": 0.5}, "after": {"reward_mean": after}}))
    return d


def _data(d: Path, rewards: list[float], algo: str = "ppo", seed: int = 0) -> RunData:
    metrics = [{"step": i + 1, "reward/mean": r} for i, r in enumerate(rewards)]
    return RunData(run_dir=d, config_text=f"algo: {algo}\nseed: {seed}\nout: {d}\n", metrics=metrics)


def test_moving_average_is_trailing_and_shorter_at_the_start():
    got = moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2)
    assert np.allclose(got, [1.0, 2.0, 4.0, 6.0])
    assert np.allclose(moving_average(np.array([1.0, 3.0, 5.0]), 1), [1.0, 3.0, 5.0])


def test_first_step_reaching():
    steps = np.array([1, 2, 3, 4])
    assert first_step_reaching(steps, np.array([0.1, 0.5, 0.4, 0.6]), 0.45) == 2
    assert first_step_reaching(steps, np.array([0.1, 0.2, 0.3, 0.4]), 0.45) is None


def test_group_name_strips_seed_markers():
    assert group_name(["ppo-s0", "ppo-s1", "ppo-s2"]) == "ppo"
    assert group_name(["critic_seed3", "critic_seed4"]) == "critic"
    assert group_name(["a-s0", "b-s1"]) == "a-s0"  # names disagree: the first run's name


def test_groups_by_config_without_seed_and_steps_to_reach(tmp_path):
    runs = [_data(tmp_path / "base-s0", [0.0, 0.2, 0.4, 0.6], "ppo", 0),
            _data(tmp_path / "base-s1", [0.0, 0.0, 0.2, 0.2], "ppo", 1),
            _data(tmp_path / "fast-s0", [0.3, 0.5, 0.5, 0.5], "grpo", 0)]
    groups = group_runs(runs)
    assert [(g.name, len(g.runs), g.seeds) for g in groups] == [("base", 2, [0, 1]), ("fast", 1, [0])]
    steps, mean, lo, hi = group_curve(groups[0], "reward/mean", smooth=1)
    assert np.allclose(mean, [0.0, 0.1, 0.3, 0.4]) and np.allclose(lo, [0, 0, 0.2, 0.2]) and np.allclose(hi, [0, 0.2, 0.4, 0.6])
    rows = steps_to_reach(groups, "reward/mean", smooth=1)
    assert rows[0]["target"] == pytest.approx(0.4)
    assert [r["first_step_reaching_target"] for r in rows] == [4, 2]


def test_compare_group_seeds_writes_table_plot_and_json(tmp_path):
    dirs = [_run(tmp_path, "base-s0", 0, "ppo", [0.1, 0.2, 0.3], after=0.6),
            _run(tmp_path, "base-s1", 1, "ppo", [0.1, 0.2, 0.3], after=0.7),
            _run(tmp_path, "crit-s0", 0, "ppo_critic", [0.3, 0.3, 0.4], after=0.8)]
    path = write_comparison(dirs, tmp_path / "cmp", group_seeds=True, smooth=1)
    text = path.read_text()
    assert "| base | 0, 1 | 0.3000 | 3 | 0.5000 | 0.6500 ± 0.0707 |" in text
    assert "| crit | 0 | 0.4000 | 1 | 0.5000 | 0.8000 |" in text
    assert (tmp_path / "cmp" / "plots" / "reward_mean.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [g["first_step_reaching_target"] for g in saved["groups"]] == [3, 1]
    with pytest.raises(ReinlmError, match="does not log|do not log"):
        write_comparison(dirs, tmp_path / "cmp2", group_seeds=True, target_key="kl/mean")
