"""On-policy distillation's per-token divergence (reinlm/algorithms/distill.py) equals TRL 1.16's own code on
hand-made logits in float64: GKD's ``generalized_jsd_loss`` and the DistillationTrainer's chunked divergence
(reverse KL at beta=1, forward KL at beta=0, generalized JSD between), loss and gradient; top-k teacher logits
renormalise over the teacher's top k."""

from __future__ import annotations

import pytest
import torch
from trl.experimental.gkd.gkd_trainer import GKDTrainer
from trl.trainer.distillation_trainer import _chunked_divergence_loss

from reinlm.algorithms.distill import distill_loss, per_token_divergence

B, R, V, H = 3, 5, 11, 6


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, R, H, generator=g, dtype=torch.float64)
    ht = torch.randn(B, R, H + 2, generator=g, dtype=torch.float64)
    ws = torch.randn(V, H, generator=g, dtype=torch.float64)
    wt = torch.randn(V, H + 2, generator=g, dtype=torch.float64) * 1.5
    mask = (torch.arange(R)[None, :] < torch.tensor([5, 2, 0])[:, None]).long()
    return hs, ht, ws, wt, mask


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_divergence_equals_trl_gkd_and_distillation_trainer(beta, temperature):
    hs, ht, ws, wt, mask = batch()
    ws = ws.clone().requires_grad_(True)
    ours = distill_loss(hs @ ws.T, ht @ wt.T, mask, beta=beta, temperature=temperature)
    ours.backward()
    g_ours, ws.grad = ws.grad.clone(), None

    labels = torch.where(mask.bool(), torch.zeros_like(mask), torch.full_like(mask, -100))
    gkd = GKDTrainer.generalized_jsd_loss(hs @ ws.T, ht @ wt.T, labels=labels, beta=beta, temperature=temperature)
    gkd.backward()
    g_gkd, ws.grad = ws.grad.clone(), None
    chunked, _, n = _chunked_divergence_loss(hs, ht, ws, wt, mask, beta, temperature=temperature)
    chunked.backward()
    assert int(n) == int(mask.sum())
    # GKD computes in float64 here; the chunked kernel computes in float32 (relative 1e-6)
    for theirs, grad, rtol in ((gkd, g_gkd, 0.0), (chunked, ws.grad, 1e-6)):
        assert torch.allclose(ours, theirs.to(ours.dtype), atol=1e-6, rtol=rtol), (float(ours), float(theirs))
        assert torch.allclose(g_ours, grad.to(g_ours.dtype), atol=1e-6, rtol=rtol)
    assert float(ours) > 0


def test_the_ends_are_the_two_kls_and_the_teacher_gets_no_gradient():
    hs, ht, ws, wt, mask = batch(1)
    s, t = (hs @ ws.T).requires_grad_(True), (ht @ wt.T).requires_grad_(True)
    ls, lt = torch.log_softmax(s.detach(), -1), torch.log_softmax(t.detach(), -1)
    forward = (lt.exp() * (lt - ls)).sum(-1)
    reverse = (ls.exp() * (ls - lt)).sum(-1)
    assert torch.allclose(per_token_divergence(s, t, beta=0.0), forward)
    assert torch.allclose(per_token_divergence(s, t, beta=1.0), reverse)
    assert not torch.allclose(forward, reverse)
    distill_loss(s, t, mask, beta=0.5).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_top_k_renormalises_over_the_teachers_top_k():
    hs, ht, ws, wt, mask = batch(2)
    s, t = hs @ ws.T, ht @ wt.T
    idx = t.topk(3, dim=-1).indices
    expected = per_token_divergence(s.gather(-1, idx), t.gather(-1, idx), beta=1.0)
    assert torch.allclose(per_token_divergence(s, t, beta=1.0, top_k=3), expected)
    assert not torch.allclose(per_token_divergence(s, t, beta=1.0, top_k=3), per_token_divergence(s, t, beta=1.0))
    # k = V is the full divergence
    assert torch.allclose(per_token_divergence(s, t, beta=0.4, top_k=V), per_token_divergence(s, t, beta=0.4))


def test_num_items_makes_micro_batch_shares_add_up():
    hs, ht, ws, wt, mask = batch(3)
    s, t = hs @ ws.T, ht @ wt.T
    whole = distill_loss(s, t, mask, beta=0.5)
    n = float(mask.sum())
    parts = sum(distill_loss(s[i:i + 1], t[i:i + 1], mask[i:i + 1], beta=0.5, num_items=n) for i in range(B))
    assert torch.allclose(whole, parts)
