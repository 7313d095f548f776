"""Advantages, losses, reward shaping and PPO pieces, pinned against hand-computed numbers."""

import math

import pytest
import torch

from reinlm.algorithms.grpo import group_advantages
from reinlm.algorithms.losses import LossNorm, aggregate, masked_mean, masked_whiten, policy_loss
from reinlm.algorithms.ppo import ValueHead, clipped_value_loss, gae
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
    assert close(group_advantages(SCORES, GROUPS, "group", eps=0.0), expected)
    # default eps = 1e-4 in the denominator
    assert group_advantages(SCORES, GROUPS)[0].item() == pytest.approx(-2 / (s7 + 1e-4), abs=1e-6)


def test_group_advantages_unscaled_and_degenerate():
    assert close(group_advantages(SCORES, GROUPS, "none"), [-2, -1, 3, -1, -1, 2])
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
    assert close(masked_whiten(x, m, shift_mean=False)[m.bool()], [1, 2, 3], atol=1e-5)


def test_loss_types_by_hand():
    # three rows, loss (B, R); mask: row 0 three tokens, row 1 one token, row 2 none (e.g. a masked truncation)
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, 60.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    one = LossNorm(seqs=3, tokens=4.0, world=1, max_len=5)
    # grpo: (mean(1, 2, 3) + 4 + 0) / 3 rows = (2 + 4) / 3 = 2 (the empty row counts, as in TRL)
    assert aggregate(loss, mask, "grpo", one).item() == pytest.approx(2.0)
    # bnpo: token mean (1 + 2 + 3 + 4) / 4 = 2.5; dapo with the step = this micro-batch: the same
    assert aggregate(loss, mask, "bnpo", one).item() == pytest.approx(2.5)
    assert aggregate(loss, mask, "dapo", one).item() == pytest.approx(2.5)
    # dr_grpo: sum 10 / (3 rows x max_len 5) = 0.6667
    assert aggregate(loss, mask, "dr_grpo", one).item() == pytest.approx(10 / 15)
    # this micro-batch is half of a step of 6 rows and 10 tokens on each of 2 processes (20 tokens):
    step = LossNorm(seqs=6, tokens=20.0, world=2, max_len=5)
    assert aggregate(loss, mask, "grpo", step).item() == pytest.approx(6 / 6)  # (2 + 4) / 6 rows
    assert aggregate(loss, mask, "bnpo", step).item() == pytest.approx(2.5 * 3 / 6)
    assert aggregate(loss, mask, "dapo", step).item() == pytest.approx(10 / (20 / 2))  # DDP averages the 2 shares
    with pytest.raises(ConfigError, match="loss_type"):
        aggregate(loss, mask, "sum", one)


def _loss(logp, old, adv, mask, **kw):
    return policy_loss(logp, old, adv, mask, LossNorm.single(mask), loss_type="bnpo", **kw)


def test_policy_gradient_loss():
    # unclipped (REINFORCE): per-token -A * logp with A = (2, -1): [[2, 4], [-0.5, (masked)]]
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([2.0, -1.0])
    assert _loss(logp, logp.detach(), adv, mask, clipped=False)[0].item() == pytest.approx(5.5 / 3)
    loss = policy_loss(logp, logp.detach(), adv, mask, LossNorm.single(mask), loss_type="grpo", clipped=False)[0]
    assert loss.item() == pytest.approx((3.0 - 0.5) / 2)
    loss.backward()
    # d/dlogp of mean_i(mean_t(-A_i logp_it)): row 0: -2 / 2 / 2 = -0.5 each; row 1: +1 / 1 / 2 = 0.5; padding 0
    assert close(logp.grad, [[-0.5, -0.5], [0.5, 0.0]])


