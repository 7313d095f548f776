"""reinlm's policy loss and its gradient equal TRL 1.16 GRPOTrainer's own loss code on one fixed batch.

TRL's ``GRPOTrainer._compute_loss`` is called unbound on a minimal stand-in object that carries the attributes it
reads, with the per-token log-prob function stubbed to return our fixed log-probs; reinlm's side is the real
code path (``build_algorithm("grpo", cfg).loss(LossInputs(...), LossNorm(...))``). Float64 so that 1e-6 tests
the definitions, not rounding.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

import trl.trainer.grpo_trainer as trl_grpo  # pinned in the test extra: never skipped

from reinlm.algorithms import AlgorithmConfig, LossInputs, LossNorm, Targets, build_algorithm
from reinlm.algorithms.kl import kl_estimate

B, R, MAX_LEN = 6, 7, 8


class _Accelerator:
    """What TRL's loss reads from the accelerator: the process count and reduce/gather (one process here)."""

    def __init__(self, num_processes: int = 1):
        self.num_processes = num_processes
        self.sync_gradients = True  # the micro-batch ends an optimiser step

    def pad_across_processes(self, tensor, dim=0, pad_index=0):
        return tensor

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def gather(self, tensor):
        return tensor


def fixed_batch(seed: int = 0):
    """Log-probs, old log-probs (ratios spread over roughly [0.5, 1.7], so both clips bite), reference log-probs,
    advantages of both signs and a mask with rows of different lengths (one row fully masked)."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, R, generator=g, dtype=torch.float64) * 3.0
    old = logp + (torch.rand(B, R, generator=g, dtype=torch.float64) - 0.5) * 1.2
    ref = logp + (torch.rand(B, R, generator=g, dtype=torch.float64) - 0.5) * 0.8
    adv = torch.tensor([1.3, -0.7, 0.4, -1.6, 0.9, -0.2], dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5, 1, 6, 0])
    mask = (torch.arange(R)[None, :] < lengths[:, None]).long()
    return logp, old, ref, adv, mask


def trl_stub(logp, *, loss_type, eps_high, level, beta=0.0, delta=None, grad_accum=1, num_processes=1,
             use_vllm=False, entropies=None, **args):
    """The attributes TRL 1.16's ``_compute_loss`` reads; ``args`` override GRPOConfig fields (``args.X``) and the
    trainer attributes copied from them (top_entropy_quantile, off_policy_mask_threshold, entropy control)."""
    cfg = SimpleNamespace(delta=delta, use_bias_correction_kl=False, steps_per_generation=grad_accum,
                          sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, vespo_k_pos=2.0, vespo_lambda_pos=3.0,
                          vespo_k_neg=3.0, vespo_lambda_neg=2.0, entropy_target=0.2, entropy_coef_min=0.0,
                          entropy_coef_max=1.0, entropy_coef_delta=0.005)
    trainer = dict(top_entropy_quantile=1.0, off_policy_mask_threshold=None, entropy_coef=0.0,
                   use_adaptive_entropy=False)
    for k, v in args.items():
        (trainer.__setitem__(k, v) if k in trainer else setattr(cfg, k, v))
    stub = SimpleNamespace(
        aux_loss_enabled=False, importance_sampling_level=level, beta=beta, loss_type=loss_type, epsilon_low=0.2,
        epsilon_high=0.2 if eps_high is None else eps_high, use_vllm=use_vllm,
        vllm_importance_sampling_correction=use_vllm, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=grad_accum, max_completion_length=MAX_LEN,
        accelerator=_Accelerator(num_processes),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, args=cfg,
        _last_world_entropy=float("inf"), _entropy_window_stats=None,
        get_off_policy_mask=trl_grpo.GRPOTrainer.get_off_policy_mask,
        get_gamma_weights=trl_grpo.GRPOTrainer.get_gamma_weights, **trainer)
    stub._entropy_bonus_enabled = stub.entropy_coef != 0.0 or stub.use_adaptive_entropy
    stub.get_high_entropy_mask = lambda *a: trl_grpo.GRPOTrainer.get_high_entropy_mask(stub, *a)
    stub._entropies = entropies
    return stub


def trl_step_loss(stub, logp, old, ref, adv, mask, *, num_items=None, is_ratio=None, sampler=None):
    """TRL 1.16's loss and d loss / d logp for one micro-batch, on a stub made by :func:`trl_stub`."""
    logp = logp.clone().requires_grad_(True)
    ent = stub._entropies if stub._entropies is not None else torch.zeros_like(logp)
    stub._get_per_token_logps_and_entropies = lambda *a, **k: (logp, ent, None)
    inputs = {
        "prompt_ids": torch.zeros(len(logp), 2, dtype=torch.long), "prompt_mask": torch.ones(len(logp), 2, dtype=torch.long),
        "completion_ids": torch.zeros_like(mask), "completion_mask": mask, "advantages": adv,
        "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(float(mask.sum() if num_items is None else num_items), dtype=torch.float64),
    }
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    if sampler is not None:
        inputs["sampling_per_token_logps"] = sampler
    loss = trl_grpo.GRPOTrainer._compute_loss(stub, None, inputs)
    loss.backward()
    return loss.detach(), logp.grad


