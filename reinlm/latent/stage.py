"""One training stage of the latent heads: the optimisation loop shared by pretraining and fine-tuning.

A stage is ``total`` steps of AdamW over parameter groups with a ``LambdaLR`` learning-rate multiplier
(:func:`reinlm.schedules.lr_multiplier`), gradients clipped to norm 1, progress (a tqdm bar with tokens/s and
ETA, or one plain line every ``every`` steps) and two hooks around each step: ``before(s)`` (pretraining: stop
at ``--stop-after-steps`` with a checkpoint) and ``after(s, stats, tok_s)`` (metrics lines, checkpoints).
Pretraining (:mod:`reinlm.latent.pretrain`) adds checkpoints and exact resume through :meth:`Stage.state_dict`;
fine-tuning (:mod:`reinlm.latent.finetune`) runs the loop as it is.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import torch


def _fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """A tqdm bar (tokens/s, ETA) or, with ``bar=False``, one plain line every ``every`` steps; nothing when not
    ``enabled`` (e.g. on every process but the first)."""

    def __init__(self, name: str, total: int, start: int, enabled: bool, bar: bool, every: int):
        self.name, self.total, self.enabled, self.every = name, total, enabled, max(every, 1)
        self.t0, self.tokens, self.done0 = time.time(), 0, start
        self.bar = None
        if enabled and bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, unit="step")

    def update(self, step: int, tokens: int, loss: float) -> float:
        """Step ``step`` (0-based) trained on ``tokens`` tokens with loss ``loss``; returns tokens/s so far."""
        self.tokens += tokens
        el = max(time.time() - self.t0, 1e-9)
        tok_s = self.tokens / el
        eta = el / max(step + 1 - self.done0, 1) * (self.total - step - 1)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", eta=_fmt_time(eta))
        elif self.enabled and ((step + 1) % self.every == 0 or step + 1 == self.total):
            print(f"{self.name}: step {step + 1}/{self.total} loss {loss:.3f} {tok_s:,.0f} tok/s "
                  f"elapsed {_fmt_time(el)} ETA {_fmt_time(eta)}", flush=True)
        return tok_s

    def close(self):
        if self.bar is not None:
            self.bar.close()


StepFn = Callable[[int], "tuple[torch.Tensor, dict, int]"]


class Stage:
    """``total`` optimisation steps over ``params`` (parameters, or AdamW parameter groups with their own ``lr``)
    with AdamW(``lr``, ``weight_decay``) and the learning-rate multiplier ``lr_lambda(step)``."""

    def __init__(self, params: Iterable[torch.nn.Parameter] | list[dict], total: int, lr: float,
                 weight_decay: float, lr_lambda: Callable[[int], float]):
        items: list[Any] = list(params)
        self.groups: list[dict] = items if items and isinstance(items[0], dict) else [{"params": items}]
        self.params: list[torch.nn.Parameter] = [p for g in self.groups for p in g["params"]]
        self.total, self.tokens = total, 0  # tokens trained on so far (restored with a resumed stage's checkpoint)
        self.optimizer = torch.optim.AdamW(self.groups, lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)

    def state_dict(self) -> dict:
        """The optimiser's and the schedule's state (with the step count a resumed stage starts from)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def run(self, step_fn: StepFn, progress: Progress, start: int = 0, loss_key: str = "loss/total",
            before: Callable[[int], None] | None = None,
            after: Callable[[int, dict, float], None] | None = None) -> int:
        """Steps ``start .. total-1``: ``step_fn(s) -> (loss, stats, tokens)`` (loss a scalar tensor to minimise,
        ``stats[loss_key]`` the figure shown in the progress), then zero_grad, backward, clip to norm 1, AdamW and
        schedule steps. Returns the number of steps taken; the progress is closed however the loop ends."""
        try:
            for s in range(start, self.total):
                if before is not None:
                    before(s)
                loss, stats, tokens = step_fn(s)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.optimizer.step()
                self.scheduler.step()
                self.tokens += tokens
                tok_s = progress.update(s, tokens, stats[loss_key])
                if after is not None:
                    after(s, stats, tok_s)
        finally:
            progress.close()
        return self.total - start
