"""Advantages, losses, reward shaping and PPO pieces, pinned against hand-computed numbers."""

import math

import pytest
import torch

from reinlm.algorithms.grpo import group_advantages
from reinlm.algorithms.losses import (aggregate, clipped_policy_loss, entropy_from_logits, masked_mean,
                                      masked_whiten, policy_gradient_loss)
from reinlm.algorithms.ppo import (PolicyWithValueHead, ValueHead, clipped_value_loss, gae, minibatch_indices,
                                   whiten)
from reinlm.algorithms.reinforce import reinforce_advantages
from reinlm.algorithms.shaping import RunningMoments, last_token_index, per_token_rewards
from reinlm.errors import ConfigError, ReinlmError

# Two groups of three samples: group 0 scores (1, 2, 6), group 1 scores (0, 0, 3).
SCORES = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])


def close(a, b, atol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=atol)


# ------------------------------------------------------------------ REINFORCE / RLOO
def test_baseline_none():
    assert close(reinforce_advantages(SCORES, GROUPS, "none"), SCORES)


def test_baseline_batch_mean():
    # mean of all six = 12 / 6 = 2
    assert close(reinforce_advantages(SCORES, GROUPS, "batch_mean"), [-1, 0, 4, -2, -2, 1])


def test_baseline_group_mean():
    # group means 3 and 1
    assert close(reinforce_advantages(SCORES, GROUPS, "group_mean"), [-2, -1, 3, -1, -1, 2])


def test_baseline_leave_one_out():
    # group 0 (sum 9): 1 - 8/2 = -3, 2 - 7/2 = -1.5, 6 - 3/2 = 4.5
    # group 1 (sum 3): 0 - 3/2 = -1.5, 0 - 3/2 = -1.5, 3 - 0/2 = 3
    expected = torch.tensor([-3, -1.5, 4.5, -1.5, -1.5, 3])
    assert close(reinforce_advantages(SCORES, GROUPS, "leave_one_out"), expected)
    # RLOO = G / (G - 1) * group-mean advantage
    assert close(expected, 1.5 * reinforce_advantages(SCORES, GROUPS, "group_mean"))


def test_group_ids_need_not_be_contiguous():
    ids = torch.tensor([7, 2, 7, 2, 7, 2])
    scores = torch.tensor([1.0, 0.0, 2.0, 0.0, 6.0, 3.0])
    assert close(reinforce_advantages(scores, ids, "leave_one_out"), [-3, -1.5, -1.5, -1.5, 4.5, 3])


def test_leave_one_out_needs_two_samples():
    with pytest.raises(ReinlmError, match="leave_one_out"):
        reinforce_advantages(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]), "leave_one_out")


def test_unknown_baseline():
    with pytest.raises(ConfigError, match="baseline"):
        reinforce_advantages(SCORES, GROUPS, "median")


# ------------------------------------------------------------------ GRPO
def test_group_advantages_scaled():
    # group 0: deviations (-2, -1, 3), unbiased var (4 + 1 + 9) / 2 = 7 -> std sqrt(7) = 2.6457513
    # group 1: deviations (-1, -1, 2), unbiased var (1 + 1 + 4) / 2 = 3 -> std sqrt(3) = 1.7320508
    s7, s3 = math.sqrt(7), math.sqrt(3)
    expected = [-2 / s7, -1 / s7, 3 / s7, -1 / s3, -1 / s3, 2 / s3]  # = -0.7559, -0.3780, 1.1339, -0.5774, ...
    assert close(group_advantages(SCORES, GROUPS, scale_std=True, eps=0.0), expected)
    # default eps = 1e-4 in the denominator
    assert group_advantages(SCORES, GROUPS)[0].item() == pytest.approx(-2 / (s7 + 1e-4), abs=1e-6)


def test_group_advantages_unscaled_and_degenerate():
    assert close(group_advantages(SCORES, GROUPS, scale_std=False), [-2, -1, 3, -1, -1, 2])
    # a group with identical rewards gives zero advantages, not NaN; a group of one gives 0 too
    adv = group_advantages(torch.tensor([4.0, 4.0, 1.0]), torch.tensor([0, 0, 1]))
    assert close(adv, [0, 0, 0])


# ------------------------------------------------------------------ losses
def test_masked_mean_and_whiten():
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    m = torch.tensor([[1, 1], [1, 0]])
    assert masked_mean(x, m).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert close(masked_mean(x, m, dim=-1), [1.5, 3.0])
    # mean 2, unbiased var ((1 + 0 + 1) / 2) = 1 -> (-1, 0, 1); the masked entry is shifted the same way
    w = masked_whiten(x, m)
    assert close(w[m.bool()], [-1, 0, 1], atol=1e-5)
    assert whiten is masked_whiten
    assert close(masked_whiten(x, m, shift_mean=False)[m.bool()], [1, 2, 3], atol=1e-5)


def test_aggregations():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, 60.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx(2.5)  # (1 + 2 + 3 + 4) / 4
    assert aggregate(loss, mask, "seq_mean").item() == pytest.approx(3.0)  # (2 + 4) / 2, empty row left out
    with pytest.raises(ConfigError, match="loss_aggregation"):
        aggregate(loss, mask, "sum")


