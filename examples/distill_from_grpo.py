"""On-policy distillation evidence (docs/algorithms.md): distil a GRPO-trained SmolLM2-135M into a fresh one.

1. teacher: the demo's GRPO recipe (``reinlm demo``'s reward curve: sentiment on 4 conversational prompts, lr
   3e-5, KL 0.02; ``--steps``, ``--samples`` per prompt) -> ``OUT/teacher/final``;
2. student: ``algo distill`` with ``teacher OUT/teacher/final`` from the fresh embedded model, the same prompts,
   samples and learning rate for ``--student-steps`` (reverse KL, lmbda 1: TRL DistillationTrainer's defaults);
   the reward is logged, not trained on;
3. baseline: plain GRPO from the same start with the same settings and seed (the teacher's recipe), the teacher
   attached with ``distill_coef 0`` so the KL to it is measured and nothing else changes.

Per step both student runs log ``reward/mean`` and ``distill/divergence`` (the mean per-token KL(student ||
teacher) of the step's own samples). A teacher already in ``OUT/teacher/final`` is reused.

Run: ``PYTHONPATH=. python examples/distill_from_grpo.py OUT [--steps 12 --student-steps 12 --samples 8
--max-new-tokens 24 --eval-prompts 4]`` (the defaults are the demo's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reinlm import Trainer
from reinlm.cli.demo import REWARD_CURVE, demo_prompts


def run(out: Path, **extra: object) -> list[dict]:
    settings = {**REWARD_CURVE, **extra, "out": str(out), "overwrite": True, "progress": False}
    run_dir = Trainer(prompts=demo_prompts(), **settings).train()
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="runs/distill-evidence")
    ap.add_argument("--steps", type=int, default=REWARD_CURVE["steps"], help="teacher's GRPO steps")
    ap.add_argument("--student-steps", type=int, default=None, help="steps of each student run (default --steps)")
    ap.add_argument("--samples", type=int, default=REWARD_CURVE["samples_per_prompt"])
    ap.add_argument("--max-new-tokens", type=int, default=REWARD_CURVE["max_new_tokens"])
    ap.add_argument("--eval-prompts", type=int, default=REWARD_CURVE["eval_prompts"])
    a = ap.parse_args()
    out = Path(a.out)
    shape = {"samples_per_prompt": a.samples, "max_new_tokens": a.max_new_tokens, "eval_prompts": a.eval_prompts}
    teacher = out / "teacher" / "final"
    if not teacher.is_dir():
        run(out / "teacher", steps=a.steps, **shape)
    steps = a.student_steps or a.steps
    student = run(out / "distill", steps=steps, algo="distill", teacher=str(teacher), kl_coef=0.0, **shape)
    grpo = run(out / "grpo", steps=steps, teacher=str(teacher), distill_coef=0.0, **shape)
    print("step  reward distill  reward grpo  KL(student||teacher) distill  grpo")
    for x, y in zip(student, grpo):
        print(f"{x['step']:4d}  {x['reward/mean']:14.3f}  {y['reward/mean']:11.3f}  "
              f"{x['distill/divergence']:28.3f}  {y['distill/divergence']:.3f}")
    for name in ("teacher", "distill", "grpo"):
        ev = out / name / "train_eval.json"
        if ev.is_file():
            print(name, ev.read_text().strip()[:400])


if __name__ == "__main__":
    main()
