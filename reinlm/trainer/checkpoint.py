"""Atomic checkpoints: everything needed to resume a run to the same result.

Layout of ``RUN_DIR/checkpoints/step-N/`` (written to a temporary directory, then renamed):
``policy/`` (HF ``save_pretrained`` with safetensors, or the LoRA adapter; for latent runs the latent
model directory), ``value_head.safetensors`` (PPO), ``optimizer.pt``, ``scheduler.pt``,
``trainer_state.json`` (step, KL controller, running score moments, degeneration monitor),
``rng.pt`` and ``config.yaml``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from reinlm.errors import ReinlmError
from reinlm.utils import atomic_dir, rng_state

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """``RUN_DIR/checkpoints/step-N``."""
    return Path(run_dir) / "checkpoints" / f"step-{step}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as (step, path)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint, or ``None``."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: str | Path, step: int, *, policy_saver, optimizer, scheduler,
                    trainer_state: dict[str, Any], config: dict[str, Any], value_head=None,
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the ``keep`` newest.

    ``policy_saver(dir)`` writes the policy weights into ``dir`` (so token and latent policies share this).
    """
    final = checkpoint_dir(run_dir, step)
    with atomic_dir(final) as tmp:
        policy_saver(tmp / "policy")
        if value_head is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()},
                      str(tmp / "value_head.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        # trainer_state.json last: its presence marks a complete checkpoint
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2))
    for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    """Read ``trainer_state.json`` of a checkpoint."""
    try:
        return json.loads((ckpt / "trainer_state.json").read_text())
    except FileNotFoundError as e:
        raise ReinlmError(f"resume: {str(ckpt)!r} is not a complete checkpoint (no trainer_state.json).") from e


def load_value_head(ckpt: Path, value_head) -> None:
    """Load ``value_head.safetensors`` into ``value_head`` when the checkpoint has one."""
    path = ckpt / "value_head.safetensors"
    if value_head is not None and path.is_file():
        from safetensors.torch import load_file

        value_head.load_state_dict(load_file(str(path)))