def trl_loss(logp, old, ref, adv, mask, *, loss_type, eps_high, level, beta=0.0, delta=None, grad_accum=1,
             num_items=None, num_processes=1, is_ratio=None, sampler=None, entropies=None, **args):
    """TRL 1.16's loss and d loss / d logp for one micro-batch."""
    stub = trl_stub(logp, loss_type=loss_type, eps_high=eps_high, level=level, beta=beta, delta=delta,
                    grad_accum=grad_accum, num_processes=num_processes, use_vllm=is_ratio is not None,
                    entropies=entropies, **args)
    return trl_step_loss(stub, logp, old, ref, adv, mask, num_items=num_items, is_ratio=is_ratio, sampler=sampler)


def reinlm_loss(logp, old, ref, adv, mask, norm, *, loss_type, eps_high, level, beta=0.0, clip_ratio_c=None,
                is_weights=None, algo=None, sampler=None, entropy=None, **cfg):
    """reinlm's GRPO loss for the same micro-batch, through the algorithm registry (``cfg``: AlgorithmConfig
    fields; ``algo``: an already built algorithm, for state across micro-batches)."""
    logp = logp.clone().requires_grad_(True)
    algo = algo or build_algorithm("grpo", AlgorithmConfig(loss_type=loss_type, clip_eps=0.2, clip_eps_high=eps_high,
                                                           importance_sampling_level=level, clip_ratio_c=clip_ratio_c,
                                                           **cfg))
    targets = Targets(adv[:, None].expand(-1, logp.shape[1]) * mask)
    kl = kl_estimate(logp, ref, "k3") if beta else None
    loss, stats = algo.loss(LossInputs(logp, old, mask, targets, is_weights=is_weights, kl=kl, kl_coef=beta,
                                       sampler_logp=sampler, entropy=entropy), norm)
    loss.backward()
    return loss.detach(), logp.grad, stats


