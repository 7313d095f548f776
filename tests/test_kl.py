"""KL estimators and controllers, pinned against hand-computed numbers."""

import math

import pytest
import torch

from reinlm.algorithms.controllers import AdaptiveKLController, ConstantKLController
from reinlm.algorithms.kl import categorical_kl, kl_estimate
from reinlm.errors import ConfigError

# p = (0.5, 0.2), p_ref = (0.25, 0.4):  d = log p - log p_ref = (log 2, -log 2) = (0.693147, -0.693147)
LOGP = torch.log(torch.tensor([0.5, 0.2, 0.3]))
LOGP_REF = torch.log(torch.tensor([0.25, 0.4, 0.3]))


def test_k1():
    # k1 = d = (log 2, -log 2, 0)
    assert torch.allclose(kl_estimate(LOGP, LOGP_REF, "k1"), torch.tensor([0.693147, -0.693147, 0.0]), atol=1e-6)


def test_k2():
    # k2 = d^2 / 2 = 0.480453 / 2 = 0.240227 for both signs, 0 when equal
    assert torch.allclose(kl_estimate(LOGP, LOGP_REF, "k2"), torch.tensor([0.240227, 0.240227, 0.0]), atol=1e-6)


def test_k3():
    # r = log p_ref - log p = (-log 2, log 2): exp(r) - 1 - r = (0.5 - 1 + 0.693147, 2 - 1 - 0.693147)
    #                                                        = (0.193147, 0.306853); 0 when equal
    assert torch.allclose(kl_estimate(LOGP, LOGP_REF, "k3"), torch.tensor([0.193147, 0.306853, 0.0]), atol=1e-6)


def test_k3_is_nonnegative_and_exact_near_zero():
    d = torch.tensor([1e-6, -1e-6, 3.0, -3.0], dtype=torch.float32)
    k3 = kl_estimate(torch.zeros(4), -d, "k3")  # logp - logp_ref = d
    assert (k3 >= 0).all()
    assert k3[0].item() == pytest.approx(0.5e-12, rel=1e-3)  # ~ d^2 / 2 for small d, no cancellation


def test_unknown_kind():
    with pytest.raises(ConfigError, match="kl_estimator"):
        kl_estimate(LOGP, LOGP_REF, "k4")


def test_categorical_kl():
    # KL((0.5, 0.5) || (0.25, 0.75)) = 0.5 log 2 + 0.5 log(2/3) = 0.346574 - 0.202733 = 0.143841
    p = torch.log(torch.tensor([0.5, 0.5]))
    q = torch.log(torch.tensor([0.25, 0.75]))
    assert categorical_kl(p, q).item() == pytest.approx(0.143841, abs=1e-6)


def test_constant_controller():
    ctl = ConstantKLController(0.05)
    assert ctl.update(100.0, 64) == 0.05 and ctl.value == 0.05
    other = ConstantKLController(0.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_controller_updates_by_hand():
    # beta0 = 0.1, target 6, horizon 10000, n_steps 1000 -> K_beta = n_steps / horizon = 0.1
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 9:   e = 9/6 - 1 = 0.5 -> clipped to 0.2;  beta = 0.1 * (1 + 0.2 * 0.1) = 0.102
    assert ctl.update(9.0, 1000) == pytest.approx(0.102, abs=1e-12)
    # KL 6.6: e = 0.1;                              beta = 0.102 * 1.01 = 0.10302
    assert ctl.update(6.6, 1000) == pytest.approx(0.10302, abs=1e-12)
    # KL 0:   e = -1 -> clipped to -0.2;            beta = 0.10302 * 0.98 = 0.1009596
    assert ctl.update(0.0, 1000) == pytest.approx(0.1009596, abs=1e-12)
    # KL 5.4: e = -0.1;                             beta = 0.1009596 * 0.99 = 0.099950004
    assert ctl.update(5.4, 1000) == pytest.approx(0.099950004, abs=1e-12)
    # KL 6:   e = 0;                                beta unchanged
    assert ctl.update(6.0, 1000) == pytest.approx(0.099950004, abs=1e-12)
    assert ctl.value == pytest.approx(0.099950004, abs=1e-12)


def test_adaptive_controller_state_roundtrip():
    ctl = AdaptiveKLController(0.2, target=1.0, horizon=100)
    ctl.update(5.0, 10)  # e = 0.2: beta = 0.2 * (1 + 0.2 * 0.1) = 0.204
    fresh = AdaptiveKLController(0.2, target=1.0, horizon=100)
    fresh.load_state_dict(ctl.state_dict())
    assert fresh.value == pytest.approx(0.204)
    assert fresh.update(5.0, 10) == ctl.update(5.0, 10)


@pytest.mark.parametrize("kwargs, field", [
    ({"init_kl_coef": 0.0, "target": 6, "horizon": 10}, "kl_coef"),
    ({"init_kl_coef": 0.1, "target": 0, "horizon": 10}, "kl_target"),
    ({"init_kl_coef": 0.1, "target": 6, "horizon": -1}, "kl_horizon"),
])
def test_adaptive_controller_validation(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        AdaptiveKLController(**kwargs)


def test_adaptive_is_math_not_magic():
    # 50 updates at KL = 2 * target all clip at +0.2: beta = 0.1 * (1 + 0.2 * 0.5)^50 = 0.1 * 1.1^50
    ctl = AdaptiveKLController(0.1, target=1.0, horizon=2)
    for _ in range(50):
        ctl.update(2.0, 1)
    assert ctl.value == pytest.approx(0.1 * math.pow(1.1, 50), rel=1e-9)
