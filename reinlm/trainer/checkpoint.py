"""Atomic, verified checkpoints: everything needed to resume a run to the same result.

Layout of ``RUN_DIR/checkpoints/step-N/`` (written to a temporary directory, flushed, then renamed):
``policy/`` (HF ``save_pretrained`` with safetensors, or the LoRA adapter; for latent runs the latent
model directory), ``value_head.safetensors`` (PPO), ``optimizer.pt``, ``scheduler.pt``,
``trainer_state.json`` (step, KL controller, running score moments, degeneration monitor),
``rng.pt``, ``config.yaml`` and ``manifest.json`` (every file's size). At SmolLM2-135M in float32 a full
fine-tune's checkpoint is about 1.6 GB: the policy 0.54 GB and AdamW's two moments 1.08 GB, both needed to resume
to the same result; ``final/`` shares its weight files with the last checkpoint's ``policy/`` by hard links
(:func:`share_identical_files`), so it adds no second copy.

Resuming takes the newest checkpoint that is complete (:func:`latest_checkpoint`): each file is checked
against the manifest and by format (safetensors headers and sizes, torch zip directories, JSON, YAML), so a
truncated or damaged newest checkpoint is skipped, with the reason, in favour of the previous one. Leftovers
of killed writes (``.step-N.tmp-*``) are removed before each save.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from reinlm.errors import ReinlmError
from reinlm.utils.atomic import atomic_dir, remove_stale_temps
from reinlm.utils.integrity import json_file_problem, safetensors_problem, torch_file_problem
from reinlm.utils.oserrors import describe_os_error, disk_full_at
from reinlm.utils.rng import rng_state

log = logging.getLogger("reinlm")
_STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"


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


def checkpoint_problem(ckpt: str | Path) -> str | None:
    """Why checkpoint directory ``ckpt`` cannot be resumed from (``None`` when every file checks out)."""
    ckpt = Path(ckpt)
    manifest_path = ckpt / MANIFEST
    if manifest_path.is_file():
        problem = json_file_problem(manifest_path)
        if problem:
            return problem
        for rel, size in json.loads(manifest_path.read_text()).items():
            f = ckpt / rel
            if not f.is_file():
                return f"{rel} is missing"
            if f.stat().st_size != size:
                return f"{rel} has {f.stat().st_size} bytes, {size} were written (truncated or damaged)"
    problem = json_file_problem(ckpt / "trainer_state.json")
    if problem:
        return problem
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        if not (ckpt / name).is_file():
            return f"{name} is missing"
        problem = torch_file_problem(ckpt / name)
        if problem:
            return problem
    policy = ckpt / "policy"
    if not policy.is_dir():
        return "policy/ is missing"
    weights = sorted(policy.rglob("*.safetensors"))
    if not weights and not any(policy.rglob("*.bin")):
        return "policy/ holds no weights file"
    for f in [*weights, *sorted(ckpt.glob("*.safetensors"))]:
        problem = safetensors_problem(f)
        if problem:
            return problem
    for f in sorted(policy.rglob("*.json")):
        problem = json_file_problem(f)
        if problem:
            return problem
    if (ckpt / "config.yaml").is_file():
        try:
            if not isinstance(yaml.safe_load((ckpt / "config.yaml").read_text()), dict):
                return "config.yaml holds no settings"
        except (yaml.YAMLError, UnicodeDecodeError):
            return "config.yaml is not valid YAML"
    return None


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path] | None:
    """The newest checkpoint that is complete and readable, or ``None`` when the run has no checkpoint.

    Newer checkpoints that fail :func:`checkpoint_problem` are skipped with a warning that says why; when
    every checkpoint fails, a ReinlmError lists them.
    """
    found = list_checkpoints(run_dir)
    skipped: list[str] = []
    for step, path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            for note in skipped:
                log.warning("resume: skipped %s; using step-%d instead", note, step)
            return step, path
        skipped.append(f"checkpoints/{path.name} ({problem})")
    if skipped:
        raise ReinlmError(f"resume: no checkpoint of {str(run_dir)!r} can be read: {'; '.join(skipped)}. Start "
                          "the run again without --resume (with --overwrite).")
    return None


def save_checkpoint(run_dir: str | Path, step: int, *, policy_saver: Callable[[Path], None],
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    trainer_state: dict[str, Any], config: dict[str, Any], value_head: torch.nn.Module | None = None,
                    keep: int = 2, optimizer_state: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step`` atomically (with a size manifest) and prune all but the ``keep`` newest
    (0: keep all). Leftovers of killed writes in the run directory are removed first.

    ``policy_saver(dir)`` writes the policy weights into ``dir`` (so token and latent policies share this).
    ``optimizer_state``: what to write as ``optimizer.pt`` instead of ``optimizer.state_dict()`` (FSDP: the whole
    state gathered from every process's shards, keyed by parameter names).
    A full disk or an unwritable directory raises a ReinlmError naming the path; earlier checkpoints stay.
    """
    final = checkpoint_dir(run_dir, step)
    for where in (final.parent, Path(run_dir)):
        for name in remove_stale_temps(where):
            log.info("removed %s/%s, left by an interrupted write", where, name)
    try:
        with atomic_dir(final) as tmp:
            policy_saver(tmp / "policy")
            if value_head is not None:
                from safetensors.torch import save_file

                save_file({k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()},
                          str(tmp / "value_head.safetensors"))
            torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(rng_state(), tmp / "rng.pt")
            (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2))
            sizes = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
            (tmp / MANIFEST).write_text(json.dumps(sizes, indent=1))
    except OSError as e:
        raise ReinlmError(describe_os_error(e, e.filename or final.parent, f"writing checkpoint step-{step}")) from e
    except RuntimeError as e:  # torch.save reports a full disk as "unexpected pos ..." / "file write failed"
        if disk_full_at(final.parent):
            import errno

            raise ReinlmError(describe_os_error(OSError(errno.ENOSPC, "No space left on device"), final.parent,
                                                f"writing checkpoint step-{step}")) from e
        raise
    for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def share_identical_files(new_dir: str | Path, old_dir: str | Path) -> int:
    """Replace each file under ``new_dir`` whose bytes equal the file at the same relative path under ``old_dir``
    by a hard link to it; returns the bytes freed. ``final/`` and the last checkpoint's ``policy/`` hold the same
    weights: this keeps one copy on disk. Safe because no reinlm output is ever rewritten in place (every write
    goes to a new temporary directory that is renamed), and deleting either path leaves the other whole. Where
    the file system has no hard links, the copy stays."""
    freed = 0
    new_dir, old_dir = Path(new_dir), Path(old_dir)
    for f in sorted(p for p in new_dir.rglob("*") if p.is_file()):
        g = old_dir / f.relative_to(new_dir)
        if not g.is_file() or g.stat().st_size != f.stat().st_size or not filecmp.cmp(f, g, shallow=False):
            continue
        link = f.with_name(f".{f.name}.link")
        try:
            os.link(g, link)
        except OSError:
            continue
        os.replace(link, f)
        freed += g.stat().st_size
    return freed


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    """Read ``trainer_state.json`` of a checkpoint."""
    try:
        state: dict[str, Any] = json.loads((ckpt / "trainer_state.json").read_text())
        return state
    except FileNotFoundError as e:
        raise ReinlmError(f"resume: {str(ckpt)!r} is not a complete checkpoint (no trainer_state.json).") from e


def load_value_head(ckpt: Path, value_head: torch.nn.Module | None) -> None:
    """Load ``value_head.safetensors`` into ``value_head`` when the checkpoint has one."""
    path = ckpt / "value_head.safetensors"
    if value_head is not None and path.is_file():
        from safetensors.torch import load_file

        value_head.load_state_dict(load_file(str(path)))