def test_clipped_policy_loss_above_and_below_the_clip():
    # four tokens, eps 0.2: ratios (1.5, 0.5, 0.5, 1.5), advantages (+1, +1, -1, -1)
    #   r=1.5, A=+1: max(-1.5, -1.2) = -1.2  (clipped high: no gradient)
    #   r=0.5, A=+1: max(-0.5, -0.8) = -0.5  (unclipped)
    #   r=0.5, A=-1: max( 0.5,  0.8) =  0.8  (clipped low)
    #   r=1.5, A=-1: max( 1.5,  1.2) =  1.5  (unclipped)
    # token mean = (-1.2 - 0.5 + 0.8 + 1.5) / 4 = 0.15; clip fraction 2/4 (1/4 low, 1/4 high)
    old = torch.zeros(4, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5], [0.5], [1.5]])).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    mask = torch.ones(4, 1)
    loss, stats = _loss(logp, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.15, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    assert stats["clip_fraction_low"] == pytest.approx(0.25) and stats["clip_fraction_high"] == pytest.approx(0.25)
    # approx_kl = mean((r - 1) - log r): r=1.5 -> 0.5 - 0.405465 = 0.094535; r=0.5 -> -0.5 + 0.693147 = 0.193147
    assert stats["approx_kl"] == pytest.approx((2 * 0.094535 + 2 * 0.193147) / 4, abs=1e-5)
    assert stats["ratio_mean"] == pytest.approx(1.0) and stats["ratio_max"] == pytest.approx(1.5)
    loss.backward()
    # gradient of -A r w.r.t. logp is -A r, divided by 4 tokens; zero where the clipped branch is active
    assert close(logp.grad, [[0.0], [-0.125], [0.0], [0.375]])


def test_clipped_policy_loss_at_ratio_one_equals_policy_gradient_value():
    logp = torch.tensor([[-1.0, -2.0]])
    loss, stats = _loss(logp, logp.clone(), torch.tensor([3.0]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(-3.0)  # -A * 1
    assert stats["clip_fraction"] == 0.0 and stats["approx_kl"] == pytest.approx(0.0)


def test_clip_higher():
    # r = 1.25, A = +1: eps 0.2 clips at 1.2 (loss -1.2); eps_high 0.3 does not (loss -1.25)
    logp = torch.log(torch.tensor([[1.25]]))
    old, adv, mask = torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1)
    assert _loss(logp, old, adv, mask)[0].item() == pytest.approx(-1.2)
    assert _loss(logp, old, adv, mask, clip_eps_high=0.3)[0].item() == pytest.approx(-1.25)


def test_dual_clip_by_hand():
    # c = 3, eps 0.2. Ratios (5, 2, 5), advantages (-1, -1, +1):
    #   r=5, A=-1: max(5, 1.2) = 5, dual clip min(5, 3) = 3  (bounded; no gradient)
    #   r=2, A=-1: max(2, 1.2) = 2 < 3                         (unchanged, gradient -A r = 2)
    #   r=5, A=+1: max(-5, -1.2) = -1.2                         (positive advantage: dual clip does not apply)
    # token mean (3 + 2 - 1.2) / 3 = 1.26667; without the dual clip (5 + 2 - 1.2) / 3 = 1.93333
    logp = torch.log(torch.tensor([[5.0], [2.0], [5.0]])).requires_grad_(True)
    old, adv, mask = torch.zeros(3, 1), torch.tensor([-1.0, -1.0, 1.0]), torch.ones(3, 1)
    loss, stats = _loss(logp, old, adv, mask, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx(3.8 / 3, abs=1e-6)
    assert _loss(logp, old, adv, mask)[0].item() == pytest.approx(5.8 / 3, abs=1e-6)
    assert stats["dual_clip_fraction"] == pytest.approx(1 / 3)
    loss.backward()
    assert close(logp.grad, [[0.0], [2.0 / 3], [0.0]])


def test_sequence_level_ratio_by_hand():
    # GSPO: one ratio per sequence, exp(mean log-ratio over its tokens). Row 0 log-ratios (0.2, -0.1, 0.5, pad):
    # mean 0.2 -> w = e^0.2 = 1.2214 > 1.2: clipped high with A = +1 -> per-token loss -1.2 on its 3 tokens.
    # Row 1 log-ratios (-0.1, pad...): w = e^-0.1 = 0.9048, A = -2 -> 1.8097 on its 1 token.
    logp = torch.tensor([[0.2, -0.1, 0.5, 7.0], [-0.1, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    loss, stats = _loss(logp, torch.zeros(2, 4), torch.tensor([1.0, -2.0]), mask, importance_sampling_level="sequence")
    assert loss.item() == pytest.approx((3 * -1.2 + 2 * math.exp(-0.1)) / 4, abs=1e-6)
    assert stats["clip_fraction_high"] == pytest.approx(0.75)


def test_cispo_by_hand():
    # CISPO: -sg(min(r, eps_max)) A log pi. r = (2, 6), eps_max 5, A = +1, log pi = (log 2, log 6):
    # loss = -(2 log 2 + 5 log 6) / 2; gradient w.r.t. log pi = -(2, 5) / 2 (the weight is detached)
    logp = torch.log(torch.tensor([[2.0], [6.0]])).requires_grad_(True)
    loss, stats = policy_loss(logp, torch.zeros(2, 1), torch.tensor([1.0, 1.0]), torch.ones(2, 1),
                              LossNorm.single(torch.ones(2, 1)), loss_type="cispo", clip_eps_high=5.0)
    assert loss.item() == pytest.approx(-(2 * math.log(2) + 5 * math.log(6)) / 2, abs=1e-6)
    loss.backward()
    assert close(logp.grad, [[-1.0], [-2.5]])
    assert stats["cispo_clip_fraction"] == pytest.approx(0.5)


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


def test_value_head_starts_at_zero():
    head = ValueHead(64)
    assert head(torch.randn(2, 3, 64)).shape == (2, 3) and head(torch.randn(2, 3, 64)).abs().max() == 0


# ------------------------------------------------------------------ algorithm classes (registry)
def _inputs(scores, groups, mask=None, valid=None, **kw):
    from reinlm.algorithms import AdvantageInputs

    scores = torch.as_tensor(scores, dtype=torch.float32)
    valid = torch.ones(len(scores), dtype=torch.bool) if valid is None else torch.as_tensor(valid)
    mask = torch.ones(len(scores), 2) if mask is None else torch.as_tensor(mask, dtype=torch.float32)
    return AdvantageInputs(scores=scores, valid=valid, mask=mask * valid[:, None], group_ids=torch.as_tensor(groups), **kw)


def _build(name, **cfg):
    from reinlm.algorithms import AlgorithmConfig, build_algorithm

    return build_algorithm(name, AlgorithmConfig(**cfg))


def test_registry_names_and_needs():
    from reinlm.algorithms import available_algorithms, get_algorithm

    assert set(available_algorithms()) == {"reinforce", "rloo", "grpo", "reinforce_pp", "remax", "ppo", "distill"}
    assert get_algorithm("distill").needs.spaces == ("token",)
    assert get_algorithm("ppo").needs.values and get_algorithm("remax").needs.greedy_baseline
    assert get_algorithm("grpo").needs.min_group_size == 2 and get_algorithm("rloo").needs.min_group_size == 2
    with pytest.raises(ConfigError, match="algo: got 'dpo'"):
        get_algorithm("dpo")


def test_grpo_leaves_invalid_samples_out():
    # issue 13 item 2: valid scores (1.5, 1.6) and two invalid ones in one group: mean 1.55, unbiased std
    # sqrt(2 * 0.05^2 / 1) = 0.070711 -> A = -+0.05 / (0.070711 + 1e-4) = -+0.70611; the invalid ones get 0
    t = _build("grpo").advantages(_inputs([1.5, 1.6, 0.0, 0.0], [0, 0, 0, 0], valid=[True, True, False, False]))
    assert close(t.advantages[:, 0], [-0.70611, 0.70611, 0.0, 0.0], atol=1e-5)
    assert close(t.advantages[2:], torch.zeros(2, 2))


def test_grpo_scale_rewards_batch_and_none():
    # SCORES: batch std of (1, 2, 6, 0, 0, 3) = sqrt(((-1)^2 + 0 + 4^2 + 2^2 + 2^2 + 1) / 5) = sqrt(26 / 5)
    sd = math.sqrt(26 / 5)
    t = _build("grpo", scale_rewards="batch").advantages(_inputs(SCORES, GROUPS))
    assert close(t.advantages[:, 0], [-2 / (sd + 1e-4), -1 / (sd + 1e-4), 3 / (sd + 1e-4), -1 / (sd + 1e-4),
                                      -1 / (sd + 1e-4), 2 / (sd + 1e-4)], atol=1e-5)
    t = _build("grpo", scale_rewards="none").advantages(_inputs(SCORES, GROUPS))
    assert close(t.advantages[:, 0], [-2, -1, 3, -1, -1, 2])


def test_sequence_return_subtracts_the_kl_penalty():
    # beta 0.5, kl (0.2, 0.4) on both tokens of row 0 -> return 1 - 0.5 * 0.6 = 0.7; row 1: 2 - 0 = 2
    kl = torch.tensor([[0.2, 0.4], [0.0, 0.0]])
    t = _build("reinforce", baseline="none").advantages(_inputs([1.0, 2.0], [0, 0], kl=kl, beta=0.5))
    assert close(t.advantages, [[0.7, 0.7], [2.0, 2.0]])


def test_rloo_with_an_invalid_sample():
    # group (1, 2, 6) with 6 invalid: A = (1 - 2, 2 - 1) = (-1, 1), 0 for the invalid one; group (0, 0, 3): LOO
    t = _build("rloo").advantages(_inputs(SCORES, GROUPS, valid=[True, True, False, True, True, True]))
    assert close(t.advantages[:, 0], [-1, 1, 0, -1.5, -1.5, 3])


def test_reinforce_pp_by_hand():
    # scores (1, 3 | 0, 2) in groups (0, 0 | 1, 1), two tokens each (row 1 has one), beta 0.5,
    # kl rows (0.1, 0.2), (0.4, pad), (0, 0.2), (0.2, 0):
    #   rewards r_t = -0.5 kl_t (+ score at the last token): (-0.05, 0.9), (2.8), (0, -0.1), (-0.1, 2)
    # baseline none: returns-to-go G = (0.85, 0.9), (2.8), (-0.1, -0.1), (1.9, 2.0); over the 7 tokens mean 1.178571,
    #   population var 1.039898 -> A = (G - mean) / sqrt(var + 1e-8)
    mask = [[1, 1], [1, 0], [1, 1], [1, 1]]
    kl = torch.tensor([[0.1, 0.2], [0.4, 9.0], [0.0, 0.2], [0.2, 0.0]])
    inp = _inputs([1.0, 3.0, 0.0, 2.0], [0, 0, 1, 1], mask=mask, kl=kl, beta=0.5)
    t = _build("reinforce_pp", baseline="none").advantages(inp)
    assert close(t.advantages, [[-0.32221, -0.27318], [1.59002, 0], [-1.2538, -1.2538], [0.70745, 0.80552]], atol=1e-4)
    # REINFORCE++-baseline: scores minus their group mean (2 and 1) first: (-1, 1 | -1, 1):
    #   G = (-1.15, -1.1), (0.8), (-1.1, -1.1), (0.9, 1.0); mean -0.25, population var 0.995
    t = _build("reinforce_pp", baseline="group_mean").advantages(inp)
    assert close(t.advantages, [[-0.90226, -0.85213], [1.05263, 0], [-0.85213, -0.85213], [1.15289, 1.25314]], atol=1e-4)


def test_remax_subtracts_the_greedy_reward():
    t = _build("remax").advantages(_inputs([1.0, 3.0, 0.5], [0, 0, 1], baseline_scores=torch.tensor([2.0, 2.0, 1.0]),
                                           valid=[True, True, False]))
    assert close(t.advantages[:, 0], [-1.0, 1.0, 0.0])


def test_ppo_class_is_gae_then_whitening():
    from reinlm.algorithms import PPOConfig, build_algorithm

    values = torch.tensor([[0.5, 0.6], [1.0, 1.0]])
    inp = _inputs([1.0, 2.0], [0, 1], values=values)
    t = build_algorithm("ppo", ppo=PPOConfig(whiten_advantages=False)).advantages(inp)
    # row 0: r = (0, 1): delta1 = 1 - 0.6 = 0.4, delta0 = 0.6 - 0.5 = 0.1 -> A = (0.1 + 0.95 * 0.4, 0.4)
    assert close(t.advantages[0], [0.48, 0.4]) and close(t.returns[0], [0.98, 1.0])
    white = build_algorithm("ppo").advantages(inp).advantages
    assert close(white, masked_whiten(t.advantages, torch.ones(2, 2)), atol=1e-6)


def test_truncated_importance_weights_by_hand():
    from reinlm.algorithms.mismatch import mismatch_stats, tis_clip_fraction, truncated_is_weights

    trainer = torch.tensor([[0.0, -1.0, 5.0], [-2.0, -2.0, 0.0]])
    sampler = torch.tensor([[-1.0, -1.0, 0.0], [-1.5, -2.5, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # token ratios exp(trainer - sampler): (e, 1, pad), (e^-0.5, e^0.5); cap 2 truncates e -> 2
    w, clipped = truncated_is_weights(trainer, sampler, mask, "token", cap=2.0)
    assert close(w, [[2.0, 1.0, 1.0], [math.exp(-0.5), math.exp(0.5), 1.0]])
    assert tis_clip_fraction(clipped, mask) == pytest.approx(0.25)
    # sequence: exp(1 + 0) = e -> 2 (truncated); exp(-0.5 + 0.5) = 1
    w, clipped = truncated_is_weights(trainer, sampler, mask, "sequence", cap=2.0)
    assert close(w, [[2.0], [1.0]]) and tis_clip_fraction(clipped, mask) == pytest.approx(0.5)
    # k3 of d = (1, 0, -0.5, 0.5): e - 2 = 0.718282, 0, e^-0.5 - 0.5 = 0.106531, e^0.5 - 1.5 = 0.148721
    st = mismatch_stats(trainer, sampler, mask)
    assert st["mismatch/kl"] == pytest.approx((0.718282 + 0.106531 + 0.148721) / 4, abs=1e-5)
    assert st["mismatch/k1"] == pytest.approx(-1 / 4) and st["mismatch/max_abs_logp_diff"] == pytest.approx(1.0)


def test_zero_spread_groups():
    from reinlm.algorithms.groups import zero_spread

    scores = torch.tensor([1.0, 1.0, 0.0, 2.0, 5.0, 3.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    assert zero_spread(scores, groups).tolist() == [True, True, False, False, False, False]
    # group 2 keeps one valid sample: no spread left
    assert zero_spread(scores, groups, torch.tensor([1, 1, 1, 1, 1, 0]).bool()).tolist()[4:] == [True, True]


def test_overlong_penalty_by_hand():
    from reinlm.rewards import parse_reward_spec
    from reinlm.rewards.overlong import overlong_penalty

    # L_max 10, L_cache 4: lengths 6 -> 0; 7 -> (6 - 7) / 4 = -0.25; 10 -> -1; 12 -> -1
    fn = overlong_penalty(10, 4)
    ids = [[1] * 6, [1] * 7, [1] * 10, [1] * 12]
    assert fn(["p"] * 4, ["c"] * 4, completion_ids=ids) == [0.0, -0.25, -1.0, -1.0]
    assert parse_reward_spec("overlong_penalty:10,4").components[0].fn(["p"], ["c"], completion_ids=[[1] * 8]) == [-0.5]
    with pytest.raises(ReinlmError, match="completion_ids"):
        fn(["p"], ["c"])
    with pytest.raises(ConfigError, match="cache"):
        overlong_penalty(4, 10)


def test_ppo_loss_is_the_surrogate_plus_the_weighted_value_loss():
    from reinlm.algorithms import LossInputs, PPOConfig, Targets, build_algorithm

    # ratio 1 everywhere: surrogate = -mean(A) over the 3 tokens (grpo aggregation: row means (-1, 0.5) / 2)
    # value loss (clip 0.2): tokens V=1.5,V_old=1,G=2 -> 0.64; V=1.1,G=2 -> 0.81; V=0.5,V_old=1,G=0 -> 0.64
    #   -> 0.5 * (0.64 + 0.81 + 0.64) / 3 = 0.348333; vf_coef 0.5
    logp = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    targets = Targets(advantages=torch.tensor([[1.0, 1.0], [-0.5, 0.0]]), returns=torch.tensor([[2.0, 2.0], [0.0, 0.0]]),
                      old_values=torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    values = torch.tensor([[1.5, 1.1], [0.5, 9.0]], requires_grad=True)
    algo = build_algorithm("ppo", ppo=PPOConfig(vf_coef=0.5, value_clip=0.2))
    loss, stats = algo.loss(LossInputs(logp, logp, mask, targets, values=values), LossNorm.single(mask))
    assert stats["loss/policy"] == pytest.approx((-1.0 + 0.5) / 2)
    assert stats["loss/value"] == pytest.approx(0.348333, abs=1e-5)
    assert loss.item() == pytest.approx(-0.25 + 0.5 * 0.348333, abs=1e-5)