def _assert_equal(ours, theirs):
    (l1, g1), (l2, g2) = ours, theirs
    assert torch.allclose(l1, l2, atol=1e-6, rtol=0), (float(l1), float(l2))
    assert torch.allclose(g1, g2, atol=1e-6, rtol=0), (g1 - g2).abs().max()


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("eps_high", [None, 0.28, 5.0])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo"])
def test_loss_and_gradient_equal_trl(loss_type, eps_high, level):
    logp, old, ref, adv, mask = fixed_batch()
    norm = LossNorm(seqs=B, tokens=float(mask.sum()), world=1, max_len=MAX_LEN)
    ours = reinlm_loss(logp, old, ref, adv, mask, norm, loss_type=loss_type, eps_high=eps_high, level=level)
    # reinlm's cispo without --clip-eps-high caps the weight at 5.0 (ScaleRL); TRL would cap it at epsilon (0.2)
    trl_eps_high = 5.0 if (loss_type == "cispo" and eps_high is None) else eps_high
    theirs = trl_loss(logp, old, ref, adv, mask, loss_type=loss_type, eps_high=trl_eps_high, level=level)
    _assert_equal(ours[:2], theirs)
    assert float(ours[0]) != 0.0 and ours[1].abs().sum() > 0  # the batch exercises the loss


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "cispo"])
def test_kl_loss_term_equals_trl(loss_type):
    """With the KL as a loss term (GRPO eq. 3) it is aggregated like the policy term, as TRL adds it per token
    (TRL's newer use_bias_correction_kl is off on its side: reinlm does not weight the KL by the ratio)."""
    logp, old, ref, adv, mask = fixed_batch(1)
    norm = LossNorm(seqs=B, tokens=float(mask.sum()), world=1, max_len=MAX_LEN)
    ours = reinlm_loss(logp, old, ref, adv, mask, norm, loss_type=loss_type, eps_high=5.0 if loss_type == "cispo" else 0.28,
                       level="token", beta=0.04)
    theirs = trl_loss(logp, old, ref, adv, mask, loss_type=loss_type, eps_high=5.0 if loss_type == "cispo" else 0.28,
                      level="token", beta=0.04)
    _assert_equal(ours[:2], theirs)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo"])
def test_gradient_accumulation_and_processes_equal_trl(loss_type):
    """Two micro-batches of one optimiser step on each of two processes: every micro-batch's share of the loss
    equals TRL's (dapo/cispo normalise by the tokens of the whole step over micro-batches and processes)."""
    logp, old, ref, adv, mask = fixed_batch(2)
    world = 2
    other_process_tokens = 11.0  # tokens of the step on the other process
    n_global = float(mask.sum()) + other_process_tokens
    norm = LossNorm(seqs=B, tokens=n_global, world=world, max_len=MAX_LEN)
    for rows in (slice(0, 3), slice(3, 6)):
        ours = reinlm_loss(logp[rows], old[rows], ref[rows], adv[rows], mask[rows], norm, loss_type=loss_type,
                           eps_high=5.0 if loss_type == "cispo" else 0.28, level="token")
        theirs = trl_loss(logp[rows], old[rows], ref[rows], adv[rows], mask[rows], loss_type=loss_type,
                          eps_high=5.0 if loss_type == "cispo" else 0.28, level="token", grad_accum=2,
                          num_items=n_global, num_processes=world)
        _assert_equal(ours[:2], theirs)


def test_truncated_importance_weights_multiply_the_loss_as_in_trl():
    from reinlm.algorithms.mismatch import truncated_is_weights

    logp, old, ref, adv, mask = fixed_batch(3)
    sampler = old + 0.3 * torch.sin(torch.arange(B * R, dtype=torch.float64).view(B, R))
    for level in ("token", "sequence"):
        w, _ = truncated_is_weights(old, sampler, mask, level=level, cap=2.0)
        norm = LossNorm(seqs=B, tokens=float(mask.sum()), world=1, max_len=MAX_LEN)
        ours = reinlm_loss(logp, old, ref, adv, mask, norm, loss_type="dapo", eps_high=0.28, level="token", is_weights=w)
        theirs = trl_loss(logp, old, ref, adv, mask, loss_type="dapo", eps_high=0.28, level="token", is_ratio=w)
        _assert_equal(ours[:2], theirs)


def test_dual_clip_equals_trl_delta_above_the_clip_range():
    """Dual clip (Ye et al. 2020) with c > 1 + eps_high coincides with TRL's two-sided clip ``delta`` = c."""
    logp, old, ref, adv, mask = fixed_batch(4)
    old = logp - 1.3 * (adv[:, None] < 0)  # negative-advantage rows get ratios e^1.3 = 3.67 > c = 3
    norm = LossNorm(seqs=B, tokens=float(mask.sum()), world=1, max_len=MAX_LEN)
    ours = reinlm_loss(logp, old, ref, adv, mask, norm, loss_type="grpo", eps_high=0.28, level="token", clip_ratio_c=3.0)
    theirs = trl_loss(logp, old, ref, adv, mask, loss_type="grpo", eps_high=0.28, level="token", delta=3.0)
    _assert_equal(ours[:2], theirs)
    assert ours[2]["policy/dual_clip_fraction"] > 0
    # and it differs from the loss without the dual clip
    plain = reinlm_loss(logp, old, ref, adv, mask, norm, loss_type="grpo", eps_high=0.28, level="token")
    assert not torch.allclose(plain[0], ours[0])


