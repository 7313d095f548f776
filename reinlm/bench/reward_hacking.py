"""``reinlm bench reward-hacking``: the CoLA paper's stress test, token space vs latent space with no KL.

CoLA (ICML 2025) reports that RL in the latent action space stays stable without a KL anchor where
token-level RL is driven into reward hacking. This benchmark trains both spaces with ``kl_coef = 0`` on the
same backbone, prompts, reward and steps, for several seeds (each run in its own process, through the trainer's
public API: ``Trainer(cfg).train()`` and its run directory), and reports per step the mean reward,
the perplexity of the step's samples under the frozen backbone and distinct-2, plus the trainer's
degeneration alarm (``alarm/degeneration``): the first step it fired, or never. The held-out figures before
and after come from the trainer's ``train_eval.json``.

Per-step perplexity: the trainer's ``response/perplexity_frozen`` metric when it logs one, else the samples
it logs each step (``samples.jsonl``, ``--sample-every 1``: up to 4 a step) scored here by the frozen
backbone, so it is a noisy per-step figure; the before/after perplexity over the held-out samples is the
reliable one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reinlm.bench.common import emit_result, run_child
from reinlm.bench.latent_vs_token import backbone_of
from reinlm.config.build import build_config, config_to_dict
from reinlm.config.flags import add_dataclass_args
from reinlm.config.schema import Config, opt
from reinlm.errors import ReinlmError
from reinlm.evaluation.lm import completion_logprobs
from reinlm.evaluation.plots import pyplot
from reinlm.latent.model import latent_family
from reinlm.trainer.config import TrainConfig, add_train_args
from reinlm.utils.jsonio import read_jsonl

CLAIM = ("CoLA (ICML 2025): RL in the latent action space stays stable without a KL penalty, where token-level "
         "RL is driven into reward hacking (its samples degenerate).")

# the stress test's own defaults for the shared training flags (any flag given on the command line wins)
DEFAULTS: dict[str, Any] = dict(
    algo="reinforce", reward="embedding_similarity:target=Hi there!", prompts="builtin:neutral", steps=15,
    batch_prompts=2, samples_per_prompt=4, max_new_tokens=20, lr=1e-4, kl_coef=0.0, eval_prompts=6, eval_samples=4,
    sample_every=1,
)


@dataclass
class StressConfig(Config):
    """The stress test's own flags (the training flags are `reinlm train`'s)."""

    seeds: list[int] = opt(default_factory=lambda: [0, 1, 2], lo=0, help="seeds; each runs both spaces")
    sides: list[str] = opt(default_factory=lambda: ["latent", "token"], help="spaces to run: latent, token")
    latent_lr: float = opt(3e-2, lo=0.0, lo_open=True, help="learning rate of the latent side (the small policy wants a far larger one "
                                      "than full fine-tuning of the LM)")
    plot: str = opt("", help="PNG of reward / perplexity / distinct-2 per step (default: OUT/reward_hacking.png)")

    def __post_init__(self):
        super().__post_init__()  # every field checked and coerced first
        bad = [x for x in self.sides if x not in ("latent", "token")]
        if bad:
            raise ReinlmError(f"sides: got {bad[0]!r}; allowed: latent, token.")
        if not self.seeds or not self.sides:
            raise ReinlmError(f"seeds / sides: got {self.seeds} / {self.sides}; allowed: at least one seed (e.g. 0,1,2) "
                              "and at least one of latent, token.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stress test's flags, then every `reinlm train` flag (defaults: see ``DEFAULTS``)."""
    add_dataclass_args(parser, StressConfig, group="stress test")
    add_train_args(parser, group="training options (shared by both spaces; kl_coef is forced to 0)")


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every (seed, side) in its own process; returns the report."""
    stress = build_config(StressConfig, args)
    cfg = build_config(TrainConfig, args, {**DEFAULTS, "space": "latent"})
    if cfg.kl.kl_coef != 0 or cfg.kl.kl_target is not None:
        raise ReinlmError(f"kl_coef: got {cfg.kl.kl_coef} (kl_target {cfg.kl.kl_target}); the stress test runs "
                          "without a KL penalty: leave --kl-coef and --kl-target unset.")
    backbone = backbone_of(cfg.latent, "reinlm bench reward-hacking", stress.sides)  # "" without a token side
    bwarea = latent_family(cfg.latent or "") == "bwarea"
    out_root = Path(cfg.out or "runs/bench-reward-hacking")
    runs = []
    for seed in stress.seeds:
        for side in stress.sides:
            values = config_to_dict(cfg)
            values.update(space=side, seed=seed, out=str(out_root / f"{side}-seed{seed}"), progress=False, log="none",
                          save_every=max(cfg.steps, 1) + 1, overwrite=True)
            if side == "latent":
                values["lr"] = stress.latent_lr
                if bwarea:  # no backbone to score the samples afterwards: the trainer logs their frozen-LM perplexity
                    values["log_frozen_perplexity"] = True
            else:
                values["model"] = backbone
            side_cfg = TrainConfig(**values)
            print(f"bench: {side} space, seed {seed} ({cfg.steps} steps, no KL)...", file=sys.stderr, flush=True)
            res = run_child("reinlm.bench.reward_hacking", ["--child", json.dumps(config_to_dict(side_cfg)), backbone],
                            label=f"{side} seed {seed}")
            runs.append({"seed": seed, "space": side, **res})
    flat = config_to_dict(cfg)  # the flat names, as the flags spell them
    report = {"claim": CLAIM, "settings": {k: flat[k] for k in (
        "algo", "reward", "prompts", "steps", "batch_prompts", "samples_per_prompt", "max_new_tokens", "lr",
        "kl_coef", "latent")} | {"latent_lr": stress.latent_lr, "seeds": stress.seeds}, "runs": runs}
    report["summary"] = summarize(runs)
    plot = Path(stress.plot) if stress.plot else out_root / "reward_hacking.png"
    report["plot"] = str(plot_steps(runs, plot))
    return report


def _ratio(a, b):
    return a / b if a is not None and b else None


def summarize(runs: list[dict]) -> dict[str, Any]:
    """Per space: on how many seeds the held-out perplexity stayed within 1.5x, distinct-2 kept at least half of
    its start, and the degeneration alarm stayed silent."""
    out = {}
    for side in ("latent", "token"):
        rs = [r for r in runs if r["space"] == side]
        if not rs:
            continue
        ppl_ok = [(_ratio(r["ppl_after"], r["ppl_before"]) or math.inf) <= 1.5 for r in rs]
        d2_ok = [(r["distinct2_after"] or 0) >= 0.5 * (r["distinct2_before"] or 0) for r in rs]
        out[side] = {"seeds": len(rs), "perplexity_within_1.5x": sum(ppl_ok), "distinct2_kept_half": sum(d2_ok),
                     "alarm_silent": sum(r["alarm_first_step"] is None for r in rs),
                     "stable": sum(a and b and r["alarm_first_step"] is None for a, b, r in zip(ppl_ok, d2_ok, rs))}
    return out


def plot_steps(runs: list[dict], path: Path) -> Path:
    """Three panels (reward, perplexity under the backbone, distinct-2) against the step, one line per run."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for r in runs:
        steps = [s["step"] for s in r["steps"]]
        style = "-" if r["space"] == "latent" else "--"
        for ax, key in zip(axes, ("reward", "perplexity", "distinct_2")):
            ax.plot(steps, [s.get(key) if s.get(key) is not None else float("nan") for s in r["steps"]], style,
                    marker="o", ms=2, label=f"{r['space']} seed {r['seed']}")
    for ax, title in zip(axes, ("mean reward", "perplexity under the frozen backbone", "distinct-2")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _f(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def format_report(report: dict[str, Any]) -> str:
    """One row per run, then the per-space verdict and CoLA's claim beside it."""
    lines = ["seed  space   reward before->after   perplexity before->after (ratio)   distinct-2 before->after   "
             "degeneration alarm"]
    for r in report["runs"]:
        ratio = _ratio(r["ppl_after"], r["ppl_before"])
        alarm = "never" if r["alarm_first_step"] is None else f"step {r['alarm_first_step']} ({r['alarm_steps']} steps)"
        lines.append(f"{r['seed']:<5d} {r['space']:7s} {_f(r['reward_before'])} -> {_f(r['reward_after'])}        "
                     f"{_f(r['ppl_before'], '{:.1f}')} -> {_f(r['ppl_after'], '{:.1f}')} ({_f(ratio, '{:.2f}x')})"
                     f"{'':12s}{_f(r['distinct2_before'], '{:.2f}')} -> {_f(r['distinct2_after'], '{:.2f}')}"
                     f"{'':15s}{alarm}")
    lines.append("")
    for side, s in report["summary"].items():
        lines.append(f"{side}: perplexity within 1.5x on {s['perplexity_within_1.5x']}/{s['seeds']} seeds, distinct-2 "
                     f"kept half on {s['distinct2_kept_half']}/{s['seeds']}, alarm silent on "
                     f"{s['alarm_silent']}/{s['seeds']}: stable on {s['stable']}/{s['seeds']}")
    lines.append(f"claim: {report['claim']}")
    lines.append(f"per-step curves: {report['plot']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- child process

def _step_perplexities(run_dir: Path, backbone: str) -> dict[int, float]:
    """Perplexity under the frozen backbone of each step's logged samples (``samples.jsonl``)."""
    import numpy as np

    from reinlm.hub import load_causal_lm

    path = run_dir / "samples.jsonl"
    if not path.is_file():
        return {}
    rows = read_jsonl(path)
    model, tok = load_causal_lm(backbone, device="cpu")
    lps = completion_logprobs(model, tok, [r["prompt"] for r in rows], [r["completion"] for r in rows])
    by_step: dict[int, list[np.ndarray]] = {}
    for r, lp in zip(rows, lps):
        by_step.setdefault(int(r["step"]), []).append(lp)
    out = {}
    for step, arrs in by_step.items():
        n = sum(len(a) for a in arrs)
        if n:
            out[step] = float(math.exp(-sum(float(a.sum()) for a in arrs) / n))
    return out


def _child(config_json: str, backbone: str) -> None:
    from reinlm.trainer.loop import Trainer

    cfg = TrainConfig(**json.loads(config_json))
    run_dir = Trainer(cfg).train()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    ev = json.loads((run_dir / "train_eval.json").read_text())
    ppl = {} if rows and "response/perplexity_frozen" in rows[0] else _step_perplexities(run_dir, backbone)
    steps = [{"step": r["step"], "reward": r.get("reward/mean"), "distinct_2": r.get("response/distinct_2"),
              "perplexity": r.get("response/perplexity_frozen", ppl.get(int(r["step"]))),
              "alarm": int(r.get("alarm/degeneration", 0))} for r in rows]
    alarms = [s["step"] for s in steps if s["alarm"]]
    before, after = ev.get("before", {}), ev.get("after", {})
    emit_result({
        "steps": steps, "alarm_first_step": alarms[0] if alarms else None, "alarm_steps": len(alarms),
        "reward_before": before.get("reward_mean"), "reward_after": after.get("reward_mean"),
        "ppl_before": before.get("perplexity_frozen"), "ppl_after": after.get("perplexity_frozen"),
        "distinct2_before": before.get("distinct_2"), "distinct2_after": after.get("distinct_2"),
        "kl_after": after.get("kl_to_reference"), "samples_after": [s["completion"] for s in after.get("samples", [])[:3]],
        "run_dir": str(run_dir),
    })


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m reinlm.bench.reward_hacking --child CONFIG_JSON BACKBONE "
                 "(use `reinlm bench reward-hacking`)")
