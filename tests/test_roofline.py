"""The per-phase profile of `reinlm bench token-rl --profile`: its figures from injected timings and rates."""

from __future__ import annotations

import pytest
import torch

from reinlm.bench.roofline import (Limits, Linear, ModelShapes, PhaseWork, measure_bandwidth, measure_matmul_rate,
                                   model_shapes, phase_row, profile_rows)
from reinlm.bench.token_rl_profile import Dtypes, PhaseClock, StepShape, mean_shape, phase_work

SHAPES = ModelShapes(body=(Linear(4, 8, 2), Linear(8, 4, 1)), head=Linear(4, 100))  # 96 body weights, 400 head


class FakeClock:
    """A clock that advances by ``tick`` seconds at every reading."""

    def __init__(self, tick: float = 0.5):
        self.t, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def test_phase_row_rate_limit_and_fraction_from_the_seconds():
    r = phase_row("forward", 2.0, PhaseWork(flops=10e9, limit_s=0.5, bound="compute"))
    assert (r.achieved, r.limit, r.unit, r.fraction) == (pytest.approx(5.0), pytest.approx(20.0), "GFLOP/s", 0.25)
    r = phase_row("optimiser", 0.4, PhaseWork(bytes=8e9, limit_s=0.1, bound="memory"))
    assert (r.achieved, r.limit, r.unit, r.fraction) == (pytest.approx(20.0), pytest.approx(80.0), "GB/s", 0.25)
    r = phase_row("reward", 0.3, PhaseWork())  # no roofline
    assert r.fraction is None and r.achieved is None


def test_profile_rows_other_and_step():
    rows = profile_rows({"generate": 1.0, "forward": 0.5, "old_logprobs": 0.0},
                        {"generate": PhaseWork(bytes=4e9, limit_s=0.25, bound="memory"),
                         "forward": PhaseWork(flops=1e9, limit_s=0.25, bound="compute")}, step_s=2.0)
    by = {r["phase"]: r for r in rows}
    assert list(by) == ["generate", "forward", "other", "step"]  # a phase that did not run has no row
    assert by["other"]["seconds"] == pytest.approx(0.5)
    assert by["step"]["limit_s"] == pytest.approx(0.5) and by["step"]["fraction"] == pytest.approx(0.25)
    assert by["generate"]["fraction"] == pytest.approx(0.25) and by["forward"]["fraction"] == pytest.approx(0.5)


def test_measurements_use_their_clock():
    # every clock reading advances 0.5 s: each timed call takes 0.5 s
    assert measure_matmul_rate(2, 3, 4, torch.float32, clock=FakeClock()) == pytest.approx(2 * 2 * 3 * 4 / 0.5)
    assert measure_bandwidth(4096, clock=FakeClock()) == pytest.approx(2 * 4096 / 0.5)


def test_matmul_seconds_sums_each_shape_at_its_own_rate():
    calls = []

    def rate(m, k, n, dtype):
        calls.append((m, k, n, dtype))
        return 1e3 * k  # FLOP/s depends on the shape
    lim = Limits(rate_fn=rate, bandwidth_fn=lambda: 1e3)
    s = lim.matmul_seconds(SHAPES, 10, 3, torch.bfloat16)
    want = 2 * 10 * 64 / 4e3 + 2 * 10 * 32 / 8e3 + 2 * 3 * 400 / 4e3
    assert s == pytest.approx(want)
    lim.matmul_seconds(SHAPES, 10, 3, torch.bfloat16)
    assert len(calls) == 3  # measured once per (shape, M, dtype)


def test_phase_work_per_phase():
    lim = Limits(rate_fn=lambda m, k, n, d: 1e6 if d == torch.float32 else 4e6, bandwidth_fn=lambda: 1e4)
    dt = Dtypes(rollout=torch.bfloat16, frozen=torch.bfloat16, train=torch.float32, master=torch.float32)
    shape = StepShape(B=8, G=4, P=5, R=3)
    w = phase_work(shape, SHAPES, dt, trainable=1000, limits=lim)
    fwd = 2.0 * (8 * 8 * 96 + 8 * 4 * 400)  # body on B * (P + R) tokens, head on B * (R + 1)
    assert w["forward"].flops == fwd and w["forward"].limit_s == pytest.approx(fwd / 1e6)
    assert w["reference"].limit_s == pytest.approx(fwd / 4e6)  # frozen in bfloat16: that rate
    assert w["backward"].flops == 2 * fwd and w["backward"].limit_s == pytest.approx(2 * fwd / 1e6)
    assert w["optimiser"].bytes == 7 * 4 * 1000 and w["optimiser"].limit_s == pytest.approx(28000 / 1e4)
    assert w["sync"].bytes == (4 + 2) * 1000
    # generate: 2 distinct prompts prefilled (10 tokens, 2 head rows), then 3 steps of max(weights read, matmuls)
    step_bytes = (96 + 400) * 2
    pre = 2.0 * (10 * 96 + 2 * 400) / 4e6
    step_mm = 2.0 * (8 * 96 + 8 * 400) / 4e6
    assert w["generate"].bytes == 3 * step_bytes
    assert w["generate"].limit_s == pytest.approx(pre + 3 * max(step_mm, step_bytes / 1e4))
    assert w["generate"].bound == "memory"
    same = phase_work(shape, SHAPES, Dtypes(torch.float32, torch.float32, torch.float32, torch.float32), 1000, lim)
    assert "sync" not in same  # no rollout copy, nothing to sync


def test_phase_clock_counts_nested_phases_once():
    clock = FakeClock(1.0)
    pc = PhaseClock(clock)

    class Engine:
        def sync(self):
            return None

    class Policy:
        def __init__(self):
            self.engine = Engine()

        def rollout(self):
            self.engine.sync()

    pol = Policy()
    pc.wrap(pol.engine, "sync", "sync")
    pc.wrap(pol, "rollout", "generate")
    pc.begin_step()
    pol.rollout()
    pc.end_step()
    # readings: begin 1 | generate in 2 | sync in 3, out 4 | generate out 5 | end 6
    assert pc.steps[0]["sync"] == 1.0 and pc.steps[0]["generate"] == 2.0 and pc.steps[0]["step"] == 5.0


def test_model_shapes_of_a_tiny_llama(tiny_lm):
    model, _ = tiny_lm
    shapes = model_shapes(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert shapes.params == sum(m.weight.numel() for m in linears)
    assert (shapes.head.in_features, shapes.head.out_features) == (model.config.hidden_size, model.config.vocab_size)
    assert mean_shape([StepShape(8, 4, 5, 3), StepShape(8, 4, 7, 4)]) == StepShape(8, 4, 6, 4)