def test_policy_gradient_loss():
    # per-token -A * logp with A = (2, -1): [[2, 4], [-0.5, (masked)]]
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([2.0, -1.0])
    assert policy_gradient_loss(logp, adv, mask, "token_mean").item() == pytest.approx(5.5 / 3)
    loss = policy_gradient_loss(logp, adv, mask, "seq_mean")
    assert loss.item() == pytest.approx((3.0 - 0.5) / 2)
    loss.backward()
    # d/dlogp of mean_i(mean_t(-A_i logp_it)): row 0: -2 / 2 / 2 = -0.5 each; row 1: +1 / 1 / 2 = 0.5; padding 0
    assert close(logp.grad, [[-0.5, -0.5], [0.5, 0.0]])


def test_clipped_policy_loss_above_and_below_the_clip():
    # four tokens, eps 0.2: ratios (1.5, 0.5, 0.5, 1.5), advantages (+1, +1, -1, -1)
    #   r=1.5, A=+1: max(-1.5, -1.2) = -1.2  (clipped: no gradient)
    #   r=0.5, A=+1: max(-0.5, -0.8) = -0.5  (unclipped)
    #   r=0.5, A=-1: max( 0.5,  0.8) =  0.8  (clipped)
    #   r=1.5, A=-1: max( 1.5,  1.2) =  1.5  (unclipped)
    # token mean = (-1.2 - 0.5 + 0.8 + 1.5) / 4 = 0.15; clip fraction 2/4
    old = torch.zeros(4, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5], [0.5], [1.5]])).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    mask = torch.ones(4, 1)
    loss, stats = clipped_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.15, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    # approx_kl = mean((r - 1) - log r): r=1.5 -> 0.5 - 0.405465 = 0.094535; r=0.5 -> -0.5 + 0.693147 = 0.193147
    assert stats["approx_kl"] == pytest.approx((2 * 0.094535 + 2 * 0.193147) / 4, abs=1e-5)
    assert stats["ratio_mean"] == pytest.approx(1.0) and stats["ratio_max"] == pytest.approx(1.5)
    loss.backward()
    # gradient of -A r w.r.t. logp is -A r, divided by 4 tokens; zero where the clipped branch is active
    assert close(logp.grad, [[0.0], [-0.125], [0.0], [0.375]])