# ----------------------------------------------------------------------------------------------- issue 23
def big_batch(seed: int = 5, rows: int = 10):
    """Ten rows of different lengths (one empty), advantages of both signs, ratios spread so clips bite, a sampler
    whose log-probs drift from old ones (by up to 0.9 per token on some rows) and entropies in [0, 2]."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(rows, R, generator=g, dtype=torch.float64) * 3.0
    old = logp + (torch.rand(rows, R, generator=g, dtype=torch.float64) - 0.5) * 1.2
    ref = logp + (torch.rand(rows, R, generator=g, dtype=torch.float64) - 0.5) * 0.8
    sampler = old + torch.rand(rows, R, generator=g, dtype=torch.float64) * 0.9 * (torch.arange(rows) % 3 == 0)[:, None]
    adv = torch.linspace(-1.5, 1.2, rows, dtype=torch.float64)[torch.randperm(rows, generator=g)]
    lengths = torch.tensor([7, 3, 5, 1, 6, 0, 7, 2, 4, 6])[:rows]
    mask = (torch.arange(R)[None, :] < lengths[:, None]).long()
    entropy = torch.rand(rows, R, generator=g, dtype=torch.float64) * 2.0
    return logp, old, ref, sampler, adv, mask, entropy


SPLIT = (3, 3, 3, 1)  # unequal micro-batches of one optimiser step
GLOBAL_LOSSES = ["grpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]  # defined over the whole step


def _reinlm_over_micro_batches(logp, old, ref, adv, mask, *, split=SPLIT, sampler=None, entropy=None,
                               is_weights=None, **kw):
    """reinlm's shares over unequal micro-batches: (summed loss, concatenated gradient, the algorithm)."""
    norm = LossNorm(seqs=len(logp), tokens=float(mask.sum()), world=1, max_len=MAX_LEN)
    total, grads, start = 0.0, [], 0
    for n in split:
        rows = slice(start, start + n)
        loss, grad, _ = reinlm_loss(logp[rows], old[rows], ref[rows], adv[rows], mask[rows], norm,
                                    sampler=None if sampler is None else sampler[rows],
                                    entropy=None if entropy is None else entropy[rows],
                                    is_weights=None if is_weights is None else is_weights[rows], **kw)
        total, start = total + loss, start + n
        grads.append(grad)
    return total, torch.cat(grads)


@pytest.mark.parametrize("beta,bias_kl", [(0.0, False), (0.04, False), (0.04, True)])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", GLOBAL_LOSSES)
def test_losses_over_unequal_micro_batches_equal_trl_on_the_whole_step(loss_type, level, beta, bias_kl):
    """Micro-batches of 3, 3, 3 and 1 sequences: reinlm's shares sum to TRL's loss of the whole step (TRL's own
    code on the ten rows as one batch), gradients too; with the KL term at token and sequence level, with and
    without use_bias_correction_kl. sapo, luspo and vespo included (TRL's parameter defaults)."""
    logp, old, ref, _, adv, mask, _ = big_batch()
    eps_high = 5.0 if loss_type == "cispo" else 0.28
    ours = _reinlm_over_micro_batches(logp, old, ref, adv, mask, loss_type=loss_type, eps_high=eps_high, level=level,
                                      beta=beta, use_bias_correction_kl=bias_kl)
    theirs = trl_loss(logp, old, ref, adv, mask, loss_type=loss_type, eps_high=eps_high, level=level, beta=beta,
                      use_bias_correction_kl=bias_kl)
    _assert_equal(ours, theirs)
    assert float(ours[0]) != 0.0


