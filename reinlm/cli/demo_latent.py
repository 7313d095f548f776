"""The flagship part of ``reinlm demo``: latent-action RL against token-space RL on the embedded model.

1. pretrain a small latent-action model on SmolLM2-135M's own samples (stages cached under OUT/latent,
   so a second run reuses them);
2. ``reinlm bench latent-vs-token``: GRPO on the sentiment task in both spaces, same prompts, reward,
   group size, completion length and steps; the side-by-side table and the reward-vs-time PNG;
3. ``reinlm explore`` on one prompt: what the world model writes under each latent action.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reinlm.bench.latent_vs_token import format_report, run_bench
from reinlm.latent.model import LatentActionModel
from reinlm.latent.pretrain import PretrainConfig, pretrain

DEMO_CORPUS_TOKENS = 12000  # self-sampled tokens for the demo's latent model (the full recipe uses 200000)


def pretrain_demo_latent(out: Path, seed: int) -> Path:
    """Pretrain (or reuse) the demo's latent model; returns its directory."""
    latent_dir = out / "latent"
    summary = latent_dir / "summary.json"
    if summary.is_file():
        print(f"reusing the latent model in {latent_dir} (delete it to pretrain again)")
    else:
        pretrain(PretrainConfig(backbone="smollm2-135m", corpus=f"self:{DEMO_CORPUS_TOKENS}", out=str(latent_dir),
                                seed=seed, stage1_epochs=4.0, stage2_epochs=3.0))  # a small corpus needs more passes
    s = json.loads(summary.read_text())
    print(f"latent model: {s['codes_used']}/{s['num_actions']} codes used on held-out text; NLL per token: "
          f"world model with IDM actions {s['nll_world_model_idm']:.3f} vs backbone {s['nll_backbone']:.3f}; "
          f"behaviour cloning top-1 {s['bc_top1_accuracy']:.3f} (chance {1 / s['num_actions']:.3f})")
    return latent_dir


def run_latent_demo(cfg, section) -> None:
    """Sections 4-6 of the demo; ``cfg`` is its :class:`~reinlm.cli.demo.DemoConfig`."""
    out = Path(cfg.out)
    section("4. latent-action model on SmolLM2-135M (pretrained once, then cached)")
    latent_dir = pretrain_demo_latent(out, cfg.seed)

    section("5. GRPO on the sentiment task: latent space vs token space (same work, one process each)")
    steps = cfg.steps or 8
    # each space gets the learning rate that suits what it trains: token space fine-tunes all 135M
    # parameters (lr 2e-6), latent space a policy of about 2M parameters from behaviour-cloned weights (lr 1e-4;
    # 1e-3 collapsed its diversity). The frozen networks (token reference, latent backbone) run in bfloat16
    # where the CPU computes it natively (--frozen-dtype auto); trained weights stay float32.
    bench_args = argparse.Namespace(
        sides="latent,token", plot=str(out / "latent_vs_token.png"), latent=str(latent_dir), algo="grpo",
        reward="sentiment", prompts="builtin:reviews", steps=steps, batch_prompts=2, samples_per_prompt=8,
        max_new_tokens=20, seed=cfg.seed, out=str(out / "bench"), lr=2e-6, latent_lr=1e-4, kl_coef=None,
        eval_prompts=8, eval_samples=4, device="cpu", frozen_dtype="auto")
    print(format_report(run_bench(bench_args)))

    section("6. reinlm explore: what the world model writes under each latent action")
    from reinlm.latent.explore import explore, format_exploration

    lam = LatentActionModel.from_pretrained(out / "bench" / "latent" / "final")
    text = format_exploration(explore(lam, "I like eating", new_tokens=4, top=8))
    lines = text.splitlines()
    print("\n".join(lines[:3 + 16] + ["   ... (all 64 actions: reinlm explore --latent "
                                       f"{out / 'bench' / 'latent' / 'final'} \"I like eating\")"] + lines[-3:]))
