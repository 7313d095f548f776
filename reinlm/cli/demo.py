"""``reinlm demo``: the flagship run on the embedded defaults (what ``make demo`` calls).

Generation with SmolLM2-135M and reward scoring; then a small latent-action model is pretrained (or
reused from the cache), GRPO runs on the sentiment task in latent and in token space side by side
(table + PNG), and ``reinlm explore`` shows what each latent action writes.
"""

from __future__ import annotations

import argparse
import time


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="run the end-to-end demo on the embedded models (offline, CPU)",
                              description="End-to-end demo on the embedded models: generation, reward scoring, "
                                          "a short GRPO run, and (when available) latent-space RL vs token-space RL.")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its runs (default: runs/demo)")
    p.add_argument("--steps", type=int, default=None, help="RL steps for each training run (default: the demo's own)")
    p.add_argument("--quick", action="store_true", help="generation and rewards only, no training")
    p.add_argument("--token-only", action="store_true", help="skip the latent-action part (token-space GRPO only)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    return p


def _section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 90 - len(title)), flush=True)


def generation_and_rewards(seed: int) -> None:
    """Generate a few continuations with SmolLM2-135M and score them with the built-in rewards."""
    import torch

    from reinlm.hub import load_causal_lm
    from reinlm.rewards import parse_reward_spec
    from reinlm.rollout.token import SamplingConfig, generate_rollouts

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


def token_grpo(args: argparse.Namespace) -> None:
    """A short token-space GRPO run on the sentiment task, with held-out reward before/after."""
    import json

    from reinlm.trainer.config import TrainConfig
    from reinlm.trainer.loop import Trainer

    _section("3. token-space GRPO on the sentiment task (SmolLM2-135M, full fine-tuning)")
    cfg = TrainConfig(model="smollm2-135m", algo="grpo", reward="sentiment", prompts="builtin:reviews",
                      steps=args.steps or 8, batch_prompts=2, samples_per_prompt=4, max_new_tokens=20,
                      lr=2e-6, kl_coef=0.05, seed=args.seed, out=f"{args.out}/token-grpo", save_every=100, overwrite=True,
                      eval_prompts=6, eval_samples=4, device="cpu")
    run_dir = Trainer(cfg).train()
    ev = json.loads((run_dir / "train_eval.json").read_text())
    b, a = ev["before"], ev["after"]
    print(f"held-out sentiment reward {b['reward_mean']:.3f} -> {a['reward_mean']:.3f}; "
          f"distinct-2 {b.get('distinct_2', float('nan')):.3f} -> {a.get('distinct_2', float('nan')):.3f}; "
          f"KL to reference {a.get('kl_to_reference', float('nan')):.3f}")
    for s in a["samples"][:3]:
        print(f"  after: {s['prompt']}{s['completion']!s}".replace("\n", " ")[:160])


def run(args: argparse.Namespace) -> int:
    from reinlm.config import check_field
    from reinlm.utils import check_output_dir

    if args.steps is not None:  # checked before any model loads (0 used to mean the default, silently)
        check_field("steps", args.steps, int, {"lo": 1})
    check_field("seed", args.seed, int, {"lo": 0})
    if not args.quick:
        check_output_dir(args.out)
    t_start = time.perf_counter()
    generation_and_rewards(args.seed)
    if args.quick:
        return 0
    try:
        import reinlm.latent.pretrain  # noqa: F401
        has_latent = True
    except ImportError:
        has_latent = False
    if has_latent and not args.token_only:
        from reinlm.cli.demo_latent import run_latent_demo

        run_latent_demo(args, _section)
    else:
        token_grpo(args)
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; runs under {args.out}/")
    return 0
