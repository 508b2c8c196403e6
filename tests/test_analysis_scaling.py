"""Tests of normlib.analysis.scaling: measured scale dynamics against the products of alphas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from analysis_problems import (
    ALPHAS,
    DT,
    _assert_same_state,
    _mlp,
    _state,
    _x,
)

import normlib  # noqa: F401  (fills the registry)
from normlib import analysis as A
from normlib.models import MLP

pytestmark = pytest.mark.usefixtures("one_thread")


def test_predicted_scale_dynamics_are_the_products_of_the_deck_table_without_normalization():
    a = torch.tensor(ALPHAS, dtype=DT)
    p = A.predicted_scale_dynamics(ALPHAS, [False] * 4)
    for k in range(4):
        # input of layer k is x_{k-1}: prod_{i<k}; output gradient prod_{i>k}; weight prod_{i!=k}
        assert math.isclose(p.input[k], float(a[:k].prod()), rel_tol=1e-14)
        assert math.isclose(p.output_grad[k], float(a[k + 1:].prod()), rel_tol=1e-14)
        assert math.isclose(p.weight_grad[k], float(a.prod() / a[k]), rel_tol=1e-14)


def test_predicted_scale_dynamics_are_one_over_alpha_when_every_layer_is_normalized():
    p = A.predicted_scale_dynamics(ALPHAS, [True] * 4)
    expected = 1.0 / torch.tensor(ALPHAS, dtype=DT)
    assert torch.equal(p.input, torch.ones(4, dtype=DT))
    torch.testing.assert_close(p.output_grad, expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(p.weight_grad, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("activation", ["relu", "identity"])
def test_measured_scale_dynamics_of_plain_network_match_products_of_alphas(activation):
    net = _mlp(None, activation)
    m = A.scale_dynamics(net, _x(), ALPHAS)
    p = A.predicted_scale_dynamics(ALPHAS, [False] * 4)
    # positively homogeneous network with zero biases: exact up to float64 rounding (1e-12)
    for q in ("input", "output_grad", "weight_grad"):
        torch.testing.assert_close(getattr(m, q), getattr(p, q), rtol=1e-12, atol=0)
    assert float(m.residual.max()) < 1e-12
    assert m.names == ["layers.0.0", "layers.1.0", "layers.2.0", "head"] and m.mode == "train"


@pytest.mark.parametrize("norm,kw", [("bn", {}), ("ln", {}), ("gn", {"num_groups": 4})])
def test_measured_scale_dynamics_of_normalized_network_are_one_and_one_over_alpha(norm, kw):
    net = _mlp(norm, **kw)
    alphas = ALPHAS[:3] + [1.0]  # the head has no normalizer after it: keep its scale
    m = A.scale_dynamics(net, _x(), alphas)
    inv = 1.0 / torch.tensor(alphas, dtype=DT)
    # eps = 1e-12 against pre-activation variances of order 1: rules hold to 1e-8
    torch.testing.assert_close(m.input, torch.ones(4, dtype=DT), rtol=1e-8, atol=0)
    torch.testing.assert_close(m.output_grad, inv, rtol=1e-8, atol=0)
    torch.testing.assert_close(m.weight_grad, inv, rtol=1e-8, atol=0)
    assert float(m.residual.max()) < 1e-8


def test_rescaled_head_of_normalized_network_follows_the_general_rule():
    net = _mlp("bn")
    m = A.scale_dynamics(net, _x(), ALPHAS)
    p = A.predicted_scale_dynamics(ALPHAS, [True, True, True, False])
    # output gradient of normalized layer k is alpha_head / alpha_k (tolerance as above)
    for q in ("input", "output_grad", "weight_grad"):
        torch.testing.assert_close(getattr(m, q), getattr(p, q), rtol=1e-8, atol=0)
    assert math.isclose(float(m.output_grad[0]), ALPHAS[3] / ALPHAS[0], rel_tol=1e-8)


def test_batch_norm_in_eval_mode_is_not_scale_invariant():
    # Fresh running statistics (mean 0, var 1): in eval mode BN is a fixed affine map, so the
    # network scales like a plain one, as the measurement in eval mode must show.
    net = _mlp("bn")
    m = A.scale_dynamics(net, _x(), ALPHAS, mode="eval")
    p = A.predicted_scale_dynamics(ALPHAS, [False] * 4)
    torch.testing.assert_close(m.weight_grad, p.weight_grad, rtol=1e-6, atol=0)
    assert m.mode == "eval"


def test_scale_dynamics_with_cross_entropy_holds_for_normalized_layers_when_output_is_unchanged():
    net = _mlp("bn")
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(3))
    m = A.scale_dynamics(net, _x(), ALPHAS[:3] + [1.0], loss_fn=lambda out: F.cross_entropy(out, y))
    torch.testing.assert_close(m.weight_grad[:3], 1.0 / torch.tensor(ALPHAS[:3], dtype=DT),
                               rtol=1e-8, atol=0)


def test_scale_dynamics_leaves_model_exactly_as_found():
    net = _mlp("bn").eval()
    net.head.weight.grad = torch.ones_like(net.head.weight)
    state = _state(net)
    A.scale_dynamics(net, _x(), ALPHAS, mode="train")
    _assert_same_state(net, state)


@pytest.mark.parametrize("start_in_eval", [False, True])
def test_scale_dynamics_restores_model_when_it_raises(start_in_eval):
    net = _mlp("bn").train(not start_in_eval)
    hooks_before = [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                    for m in net.modules()]
    state = _state(net)
    with pytest.raises(ValueError, match="output_grad has shape"):
        A.scale_dynamics(net, _x(), ALPHAS, output_grad=torch.ones(2, 2, dtype=DT), mode="train")
    _assert_same_state(net, state)
    assert all(m.training == (not start_in_eval) for m in net.modules())
    assert hooks_before == [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                            for m in net.modules()]


def test_scale_dynamics_rejects_bad_arguments():
    net = _mlp("bn")
    with pytest.raises(ValueError, match="alphas has 3 entries but there are 4 layers"):
        A.scale_dynamics(net, _x(), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="positive"):
        A.scale_dynamics(net, _x(), [1.0, -2.0, 3.0, 1.0])
    with pytest.raises(ValueError, match="'nope' is not a module"):
        A.scale_dynamics(net, _x(), [1.0], layers=["nope"])
    with pytest.raises(ValueError, match="mode must be"):
        A.scale_dynamics(net, _x(), ALPHAS, mode="inference")
    with pytest.raises(TypeError, match="nn.Module"):
        A.scale_dynamics("net", _x(), ALPHAS)
    wn = MLP(10, 3, width=8, depth=1, norm="wn").to(DT)
    with pytest.raises(ValueError, match="parametrized weight"):
        A.scale_dynamics(wn, _x(), [2.0], layers=["layers.0.0"])
