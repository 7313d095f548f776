"""``reinlm bench token-rl``: reinlm's GRPO against TRL's ``GRPOTrainer`` at equal settings.

Each side runs in its own subprocess (``python -m reinlm.bench.token_rl --side reinlm|trl ...``), so its peak
resident memory is its own; the child prints one result line (see :mod:`reinlm.bench.common`). Equal
settings on both sides: the same model directory (``reinlm.hub.resolve_model_dir``), the same prompts (a
``datasets.Dataset`` with a ``prompt`` column built from reinlm's prompt set), the same reward (reinlm's
``RewardSet`` behind a TRL-signature function), group size G = ``num_generations``, one update per batch
of ``batch_prompts * G`` completions, ``max_new_tokens`` = ``max_completion_length``, temperature 1,
full-parameter AdamW at the same learning rate (constant schedule, no warm-up, grad-norm clip 1.0), clip
epsilon 0.2, group-std-scaled advantages, per-sequence loss averaging (TRL ``loss_type="grpo"``), no
gradient checkpointing, float32 weights on CPU with each side's default training precision (reinlm ``auto``:
bfloat16 autocast where native; TRL ``bf16=True``; ``--train-precision same --trl-bf16 false`` for float32 on both),
no evaluation, no saving during the run. ``--kl-coef 0`` (TRL's
default) loads no reference model on either side; ``--kl-coef B > 0`` puts a k3 KL term in the loss on both.

Timing excludes model loading: per-step wall time from the start of the step (generation) to the end of
the optimiser step. With more than two steps the first is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reinlm.bench.common import (
    emit_result, format_table, mean_over, ratio, require_module, run_child, steady_state, throughput,
)
from reinlm.config.build import build_config, config_to_dict
from reinlm.config.coerce import check_range
from reinlm.config.flags import add_dataclass_args
from reinlm.config.schema import Config, opt
from reinlm.errors import ConfigError, ReinlmError
from reinlm.rewards import parse_reward_spec
from reinlm.trainer.config import TrainConfig
from reinlm.utils.jsonio import read_jsonl, write_json
from reinlm.utils.memory import peak_rss_mb
from reinlm.utils.rng import seed_everything

SIDES = ("reinlm", "trl")


@dataclass
class TokenRLBenchConfig(Config):
    model: str = opt("smollm2-135m", "policy model for both sides: alias, local dir, .gguf or HF id")
    prompts: str = opt("builtin:reviews", "prompt SPEC (as for `reinlm train`), shared by both sides")
    reward: str = opt("sentiment", "reward SPEC; both sides call reinlm's reward with TRL's signature")
    steps: int = opt(5, "RL steps per side (the first is an untimed warm-up when steps > 2)", lo=1)
    batch_prompts: int = opt(1, "prompts per step", lo=1)
    samples_per_prompt: int = opt(8, "completions per prompt (group size G = TRL's num_generations)", lo=2)
    max_new_tokens: int = opt(20, "maximum completion length in tokens (TRL's max_completion_length)", lo=1)
    kl_coef: float = opt(0.0, "KL coefficient (0: no reference model on either side, TRL's default beta)", lo=0)
    lr: float = opt(1e-6, "AdamW learning rate (TRL's default)", lo=0, lo_open=True)
    seed: int = opt(0, "seed for both sides", lo=0)
    threads: int = opt(0, "torch CPU threads per side (0: torch's default)", lo=0)
    generation_backend: str = opt("reinlm", "reinlm side: reinlm (decode engine) or vllm (in-process vLLM, weights "
                                            "pushed after every step); see `reinlm train --help`")
    rollout_dtype: str = opt("auto", "reinlm side: auto|same|float32|bfloat16 (auto: a bfloat16 rollout copy where "
                                     "native; same: sample with the float32 trained weights)")
    train_precision: str = opt("auto", "reinlm side: auto (reinlm's default: bf16-autocast where bfloat16 is native, "
                                       "else same), same (float32 forward/backward) or bf16-autocast (bfloat16 mixed "
                                       "precision, float32 weights and AdamW); see `reinlm train --help`")
    trl_bf16: bool = opt(True, "TRL side: bf16=True (TRL's default: GRPOConfig's bf16 is True unless fp16 is set), "
                               "bfloat16 mixed precision through accelerate's autocast with float32 weights and AdamW, "
                               "the counterpart of reinlm's bf16-autocast; false: float32")
    profile: bool = opt(False, "reinlm side: time every phase of the step (generate, sync, reward, reference, old "
                               "log-probs, forward, backward, optimiser) and set each against this machine's "
                               "limit at the phase's own shapes and dtype (docs/benchmarks.md)")
    sides: list[str] = opt(default_factory=lambda: list(SIDES), help="sides to run, comma-separated: reinlm,trl")
    out: str | None = opt(None, "keep each side's run directory and results.json here (default: a temp dir, removed)")
    timeout: int = opt(3600, "seconds allowed per side before it is stopped", lo=1)

    def __post_init__(self) -> None:
        super().__post_init__()  # every field checked and coerced first
        for name in ("steps", "batch_prompts", "max_new_tokens", "timeout"):
            check_range(name, getattr(self, name), 1)
        check_range("samples_per_prompt", self.samples_per_prompt, 2)
        check_range("kl_coef", self.kl_coef, 0)
        check_range("lr", self.lr, 0, lo_open=True)
        check_range("threads", self.threads, 0)
        if self.generation_backend not in ("reinlm", "vllm"):
            raise ConfigError(f"generation_backend: got {self.generation_backend!r}; allowed: reinlm, vllm.")
        if self.train_precision not in ("auto", "same", "bf16-autocast"):
            raise ConfigError(f"train_precision: got {self.train_precision!r}; allowed: auto, same, bf16-autocast.")
        if self.rollout_dtype not in ("auto", "same", "float32", "bfloat16"):
            raise ConfigError(f"rollout_dtype: got {self.rollout_dtype!r}; allowed: auto, same, float32, bfloat16.")
        if isinstance(self.sides, str):
            self.sides = [s for s in self.sides.split(",") if s]
        bad = [s for s in self.sides if s not in SIDES]
        if bad or not self.sides:
            raise ConfigError(f"sides: got {','.join(self.sides) or '(none)'!r}; allowed: a comma-separated "
                              f"subset of {', '.join(SIDES)}.")

    @property
    def batch_size(self) -> int:
        """Completions per step."""
        return self.batch_prompts * self.samples_per_prompt


# ---------------------------------------------------------------------------------------------- shared inputs


def _reward_fn(cfg: TokenRLBenchConfig, column_names: list[str]):
    """The reward SPEC as one TRL-signature function ``fn(prompts, completions, **kw) -> list[float]``.

    reinlm's trainer scores through the same ``RewardSet.score``, so reward time and values are comparable.
    """
    reward_set = parse_reward_spec(cfg.reward)

    def reinlm_reward(prompts, completions, **kwargs):
        columns = {k: list(kwargs[k]) for k in column_names if k in kwargs}
        return [float(x) for x in reward_set.score(list(prompts), list(completions), columns).total.tolist()]

    return reinlm_reward


def _setup_torch(cfg: TokenRLBenchConfig) -> None:
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)


# ---------------------------------------------------------------------------------------------- reinlm side


def run_reinlm_side(cfg: TokenRLBenchConfig, run_dir: Path) -> dict[str, Any]:
    """Train reinlm's GRPO for ``cfg.steps`` steps; returns this side's result object."""
    from reinlm.trainer.loop import Trainer

    _setup_torch(cfg)
    train_cfg = TrainConfig(
        model=cfg.model, algo="grpo", reward=cfg.reward, prompts=cfg.prompts, held_out_fraction=0.0,
        steps=cfg.steps, batch_prompts=cfg.batch_prompts, samples_per_prompt=cfg.samples_per_prompt,
        max_new_tokens=cfg.max_new_tokens, temperature=1.0, kl_coef=cfg.kl_coef,
        kl_in="loss",  # TRL's semantics: beta * k3 in the loss (inactive at beta 0)
        kl_estimator="k3", update_epochs=1, clip_eps=0.2, scale_rewards="group", loss_type="grpo",
        lr=cfg.lr, weight_decay=0.0, warmup_steps=0, lr_schedule="constant", max_grad_norm=1.0,
        device="cpu", dtype="float32", seed=cfg.seed, out=str(run_dir), save_every=cfg.steps,
        keep_checkpoints=1, sample_every=0, log="none", eval_prompts=0, progress=False, overwrite=True,
        generation_backend=cfg.generation_backend, rollout_dtype=cfg.rollout_dtype,
        train_precision=cfg.train_precision,
    )
    t0 = time.perf_counter()
    trainer = Trainer(train_cfg)
    load_s = time.perf_counter() - t0
    if cfg.profile:
        from reinlm.bench.token_rl_profile import instrument

        clock, shapes = instrument(trainer)
    trainer.train()
    rows = read_jsonl(Path(trainer.run_dir) / "metrics.jsonl")
    rows = [r for r in rows if "perf/step_s" in r]
    if len(rows) != cfg.steps:
        raise ReinlmError(f"bench: reinlm logged {len(rows)} steps in metrics.jsonl, expected {cfg.steps}.")
    steps_s = [float(r["perf/step_s"]) for r in rows]
    comps = [float(r.get("perf/completions_per_s", 0.0)) * float(r["perf/step_s"]) for r in rows]
    tokens = [float(r.get("perf/tokens_per_s", 0.0)) * float(r["perf/step_s"]) for r in rows]
    result = {"side": "reinlm", **throughput(steps_s, comps, tokens)}
    idx, _ = steady_state(steps_s)
    result["profile_s"] = {
        name: mean_over(rows, f"perf/{name}_s", idx) for name in ("generate", "reward", "ref_and_values", "update")
    }
    result.update(_reward_summary([r.get("reward/mean") for r in rows]))
    result["completion_len_mean"] = mean_over(rows, "response/length_mean")
    result["peak_rss_train_mb"] = max((float(r.get("perf/peak_rss_mb", 0.0)) for r in rows), default=None)
    result["peak_rss_mb"] = peak_rss_mb()
    result["load_s"] = load_s
    if cfg.profile:
        result.update(_roofline_profile(trainer, clock, shapes))
    return result


def _roofline_profile(trainer, clock, shapes) -> dict[str, Any]:
    """The per-phase profile of the timed steps (``--profile``): ``phases`` rows and the measured ``limits``."""
    from reinlm.bench.roofline import Limits, profile_rows
    from reinlm.bench.token_rl_profile import PHASES, mean_shape, model_shapes_of, phase_work, trainer_dtypes

    idx, _ = steady_state([s["step"] for s in clock.steps])
    seconds = {p: sum(clock.steps[i][p] for i in idx) / len(idx) for p in PHASES}
    step_s = sum(clock.steps[i]["step"] for i in idx) / len(idx)
    shape = mean_shape([shapes[i] for i in idx])
    limits = Limits()
    trainable = sum(p.numel() for p in trainer.policy.trainable_parameters())
    dtypes = trainer_dtypes(trainer)
    work = phase_work(shape, model_shapes_of(trainer), dtypes, trainable, limits)
    return {"phases": profile_rows(seconds, work, step_s),
            "profile_shape": dataclasses.asdict(shape),
            "profile_dtypes": {k: str(v).replace("torch.", "") for k, v in dataclasses.asdict(dtypes).items()},
            "limits": {"bandwidth_gb_s": limits.bandwidth / 1e9, "matmul_gflop_s": limits.measured()}}


# ---------------------------------------------------------------------------------------------- TRL side


class _Timers:
    """Cumulative seconds per named section within the current step (monkeypatched TRL methods)."""

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []

    def wrap(self, cls, name: str, label: str) -> None:
        fn = getattr(cls, name)
        timers = self

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers.current[label] += time.perf_counter() - t

        timed.__wrapped__ = fn
        setattr(cls, name, timed)

    def close_step(self) -> None:
        self.steps.append(dict(self.current))
        self.current.clear()


def run_trl_side(cfg: TokenRLBenchConfig, run_dir: Path) -> dict[str, Any]:
    """Train TRL's ``GRPOTrainer`` for ``cfg.steps`` steps; returns this side's result object."""
    require_module("trl", "the TRL side of `reinlm bench token-rl`")
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reinlm.data import load_prompts

    _setup_torch(cfg)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    prompt_set = load_prompts(cfg.prompts)
    extra_cols = [k for k in prompt_set.columns if k != "prompt"]
    dataset = Dataset.from_dict({"prompt": list(prompt_set.prompts),
                                 **{k: list(prompt_set.columns[k]) for k in extra_cols}})
    reward_fn = _reward_fn(cfg, extra_cols)

    args = GRPOConfig(
        output_dir=str(run_dir), use_cpu=True, bf16=bool(cfg.trl_bf16), fp16=False, report_to=[], seed=cfg.seed,
        max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=1,
        num_generations=cfg.samples_per_prompt, max_completion_length=cfg.max_new_tokens, temperature=1.0,
        top_p=1.0, top_k=0, beta=cfg.kl_coef, num_iterations=1, epsilon=0.2, scale_rewards="group",
        loss_type="grpo", learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, **_no_checkpointing(GRPOConfig), model_init_kwargs={"dtype": torch.float32},
        logging_strategy="steps", logging_steps=1, save_strategy="no", eval_strategy="no", log_completions=False,
        disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
    )

    timers = _Timers()
    timers.wrap(GRPOTrainer, "_generate", "generate")
    timers.wrap(GRPOTrainer, "_calculate_rewards", "reward")
    timers.wrap(GRPOTrainer, "_generate_and_score_completions", "generate_and_score")
    timers.wrap(GRPOTrainer, "compute_loss", "loss_forward")
    step_times: list[float] = []
    step_logs: list[dict[str, float]] = []
    rss_at_steps: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            timers.current.clear()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_times.append(time.perf_counter() - self._t)
            timers.close_step()
            rss_at_steps.append(peak_rss_mb())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:  # the per-step training log (logging_steps=1)
                step_logs.append(dict(logs))

    trainer = GRPOTrainer(model=cfg.model, reward_funcs=[reward_fn], args=args, train_dataset=dataset,
                          callbacks=[StepTimer()])
    load_s = time.perf_counter() - t0
    trainer.train()
    if len(step_times) != cfg.steps:
        raise ReinlmError(f"bench: TRL ran {len(step_times)} steps, expected {cfg.steps}.")
    lengths = [float(l.get("completions/mean_length", 0.0)) for l in step_logs] or [0.0] * cfg.steps
    comps = [float(cfg.batch_size)] * cfg.steps
    tokens = [m * cfg.batch_size for m in lengths]
    result = {"side": "trl", **throughput(step_times, comps, tokens)}
    idx, _ = steady_state(step_times)
    prof = {k: mean_over(timers.steps, k, idx) or 0.0 for k in ("generate", "reward", "generate_and_score", "loss_forward")}
    step_mean = result["step_s_mean"]
    result["profile_s"] = {
        "generate": prof["generate"],
        "reward": prof["reward"],
        # old/ref log-probs, advantages, bookkeeping inside _generate_and_score_completions
        "score_other": max(prof["generate_and_score"] - prof["generate"] - prof["reward"], 0.0),
        "loss_forward": prof["loss_forward"],
        # backward, grad clip, optimiser and scheduler step, Trainer bookkeeping
        "backward_optim_other": max(step_mean - prof["generate_and_score"] - prof["loss_forward"], 0.0),
    }
    result["trl_step_time_logged"] = mean_over(step_logs, "step_time", idx)
    result.update(_reward_summary([l.get("reward") for l in step_logs]))
    result["completion_len_mean"] = sum(lengths) / len(lengths) if lengths else None
    result["peak_rss_train_mb"] = max(rss_at_steps) if rss_at_steps else None
    result["peak_rss_mb"] = peak_rss_mb()
    result["load_s"] = load_s
    import trl

    result["trl_version"] = trl.__version__
    return result


def _no_checkpointing(config_cls) -> dict[str, bool]:
    """Turn activation (gradient) checkpointing off: TRL defaults it on; reinlm does not use it.

    transformers 5 renamed the field ``gradient_checkpointing`` to ``activation_checkpointing``.
    """
    fields = {f.name for f in dataclasses.fields(config_cls)}
    return {"activation_checkpointing": False} if "activation_checkpointing" in fields else {"gradient_checkpointing": False}


def _reward_summary(per_step: list[Any]) -> dict[str, Any]:
    vals = [float(v) for v in per_step if v is not None]
    return {
        "reward_per_step": vals,
        "reward_first": vals[0] if vals else None,
        "reward_final": vals[-1] if vals else None,
        "reward_mean": sum(vals) / len(vals) if vals else None,
    }


# ---------------------------------------------------------------------------------------------- orchestration


def child_argv(cfg: TokenRLBenchConfig, side: str, run_dir: Path) -> list[str]:
    """Command-line arguments that rebuild ``cfg`` in a child process for ``side``."""
    argv = ["--side", side, "--run-dir", str(run_dir)]
    for name, value in config_to_dict(cfg).items():
        if name in ("sides", "out") or value is None:
            continue
        argv += ["--" + name.replace("_", "-"), ",".join(value) if isinstance(value, list) else str(value)]
    return argv


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The combined report: each side's results plus ``speedup`` (reinlm / TRL completions/s) and
    ``memory_ratio`` (reinlm / TRL peak RSS); ratios are None when a side is missing."""
    r, t = results.get("reinlm"), results.get("trl")
    out: dict[str, Any] = dict(results)
    out["speedup"] = ratio(r and r.get("completions_per_s"), t and t.get("completions_per_s"))
    out["tokens_speedup"] = ratio(r and r.get("tokens_per_s"), t and t.get("tokens_per_s"))
    out["memory_ratio"] = ratio(r and r.get("peak_rss_mb"), t and t.get("peak_rss_mb"))
    return out


