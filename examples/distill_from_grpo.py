"""On-policy distillation evidence (docs/algorithms.md): distil a GRPO-trained SmolLM2-135M into a fresh one.

1. teacher: the demo's GRPO recipe (``reinlm demo``'s reward curve: sentiment, 4 conversational prompts x 8
   samples, 12 steps, lr 3e-5, KL 0.02) -> ``OUT/teacher/final``;
2. student: ``--algo distill --teacher OUT/teacher/final`` from the fresh embedded model, same prompts, samples,
   steps and learning rate (reverse KL, lmbda 1: TRL DistillationTrainer's defaults), the reward logged only;
3. baseline: plain GRPO from the same start with the same settings and seed (the teacher's recipe again), the
   teacher attached with ``distill_coef 0`` so the KL to it is measured and nothing else changes.

Per step both runs log ``reward/mean`` and ``distill/divergence`` (mean per-token KL(student || teacher) on the
step's own samples); the held-out before/after evaluation covers the 4 other topics.

Run: ``PYTHONPATH=. python examples/distill_from_grpo.py OUT [STEPS [STUDENT_STEPS [STUDENT_EVAL_PROMPTS]]]``
(about 3 x 12 steps of SmolLM2-135M; a teacher already in ``OUT/teacher/final`` is reused).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reinlm import Trainer
from reinlm.cli.demo import REWARD_CURVE, demo_prompts


def run(out: Path, **extra: object) -> list[dict]:
    settings = {**REWARD_CURVE, **extra, "out": str(out), "overwrite": True, "progress": False}
    run_dir = Trainer(prompts=demo_prompts(), **settings).train()
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/distill-evidence")
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else REWARD_CURVE["steps"]
    student_steps = int(sys.argv[3]) if len(sys.argv) > 3 else steps
    ev = {"eval_prompts": int(sys.argv[4])} if len(sys.argv) > 4 else {}
    teacher = out / "teacher" / "final"
    if not teacher.is_dir():
        run(out / "teacher", steps=steps)
    student = run(out / "distill", steps=student_steps, algo="distill", teacher=str(teacher), kl_coef=0.0, **ev)
    grpo = run(out / "grpo", steps=student_steps, teacher=str(teacher), distill_coef=0.0, **ev)
    print("step  reward distill  reward grpo  KL(student||teacher) distill  grpo")
    for a, b in zip(student, grpo):
        print(f"{a['step']:4d}  {a['reward/mean']:14.3f}  {b['reward/mean']:11.3f}  "
              f"{a['distill/divergence']:28.3f}  {b['distill/divergence']:.3f}")
    for name in ("teacher", "distill", "grpo"):
        ev = out / name / "train_eval.json"
        if ev.is_file():
            print(name, ev.read_text().strip()[:400])


if __name__ == "__main__":
    main()
