"""Latent pretraining of a tiny model; run directly (1 process) or under torchrun (N processes).

argv: BACKBONE CORPUS OUT HIDDEN_CACHE(on|off) EXPECTED_PROCESSES. Fails unless pretraining sees
EXPECTED_PROCESSES processes (a launcher that silently starts one cannot pass).
"""

import json
import sys
from pathlib import Path

from reinlm.latent.config import LatentConfig
from reinlm.latent.pretrain import PretrainConfig, pretrain

backbone, corpus, out, mode, expected = sys.argv[1:6]
cfg = PretrainConfig(backbone=backbone, corpus=corpus, out=out, hidden_cache=mode, window=16, batch_windows=8,
                     stage1_epochs=1, stage2_epochs=1, held_out_fraction=0.2, lr=3e-3, dtype="float32", autocast="off",
                     progress=False, shuffle_buffer=32, eval_tokens=400, max_len=48, sample_batch=8)
pretrain(cfg, LatentConfig(preset="custom", d_model=32, n_heads=2, idm_layers=1, policy_layers=1, wm_layers=1,
                           wm_ffn=64, num_actions=8))
seen = json.loads((Path(out) / "summary.json").read_text())["processes"]
if seen != int(expected):
    sys.exit(f"expected {expected} processes, pretraining saw {seen}")
from reinlm.utils.distributed import exit_distributed_process  # noqa: E402  (as `python -m reinlm.cli.main` ends a worker)

exit_distributed_process(0)