TABLE_ROWS = [
    ("completions/s", "completions_per_s"),
    ("completion tokens/s", "tokens_per_s"),
    ("mean step s", "step_s_mean"),
    ("peak RSS MB", "peak_rss_mb"),
    ("peak RSS MB (training)", "peak_rss_train_mb"),
    ("reward first step", "reward_first"),
    ("reward final step", "reward_final"),
    ("mean completion len", "completion_len_mean"),
    ("timed steps", "timed_steps"),
    ("model load s (untimed)", "load_s"),
]


def format_report(report: dict[str, Any]) -> str:
    """Side-by-side table, the ratios and each side's step profile, as text."""
    sides = {s: report[s] for s in SIDES if isinstance(report.get(s), dict)}
    extra = {}
    if len(sides) == 2:
        r, t = sides["reinlm"], sides["trl"]
        extra["reinlm/trl"] = {key: ratio(r.get(key), t.get(key)) for _, key in TABLE_ROWS
                               if key in ("completions_per_s", "tokens_per_s", "step_s_mean", "peak_rss_mb",
                                          "peak_rss_train_mb")}
    lines = [format_table(sides, TABLE_ROWS, extra), ""]
    if report.get("speedup") is not None:
        lines.append(f"speedup (reinlm / TRL completions/s): {report['speedup']:.2f}x   "
                     f"memory ratio (reinlm / TRL peak RSS): {report['memory_ratio']:.2f}")
    for name, res in sides.items():
        prof = res.get("profile_s") or {}
        total = res.get("step_s_mean") or 0.0
        parts = ", ".join(f"{k} {v:.2f}s ({100 * v / total:.0f}%)" if total else f"{k} {v:.2f}s"
                          for k, v in prof.items() if v is not None)
        lines.append(f"{name} step profile (mean of timed steps, {total:.2f}s): {parts}")
    if sides.get("reinlm", {}).get("phases"):
        from reinlm.bench.roofline import format_profile

        r = sides["reinlm"]
        lines += ["", f"reinlm phases against this machine's limit (shape {r['profile_shape']}, dtypes "
                      f"{r['profile_dtypes']}, bandwidth {r['limits']['bandwidth_gb_s']:.1f} GB/s):",
                  format_profile(r["phases"])]
    skipped = next((s.get("warmup_steps_skipped") for s in sides.values()), 0)
    lines.append(f"timing: model loading excluded; {skipped} warm-up step(s) skipped per side.")
    return "\n".join(lines)


