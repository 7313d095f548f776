"""``reinlm bench latent-vs-token``: latent-action RL against token-space RL on the same work.

Both sides train on the same backbone (the latent model's), prompts, reward, group size, completion
length, number of steps and seed, each in its own process (so peak memory is its own). Reported per side:
steady-state completions/s and tokens/s, peak resident memory, where the step time goes (generation,
reward, reference/values, update), held-out mean reward before/after, KL to the starting policy, the
perplexity of the samples under the frozen backbone before/after, distinct-2, and a PNG of reward
against wall-clock seconds for both.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reinlm.bench.common import (emit_result, format_table, mean_over, ratio, run_child, steady_state,
                                 throughput)
from reinlm.config.build import build_config, config_to_dict
from reinlm.config.flags import add_dataclass_args
from reinlm.config.schema import Config, opt
from reinlm.errors import ReinlmError
from reinlm.evaluation.plots import pyplot
from reinlm.latent.model import latent_family
from reinlm.trainer.config import TrainConfig, add_train_args
from reinlm.utils.jsonio import read_jsonl
from reinlm.utils.memory import peak_rss_mb

TIMING_KEYS = ("perf/generate_s", "perf/reward_s", "perf/ref_and_values_s", "perf/update_s")


@dataclass
class LatentVsTokenConfig(Config):
    """The benchmark's own flags (the training flags are `reinlm train`'s)."""

    sides: list[str] = opt(default_factory=lambda: ["latent", "token"], help="which sides to run: latent, token")
    plot: str | None = opt(None, "PNG path of reward vs seconds (default: OUT/reward_vs_time.png)")
    latent_lr: float | None = opt(None, "learning rate of the latent side (default: --lr); the small policy head "
                                        "usually wants a far larger one than full fine-tuning of the LM",
                                  lo=0, lo_open=True)

    def __post_init__(self) -> None:
        super().__post_init__()  # every field checked and coerced first
        for s in self.sides:
            if s not in ("latent", "token"):
                raise ReinlmError(f"sides: got {s!r}; allowed: latent, token.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags, then the flags of `reinlm train` (the same work on both sides)."""
    add_dataclass_args(parser, LatentVsTokenConfig)
    add_train_args(parser, group="training options (shared by both sides)")


def _side_config(cfg: TrainConfig, side: str, out_root: Path, latent_lr: float | None = None) -> TrainConfig:
    values = config_to_dict(cfg)
    values.update(space=side, out=str(out_root / side), progress=False, log="none",
                  save_every=max(cfg.steps, 1) + 1, overwrite=True)  # a bench run replaces the previous one
    if side == "latent" and latent_lr is not None:
        values["lr"] = latent_lr
    if side == "token":
        values["model"] = backbone_of(cfg.latent)
        if values["algo"] == "remax":
            raise ReinlmError("algo: remax runs in latent space only; pick reinforce, grpo, rloo or ppo to compare.")
    return TrainConfig(**values)


def backbone_of(latent_dir: str | None, command: str = "reinlm bench latent-vs-token",
                sides: list[str] | tuple[str, ...] = ("latent", "token")) -> str:
    """The backbone id/path named in a latent model directory's config.json: the model of the token side. Without
    a token side in ``sides`` only the directory is checked (returns ""). A BWArea directory has no backbone:
    with a token side it is refused naming ``command`` and ``--sides latent``."""
    if not latent_dir:
        raise ReinlmError("latent: the benchmark needs --latent DIR, a model from `reinlm latent pretrain`.")
    path = Path(latent_dir) / "config.json"
    if not path.is_file():
        raise ReinlmError(f"latent: {latent_dir!r} has no config.json; pass a directory written by "
                          "`reinlm latent pretrain --out DIR`.")
    if "token" not in sides:
        return ""
    if latent_family(latent_dir) == "bwarea":
        raise ReinlmError(f"latent: {latent_dir!r} is a BWArea model (`reinlm latent import-bwarea`); the token side "
                          f"of `{command}` trains the latent model's backbone, which BWArea does not have (its parts "
                          f"own their embeddings); allowed: --sides latent (the latent side alone).")
    return json.loads(path.read_text())["backbone"]


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run the requested sides (one subprocess each) and return the report object."""
    base = {"space": "latent"}
    bench = build_config(LatentVsTokenConfig, args)
    cfg = build_config(TrainConfig, args, base)
    out_root = Path(cfg.out or f"runs/bench-latent-vs-token-seed{cfg.seed}")
    sides = bench.sides
    backbone_of(cfg.latent, sides=sides)  # fail fast on a bad latent directory (or a token side without backbone)
    flat = config_to_dict(cfg)  # the flat names, as the flags spell them
    report: dict[str, Any] = {"settings": {k: flat[k] for k in (
        "algo", "reward", "prompts", "steps", "batch_prompts", "samples_per_prompt", "max_new_tokens", "lr",
        "kl_coef", "seed", "latent", "dtype")}, "latent_lr": bench.latent_lr or cfg.lr}
    report["settings"]["frozen_dtype"] = cfg.frozen_dtype_name  # 'same' resolved
    for side in sides:
        side_cfg = _side_config(cfg, side, out_root, bench.latent_lr)
        print(f"bench: running the {side} side ({cfg.steps} steps)...", file=sys.stderr, flush=True)
        report[side] = run_child("reinlm.bench.latent_vs_token", ["--child", json.dumps(config_to_dict(side_cfg))],
                                 label=side)
    if "latent" in report and "token" in report:
        report["speedup"] = ratio(report["latent"]["completions_per_s"], report["token"]["completions_per_s"])
        report["memory_ratio"] = ratio(report["latent"]["peak_rss_mb"], report["token"]["peak_rss_mb"])
    plot = Path(bench.plot) if bench.plot else out_root / "reward_vs_time.png"
    report["plot"] = str(plot_reward_vs_time(report, plot))
    return report


def plot_reward_vs_time(report: dict[str, Any], path: Path) -> Path:
    """Reward per step against cumulative wall-clock seconds, one line per side."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for side in ("latent", "token"):
        if side in report:
            ax.plot(report[side]["curve_seconds"], report[side]["curve_reward"], marker="o", ms=3, label=f"{side} space")
    ax.set_xlabel("wall-clock seconds (training steps only)")
    ax.set_ylabel("mean reward of the step's samples")
    ax.set_title("reward vs time: latent-action RL vs token-space RL")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


