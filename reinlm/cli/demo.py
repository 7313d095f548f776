"""``reinlm demo``: the flagship run on the embedded defaults (what ``make demo`` calls).

Generation with SmolLM2-135M and reward scoring; a short token-space GRPO run whose reward curve rises (the
first picture, ``OUT/reward_curve.png``: conversational prompts asking for one sentence about an everyday
topic, rendered with the chat template, and a sentiment reward); then a small latent-action model is
pretrained (or reused from the cache), GRPO runs on the sentiment task in latent and in token space side
by side (table + PNG), and ``reinlm explore`` shows what each latent action writes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from reinlm.cli.demo_latent import run_latent_demo
from reinlm.config.build import build_config
from reinlm.config.flags import add_dataclass_args
from reinlm.config.schema import Config, opt
from reinlm.evaluation.plots import save_step_plot, step_figure
from reinlm.rewards import parse_reward_spec
from reinlm.rollout.token import SamplingConfig, generate_rollouts
from reinlm.utils.jsonio import read_jsonl
from reinlm.utils.outdir import check_output_dir


@dataclass
class DemoConfig(Config):
    out: str = opt("runs/demo", "where the demo writes its runs")
    steps: int | None = opt(None, "RL steps for each training run (default: the demo's own)", lo=1)
    quick: bool = opt(False, "generation and rewards only, no training")
    token_only: bool = opt(False, "skip the latent-action part (the reward curve only)")
    seed: int = opt(0, "seed", lo=0)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="run the end-to-end demo on the embedded models (offline, CPU)",
                              description="End-to-end demo on the embedded models: generation, reward scoring, "
                                          "a short GRPO run, and (when available) latent-space RL vs token-space RL.")
    add_dataclass_args(p, DemoConfig, switches=True)
    return p


def _section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 90 - len(title)), flush=True)


def generation_and_rewards(seed: int) -> None:
    """Generate a few continuations with SmolLM2-135M and score them with the built-in rewards."""
    import torch

    from reinlm.hub import load_causal_lm

    _section("1. generation with the embedded SmolLM2-135M (offline, CPU)")
    t0 = time.perf_counter()
    model, tok = load_causal_lm("smollm2-135m", device="cpu")
    print(f"loaded smollm2-135m in {time.perf_counter() - t0:.1f} s")
    prompts = ["I watched this film last night and", "The old lighthouse on the hill"]
    t0 = time.perf_counter()
    batch = generate_rollouts(model, tok, prompts, 4, SamplingConfig(max_new_tokens=24, temperature=0.8),
                              generator=torch.Generator().manual_seed(seed))
    dt = time.perf_counter() - t0
    print(f"{len(batch.completions)} samples x up to 24 tokens in {dt:.1f} s")
    _section("2. reward scoring")
    specs = ["sentiment", "toxicity", "contains_words:love,great,beautiful", "target_length:60"]
    sets = {s: parse_reward_spec(s) for s in specs}
    scores = {s: sets[s].score(batch.prompts, batch.completions).total.tolist() for s in specs}
    header = " | ".join(f"{s.split(':')[0][:14]:>14}" for s in specs)
    print(f"{header} | text")
    for i, (p, c) in enumerate(zip(batch.prompts, batch.completions)):
        row = " | ".join(f"{scores[s][i]:>14.3f}" for s in specs)
        print(f"{row} | {p}{c!s}".replace("\n", " ")[:200])


#: The first picture's run: GRPO on SmolLM2-135M, rewarding upbeat one-sentence replies about dreary topics.
#: Every step trains on the same 4 prompts (4 samples each), so the curve shows the policy changing rather than
#: which prompts a step drew; 4 other topics are held out for the before/after evaluation. Measured on the
#: 2-core CPU (README, "What make demo shows"): the reward rises on every seed tried.
DEMO_TOPICS = ("a rainy Monday", "a traffic jam", "the office printer", "a long queue", "a power cut",
               "a waiting room", "a tax form", "a crowded bus")  # a seeded half is held out
REWARD_CURVE = dict(model="smollm2-135m", algo="grpo", reward="sentiment", steps=12, batch_prompts=4,
                    samples_per_prompt=8, max_new_tokens=24, lr=3e-5, kl_coef=0.02, held_out_fraction=0.5,
                    eval_prompts=4, eval_samples=4, save_every=1000, keep_checkpoints=1, device="cpu",
                    frozen_dtype="auto", log="none")


def demo_prompts():
    """The 8 conversational prompts of :data:`DEMO_TOPICS`, from ``builtin:topics``."""
    from reinlm.data import load_prompts

    topics = load_prompts("builtin:topics")
    rows = [i for i, t in enumerate(topics.columns["topic"]) if t in DEMO_TOPICS]
    return topics.subset(sorted(rows, key=lambda i: DEMO_TOPICS.index(topics.columns["topic"][i])))


def moving_average(xs: list[float], k: int = 3) -> list[float]:
    """Mean of the last ``k`` values at each position (fewer at the start)."""
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def plot_reward_curve(rows: list[dict], path, title: str):
    """The reward per step (points) and its 3-step moving average (line), as a PNG at ``path``."""
    steps = [r["step"] for r in rows]
    reward = [r["reward/mean"] for r in rows]
    fig, ax = step_figure()
    ax.plot(steps, reward, "o", markersize=4, alpha=0.6, label="mean reward of the step's samples")
    ax.plot(steps, moving_average(reward), linewidth=2, label="3-step moving average")
    ax.set_title(title, fontsize=10)
    return save_step_plot(fig, ax, "reward/mean", path, legend=True)


def reward_curve(cfg: DemoConfig) -> None:
    """A short token-space GRPO run whose reward clearly rises; saves ``OUT/reward_curve.png``."""
    import json
    from pathlib import Path

    from reinlm.api import Trainer

    _section("3. RL at work: GRPO makes SmolLM2-135M's one-sentence replies more upbeat (sentiment reward)")
    settings = {**REWARD_CURVE, "seed": cfg.seed, "out": f"{cfg.out}/token-grpo", "overwrite": True}
    if cfg.steps:
        settings["steps"] = cfg.steps
    print("conversational prompts \"Write one sentence about <topic>.\" on dreary topics (a rainy Monday, a "
          "traffic jam, ...; chat template), the same "
          f"{settings['batch_prompts']} prompts x {settings['samples_per_prompt']} samples every step, "
          f"{settings['steps']} steps, lr {settings['lr']:g}, KL coefficient {settings['kl_coef']:g}", flush=True)
    run_dir = Trainer(prompts=demo_prompts(), **settings).train()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    reward = [r["reward/mean"] for r in rows]
    png = plot_reward_curve(rows, Path(cfg.out) / "reward_curve.png",
                            f"GRPO on SmolLM2-135M: sentiment of one-sentence replies (seed {cfg.seed})")
    k = min(3, len(reward))
    print("reward per step: " + " ".join(f"{x:.2f}" for x in reward))
    print(f"mean of the first {k} steps {sum(reward[:k]) / k:.3f} -> last {k} steps {sum(reward[-k:]) / k:.3f}; "
          f"picture: {png}")
    ev = json.loads((run_dir / "train_eval.json").read_text())
    b, a = ev.get("before", {}), ev.get("after", {})
    if b and a:
        print(f"held-out prompts (never trained on): reward {b['reward_mean']:.3f} -> {a['reward_mean']:.3f}; "
              f"distinct-2 {b.get('distinct_2', float('nan')):.3f} -> {a.get('distinct_2', float('nan')):.3f}; "
              f"KL to the starting model {a.get('kl_to_reference', float('nan')):.2f}")
        for tag, s in (("before", b["samples"][0]), ("after", a["samples"][0])):
            print(f"  {tag}: {s['completion']!s}".replace("\n", " ")[:160])


def run(args: argparse.Namespace) -> int:
    cfg = build_config(DemoConfig, args)  # checked before any model loads
    if not cfg.quick:
        check_output_dir(cfg.out)
    t_start = time.perf_counter()
    generation_and_rewards(cfg.seed)
    if cfg.quick:
        return 0
    try:
        import reinlm.latent.pretrain  # noqa: F401
        has_latent = True
    except ImportError:
        has_latent = False
    reward_curve(cfg)
    if has_latent and not cfg.token_only:
        run_latent_demo(cfg, _section)
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; runs under {cfg.out}/")
    return 0