@pytest.mark.parametrize("loss_type,params", [
    ("sapo", dict(sapo_temperature_pos=0.5, sapo_temperature_neg=2.0)),
    ("vespo", dict(vespo_k_pos=1.0, vespo_lambda_pos=0.5, vespo_k_neg=4.0, vespo_lambda_neg=1.5)),
])
def test_loss_parameters_equal_trl(loss_type, params):
    logp, old, ref, _, adv, mask, _ = big_batch(6)
    norm = LossNorm(seqs=len(logp), tokens=float(mask.sum()), world=1, max_len=MAX_LEN)
    ours = reinlm_loss(logp, old, ref, adv, mask, norm, loss_type=loss_type, eps_high=0.28, level="token", **params)
    theirs = trl_loss(logp, old, ref, adv, mask, loss_type=loss_type, eps_high=0.28, level="token", **params)
    _assert_equal(ours[:2], theirs)
    default = reinlm_loss(logp, old, ref, adv, mask, norm, loss_type=loss_type, eps_high=0.28, level="token")
    assert not torch.allclose(default[1], ours[1])  # the parameters change the gradient


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "sapo", "vespo"])
def test_off_policy_mask_equals_trl(loss_type):
    """DeepSeek-V3.2's off-policy sequence mask against the sampler's log-probs (TRL's sampling_per_token_logps)."""
    logp, old, ref, sampler, adv, mask, _ = big_batch(7)
    ours = _reinlm_over_micro_batches(logp, old, ref, adv, mask, sampler=sampler, loss_type=loss_type,
                                      eps_high=0.28, level="token", off_policy_mask_threshold=0.1)
    theirs = trl_loss(logp, old, ref, adv, mask, loss_type=loss_type, eps_high=0.28, level="token",
                      sampler=sampler, off_policy_mask_threshold=0.1)
    _assert_equal(ours, theirs)
    norm = LossNorm(seqs=len(logp), tokens=float(mask.sum()), world=1, max_len=MAX_LEN)
    stats = reinlm_loss(logp, old, ref, adv, mask, norm, loss_type=loss_type, eps_high=0.28, level="token",
                        sampler=sampler, off_policy_mask_threshold=0.1)[2]
    assert 0 < stats["policy/off_policy_masked_fraction"] < 1  # the mask drops some sequences, not all


@pytest.mark.parametrize("entropy_coef", [0.0, 0.3])
@pytest.mark.parametrize("quantile", [0.0, 0.4, 0.8])
def test_top_entropy_quantile_equals_trl(quantile, entropy_coef):
    """Only the top-rho tokens by entropy enter the policy loss (and the entropy bonus), one micro-batch."""
    logp, old, ref, _, adv, mask, entropy = big_batch(8)
    norm = LossNorm(seqs=len(logp), tokens=float(mask.sum()), world=1, max_len=MAX_LEN)
    ours = reinlm_loss(logp, old, ref, adv, mask, norm, loss_type="dapo", eps_high=0.28, level="token",
                       entropy=entropy, top_entropy_quantile=quantile, entropy_coef=entropy_coef)
    theirs = trl_loss(logp, old, ref, adv, mask, loss_type="dapo", eps_high=0.28, level="token", entropies=entropy,
                      top_entropy_quantile=quantile, entropy_coef=entropy_coef)
    _assert_equal(ours[:2], theirs)
    full = reinlm_loss(logp, old, ref, adv, mask, norm, loss_type="dapo", eps_high=0.28, level="token",
                       entropy=entropy, entropy_coef=entropy_coef)
    assert not torch.allclose(full[0], ours[0])  # the mask bites


