"""Tests of normlib.analysis.norm_dynamics: weight norms and angular updates under SGD."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from analysis_problems import (
    DT,
    _assert_same_state,
    _data,
    _invariant_net,
    _state,
)
from torch import nn

import normlib  # noqa: F401  (fills the registry)
from normlib import analysis as A

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sgd_without_weight_decay_grows_squared_norm_by_squared_step():
    d = A.sgd_norm_dynamics(_invariant_net(), _data(), F.cross_entropy, lr=0.3, steps=30, batch_size=32)
    growth = d.norms[1:] ** 2 - d.norms[:-1] ** 2
    # ||w+||^2 = ||w||^2 + lr^2 ||g||^2 because g is orthogonal to w (eps = 1e-12: rel. 1e-8)
    torch.testing.assert_close(growth, 0.3**2 * d.grad_norms**2, rtol=1e-8, atol=0)
    assert bool((d.effective_lr[1:] < d.effective_lr[:-1]).all())


def test_scaled_weights_with_scaled_learning_rate_follow_the_same_directions():
    c = 3.0
    net, big = _invariant_net(), _invariant_net()
    with torch.no_grad():
        for p in big.parameters():
            p.mul_(c)
    d1 = A.sgd_norm_dynamics(net, _data(), F.cross_entropy, lr=0.2, steps=25, batch_size=32)
    d2 = A.sgd_norm_dynamics(big, _data(), F.cross_entropy, lr=0.2 * c**2, steps=25, batch_size=32)
    # same losses and angular updates; weights equal up to the factor c (rel. 1e-8)
    torch.testing.assert_close(d1.losses, d2.losses, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(d1.angular_update, d2.angular_update, rtol=1e-6, atol=1e-12)
    for p1, p2 in zip(d1.model.parameters(), d2.model.parameters()):
        torch.testing.assert_close(c * p1, p2, rtol=1e-8, atol=1e-12)


def test_weight_decay_brings_angular_update_to_sqrt_2_lr_wd_from_either_side():
    lr, wd = 0.5, 0.05
    target = A.equilibrium_angular_update(lr, wd)
    finals = []
    for scale in (0.3, 5.0):
        net = _invariant_net()
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(scale)
        d = A.sgd_norm_dynamics(net, _data(512), F.cross_entropy, lr=lr, steps=150, batch_size=16,
                                weight_decay=wd)
        # the balance fixes the mean square angle: compare the root mean square of the last 50
        late = d.angular_update[-50:].pow(2).mean(0).sqrt()
        # first-order theory with gradient noise: within 15% of sqrt(2 lr wd) = 0.224
        assert torch.all((late / target - 1).abs() < 0.15), (late, target)
        finals.append(d.norms[-30:].mean(0))
    # starting 17x apart, the norms meet at the same equilibrium (within 15%)
    assert torch.all((finals[0] / finals[1] - 1).abs() < 0.15), finals


def test_equilibrium_norm_is_the_fixed_point_of_the_norm_recursion():
    lr, wd, g = 0.1, 1e-3, 2.0
    w = A.equilibrium_norm(lr, wd, g)
    after = math.sqrt((1 - lr * wd) ** 2 * w**2 + lr**2 * g**2 / w**2)
    assert math.isclose(after, w, rel_tol=1e-12)
    assert math.isclose(A.equilibrium_angular_update(lr, wd, momentum=0.9), math.sqrt(2 * lr * wd / 1.9))


def test_sgd_norm_dynamics_leaves_model_untouched_and_rejects_bad_arguments():
    net = _invariant_net()
    state = _state(net)
    A.sgd_norm_dynamics(net, _data(), F.cross_entropy, lr=0.1, steps=3, batch_size=16)
    _assert_same_state(net, state)
    with pytest.raises(ValueError, match="batch_size=500 is larger than the data"):
        A.sgd_norm_dynamics(net, _data(), F.cross_entropy, lr=0.1, steps=3, batch_size=500)
    with pytest.raises(ValueError, match="no scale-invariant parameter"):
        A.sgd_norm_dynamics(nn.Linear(6, 3).to(DT), _data(), F.cross_entropy, lr=0.1, steps=3)
    with pytest.raises(ValueError, match="unknown parameter 'w'"):
        A.sgd_norm_dynamics(net, _data(), F.cross_entropy, lr=0.1, steps=3, params=["w"])
    with pytest.raises(ValueError, match="lr must be a positive float"):
        A.sgd_norm_dynamics(net, _data(), F.cross_entropy, lr=0.0, steps=3)
    with pytest.raises(ValueError, match="momentum"):
        A.equilibrium_angular_update(0.1, 0.1, momentum=1.0)
