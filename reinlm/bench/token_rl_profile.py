"""``reinlm bench token-rl --profile``: the seconds of each phase of reinlm's GRPO step, and each phase against
this machine's limit (:mod:`reinlm.bench.roofline`).

:func:`instrument` wraps the trainer's calls with timers (exclusive: a phase nested in another, the weight sync
inside generation, counts only for itself):

======================  ==========================================================================
phase                   the call
======================  ==========================================================================
``generate``            ``policy.rollout`` (decode engine: prefill of the distinct prompts + decode)
``sync``                ``rollout_engine.sync`` (trained weights -> the bfloat16 rollout copy)
``reward``              ``trainer.reward_set.score`` / ``score_tokens`` (the rewards themselves)
``reference``           ``policy.reference`` (the frozen reference forward)
``old_logprobs``        ``policy.score`` without gradients (only when something reads them first)
``forward``             ``policy.score`` with gradients (the training forward)
``backward``            ``policy.backward``
``optimiser``           ``optimizer.step`` (AdamW)
======================  ==========================================================================

:func:`phase_work` turns the batch shapes of the timed steps into each phase's work and its limit.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch

from reinlm.bench.roofline import Clock, Limits, ModelShapes, PhaseWork, bounded, model_shapes

PHASES = ("generate", "sync", "reward", "reference", "old_logprobs", "forward", "backward", "optimiser")


class PhaseClock:
    """Exclusive seconds per phase within each step: a phase running inside another is subtracted from it."""

    def __init__(self, clock: Clock = time.perf_counter):
        self.clock = clock
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []  # per closed step: phase seconds, plus "step"
        self._stack: list[list[float]] = []  # [start, seconds of nested phases]
        self._step_t0: float | None = None

    def wrap(self, obj: Any, name: str, label: str | Callable[[], str]) -> None:
        """Replace ``obj.name`` (on the instance) with a timed call counted under ``label`` (or ``label()``)."""
        fn = getattr(obj, name)
        pc = self

        def timed(*args, **kwargs):
            phase = label() if callable(label) else label
            pc._stack.append([pc.clock(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                t0, nested = pc._stack.pop()
                dt = pc.clock() - t0
                pc.current[phase] += dt - nested
                if pc._stack:
                    pc._stack[-1][1] += dt

        setattr(obj, name, timed)

    def begin_step(self) -> None:
        self.current = defaultdict(float)
        self._step_t0 = self.clock()

    def end_step(self) -> None:
        self.steps.append({**{p: self.current.get(p, 0.0) for p in PHASES}, "step": self.clock() - self._step_t0})


@dataclass
class StepShape:
    """The token counts of one step's batch: B sequences of G samples per prompt, prompt length P (padded),
    response length R (padded: decode steps run)."""

    B: int
    G: int
    P: int
    R: int


def instrument(trainer, clock: Clock = time.perf_counter) -> tuple[PhaseClock, list[StepShape]]:
    """Time every phase of ``trainer``'s steps (module docstring); also returns each step's batch shape."""
    pc = PhaseClock(clock)
    shapes: list[StepShape] = []
    policy = trainer.policy
    step = trainer.train_step

    def timed_step(i):
        pc.begin_step()
        out = step(i)
        pc.end_step()
        b = out["batch"]
        B, R = b.response_ids.shape
        shapes.append(StepShape(B, trainer.cfg.samples_per_prompt, b.input_ids.shape[1] - R, R))
        return out

    trainer.train_step = timed_step
    pc.wrap(policy, "rollout", "generate")
    pc.wrap(policy.rollout_engine, "sync", "sync")
    for name in ("score", "score_tokens"):
        if hasattr(trainer.reward_set, name):
            pc.wrap(trainer.reward_set, name, "reward")
    pc.wrap(policy, "reference", "reference")
    pc.wrap(policy, "score", lambda: "forward" if torch.is_grad_enabled() else "old_logprobs")
    pc.wrap(policy, "backward", "backward")
    pc.wrap(trainer.optimizer, "step", "optimiser")
    return pc, shapes


@dataclass
class Dtypes:
    """The dtype each phase computes in."""

    rollout: torch.dtype
    frozen: torch.dtype
    train: torch.dtype  # the training forward/backward's matmuls (bfloat16 under autocast)
    master: torch.dtype  # trained weights and AdamW state


def _elsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def phase_work(shape: StepShape, shapes: ModelShapes, dtypes: Dtypes, trainable: int, limits: Limits
               ) -> dict[str, PhaseWork]:
    """Each phase's work per step at ``shape`` and its time at the measured ``limits``.

    - generate: the prefill of the B / G distinct prompts (B/G * P tokens through the body, their last position
      through the head), then R decode steps, each the larger of reading every weight once (rollout dtype) and
      its matmuls at M = B;
    - reference / old_logprobs / forward: one forward over B * (P + R) tokens, the head on B * (R + 1) positions
      (``logits_to_keep``) in the frozen / training dtype; backward: twice the forward's matmuls;
    - optimiser: AdamW reads weight, gradient and both moments and writes weight and moments: 7 tensors of the
      ``trainable`` parameters in the master dtype;
    - sync: the trained weights read (master dtype) and written into the rollout copy (rollout dtype).
    """
    B, G, P, R = shape.B, shape.G, shape.P, shape.R
    n_prompts = max(B // max(G, 1), 1)
    bw = limits.bandwidth
    work: dict[str, PhaseWork] = {}
    # generate
    pre_flops = shapes.forward_flops(n_prompts * P, n_prompts)
    pre_s = limits.matmul_seconds(shapes, n_prompts * P, n_prompts, dtypes.rollout)
    step_bytes = shapes.params * _elsize(dtypes.rollout)
    step_mm = limits.matmul_seconds(shapes, B, B, dtypes.rollout)
    dec_s = R * max(step_mm, step_bytes / bw)
    work["generate"] = PhaseWork(pre_flops + R * shapes.forward_flops(B, B), R * step_bytes, pre_s + dec_s,
                                 "memory" if step_bytes / bw > step_mm else "compute")
    # the forwards and the backward
    body, head = B * (P + R), B * (R + 1)
    fwd_flops = shapes.forward_flops(body, head)
    ref_s = limits.matmul_seconds(shapes, body, head, dtypes.frozen)
    train_s = limits.matmul_seconds(shapes, body, head, dtypes.train)
    work["reference"] = PhaseWork(fwd_flops, 0.0, ref_s, "compute")
    work["old_logprobs"] = PhaseWork(fwd_flops, 0.0, train_s, "compute")
    work["forward"] = PhaseWork(fwd_flops, 0.0, train_s, "compute")
    work["backward"] = PhaseWork(2 * fwd_flops, 0.0, 2 * train_s, "compute")
    # memory-bound phases
    work["optimiser"] = bounded(0.0, 0.0, 7.0 * trainable * _elsize(dtypes.master), bw)
    if dtypes.rollout != dtypes.master:
        work["sync"] = bounded(0.0, 0.0, float(trainable) * (_elsize(dtypes.master) + _elsize(dtypes.rollout)), bw)
    return work


def mean_shape(shapes: list[StepShape]) -> StepShape:
    """The step shape with each count averaged over ``shapes`` (rounded): work is linear in the counts."""
    n = max(len(shapes), 1)
    return StepShape(*(round(sum(getattr(s, f) for s in shapes) / n) for f in ("B", "G", "P", "R")))


def trainer_dtypes(trainer) -> Dtypes:
    """The dtypes of ``trainer``'s token policy: rollout copy, frozen reference, training matmuls, master."""
    policy = trainer.policy
    master = next(p for p in policy.model.parameters() if p.requires_grad).dtype
    frozen = next(policy.ref_model.parameters()).dtype if policy.ref_model is not None else master
    train = torch.bfloat16 if trainer.cfg.train_precision == "bf16-autocast" else master
    return Dtypes(policy.rollout_engine.dtype, frozen, train, master)


def model_shapes_of(trainer) -> ModelShapes:
    """The linear shapes of the trained LM."""
    return model_shapes(getattr(trainer.policy.model, "module", trainer.policy.model))
