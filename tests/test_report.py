"""reinlm report / compare on synthetic run directories (the layout of docs/architecture.md)."""

import json
import math

import pytest

from reinlm.cli.main import main
from reinlm.errors import ReinlmError
from reinlm.evaluation.report import (curve_keys, load_run, merge_steps, pick_sample_steps, plot_file_name,
                                      write_comparison, write_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(path, steps=10, reward_slope=0.05, collapse=False):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("algo: grpo\nmodel: smollm2-135m\nkl_coef: 0.05\n")
    with open(path / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            row = {"step": s, "reward/mean": 0.5 + reward_slope * s, "reward/sentiment/mean": 0.4 + reward_slope * s,
                   "reward/length/mean": 1.0, "kl/mean": 0.01 * s, "kl/beta": 0.05,
                   "policy/entropy": 3.0 - 0.1 * s, "response/length_mean": 20.0, "perf/completions_per_s": 4.0,
                   "loss/total": 0.1}
            f.write(json.dumps(row) + "\n")
        if collapse:  # the trainer logs the alarm as a second line of the same step
            f.write(json.dumps({"step": steps, "alarm/degeneration": 1}) + "\n")
    with open(path / "samples.jsonl", "w") as f:
        for s in (1, 5, 10):
            for k in range(2):
                f.write(json.dumps({"step": s, "prompt": f"prompt {k}", "completion": f"text at {s} | {k}",
                                    "reward": 0.1 * s}) + "\n")
    (path / "eval.json").write_text(json.dumps({"metrics": {"reward/mean": 0.9, "distinct/2": 0.8}, "info": {
        "n_prompts": 2, "n_samples": 8}}))
    (path / "train_eval.json").write_text(json.dumps({"before": {"reward_mean": 0.5, "distinct_2": 0.9},
                                                      "after": {"reward_mean": 0.8, "distinct_2": 0.85}}))
    return path


def test_merge_steps_and_sample_steps():
    rows = merge_steps([{"step": 2, "a": 1}, {"step": 1, "a": 0}, {"step": 2, "alarm": 1}])
    assert rows == [{"step": 1, "a": 0}, {"step": 2, "a": 1, "alarm": 1}]
    samples = [{"step": s} for s in (1, 1, 4, 7, 9)]
    # distinct steps 1 4 7 9: start 1, middle index 4//2 = 2 -> 7, end 9
    assert pick_sample_steps(samples) == [("start", 1), ("middle", 7), ("end", 9)]
    assert pick_sample_steps([{"step": 3}]) == [("start", 3)]
    assert plot_file_name("reward/sentiment/mean") == "reward_sentiment_mean.png"


def test_report_writes_markdown_and_pngs(tmp_path):
    run = make_run(tmp_path / "run-a", collapse=True)
    assert curve_keys([load_run(run)]) == ["reward/mean", "reward/length/mean", "reward/sentiment/mean", "kl/mean",
                                           "kl/beta", "policy/entropy", "response/length_mean",
                                           "perf/completions_per_s"]
    path = write_report(run)
    text = path.read_text()
    for needle in ("## Curves", "plots/reward_mean.png", "plots/kl_beta.png", "## Samples", "start (1)",
                   "middle (5)", "end (10)", "text at 10 \\| 1", "algo: grpo", "distinct/2",
                   "Degeneration alarm** at step(s) 10", "| reward_mean | 0.5000 | 0.8000 |"):
        assert needle in text, needle
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert len(pngs) == 8 and "perf_completions_per_s.png" in pngs
    assert all((run / "plots" / p).read_bytes()[:8] == PNG_MAGIC for p in pngs)
    # first / last values are written beside each plot: reward/mean 0.55 at step 1, 1.0 at step 10
    assert "`reward/mean`: first 0.5500, last 1.0000" in text


def test_report_skips_absent_keys(tmp_path):
    run = tmp_path / "minimal"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 1.0, "kl/mean": float("nan")}) + "\n")
    path = write_report(run)
    assert [p.name for p in (run / "plots").glob("*.png")] == ["reward_mean.png"]  # NaN-only kl/mean skipped
    assert "No samples logged" in path.read_text()


def test_compare_overlays_runs(tmp_path):
    a = make_run(tmp_path / "a", reward_slope=0.05)
    b = make_run(tmp_path / "b", reward_slope=0.0)
    path = write_comparison([a, b], tmp_path / "cmp")
    text = path.read_text()
    assert "| metric | a | b |" in text and "plots/reward_mean.png" in text
    assert (tmp_path / "cmp" / "plots" / "reward_mean.png").read_bytes()[:8] == PNG_MAGIC
    # final reward/mean: a 0.5 + 0.05*10 = 1.0, b 0.5
    assert "| final step: reward/mean | 1.0000 | 0.5000 |" in text
    with pytest.raises(ReinlmError):
        write_comparison([a])


def test_bad_run_dirs_give_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReinlmError, match="no metrics.jsonl"):
        load_run(empty)
    (empty / "metrics.jsonl").write_text("\n")
    with pytest.raises(ReinlmError, match="no logged step"):
        load_run(empty)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["compare", str(empty), str(empty)]) == 2


def test_cli_report(tmp_path, capsys):
    run = make_run(tmp_path / "r")
    assert main(["report", str(run)]) == 0
    assert "report.md" in capsys.readouterr().out
    assert not math.isnan(load_run(run).series("reward/mean")[1][0])
