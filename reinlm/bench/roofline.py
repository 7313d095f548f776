"""Each phase of a training step against this machine's own limit (``reinlm bench token-rl --profile``).

A phase's *work* is what it must do at the least: matrix-product FLOPs (the model's linear layers at the
phase's token count) and bytes that must cross memory (weights read once per decode step, optimiser state).
Its *limit* is the time that work takes at rates measured here, on this machine, at the phase's own shapes
and dtype:

- FLOPs: a ``(M x in) @ (in x out)`` matmul timed for every distinct linear shape of the model at the phase's
  M (tokens) and dtype (:func:`matmul_seconds`); the limit is the sum of flops / measured rate over the shapes.
- bytes: a large tensor copy (:func:`measure_bandwidth`, read + write bytes over seconds).

``fraction of limit = limit seconds / measured seconds`` (1.0: the phase runs as fast as its matmuls or memory
traffic alone allow). Attention scores and softmax are left out of the work (at tens of tokens per sequence
they are about 1% of the linear layers' FLOPs); backward is counted as twice the forward's matmuls at the
forward's shapes. Rewards have no roofline (Python on text): their row has seconds only.

Everything here is arithmetic on given numbers except the two ``measure_*`` functions, which take a ``clock``
(tests pass a fake one).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch

Clock = Callable[[], float]


@dataclass(frozen=True)
class Linear:
    """One linear-layer shape of the model: ``count`` layers with an (in_features x out_features) weight."""

    in_features: int
    out_features: int
    count: int = 1

    @property
    def params(self) -> int:
        return self.in_features * self.out_features * self.count


@dataclass(frozen=True)
class ModelShapes:
    """The model's matmul shapes: the body's linear layers (every token passes them) and the LM head (only the
    positions whose logits are kept)."""

    body: tuple[Linear, ...]
    head: Linear

    @property
    def params(self) -> int:
        """Weights the matmuls read (body + head)."""
        return sum(x.params for x in self.body) + self.head.params

    def forward_flops(self, body_tokens: int, head_tokens: int) -> float:
        """Matmul FLOPs of one forward: 2 * tokens * weights (a multiply and an add per weight per token)."""
        return 2.0 * (body_tokens * sum(x.params for x in self.body) + head_tokens * self.head.params)


def model_shapes(model: torch.nn.Module) -> ModelShapes:
    """The linear shapes of a causal LM: every ``nn.Linear`` but the output embedding (the head)."""
    head = model.get_output_embeddings()
    counts: dict[tuple[int, int], int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            key = (module.in_features, module.out_features)
            counts[key] = counts.get(key, 0) + 1
    w = head.weight
    return ModelShapes(tuple(Linear(i, o, c) for (i, o), c in sorted(counts.items())), Linear(w.shape[1], w.shape[0]))


# --------------------------------------------------------------------------------------------- measured limits


def _best_seconds(fn: Callable[[], object], repeats: int, clock: Clock) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return max(best, 1e-12)


def measure_matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, *, repeats: int = 3,
                        clock: Clock = time.perf_counter) -> float:
    """FLOP/s of ``(m x k) @ (k x n)`` in ``dtype`` on this CPU (best of ``repeats`` after a warm-up)."""
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    return 2.0 * m * k * n / _best_seconds(lambda: a @ b, repeats, clock)


def measure_bandwidth(nbytes: int = 256 * 2**20, *, repeats: int = 3, clock: Clock = time.perf_counter) -> float:
    """Memory bandwidth in bytes/s: a copy of ``nbytes`` (read + write: 2 * nbytes moved)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    return 2.0 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src), repeats, clock)


@dataclass
class Limits:
    """This machine's measured rates, cached by shape: ``rate(m, k, n, dtype)`` FLOP/s and ``bandwidth`` bytes/s.

    ``rate_fn`` and ``bandwidth_fn`` are the measurements (tests inject fixed numbers)."""

    rate_fn: Callable[[int, int, int, torch.dtype], float] = measure_matmul_rate
    bandwidth_fn: Callable[[], float] = measure_bandwidth
    _rates: dict = field(default_factory=dict)
    _bandwidth: float | None = None

    def rate(self, m: int, k: int, n: int, dtype: torch.dtype) -> float:
        key = (m, k, n, dtype)
        if key not in self._rates:
            self._rates[key] = self.rate_fn(m, k, n, dtype)
        return self._rates[key]

    @property
    def bandwidth(self) -> float:
        if self._bandwidth is None:
            self._bandwidth = self.bandwidth_fn()
        return self._bandwidth

    def measured(self) -> dict[str, float]:
        """The matmul rates measured so far, GFLOP/s by ``"MxKxN dtype"``."""
        return {f"{m}x{k}x{n} {str(d).replace('torch.', '')}": r / 1e9 for (m, k, n, d), r in self._rates.items()}

    def matmul_seconds(self, shapes: ModelShapes, body_tokens: int, head_tokens: int, dtype: torch.dtype) -> float:
        """Seconds one forward's matmuls take at the measured rate of each of its shapes."""
        s = 0.0
        for lin, m in [(x, body_tokens) for x in shapes.body] + [(shapes.head, head_tokens)]:
            if m > 0:
                s += 2.0 * m * lin.params / self.rate(m, lin.in_features, lin.out_features, dtype)
        return s