ROWS = [
    ("completions/s", "completions_per_s"), ("tokens/s", "tokens_per_s"), ("step seconds (mean)", "step_s_mean"),
    ("  generation s", "generate_s"), ("  reward s", "reward_s"), ("  reference+values s", "ref_and_values_s"),
    ("  update s", "update_s"), ("peak memory MB", "peak_rss_mb"), ("reward before", "reward_before"),
    ("reward after", "reward_after"), ("KL to start (after)", "kl_after"), ("perplexity before", "ppl_before"),
    ("perplexity after", "ppl_after"), ("distinct-2 before", "distinct2_before"), ("distinct-2 after", "distinct2_after"),
]


def format_report(report: dict[str, Any]) -> str:
    """The side-by-side table, the ratios and the plot's path."""
    cols = {s: report[s] for s in ("latent", "token") if s in report}
    extra = None
    if len(cols) == 2:
        # a ratio of signed quantities (KL estimates near 0) means nothing: only positive pairs get one
        extra = {"latent/token": {k: ratio(cols["latent"].get(k), cols["token"].get(k)) for _, k in ROWS
                                  if (cols["latent"].get(k) or 0) > 0 and (cols["token"].get(k) or 0) > 0}}
    lines = [format_table(cols, ROWS, extra)]
    if "speedup" in report:
        lines.append(f"\nspeedup (latent completions/s over token's): {report['speedup']:.2f}x; "
                     f"memory ratio: {report['memory_ratio']:.2f}")
    st = report.get("settings", {})
    if "dtype" in st:
        lines.append(f"dtypes: trained weights {st['dtype']}, frozen networks {st['frozen_dtype']} "
                     "(token reference, latent backbone)")
    lines.append(f"plot: {report['plot']}")
    return "\n".join(lines)


def _child(config_json: str) -> None:
    from reinlm.trainer.loop import Trainer

    cfg = TrainConfig(**json.loads(config_json))
    run_dir = Trainer(cfg).train()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    ev = json.loads((run_dir / "train_eval.json").read_text())
    steps = [r["perf/step_s"] for r in rows]
    n = cfg.batch_size
    result = throughput(steps, [n] * len(rows), [r["perf/tokens_per_s"] * r["perf/step_s"] for r in rows])
    idx, _ = steady_state(steps)
    for key in TIMING_KEYS:
        result[key.split("/")[1]] = mean_over(rows, key, idx)
    seconds, total = [], 0.0
    for s in steps:
        total += s
        seconds.append(total)
    before, after = ev.get("before", {}), ev.get("after", {})
    result.update(
        peak_rss_mb=peak_rss_mb(), curve_seconds=seconds, curve_reward=[r["reward/mean"] for r in rows],
        reward_before=before.get("reward_mean"), reward_after=after.get("reward_mean"),
        kl_after=after.get("kl_to_reference"), ppl_before=before.get("perplexity_frozen"),
        ppl_after=after.get("perplexity_frozen"), distinct2_before=before.get("distinct_2"),
        distinct2_after=after.get("distinct_2"), run_dir=str(run_dir), space=cfg.space,
    )
    emit_result(result)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(sys.argv[2])
    else:
        sys.exit("usage: python -m reinlm.bench.latent_vs_token --child CONFIG_JSON (use `reinlm bench latent-vs-token`)")