def run_bench(cfg: TokenRLBenchConfig) -> dict[str, Any]:
    """Run each requested side in its own subprocess (reinlm first) and return :func:`compare`'s report."""
    from reinlm.hub import resolve_model_dir

    if "trl" in cfg.sides:
        require_module("trl", "the TRL side of `reinlm bench token-rl`")
    model_dir = resolve_model_dir(cfg.model)  # converts a GGUF alias once, before either side is timed
    side_cfg = dataclasses.replace(cfg, model=model_dir)
    base = Path(cfg.out) if cfg.out else Path(tempfile.mkdtemp(prefix="reinlm-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    try:
        for side in SIDES:
            if side in cfg.sides:
                print(f"bench token-rl: running the {side} side ({cfg.steps} steps)...", file=sys.stderr, flush=True)
                results[side] = run_child("reinlm.bench.token_rl", child_argv(side_cfg, side, base / side),
                                          label=side, timeout=cfg.timeout)
    finally:
        if not cfg.out:
            shutil.rmtree(base, ignore_errors=True)
    report = compare(results)
    report["settings"] = {**config_to_dict(cfg), "model_dir": model_dir, "batch_size": cfg.batch_size}
    if cfg.out:
        write_json(base / "results.json", report)
    return report


# ---------------------------------------------------------------------------------------------- child entry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags (one per :class:`TokenRLBenchConfig` field)."""
    add_dataclass_args(parser, TokenRLBenchConfig)


def main(argv: list[str] | None = None) -> int:
    """Child entry point: run one side and print its result line."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m reinlm.bench.token_rl")
    parser.add_argument("--side", choices=SIDES, required=True)
    parser.add_argument("--run-dir", required=True)
    add_arguments(parser)
    args = parser.parse_args(argv)
    cfg = build_config(TokenRLBenchConfig, args)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = (run_reinlm_side if args.side == "reinlm" else run_trl_side)(cfg, run_dir)
    except ReinlmError as e:
        print(f"reinlm: error: {e}", file=sys.stderr)
        return e.exit_code
    emit_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
