"""Benchmarks: the child-result protocol, steady-state timing, the report, and the orchestration on a tiny model.

The real TRL-vs-reinlm run on SmolLM2 takes minutes; it is not part of the suite (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json

import pytest

from reinlm.bench import common, token_rl
from reinlm.bench.token_rl import TokenRLBenchConfig
from reinlm.config.build import build_config
from reinlm.errors import ConfigError, ReinlmError


# ---------------------------------------------------------------------------------------------- child protocol


def test_parse_child_output_takes_last_result_line_among_noise():
    out = "\n".join([
        "{'loss': 0.1}",  # TRL's PrinterCallback prints dict-looking logs on stdout
        common.RESULT_PREFIX + json.dumps({"side": "old"}),
        "some progress",
        common.RESULT_PREFIX + json.dumps({"side": "trl", "completions_per_s": 1.5}),
        "trailing log line",
    ])
    assert common.parse_child_output(out) == {"side": "trl", "completions_per_s": 1.5}


@pytest.mark.parametrize("stdout, match", [
    ("no result here\n", "no result line"),
    (common.RESULT_PREFIX + "{not json", "not valid JSON"),
    (common.RESULT_PREFIX + "[1, 2]", "JSON object"),
])
def test_parse_child_output_errors(stdout, match):
    with pytest.raises(ReinlmError, match=match):
        common.parse_child_output(stdout)


def test_emit_result_round_trips(capsys):
    import numpy as np

    common.emit_result({"x": np.float32(1.5), "n": 3})
    assert common.parse_child_output(capsys.readouterr().out) == {"x": 1.5, "n": 3}


# ---------------------------------------------------------------------------------------------- timing


def test_steady_state_skips_first_step_only_when_more_than_two():
    assert common.steady_state([9.0]) == ([0], 0)
    assert common.steady_state([9.0, 1.0]) == ([0, 1], 0)
    assert common.steady_state([9.0, 1.0, 3.0]) == ([1, 2], 1)


def test_throughput_by_hand():
    # steps of 10 s (warm-up), 2 s, 6 s; 8 completions a step; 100, 160, 80 tokens
    t = common.throughput([10.0, 2.0, 6.0], [8, 8, 8], [100, 160, 80])
    assert t["timed_steps"] == 2 and t["warmup_steps_skipped"] == 1
    assert t["completions_per_s"] == pytest.approx(16 / 8)
    assert t["tokens_per_s"] == pytest.approx(240 / 8)
    assert t["step_s_mean"] == pytest.approx(4.0)


def test_mean_over_and_ratio():
    rows = [{"a": 1.0}, {"a": 3.0}, {"b": 1.0}, {"a": 5.0}]
    assert common.mean_over(rows, "a") == pytest.approx(3.0)
    assert common.mean_over(rows, "a", [1, 2, 3]) == pytest.approx(4.0)
    assert common.mean_over(rows, "zzz") is None
    assert common.ratio(3.0, 1.5) == pytest.approx(2.0)
    assert common.ratio(3.0, 0.0) is None and common.ratio(None, 1.0) is None


# ---------------------------------------------------------------------------------------------- report


def _fake(side, cps, rss, **kw):
    return {"side": side, "completions_per_s": cps, "tokens_per_s": cps * 20, "step_s_mean": 8 / cps,
            "peak_rss_mb": rss, "peak_rss_train_mb": rss - 100, "reward_first": 0.1, "reward_final": 0.2,
            "timed_steps": 4, "warmup_steps_skipped": 1, "profile_s": kw.get("profile", {"generate": 1.0}), **kw}


def test_compare_ratios_and_table():
    report = token_rl.compare({"reinlm": _fake("reinlm", 4.5, 1700.0), "trl": _fake("trl", 1.5, 3400.0)})
    assert report["speedup"] == pytest.approx(3.0)
    assert report["tokens_speedup"] == pytest.approx(3.0)
    assert report["memory_ratio"] == pytest.approx(0.5)
    text = token_rl.format_report(report)
    assert "speedup (reinlm / TRL completions/s): 3.00x" in text
    assert "memory ratio (reinlm / TRL peak RSS): 0.50" in text
    header = text.splitlines()[0].split()
    assert header == ["metric", "reinlm", "trl", "reinlm/trl"]
    row = next(line for line in text.splitlines() if line.startswith("completions/s"))
    assert row.split()[1:] == ["4.500", "1.500", "3.000"]
    assert "reinlm step profile" in text and "trl step profile" in text


def test_compare_with_one_side_has_no_ratios():
    report = token_rl.compare({"reinlm": _fake("reinlm", 4.5, 1700.0)})
    assert report["speedup"] is None and report["memory_ratio"] is None
    text = token_rl.format_report(report)
    assert "speedup" not in text and "reinlm/trl" not in text


# ---------------------------------------------------------------------------------------------- config and CLI


def test_child_argv_rebuilds_the_same_config(tmp_path):
    cfg = TokenRLBenchConfig(model="/some/dir", steps=3, samples_per_prompt=4, kl_coef=0.01, sides=["reinlm"])
    argv = token_rl.child_argv(cfg, "reinlm", tmp_path)
    parser = argparse.ArgumentParser()
    parser.add_argument("--side")
    parser.add_argument("--run-dir")
    token_rl.add_arguments(parser)
    args = parser.parse_args(argv)
    assert args.side == "reinlm" and args.run_dir == str(tmp_path)
    rebuilt = build_config(TokenRLBenchConfig, args)
    assert rebuilt.model == "/some/dir" and rebuilt.steps == 3 and rebuilt.samples_per_prompt == 4
    assert rebuilt.kl_coef == pytest.approx(0.01) and rebuilt.batch_size == 4


@pytest.mark.parametrize("kwargs, field", [
    ({"sides": ["reinlm", "vllm"]}, "sides"),
    ({"sides": []}, "sides"),
    ({"samples_per_prompt": 1}, "samples_per_prompt"),
    ({"steps": 0}, "steps"),
])
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        TokenRLBenchConfig(**kwargs)


def test_sides_accepts_comma_string():
    assert TokenRLBenchConfig(sides="trl,reinlm").sides == ["trl", "reinlm"]


def test_missing_trl_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    with pytest.raises(ReinlmError, match=r"pip install 'reinlm\[bench\]'"):
        token_rl.run_bench(TokenRLBenchConfig(sides=["reinlm", "trl"]))


def test_cli_missing_benchmark_is_a_clear_error(capsys, monkeypatch):
    from reinlm.cli import bench as bench_cli
    from reinlm.cli.main import main

    monkeypatch.setitem(bench_cli.BENCHES, "latent-vs-token", ("reinlm.bench.no_such_bench", "missing"))
    assert main(["bench", "latent-vs-token", "--steps", "2"]) == 2
    assert "not available in this build" in capsys.readouterr().err


def test_cli_bench_without_name_prints_help(capsys):
    from reinlm.cli.main import main

    assert main(["bench"]) == 2
    assert "token-rl" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- orchestration


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    from reinlm.testing import save_tiny_model

    return save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("tiny-bench-model"))


def test_bench_reinlm_side_in_a_subprocess(tiny_model_dir, tmp_path, capfd):
    """``reinlm bench token-rl --sides reinlm --steps 2 --json`` on a tiny model: one JSON object, sane figures."""
    from reinlm.cli.main import main

    out_dir = tmp_path / "bench"
    status = main(["bench", "token-rl", "--model", tiny_model_dir, "--sides", "reinlm", "--steps", "2",
                   "--samples-per-prompt", "2", "--max-new-tokens", "4", "--out", str(out_dir), "--profile",
                   "--json"])
    assert status == 0
    report = json.loads(capfd.readouterr().out)  # the whole of stdout (descriptor 1) is the JSON
    r = report["reinlm"]
    assert "trl" not in report
    assert report["speedup"] is None  # one side only
    assert r["side"] == "reinlm" and r["timed_steps"] == 2 and r["warmup_steps_skipped"] == 0
    assert r["completions_per_s"] > 0 and r["tokens_per_s"] > 0
    assert r["peak_rss_mb"] > 100  # torch + a model: certainly above 100 MB
    assert set(r["profile_s"]) == {"generate", "reward", "ref_and_values", "update"}
    assert len(r["reward_per_step"]) == 2
    assert (out_dir / "results.json").is_file() and (out_dir / "reinlm" / "metrics.jsonl").is_file()
    assert report["settings"]["model_dir"] == tiny_model_dir
    phases = {row["phase"]: row for row in r["phases"]}  # --profile
    assert {"generate", "reward", "forward", "backward", "optimiser", "other", "step"} <= set(phases)
    assert sum(row["seconds"] for row in r["phases"][:-1]) == pytest.approx(phases["step"]["seconds"])
    assert phases["forward"]["flops"] > 0 and phases["backward"]["flops"] == 2 * phases["forward"]["flops"]
    assert r["limits"]["bandwidth_gb_s"] > 0 and r["limits"]["matmul_gflop_s"]
    # the figures are computed from the run's own step timings (metrics.jsonl), not merely positive
    rows = [json.loads(x) for x in (out_dir / "reinlm" / "metrics.jsonl").read_text().splitlines()]
    rows = [x for x in rows if "perf/step_s" in x]
    step_s = [x["perf/step_s"] for x in rows]
    comps = [x["perf/completions_per_s"] * x["perf/step_s"] for x in rows]
    tokens = [x["perf/tokens_per_s"] * x["perf/step_s"] for x in rows]
    assert comps == [pytest.approx(2.0), pytest.approx(2.0)]  # 1 prompt x 2 samples a step
    assert r["step_s"] == pytest.approx(step_s) and r["step_s_mean"] == pytest.approx(sum(step_s) / 2)
    assert r["completions_per_s"] == pytest.approx(4.0 / sum(step_s))  # both steps timed (2 steps: no warm-up skip)
    assert r["tokens_per_s"] == pytest.approx(sum(tokens) / sum(step_s))
    assert 2 <= sum(tokens) <= 2 * 2 * 4  # 4 completions of 1..4 tokens
    assert r["profile_s"]["generate"] == pytest.approx(sum(x["perf/generate_s"] for x in rows) / 2)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL (the bench extra) is not installed")
def test_bench_both_sides_tiny(tiny_model_dir):
    """Both sides end to end on the tiny model (about a minute on 2 cores)."""
    report = token_rl.run_bench(TokenRLBenchConfig(model=tiny_model_dir, steps=2, samples_per_prompt=2,
                                                   max_new_tokens=4))
    assert report["reinlm"]["completions_per_s"] > 0 and report["trl"]["completions_per_s"] > 0
    assert report["speedup"] == pytest.approx(report["reinlm"]["completions_per_s"] / report["trl"]["completions_per_s"])
    assert report["memory_ratio"] > 0
    assert set(report["trl"]["profile_s"]) == {"generate", "reward", "score_other", "loss_forward",
                                               "backward_optim_other"}


def test_bench_generation_interleaved_measures_every_backend_in_one_process(tiny_model_dir):
    """`reinlm bench generation` (default --interleave): every backend timed in one process, calls alternating,
    each batch size's tokens counted; ratios to the reference backend in the report."""
    from reinlm.bench import generation

    cfg = generation.GenerationBenchConfig(model=tiny_model_dir, backends=["reinlm-float32", "reinlm-bfloat16",
                                                                           "hf-float32"],
                                           batch_sizes=[2, 4], group=2, new_tokens=3, repeats=3)
    out = generation.run_child_interleaved(cfg)["backends"]
    assert list(out) == ["reinlm-float32", "reinlm-bfloat16", "hf-float32"]
    for r in out.values():
        assert set(r["batches"]) == {"2", "4"}
        for B, b in r["batches"].items():
            assert b["tokens"] == int(B) * 3 and len(b["seconds"]) == 3
            # tokens/s from its own timed calls: tokens over the median call (3 calls: the middle one, not the mean)
            assert b["tokens_per_s"] == pytest.approx(b["tokens"] / sorted(b["seconds"])[1])
    report = {"config": {**vars(cfg), "backends": list(out)}, "backends": out, "ratios": {},
              "load_average": {"before": 0.0, "after": 0.0}}
    assert "calls alternating" in generation.format_report(report)
