"""Train a tiny model for a few steps; run directly (1 process) or under torchrun (N processes).

Extra TrainConfig settings may come as JSON in the environment variable DDP_TRAIN_EXTRA.

argv: SPACE (token|latent) MODEL_OR_LATENT_DIR OUT REWARD EXPECTED_PROCESSES [STEPS [resume]]. The script
fails unless the trainer sees EXPECTED_PROCESSES processes, so a launcher that silently starts one process
cannot pass. STEPS defaults to 3; "resume" continues OUT from its newest checkpoint (one is saved every step).
"""

import json
import os
import sys

from reinlm.trainer.config import TrainConfig
from reinlm.trainer.loop import Trainer

space, path, out, reward, expected = sys.argv[1:6]
steps = int(sys.argv[6]) if len(sys.argv) > 6 else 3
resume = len(sys.argv) > 7 and sys.argv[7] == "resume"
where = {"model": path} if space == "token" else {"latent": path}
# float32 rollouts and training ("same"): bfloat16 rollouts and bfloat16-autocast training (the "auto" defaults on
# AVX512-BF16 CPUs) are not batch-composition invariant (bfloat16 products depend on the rows in the batch: a
# prompt's samples, and the gradient, can change with the other rows), so N processes = 1 holds only in float32
# eval_prompts=1 keeps the 20% held-out split (and a one-prompt before/after evaluation): with --eval-prompts 0 the
# run trains on all of builtin:neutral, and there 2 processes ended 0.018 away from 1. Cause (issue 25): float32
# logits are not batch-composition invariant either (about 1e-6 apart when a prompt is decoded alone or beside
# another: matmul blocking and attention reductions depend on the rows and the padded length), and this tiny random
# model's next-token distribution is nearly flat over 49,152 tokens, so such a difference can flip a sampled token:
# at step 1, prompt 139 decoded alone on process 1 gave another first token in its 4th sample than beside prompt 156
# in one process (same generator, same weights); every step after that differs. The split's prompts flip nothing.
extra = {"rollout_dtype": "same", "train_precision": "same", **json.loads(os.environ.get("DDP_TRAIN_EXTRA", "{}"))}
settings = dict(space=space, **where, reward=reward, prompts="builtin:neutral", steps=steps, batch_prompts=2,
                samples_per_prompt=4, max_new_tokens=6, lr=3e-3 if space == "token" else 1e-2, kl_coef=0.01,
                seed=0, out=out, device="cpu", progress=False, eval_prompts=1, save_every=1, log="none", algo="grpo")
cfg = TrainConfig(**{**settings, **extra})
trainer = Trainer(cfg)
if trainer.world != int(expected):
    sys.exit(f"expected {expected} processes, the trainer sees {trainer.world}")
trainer.train(resume=resume)
from reinlm.utils.distributed import exit_distributed_process  # noqa: E402  (as `python -m reinlm.cli.main` ends a worker)

exit_distributed_process(0)
