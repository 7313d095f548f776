"""The REINFORCE notebook's lesson, reproduced on the embedded SmolLM2-135M.

Plain REINFORCE towards a sentence-embedding target, at a high learning rate and with no KL anchor,
drifts into degenerate text (distinct-2 falls, punctuation repeats); the same run with the adaptive
KL controller (Ziegler et al. 2019) stays fluent. The degeneration alarm flags the first run.

    .venv/bin/python examples/collapse_without_kl.py --steps 20

Prints, per run, the per-step reward, distinct-2 of the step's samples, KL and beta, and the last samples.
The tiny-model version of this experiment is the test tests/test_collapse.py.
"""

from __future__ import annotations

import argparse

from reinlm.trainer.config import TrainConfig
from reinlm.trainer.loop import Trainer
from reinlm.utils.jsonio import read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--out", default="runs/collapse")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    common = dict(model="smollm2-135m", algo="reinforce", baseline="group_mean",
                  reward="embedding_similarity:target=Hi there!", prompts="builtin:neutral", steps=args.steps,
                  batch_prompts=2, samples_per_prompt=4, max_new_tokens=20, lr=args.lr, seed=args.seed,
                  eval_prompts=4, eval_samples=4, save_every=1000, device="cpu")
    runs = {
        "no KL anchor": dict(kl_coef=0.0),
        "adaptive KL": dict(kl_coef=0.2, kl_target=4.0, kl_horizon=100),
    }
    for name, kw in runs.items():
        out = f"{args.out}/{name.replace(' ', '-').lower()}"
        print(f"\n=== {name} -> {out}")
        Trainer(TrainConfig(out=out, **common, **kw)).train()
        for r in read_jsonl(f"{out}/metrics.jsonl"):
            print(f"step {r['step']:3d}  reward {r['reward/mean']:+.3f}  distinct-2 {r['response/distinct_2']:.2f}  "
                  f"KL {r['kl/mean']:7.2f}  beta {r['kl/beta']:.3f}  alarm {r['alarm/degeneration']}")
        for s in read_jsonl(f"{out}/samples.jsonl")[-3:]:
            print(f"  sample: {s['prompt']}{s['completion']!r}")


if __name__ == "__main__":
    main()
