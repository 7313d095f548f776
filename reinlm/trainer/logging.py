"""Run logging: ``metrics.jsonl`` (always), TensorBoard (default), Weights & Biases (when asked).

Metric names are grouped by prefix (``reward/``, ``kl/``, ``loss/``, ``policy/``, ``response/``,
``perf/``); each is explained in docs/training.md, "Logged metrics".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from reinlm.errors import ReinlmError
from reinlm.utils.atomic import atomic_write_text
from reinlm.utils.jsonio import append_jsonl, read_jsonl_tolerant

log = logging.getLogger("reinlm")


class RunLogger:
    """Writes one JSON object per step to ``metrics.jsonl`` and mirrors scalars to TensorBoard / W&B."""

    def __init__(self, run_dir: str | Path, backend: str = "tensorboard", config: dict[str, Any] | None = None,
                 enabled: bool = True, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if resume_step is not None:
            # drop lines logged after the checkpoint we resume from (they will be logged again) and a line
            # torn by a kill or a full disk; rewritten atomically, so a second crash loses nothing
            for path in (self.metrics_path, self.samples_path):
                if path.is_file():
                    rows, torn = read_jsonl_tolerant(path)
                    if torn:
                        log.warning("%s: dropped %d unreadable line(s) (%s), left by an interrupted write",
                                    path, len(torn), ", ".join(f"line {n}" for n in torn[:5]))
                    kept = [r for r in rows if r.get("step", 0) <= resume_step]
                    atomic_write_text(path, "".join(_dumps(r) + "\n" for r in kept))
        if backend in ("tensorboard", "wandb"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
            except ImportError:  # tensorboard is a dependency, but never fail a run for a logger
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")
        if backend == "wandb":
            try:
                import wandb
            except ImportError as e:
                raise ReinlmError("log: got 'wandb' but the wandb package is not installed; "
                                  "`pip install wandb`, or use --log tensorboard.") from e
            self._wandb = wandb.init(project="reinlm", dir=str(self.run_dir), config=config or {},
                                     name=self.run_dir.name, resume="allow")

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Append ``{"step": step, **metrics}`` and mirror numeric values."""
        if not self.enabled:
            return
        append_jsonl(self.metrics_path, {"step": step, **metrics})
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                if self._tb is not None:
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def log_samples(self, step: int, prompts: list[str], completions: list[str], rewards: list[float],
                    limit: int = 4, extra: dict[str, list[Any]] | None = None) -> None:
        """Append up to ``limit`` sample completions of this step to ``samples.jsonl``; ``extra``: columns the
        rewards logged with ``log_extra`` (one value per sample), written under ``extra``."""
        if not self.enabled:
            return
        for i, (p, c, r) in enumerate(list(zip(prompts, completions, rewards))[:limit]):
            row = {"step": step, "prompt": p, "completion": c, "reward": float(r)}
            if extra:
                row["extra"] = {k: v[i] for k, v in extra.items() if i < len(v)}
            append_jsonl(self.samples_path, row)
        if self._tb is not None:
            text = "\n\n".join(f"**{p}** {c}  (reward {r:.3f})" for p, c, r in list(zip(prompts, completions, rewards))[:limit])
            self._tb.add_text("samples", text, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def format_samples(step: int, prompts: list[str], completions: list[str], rewards: list[float], limit: int = -1,
                   width: int = 100) -> str:
    """The console table of a step's completions (TRL's ``log_completions``): the first ``limit`` (-1: all), each
    as its reward, prompt and completion, one line each, cut to ``width`` characters with an ellipsis."""
    rows = list(zip(prompts, completions, rewards))
    shown = rows if limit < 0 else rows[:limit]

    def cut(text: str, room: int) -> str:
        text = " ".join(str(text).split())  # one line: newlines and runs of spaces as single spaces
        return text if len(text) <= room else text[: room - 3] + "..."

    lines = [f"step {step}: {len(shown)} of {len(rows)} completions"]
    for i, (p, c, r) in enumerate(shown, 1):
        lines += [f"  [{i}] reward {float(r):.4f}", f"      prompt:     {cut(p, width - 18)}",
                  f"      completion: {cut(c, width - 18)}"]
    return "\n".join(lines)


def _dumps(obj: dict[str, Any]) -> str:
    import json

    return json.dumps(obj)