# --------------------------------------------------------------------------------------------- the profile


@dataclass
class PhaseWork:
    """What one phase must do per step (means over the timed steps) and the time that takes at the limit."""

    flops: float = 0.0  # matmul FLOPs
    bytes: float = 0.0  # bytes that must cross memory
    limit_s: float | None = None  # seconds at this machine's measured limit; None: no roofline (rewards)
    bound: str = ""  # "compute" or "memory": which term sets limit_s


@dataclass
class PhaseRow:
    """One line of the profile."""

    phase: str
    seconds: float
    flops: float
    bytes: float
    limit_s: float | None
    bound: str
    achieved: float | None  # GFLOP/s (compute-bound) or GB/s (memory-bound)
    limit: float | None  # the same unit at the limit
    unit: str
    fraction: float | None  # limit_s / seconds


def phase_row(phase: str, seconds: float, work: PhaseWork) -> PhaseRow:
    """A phase's achieved rate, its limit and ``fraction = limit_s / seconds`` from its measured seconds."""
    if work.limit_s is None or seconds <= 0:
        return PhaseRow(phase, seconds, work.flops, work.bytes, work.limit_s, work.bound, None, None, "", None)
    amount, unit = (work.flops, "GFLOP/s") if work.bound == "compute" else (work.bytes, "GB/s")
    return PhaseRow(phase, seconds, work.flops, work.bytes, work.limit_s, work.bound, amount / seconds / 1e9,
                    amount / work.limit_s / 1e9, unit, work.limit_s / seconds)


def bounded(flops: float, flop_s: float, nbytes: float, bandwidth: float) -> PhaseWork:
    """Work whose limit is the larger of its matmul time ``flop_s`` and its memory time ``nbytes / bandwidth``."""
    mem_s = nbytes / bandwidth if nbytes else 0.0
    return PhaseWork(flops, nbytes, max(flop_s, mem_s), "compute" if flop_s >= mem_s else "memory")


def profile_rows(seconds: dict[str, float], work: dict[str, PhaseWork], step_s: float) -> list[dict]:
    """The profile table: one row per phase that ran (``seconds`` > 0; with its work, or none), then ``other``
    (the step's seconds outside every phase) and ``step`` (its limit: the phases' limits summed)."""
    rows = [phase_row(p, s, work.get(p, PhaseWork())) for p, s in seconds.items() if s > 0]
    rows.append(phase_row("other", max(step_s - sum(seconds.values()), 0.0), PhaseWork()))
    limit = sum(r.limit_s or 0.0 for r in rows)
    rows.append(PhaseRow("step", step_s, sum(r.flops for r in rows), sum(r.bytes for r in rows), limit, "", None,
                         None, "", limit / step_s if step_s > 0 else None))
    return [asdict(r) for r in rows]


def format_profile(rows: Iterable[dict]) -> str:
    """The profile as a text table."""
    lines = [f"{'phase':<13} {'seconds':>8} {'GFLOP':>8} {'GB':>7} {'achieved':>17} {'limit':>17} {'of limit':>8}"]
    for r in rows:
        ach = f"{r['achieved']:.1f} {r['unit']}" if r["achieved"] is not None else "-"
        lim = f"{r['limit']:.1f} {r['unit']}" if r["limit"] is not None else "-"
        frac = f"{100 * r['fraction']:.0f}%" if r["fraction"] is not None else "-"
        lines.append(f"{r['phase']:<13} {r['seconds']:>8.3f} {r['flops'] / 1e9:>8.1f} {r['bytes'] / 1e9:>7.2f} "
                     f"{ach:>17} {lim:>17} {frac:>8}")
    return "\n".join(lines)
