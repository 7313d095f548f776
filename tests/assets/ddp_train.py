"""Train a tiny model for a few steps; run directly (1 process) or under `accelerate launch` (N processes)."""

import sys

from reinlm.trainer.config import TrainConfig
from reinlm.trainer.loop import Trainer

model_dir, out, reward = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = TrainConfig(model=model_dir, reward=reward, prompts="builtin:neutral", steps=3, batch_prompts=2,
                  samples_per_prompt=4, max_new_tokens=6, lr=3e-3, kl_coef=0.01, seed=0, out=out, device="cpu",
                  progress=False, eval_prompts=0, save_every=100, log="none", algo="grpo")
Trainer(cfg).train()
