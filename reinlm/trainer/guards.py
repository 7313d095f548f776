"""Guards against silent corruption: stop a run the moment a loss, a gradient norm or a weight is not finite.

Without them a NaN in one step (an overflowing reward, a bad learning rate, a fp16 overflow) spreads into
every weight at the next optimiser step, and the run goes on to write checkpoints and a ``final/`` model
whose tensors are all NaN, exiting 0. The trainer calls :func:`check_loss` after each forward,
:func:`check_grad_norm` before each optimiser step (so the update that would spread a NaN is never
applied) and :func:`check_weights` before writing a checkpoint or the final model; each raises
:class:`NonFiniteError`, a ReinlmError (exit 2) that names the step and the quantities, and the trainer adds
which checkpoint is the last good one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, SupportsFloat

import torch

from reinlm.errors import ReinlmError


class NonFiniteError(ReinlmError):
    """A loss, gradient norm or weight became nan/inf; training stopped before it could spread."""


def _is_finite(x: object) -> bool:
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all())
    try:
        return math.isfinite(float(x)) if isinstance(x, SupportsFloat) else True
    except (TypeError, ValueError):
        return True


def nonfinite_entries(values: Mapping[str, object]) -> list[str]:
    """``["name=value", ...]`` for the entries of ``values`` (floats or tensors) that are nan/inf."""
    out = []
    for k, v in values.items():
        if not _is_finite(v):
            shown: float | str = "nan/inf entries"
            if isinstance(v, SupportsFloat) and (not isinstance(v, torch.Tensor) or v.numel() == 1):
                shown = float(v)
            out.append(f"{k}={shown}")
    return out


def check_loss(loss: torch.Tensor, step: int, parts: Mapping[str, object] | None = None) -> None:
    """Raise :class:`NonFiniteError` when ``loss`` (a scalar tensor) is nan/inf; ``parts`` (e.g. the policy,
    KL and value terms) are named when they are the cause."""
    if _is_finite(loss):
        return
    culprits = nonfinite_entries(parts or {})
    detail = f" ({', '.join(culprits)})" if culprits else ""
    raise NonFiniteError(f"step {step}: the loss is {float(loss.detach())}{detail}; training stopped before the "
                         "update, so no weight was changed by it.")


def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of the gradients of ``parameters`` (nan/inf when any gradient entry is), a 0-dim tensor."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm: torch.Tensor = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    return norm


def check_grad_norm(norm: torch.Tensor | float, step: int) -> None:
    """Raise :class:`NonFiniteError` when the gradient norm is nan/inf (call before ``optimizer.step()``)."""
    if not _is_finite(norm):
        raise NonFiniteError(f"step {step}: the gradient norm is {float(norm)}; training stopped before the "
                             "optimiser step, so the weights are unchanged.")


def nonfinite_parameters(named: Iterable[tuple[str, torch.Tensor]], limit: int = 3) -> list[str]:
    """Names of (up to ``limit``) tensors that hold a nan/inf entry."""
    bad = []
    for name, p in named:
        if not bool(torch.isfinite(p.detach()).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def check_weights(named: Iterable[tuple[str, torch.Tensor]], step: int, what: str = "the model") -> None:
    """Raise :class:`NonFiniteError` when any tensor in ``named`` (``model.named_parameters()``) holds nan/inf
    (call before writing a checkpoint or a final model, so none is ever written with NaN weights)."""
    bad = nonfinite_parameters(named)
    if bad:
        raise NonFiniteError(f"step {step}: {what} has non-finite weights ({', '.join(bad)}); nothing was written.")


def stopped_message(err: NonFiniteError, run_dir: str | Path, last_good_step: int | None) -> str:
    """``err``'s paragraph plus where the run stands: the last good checkpoint and how to continue."""
    if last_good_step is None:
        where = "No checkpoint was written before it."
    else:
        where = (f"The last good checkpoint is {run_dir}/checkpoints/step-{last_good_step}; continue from it with "
                 f"--resume {run_dir}.")
    return (f"{err} {where} Common causes: a reward that returns huge values (try --score-clip), a learning rate "
            "that is too high (--lr), or no gradient clipping (--max-grad-norm).")
