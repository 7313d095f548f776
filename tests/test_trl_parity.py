"""reinlm's policy loss and its gradient equal TRL 1.16 GRPOTrainer's own loss code on one fixed batch.

TRL's ``GRPOTrainer._compute_loss`` is called unbound on a minimal stand-in object that carries the attributes it
reads, with the per-token log-prob function stubbed to return our fixed log-probs; reinlm's side is the real
code path (``build_algorithm("grpo", cfg).loss(LossInputs(...), LossNorm(...))``). Float64 so that 1e-6 tests
the definitions, not rounding.
"""

from __future__ import annotations

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


def trl_loss(logp, old, ref, adv, mask, *, loss_type, eps_high, level, beta=0.0, delta=None, grad_accum=1,
             num_items=None, num_processes=1, is_ratio=None):
    """TRL 1.16's loss and d loss / d logp for one micro-batch."""
    logp = logp.clone().requires_grad_(True)
    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level=level, beta=beta, loss_type=loss_type, epsilon_low=0.2,
        epsilon_high=0.2 if eps_high is None else eps_high, use_vllm=is_ratio is not None,
        vllm_importance_sampling_correction=is_ratio is not None, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=grad_accum, max_completion_length=MAX_LEN,
        accelerator=_Accelerator(num_processes), _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=SimpleNamespace(delta=delta, use_bias_correction_kl=False, steps_per_generation=grad_accum),
    )
    inputs = {
        "prompt_ids": torch.zeros(len(logp), 2, dtype=torch.long), "prompt_mask": torch.ones(len(logp), 2, dtype=torch.long),
        "completion_ids": torch.zeros_like(mask), "completion_mask": mask, "advantages": adv,
        "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(float(mask.sum() if num_items is None else num_items), dtype=torch.float64),
    }
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    loss = trl_grpo.GRPOTrainer._compute_loss(stub, None, inputs)
    loss.backward()
    return loss.detach(), logp.grad


def reinlm_loss(logp, old, ref, adv, mask, norm, *, loss_type, eps_high, level, beta=0.0, clip_ratio_c=None,
                is_weights=None):
    """reinlm's GRPO loss for the same micro-batch, through the algorithm registry."""
    logp = logp.clone().requires_grad_(True)
    algo = build_algorithm("grpo", AlgorithmConfig(loss_type=loss_type, clip_eps=0.2, clip_eps_high=eps_high,
                                                   importance_sampling_level=level, clip_ratio_c=clip_ratio_c))
    targets = Targets(adv[:, None].expand(-1, logp.shape[1]) * mask)
    kl = kl_estimate(logp, ref, "k3") if beta else None
    loss, stats = algo.loss(LossInputs(logp, old, mask, targets, is_weights=is_weights, kl=kl, kl_coef=beta), norm)
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
