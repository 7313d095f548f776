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