def _trl_is_ratio(old, sampler, mask, mode, clip_min, clip_max):
    """TRL 1.16's importance-sampling ratio (GRPOTrainer._generate_and_score_completions, the block after
    'Compute the importance sampling ratio when using vLLM'), transcribed."""
    diff = torch.nan_to_num((old - sampler) * mask, nan=0.0)
    if mode in ("sequence_mask", "sequence_truncate"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    lo = clip_min if clip_min is not None else -math.inf
    return ratio.masked_fill((ratio < lo) | (ratio > clip_max), 0.0)


@pytest.mark.parametrize("clip_min", [None, 0.8])
@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_importance_sampling_modes_equal_trl(mode, clip_min):
    """TRL's vllm_importance_sampling_mode (token/sequence x truncate/mask) with both clip bounds: the weights,
    and the loss they weight."""
    from reinlm.algorithms.mismatch import truncated_is_weights

    logp, old, ref, _, adv, mask, _ = big_batch(9)
    g = torch.Generator().manual_seed(1)
    sampler = old + (torch.rand(old.shape, generator=g, dtype=torch.float64) - 0.5) * 1.6
    level, how = mode.split("_")
    w, outside = truncated_is_weights(old, sampler, mask, level=level, cap=1.5, clip_min=clip_min, mode=how)
    expected = _trl_is_ratio(old, sampler, mask, mode, clip_min, 1.5)
    assert torch.allclose(w, expected, atol=1e-12, rtol=0) and bool(outside.any())
    ours = _reinlm_over_micro_batches(logp, old, ref, adv, mask, is_weights=w, loss_type="dapo", eps_high=0.28,
                                      level="token")
    theirs = trl_loss(logp, old, ref, adv, mask, loss_type="dapo", eps_high=0.28, level="token", is_ratio=expected)
    _assert_equal(ours, theirs)


def test_vespo_folds_token_importance_weights_as_trl():
    from reinlm.algorithms.mismatch import truncated_is_weights

    logp, old, ref, sampler, adv, mask, _ = big_batch(10)
    w, _ = truncated_is_weights(old, sampler, mask, level="token", cap=1.2, mode="mask")
    ours = _reinlm_over_micro_batches(logp, old, ref, adv, mask, is_weights=w, loss_type="vespo", eps_high=0.28,
                                      level="token")
    theirs = trl_loss(logp, old, ref, adv, mask, loss_type="vespo", eps_high=0.28, level="token", is_ratio=w)
    _assert_equal(ours, theirs)


def test_adaptive_entropy_control_equals_trl_over_steps():
    """Skywork-OR1's adaptive entropy coefficient, TRL's controller, over four optimiser steps of two equal
    micro-batches: every micro-batch's loss and gradient and the coefficient after each step equal TRL's."""
    settings = dict(entropy_coef=0.1, use_adaptive_entropy=True, entropy_target=0.9, entropy_coef_min=0.02,
                    entropy_coef_max=0.2, entropy_coef_delta=0.05)
    logp, old, ref, _, adv, mask, entropy = big_batch(11, rows=6)
    algo = build_algorithm("grpo", AlgorithmConfig(loss_type="dapo", clip_eps=0.2, clip_eps_high=0.28, **settings))
    stub = trl_stub(logp, loss_type="dapo", eps_high=0.28, level="token", grad_accum=2, **settings)
    norm = LossNorm(seqs=6, tokens=float(mask.sum()), world=1, max_len=MAX_LEN)
    coefs, applied = [], []
    for step, scale in enumerate((0.3, 0.5, 1.0, 0.2)):  # entropy below, below, above, below the target
        ent = entropy * scale
        for part, rows in enumerate((slice(0, 3), slice(3, 6))):
            stub._entropies = ent[rows]
            stub.accelerator.sync_gradients = part == 1
            theirs = trl_step_loss(stub, logp[rows], old[rows], ref[rows], adv[rows], mask[rows],
                                   num_items=float(mask.sum()))
            ours = reinlm_loss(logp[rows], old[rows], ref[rows], adv[rows], mask[rows], norm, loss_type="dapo",
                               eps_high=0.28, level="token", algo=algo, entropy=ent[rows])
            _assert_equal(ours[:2], theirs)
            applied.append(algo.entropy_ctl.applied())
        algo.end_optimizer_step()
        assert algo.entropy_ctl.coef == pytest.approx(stub.entropy_coef, abs=1e-12)
        coefs.append(algo.entropy_ctl.coef)
    assert coefs == pytest.approx([0.15, 0.2, 0.15, 0.2])  # up, capped, down, up
    assert applied[:2] == [0.0, 0.0] and applied[2] > 0  # no bonus before the first measurement