def test_clipped_policy_loss_at_ratio_one_equals_policy_gradient_value():
    logp = torch.tensor([[-1.0, -2.0]])
    loss, stats = clipped_policy_loss(logp, logp.clone(), torch.tensor([3.0]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(-3.0)  # -A * 1
    assert stats["clip_fraction"] == 0.0 and stats["approx_kl"] == pytest.approx(0.0)


def test_clip_higher():
    # r = 1.25, A = +1: eps 0.2 clips at 1.2 (loss -1.2); eps_high 0.3 does not (loss -1.25)
    logp = torch.log(torch.tensor([[1.25]]))
    old, adv, mask = torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1)
    assert clipped_policy_loss(logp, old, adv, mask)[0].item() == pytest.approx(-1.2)
    assert clipped_policy_loss(logp, old, adv, mask, clip_eps_high=0.3)[0].item() == pytest.approx(-1.25)


def test_entropy_from_logits():
    # uniform over 4 -> log 4 = 1.386294; one-hot-ish -> ~0
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(torch.tensor([100.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------ reward shaping
def test_per_token_rewards():
    # beta 0.5, score_clip 3
    # row 0: mask (1,1,1,0), kl (0.1, 0.2, -0.1, 9): -beta*kl = (-0.05, -0.1, 0.05, 0); score 2 at t=2 -> 2.05;
    #        dense (1, 0, 0, 5) on real tokens only -> (0.95, -0.1, 2.05, 0)
    # row 1: mask (1,1,0,0), kl (0.4, 0, 7, 7): (-0.2, 0); score -5 clipped to -3 at t=1 -> (-0.2, -3, 0, 0)
    # row 2: empty mask (a skipped sample): all zero, no score
    scores = torch.tensor([2.0, -5.0, 1.0])
    kl = torch.tensor([[0.1, 0.2, -0.1, 9.0], [0.4, 0.0, 7.0, 7.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    dense = torch.tensor([[1.0, 0.0, 0.0, 5.0], [0.0] * 4, [1.0] * 4])
    r = per_token_rewards(scores, kl, mask, beta=0.5, dense=dense, score_clip=3.0)
    assert close(r, [[0.95, -0.1, 2.05, 0], [-0.2, -3, 0, 0], [0, 0, 0, 0]])
    # no clip, no dense: the score lands unchanged
    r = per_token_rewards(scores, kl, mask, beta=0.0)
    assert close(r, [[0, 0, 2, 0], [0, -5, 0, 0], [0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 1, 0]


def test_running_moments():
    rm = RunningMoments()
    assert rm.std == 1.0
    # [1, 2, 3]: mean 2, unbiased std 1
    assert rm.update(torch.tensor([1.0, 2.0, 3.0])) == pytest.approx((2.0, 1.0))
    assert rm.mean == pytest.approx(2.0) and rm.std == pytest.approx(1.0)
    # + [5]: all = [1, 2, 3, 5], mean 2.75, sum of squares 1.75^2 + 0.75^2 + 0.25^2 + 2.25^2 = 8.75,
    # unbiased std sqrt(8.75 / 3) = 1.707825
    rm.update(torch.tensor([5.0]))
    assert rm.mean == pytest.approx(2.75) and rm.std == pytest.approx(math.sqrt(8.75 / 3))
    other = RunningMoments()
    other.load_state_dict(rm.state_dict())
    assert other.std == rm.std and other.count == 4


# ------------------------------------------------------------------ PPO
def test_gae_three_steps_by_hand():
    # gamma 1, lambda 0.95, rewards (0, 0, 1), values (0.5, 0.6, 0.7), episode ends after t=2
    #   t=2: delta = 1 + 0 - 0.7 = 0.3;                 A2 = 0.3
    #   t=1: delta = 0 + 0.7 - 0.6 = 0.1;               A1 = 0.1 + 0.95 * 0.3 = 0.385
    #   t=0: delta = 0 + 0.6 - 0.5 = 0.1;               A0 = 0.1 + 0.95 * 0.385 = 0.46575
    #   returns = A + V = (0.96575, 0.985, 1.0)
    # second row, right-padded after 2 tokens, junk in the padding: rewards (0, 2, 5), values (1, 1, 9)
    #   t=1: delta = 2 + 0 - 1 = 1;  A1 = 1;   t=0: delta = 0 + 1 - 1 = 0;  A0 = 0 + 0.95 * 1 = 0.95
    #   returns (1.95, 2.0, 0)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert close(adv, [[0.46575, 0.385, 0.3], [0.95, 1.0, 0.0]])
    assert close(ret, [[0.96575, 0.985, 1.0], [1.95, 2.0, 0.0]])


def test_gae_discounted():
    # gamma 0.5, lambda 1 (Monte-Carlo): A_t = sum_k 0.5^k r_{t+k} - V_t; rewards (1, 1), values 0 -> (1.5, 1)
    adv, ret = gae(torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.5, lam=1.0)
    assert close(adv, [[1.5, 1.0]]) and close(ret, [[1.5, 1.0]])


def test_clipped_value_loss():
    # clip 0.2, per token:
    #   V=1.5, V_old=1.0, G=2.0: V_clip=1.2; (V-G)^2=0.25, (V_clip-G)^2=0.64 -> 0.64 (clipped)
    #   V=1.1, V_old=1.0, G=2.0: V_clip=1.1; both 0.81                       -> 0.81
    #   V=2.5, V_old=1.0, G=2.5: V_clip=1.2; 0 vs 1.69                         -> 1.69 (clipped, pessimistic)
    #   V=0.5, V_old=1.0, G=0.0: V_clip=0.8; 0.25 vs 0.64                      -> 0.64 (clipped)
    #   padding: ignored
    # loss = 0.5 * (0.64 + 0.81 + 1.69 + 0.64) / 4 = 0.4725; clip fraction 3/4
    values = torch.tensor([[1.5, 1.1, 2.5, 0.5, 99.0]], requires_grad=True)
    old = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 2.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = clipped_value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.4725, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(0.75)
    assert stats["error"] == pytest.approx((0.25 + 0.81 + 0 + 0.25) / 4)
    # without clipping: 0.5 * (0.25 + 0.81 + 0 + 0.25) / 4 = 0.16375
    assert clipped_value_loss(values, old, returns, mask, clip=None)[0].item() == pytest.approx(0.16375, abs=1e-6)


def test_minibatch_indices():
    mbs = minibatch_indices(10, 4, torch.Generator().manual_seed(0))
    assert [len(m) for m in mbs] == [4, 4, 2]
    assert sorted(torch.cat(mbs).tolist()) == list(range(10))


def test_value_head_and_policy_wrapper(tiny_lm):
    from reinlm.rollout.token import token_logprobs

    model, tok = tiny_lm
    head = ValueHead(64)
    assert head(torch.randn(2, 3, 64)).shape == (2, 3) and head(torch.randn(2, 3, 64)).abs().max() == 0
    ids = torch.tensor([[2, 2, 504, 905, 30, 31], [504, 905, 906, 907, 30, 31]])
    attn = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    shared = PolicyWithValueHead(model)
    out = shared(ids, attn, response_len=2, temperature=0.7)
    ref = token_logprobs(model, ids, attn, 2, 0.7)
    assert out.logp.shape == out.values.shape == out.entropy.shape == (2, 2)
    assert torch.allclose(out.logp, ref.logp, atol=1e-6)
    # a head with weights: values respond to the hidden state, gradients reach head and trunk
    torch.nn.init.normal_(shared.value_head.linear.weight)
    out = shared(ids, attn, response_len=2)
    out.values.sum().backward()
    assert shared.value_head.linear.weight.grad.abs().sum() > 0
    assert model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    separate = PolicyWithValueHead(model, value_model=model)  # any causal LM works as the value trunk
    assert separate(ids, attn, response_len=2).values.shape == (2, 2)
