"""Tests of normlib.hessian.conditioning.

Closed-form Hessians of quadratic, linear and logistic regression, learning-rate thresholds,
gradient descent on a copy of a model, per-layer second moments.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hessian_problems import (
    DT,
    Quadratic,
    assert_unchanged,
    batch,
    bn_net,
    plain_net,
    quadratic_loss,
    snapshot,
    spd_matrix,
)
from torch import nn

from normlib.hessian import (
    HessianOperator,
    condition_number,
    hessian_matrix,
    layer_second_moments,
    learning_rate_thresholds,
    run_sgd,
    top_eigenpairs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quadratic_hessian_is_its_matrix_and_gives_exact_spectral_quantities():
    lam = torch.logspace(-1, 2, 30, dtype=DT)  # kappa = 1000
    a = spd_matrix(lam)
    model = Quadratic(30)
    op = HessianOperator(model, quadratic_loss, (torch.zeros(1), a), mode="eval")
    assert torch.allclose(hessian_matrix(op), a, rtol=0, atol=1e-12)
    eig = top_eigenpairs(op, k=3)
    assert torch.allclose(eig.eigenvalues, lam.flip(0)[:3], rtol=1e-10)
    assert math.isclose(condition_number(op), 1000.0, rel_tol=1e-8)
    assert math.isclose(condition_number(lam), 1000.0, rel_tol=1e-12)
    thr = learning_rate_thresholds(eig)
    assert math.isclose(thr.optimal, 1 / 100, rel_tol=1e-10)
    assert math.isclose(thr.divergent, 2 / 100, rel_tol=1e-10)


def test_linear_regression_hessian_is_kronecker_of_input_second_moment():
    n, d, c = 50, 6, 3
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=g, dtype=DT) + 1.0
    y = torch.randn(n, c, generator=g, dtype=DT)
    model = nn.Linear(d, c).to(DT)
    h = hessian_matrix(HessianOperator(model, nn.MSELoss(), (x, y), mode="eval"))
    # MSE averages over n*c entries: H = (2/c) E[x~ x~^T] (x) I_c for x~ = (x, 1), with the
    # parameters ordered (W row-major, b); build it blockwise in that order.
    xt = torch.cat([x, torch.ones(n, 1, dtype=DT)], dim=1)
    m2 = xt.T @ xt / n * (2.0 / c)
    eye = torch.eye(c, dtype=DT)
    expected = torch.zeros(c * (d + 1), c * (d + 1), dtype=DT)
    expected[: c * d, : c * d] = torch.kron(eye, m2[:d, :d])
    expected[: c * d, c * d:] = torch.kron(eye, m2[:d, d:])
    expected[c * d:, : c * d] = expected[: c * d, c * d:].T
    expected[c * d:, c * d:] = eye * m2[d, d]
    assert torch.allclose(h, expected, rtol=0, atol=1e-12)
    # Each eigenvalue of (2/c) E[x~ x~^T] appears once per output.
    ev_h = torch.linalg.eigvalsh(h)
    ev_m = torch.linalg.eigvalsh(m2).repeat_interleave(c)
    assert torch.allclose(ev_h, ev_m, rtol=1e-10)


def test_logistic_regression_hessian_is_weighted_second_moment():
    n, d = 60, 4
    g = torch.Generator().manual_seed(4)
    x = torch.randn(n, d, generator=g, dtype=DT)
    y = (torch.rand(n, 1, generator=g) < 0.5).to(DT)
    model = nn.Linear(d, 1).to(DT)
    h = hessian_matrix(HessianOperator(model, nn.BCEWithLogitsLoss(), (x, y), mode="eval"))
    xt = torch.cat([x, torch.ones(n, 1, dtype=DT)], dim=1)
    p = torch.sigmoid(model(x)).detach().squeeze(1)
    expected = (xt * (p * (1 - p))[:, None]).T @ xt / n
    assert torch.allclose(h, expected, rtol=0, atol=1e-13)


def test_gradient_descent_on_a_quadratic_converges_below_and_diverges_above_two_over_lambda():
    lam = torch.tensor([0.5, 2.0, 8.0], dtype=DT)
    a = spd_matrix(lam, seed=2)
    thr = learning_rate_thresholds(top_eigenpairs(a, k=1))

    def final_error(lr):
        theta = torch.ones(3, dtype=DT)
        for _ in range(200):
            theta = theta - lr * (a @ theta)
        return float(theta.norm())

    # Top-direction factor |1 - eta lambda_max|: 0.9 at 0.95 * 2/lambda, 1.1 at 1.05 * 2/lambda.
    assert final_error(0.95 * thr.divergent) < 1e-6
    assert final_error(1.05 * thr.divergent) > 1e6
    # Along the top eigenvector the optimal step removes the error in one step.
    u = top_eigenpairs(a, k=1).eigenvectors[0]
    assert float((u - thr.optimal * (a @ u)).norm()) < 1e-12


def test_run_sgd_follows_the_closed_form_on_a_quadratic_and_flags_divergence():
    lam = torch.tensor([0.5, 2.0, 8.0], dtype=DT)
    a = spd_matrix(lam, seed=12)
    model = Quadratic(3)
    before = model.theta.detach().clone()
    e0 = model.theta.detach()
    # Loss along the eigenbasis: 0.5 sum_i lam_i (1 - eta lam_i)^(2t) c_i^2 with c = Q^T e0.
    ev, q = torch.linalg.eigh(a)
    c = q.T @ e0
    lr = 0.2
    run = run_sgd(model, quadratic_loss, (torch.zeros(1), a), lr=lr, steps=30)
    t = torch.arange(31, dtype=DT)[:, None]
    expected = 0.5 * (ev * (1 - lr * ev) ** (2 * t) * c**2).sum(1)
    assert torch.allclose(run.losses, expected, rtol=1e-10, atol=1e-14)
    assert not run.diverged
    assert torch.equal(model.theta.detach(), before)  # the original is untouched
    blown = run_sgd(model, quadratic_loss, (torch.zeros(1), a), lr=1.1 * 2 / 8.0, steps=2000)
    assert blown.diverged and len(blown.losses) < 2001


def test_run_sgd_with_minibatches_is_reproducible_and_reaches_full_data_loss():
    net = plain_net()
    x, y = batch(64)
    a = run_sgd(net, nn.CrossEntropyLoss(), (x, y), lr=0.1, steps=20, batch_size=16, seed=3)
    b = run_sgd(net, nn.CrossEntropyLoss(), (x, y), lr=0.1, steps=20, batch_size=16, seed=3)
    assert torch.equal(a.losses, b.losses)
    full = F.cross_entropy(a.model(x), y)
    assert math.isclose(float(a.losses[-1]), float(full.detach()), rel_tol=1e-12)
    assert float(a.losses[-1]) < float(a.losses[0])
    with pytest.raises(ValueError, match="lr must be a positive"):
        run_sgd(net, nn.CrossEntropyLoss(), (x, y), lr=0.0, steps=1)


def test_layer_second_moments_equal_a_manual_forward_and_backward_in_train_mode():
    import copy

    net = bn_net().eval()
    x, y = batch()
    before = snapshot(net)
    moments = layer_second_moments(net, nn.CrossEntropyLoss(), (x, y), mode="train")
    assert_unchanged(net, before)
    assert all(not m._forward_hooks for m in net.modules())
    # Reference: the same pass by hand, batch statistics, retained intermediate gradients.
    ref = copy.deepcopy(net).train()
    h0 = ref[0](x)
    a2 = ref[2](ref[1](h0))
    h3 = ref[3](a2)
    a4 = ref[4](h3)
    h5 = ref[5](a4)
    loss = F.cross_entropy(h5, y)
    grads = torch.autograd.grad(loss, [h0, h3, h5])
    n = len(x)
    inputs = [x, a2, a4]
    assert [m.name for m in moments] == ["0", "3", "5"]
    for m, inp, g in zip(moments, inputs, grads):
        g = g * n  # per-sample loss gradients
        assert torch.allclose(m.input_moment, inp.T @ inp / n, rtol=0, atol=1e-13)
        assert torch.allclose(m.grad_moment, g.T @ g / n, rtol=0, atol=1e-13)
    assert math.isclose(moments[0].input_scale, float((x**2).mean()), rel_tol=1e-12)
    ev = torch.linalg.eigvalsh(moments[1].input_moment)
    assert math.isclose(moments[1].input_condition(), float(ev[-1] / ev[0]), rel_tol=1e-10)


def test_layer_second_moments_of_orthogonal_linear_layers_keep_white_inputs_white():
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(16, 16, bias=False) for _ in range(4)]).to(DT)
    for layer in net:
        nn.init.orthogonal_(layer.weight)
    z = torch.randn(256, 16, dtype=DT)
    # Exactly white inputs: E[x x^T] = I.
    x = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / 256)).T
    moments = layer_second_moments(net, lambda out, y: 0.5 * ((out - y) ** 2).sum(1).mean(),
                                   (x, torch.zeros(256, 16, dtype=DT)), mode="eval")
    for m in moments:
        assert torch.allclose(m.input_moment, torch.eye(16, dtype=DT), atol=1e-10)
        assert math.isclose(m.input_condition(), 1.0, rel_tol=1e-8)
