"""Tests of normlib.hessian against exact Hessians and closed forms.

Oracles: ``torch.func.hessian`` (forward-over-reverse differentiation, a different path from the
operator's reverse-over-reverse products) of an explicit functional forward pass written here,
and closed-form Hessians of quadratic, linear and logistic regression. All in float64 on models
with a few hundred parameters unless stated.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlib.hessian import (
    ConvergenceWarning,
    EigenResult,
    HessianOperator,
    condition_number,
    hessian_matrix,
    hessian_trace,
    lanczos,
    layer_second_moments,
    learning_rate_thresholds,
    preserved_model_state,
    run_sgd,
    spectral_density,
    top_eigenpairs,
)

DT = torch.float64
# torch.func.hessian (the oracle) goes through a deprecated torch.jit.script internally.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The products here are tiny; on a busy 2-core machine extra threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------
# Fixtures: a small BN network and an independent functional forward pass for it
# ------------------------------------------------------------------------------------------


def bn_net(seed: int = 0) -> nn.Sequential:
    """Linear(5,12) -> BN -> tanh -> Linear(12,12) -> tanh -> Linear(12,3): 291 parameters."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(5, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(),
        nn.Linear(12, 3),
    ).to(DT)
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.normal_(0.0, 0.3)
        net[1].running_mean.normal_(0.0, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def plain_net(seed: int = 0) -> nn.Sequential:
    """Linear(5,12) -> tanh -> Linear(12,12) -> tanh -> Linear(12,3): 267 parameters."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3)
    ).to(DT)


def batch(n: int = 40, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=DT) * 1.5 + 0.3
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def oracle_loss_bn(theta, net, x, y, training: bool):
    """The BN network's loss written with explicit formulas (no nn.Module, no F.batch_norm)."""
    sizes = [p.numel() for p in net.parameters()]
    shapes = [p.shape for p in net.parameters()]
    w0, b0, gamma, beta, w3, b3, w5, b5 = [
        c.view(s) for c, s in zip(theta.split(sizes), shapes)
    ]
    h = x @ w0.T + b0
    eps = net[1].eps
    if training:
        mean, var = h.mean(0), ((h - h.mean(0)) ** 2).mean(0)  # biased batch variance
    else:
        mean, var = net[1].running_mean, net[1].running_var
    h = (h - mean) / torch.sqrt(var + eps) * gamma + beta
    h = torch.tanh(torch.tanh(h) @ w3.T + b3)
    logits = h @ w5.T + b5
    return -torch.log_softmax(logits, dim=1)[torch.arange(len(y)), y].mean()


def oracle_loss_plain(theta, net, x, y):
    sizes = [p.numel() for p in net.parameters()]
    shapes = [p.shape for p in net.parameters()]
    w0, b0, w2, b2, w4, b4 = [c.view(s) for c, s in zip(theta.split(sizes), shapes)]
    h = torch.tanh(torch.tanh(x @ w0.T + b0) @ w2.T + b2)
    return F.cross_entropy(h @ w4.T + b4, y)


def exact_bn(net, x, y, training):
    return torch.func.hessian(lambda t: oracle_loss_bn(t, net, x, y, training))(flat(net))


@pytest.fixture(scope="module")
def bn_case():
    net = bn_net()
    x, y = batch()
    op = HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode="train")
    return net, x, y, op, exact_bn(net, x, y, training=True)


# ------------------------------------------------------------------------------------------
# The operator and the exact Hessian
# ------------------------------------------------------------------------------------------


def test_hessian_matrix_equals_torch_func_hessian_in_train_mode(bn_case):
    _, _, _, op, exact = bn_case
    h = hessian_matrix(op)
    assert op.num_params == 291
    # float64, different differentiation paths: agreement to rounding (1e-10 of the scale).
    assert torch.allclose(h, exact, rtol=0, atol=1e-10 * exact.abs().max())
    assert torch.allclose(h, h.T, rtol=0, atol=1e-12 * exact.abs().max())


def test_eval_mode_hessian_uses_running_statistics_and_differs_from_train_mode():
    net = bn_net()
    x, y = batch()
    op = HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode="eval")
    h_eval = hessian_matrix(op)
    exact_eval = exact_bn(net, x, y, training=False)
    exact_train = exact_bn(net, x, y, training=True)
    scale = exact_eval.abs().max()
    assert torch.allclose(h_eval, exact_eval, rtol=0, atol=1e-10 * scale)
    # The two modes give genuinely different matrices (more than 10% of the scale apart).
    assert (exact_eval - exact_train).abs().max() > 0.1 * scale


def test_matvec_of_a_block_equals_rowwise_products(bn_case):
    _, _, _, op, exact = bn_case
    v = torch.randn(3, op.num_params, dtype=DT, generator=torch.Generator().manual_seed(0))
    hv = op.matvec(v)
    assert hv.shape == (3, op.num_params)
    assert torch.allclose(hv, v @ exact, rtol=0, atol=1e-10 * exact.abs().max())
    assert torch.allclose(op @ v[0], hv[0], rtol=0, atol=1e-13 * exact.abs().max())


def test_operator_gradient_and_loss_equal_direct_autograd():
    net = plain_net()
    x, y = batch()
    op = HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode="train")
    theta = flat(net).requires_grad_(True)
    loss = oracle_loss_plain(theta, net, x, y)
    (grad,) = torch.autograd.grad(loss, theta)
    assert abs(op.loss - float(loss.detach())) < 1e-12
    assert torch.allclose(op.gradient(), grad, rtol=0, atol=1e-12)
    parts = op.unflatten(op.parameters_vector())
    assert list(parts) == [n for n, _ in net.named_parameters()]
    assert all(torch.equal(parts[n], p) for n, p in net.named_parameters())


def test_iterable_of_batches_weights_each_batch_by_its_size():
    net = plain_net()
    x, y = batch(40)
    full = hessian_matrix(HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode="eval"))
    cuts = [0, 7, 20, 40]  # unequal sizes 7, 13, 20: an unweighted mean of batches would differ
    pieces = [(x[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:])]
    op = HessianOperator(net, nn.CrossEntropyLoss(), pieces, mode="eval")
    streamed = hessian_matrix(op)
    assert op.num_samples == 40
    assert torch.allclose(streamed, full, rtol=0, atol=1e-12 * full.abs().max())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    op_loader = HessianOperator(net, nn.CrossEntropyLoss(), loader, mode="eval")
    v = torch.randn(op.num_params, dtype=DT)
    assert torch.allclose(op_loader.matvec(v), full @ v, rtol=0, atol=1e-12 * full.abs().max())


def test_hessian_of_a_loss_linear_in_the_parameters_is_zero():
    model = nn.Linear(3, 1).to(DT)
    x = torch.randn(6, 3, dtype=DT)
    op = HessianOperator(model, lambda out, y: (out * y).mean(), (x, torch.ones(6, 1, dtype=DT)),
                         mode="eval")
    assert torch.equal(hessian_matrix(op), torch.zeros(4, 4, dtype=DT))


# ------------------------------------------------------------------------------------------
# Closed forms
# ------------------------------------------------------------------------------------------


class Quadratic(nn.Module):
    """f(theta) = theta; with loss 0.5 theta^T A theta the Hessian is exactly A."""

    def __init__(self, n: int):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(n, dtype=DT))

    def forward(self, x):
        return self.theta


def quadratic_loss(theta, a):
    return 0.5 * theta @ a @ theta


def spd_matrix(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    n = eigenvalues.numel()
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=DT, generator=torch.Generator().manual_seed(seed)))
    return (q * eigenvalues) @ q.T


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


# ------------------------------------------------------------------------------------------
# Eigenpairs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["largest", "smallest", "magnitude"])
def test_lanczos_eigenpairs_match_exact_hessian_to_1e_6_relative(bn_case, which):
    _, _, _, op, exact = bn_case
    ev = torch.linalg.eigvalsh(exact)
    expected = {
        "largest": ev.flip(0)[:5],
        "smallest": ev[:5],
        "magnitude": ev[ev.abs().argsort(descending=True)][:5],
    }[which]
    res = top_eigenpairs(op, k=5, which=which, tol=1e-8)
    assert res.converged.all()
    assert res.num_matvecs < op.num_params  # it did not need the whole space
    assert torch.allclose(res.eigenvalues, expected, rtol=1e-6, atol=0)
    # Eigenvectors: unit norm, residual against the exact matrix within the reported bound.
    assert torch.allclose(res.eigenvectors.norm(dim=1), torch.ones(5, dtype=DT), atol=1e-10)
    true_res = (res.eigenvectors @ exact - res.eigenvalues[:, None] * res.eigenvectors).norm(dim=1)
    assert (true_res <= 10 * res.residuals + 1e-10).all()


def test_power_iteration_matches_exact_top_eigenvalues_to_1e_6_relative(bn_case):
    _, _, _, op, exact = bn_case
    ev = torch.linalg.eigvalsh(exact)
    expected = ev[ev.abs().argsort(descending=True)][:2]
    res = top_eigenpairs(op, k=2, method="power", tol=1e-7, max_iters=3000)
    assert res.converged.all()
    assert torch.allclose(res.eigenvalues, expected, rtol=1e-6, atol=0)


def test_power_iteration_finds_repeated_eigenvalues_with_deflation():
    a = spd_matrix(torch.tensor([1.0, 2.0, 5.0, 5.0, 5.0], dtype=DT), seed=5)
    res = top_eigenpairs(a, k=3, method="power", tol=1e-10)
    assert torch.allclose(res.eigenvalues, torch.full((3,), 5.0, dtype=DT), rtol=1e-9)
    gram = res.eigenvectors @ res.eigenvectors.T
    assert torch.allclose(gram, torch.eye(3, dtype=DT), atol=1e-8)


def test_lanczos_basis_is_orthonormal_and_tridiagonalizes_the_matrix():
    a = spd_matrix(torch.linspace(-3, 7, 40, dtype=DT), seed=6)
    res = lanczos(a, 25)
    q = res.basis
    assert torch.allclose(q @ q.T, torch.eye(25, dtype=DT), rtol=0, atol=1e-12)
    assert torch.allclose(q @ a @ q.T, res.tridiagonal(), rtol=0, atol=1e-11)


def test_lanczos_restarts_after_an_invariant_subspace_and_recovers_multiplicities():
    # 3 distinct eigenvalues with multiplicities 4, 3, 1: the Krylov space of one vector has
    # dimension 3, so 8 steps need two restarts to see the whole spectrum.
    lam = torch.tensor([1.0] * 4 + [2.0] * 3 + [6.0], dtype=DT)
    a = spd_matrix(lam, seed=7)
    res = lanczos(a, 8)
    assert (res.betas == 0).sum() >= 2
    assert torch.allclose(res.ritz()[0], lam, atol=1e-12)


def test_lanczos_warns_when_max_iters_is_too_small():
    a = spd_matrix(torch.linspace(1, 2, 200, dtype=DT), seed=8)  # clustered: slow convergence
    with pytest.warns(ConvergenceWarning):
        res = top_eigenpairs(a, k=1, tol=1e-12, max_iters=5)
    assert not res.converged.all()
    assert res.num_matvecs == 5


def test_float32_top_eigenvalue_agrees_with_float64_exact():
    net = bn_net().float()
    x, y = batch()
    op = HessianOperator(net, nn.CrossEntropyLoss(), (x.float(), y), mode="train")
    assert op.dtype == torch.float32
    res = top_eigenpairs(op, k=1, tol=1e-4)
    exact = torch.linalg.eigvalsh(exact_bn(bn_net(), x, y, training=True))[-1]
    # float32 products carry relative errors ~1e-6 of the largest entries.
    assert math.isclose(float(res.eigenvalues[0]), float(exact), rel_tol=1e-4)


# ------------------------------------------------------------------------------------------
# Trace
# ------------------------------------------------------------------------------------------


def test_hutchinson_trace_within_three_standard_errors_for_every_seed(bn_case):
    _, _, _, op, exact = bn_case
    true = float(exact.trace())
    # Rademacher variance per probe: 2 (||H||_F^2 - sum_i H_ii^2).
    sd_theory = math.sqrt(2 * (float((exact**2).sum()) - float((exact.diagonal() ** 2).sum())))
    zs = []
    for seed in range(12):
        est = hessian_trace(op, num_probes=40, seed=seed)
        z = (est.value - true) / est.stderr
        assert abs(z) < 3.0, (seed, est.value, true, est.stderr)
        zs.append(z)
        # The reported error is the real one: within a factor 2 of the theoretical one.
        assert 0.5 < est.stderr * math.sqrt(40) / sd_theory < 2.0
    # The z-scores have unit variance (chi-square with 12 dof: mean z^2 in [0.3, 2.2] w.p. >0.99).
    assert 0.3 < sum(z * z for z in zs) / len(zs) < 2.2
    # The estimate is not trivially exact (the check above is not vacuous).
    assert max(abs(z) for z in zs) > 0.3


def test_hutch_plus_plus_is_unbiased_and_more_accurate_with_outliers():
    lam = torch.cat([torch.tensor([500.0, 300.0, 200.0], dtype=DT), torch.rand(57, dtype=DT)])
    a = spd_matrix(lam, seed=9)
    true = float(lam.sum())
    for seed in range(8):
        plain = hessian_trace(a, num_probes=30, seed=seed)
        plus = hessian_trace(a, num_probes=30, method="hutch++", seed=seed)
        assert plus.num_matvecs == plain.num_matvecs == 30
        assert abs(plus.value - true) < 3 * plus.stderr + 1e-9
        assert plus.stderr < 0.05 * plain.stderr


def test_hutch_plus_plus_is_exact_for_low_rank_matrices():
    u = torch.randn(50, 4, dtype=DT, generator=torch.Generator().manual_seed(10))
    a = u @ u.T
    est = hessian_trace(a, num_probes=15, method="hutch++", seed=0)
    assert math.isclose(est.value, float(a.trace()), rel_tol=1e-10)
    assert est.stderr < 1e-10 * float(a.trace())


# ------------------------------------------------------------------------------------------
# Stochastic Lanczos quadrature
# ------------------------------------------------------------------------------------------


def test_lanczos_quadrature_reproduces_v_h_power_k_v(bn_case):
    _, _, _, op, exact = bn_case
    v = torch.randn(op.num_params, dtype=DT, generator=torch.Generator().manual_seed(11))
    m = 6
    res = lanczos(op, m, start=v)
    nodes, weights = res.quadrature()
    assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-12)
    hk_v = v.clone()
    for k in range(2 * m):  # Gauss quadrature with m nodes is exact up to degree 2m - 1
        quad = res.start_norm**2 * float((weights * nodes**k).sum())
        direct = float(v @ hk_v)
        assert math.isclose(quad, direct, rel_tol=1e-8), (k, quad, direct)
        hk_v = exact @ hk_v
    # Degree 2m is not exact in general: the test above is not vacuous.
    quad = res.start_norm**2 * float((weights * nodes ** (2 * m)).sum())
    assert not math.isclose(quad, float(v @ hk_v), rel_tol=1e-8)


def test_spectral_density_integrates_to_one_and_its_moments_estimate_the_trace(bn_case):
    _, _, _, op, exact = bn_case
    dens = spectral_density(op, num_iters=30, num_runs=3, seed=0)
    assert dens.nodes.shape == (3, 30)
    ev = torch.linalg.eigvalsh(exact)
    lo, hi = float(ev[0]) - 1, float(ev[-1]) + 1
    grid = torch.linspace(lo, hi, 20001, dtype=DT)
    sigma = (hi - lo) / 200
    mass = torch.trapezoid(dens.evaluate(grid, sigma), grid)
    assert math.isclose(float(mass), 1.0, rel_tol=1e-4)
    # Extreme Ritz values converge first: the SLQ support reaches the exact extremes.
    assert math.isclose(float(dens.nodes.max()), float(ev[-1]), rel_tol=1e-6)
    # P * first moment is a Hutchinson estimate with normalized Rademacher probes: exact for the
    # diagonal part, and within 4 of its standard deviations of the trace for 3 runs.
    est = dens.moment(1) * op.num_params
    sd = math.sqrt(2 * (float((exact**2).sum()) - float((exact.diagonal() ** 2).sum())) / 3)
    assert abs(est - float(exact.trace())) < 4 * sd


# ------------------------------------------------------------------------------------------
# The model is left exactly as found
# ------------------------------------------------------------------------------------------


def snapshot(model: nn.Module):
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "flags": {n: m.training for n, m in model.named_modules()},
        "grads": {n: (p.grad, None if p.grad is None else p.grad.clone())
                  for n, p in model.named_parameters()},
    }


def assert_unchanged(model: nn.Module, before) -> None:
    for n, p in model.named_parameters():
        assert torch.equal(p, before["params"][n]), n
        ref, value = before["grads"][n]
        assert p.grad is ref, n  # the same object (or None) ...
        if value is not None:
            assert torch.equal(p.grad, value), n  # ... with the same values
    for n, b in model.named_buffers():
        assert torch.equal(b, before["buffers"][n]), n
    assert {n: m.training for n, m in model.named_modules()} == before["flags"]


@pytest.mark.parametrize("momentum", [0.1, None])  # None: cumulative average, counts batches
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_tool_leaves_parameters_buffers_flags_and_grads_unchanged(momentum, mode):
    net = bn_net()
    net[1].momentum = momentum
    net.train()
    net[4].eval()  # mixed flags must come back exactly
    x, y = batch()
    net(x).sum().backward()  # .grad fields with values ...
    net[5].bias.grad = None  # ... and one None
    before = snapshot(net)
    assert int(before["buffers"]["1.num_batches_tracked"]) == 1
    op = HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode=mode)
    streamed = HessianOperator(net, nn.CrossEntropyLoss(), [(x[:20], y[:20]), (x[20:], y[20:])],
                               mode=mode)
    op.matvec(torch.randn(op.num_params, dtype=DT))
    streamed.matvec(torch.randn(op.num_params, dtype=DT))
    top_eigenpairs(op, k=2)
    top_eigenpairs(streamed, k=1, method="power", tol=1e-3)
    hessian_trace(op, num_probes=4)
    spectral_density(op, num_iters=5)
    condition_number(op)
    hessian_matrix(op)
    assert_unchanged(net, before)


class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_state_is_restored_when_the_forward_pass_raises_after_batchnorm_ran():
    net = bn_net()
    net.append(Exploding())  # BatchNorm runs (and would update its statistics), then it raises
    net.eval()
    x, y = batch()
    before = snapshot(net)
    with pytest.raises(RuntimeError, match="boom"):
        HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode="train")
    assert_unchanged(net, before)


def test_state_is_restored_when_the_loss_raises_during_a_streamed_product():
    net = bn_net().train()
    x, y = batch()
    calls = {"n": 0}

    def flaky_loss(out, target):
        calls["n"] += 1
        if calls["n"] > 2:  # succeeds while the operator is built, fails in matvec
            raise RuntimeError("loss failed")
        return F.cross_entropy(out, target)

    op = HessianOperator(net, flaky_loss, [(x[:20], y[:20]), (x[20:], y[20:])], mode="eval")
    before = snapshot(net)
    with pytest.raises(RuntimeError, match="loss failed"):
        op.matvec(torch.randn(op.num_params, dtype=DT))
    assert_unchanged(net, before)


def test_preserved_model_state_restores_buffers_updated_in_place():
    bn = nn.BatchNorm1d(4).eval()
    with pytest.raises(ValueError), preserved_model_state(bn):
        bn.train()
        bn(torch.randn(16, 4) * 3 + 2)
        raise ValueError
    assert not bn.training
    assert torch.equal(bn.running_mean, torch.zeros(4))
    assert int(bn.num_batches_tracked) == 0


# ------------------------------------------------------------------------------------------
# Per-layer second moments
# ------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors():
    net = plain_net()
    x, y = batch()
    ce = nn.CrossEntropyLoss()
    op = HessianOperator(net, ce, (x, y), mode="train")
    with pytest.raises(ValueError, match="k=268 is larger than the number of parameters 267"):
        top_eigenpairs(op, k=268)
    with pytest.raises(ValueError, match="k must be a positive int"):
        top_eigenpairs(op, k=0)
    with pytest.raises(ValueError, match="data contains no batches"):
        HessianOperator(net, ce, [], mode="train")
    with pytest.raises(ValueError, match="no samples"):
        HessianOperator(net, ce, (x[:0], y[:0]), mode="train")
    with pytest.raises(ValueError, match="must return a scalar"):
        HessianOperator(net, nn.CrossEntropyLoss(reduction="none"), (x, y), mode="train")
    with pytest.raises(TypeError, match="one-shot iterator"):
        HessianOperator(net, ce, iter([(x, y)]), mode="train")
    with pytest.raises(TypeError, match="mode"):
        HessianOperator(net, ce, (x, y))  # the mode is required
    with pytest.raises(ValueError, match="mode must be 'train'"):
        HessianOperator(net, ce, (x, y), mode="test")
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        HessianOperator(net, "ce", (x, y), mode="train")
    with pytest.raises(TypeError, match="pair"):
        HessianOperator(net, ce, [x, x, x], mode="train")
    frozen = plain_net().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters with requires_grad"):
        HessianOperator(frozen, ce, (x, y), mode="train")
    with pytest.raises(ValueError, match="max_params=100"):
        hessian_matrix(op, max_params=100)
    with pytest.raises(ValueError, match=r"shape \(267,\)"):
        op.matvec(torch.zeros(5, dtype=DT))
    with pytest.raises(ValueError, match="power iteration finds"):
        top_eigenpairs(op, method="power", which="largest")
    with pytest.raises(ValueError, match="num_probes"):
        hessian_trace(op, num_probes=1)
    with pytest.raises(ValueError, match="lambda_max must be positive"):
        learning_rate_thresholds(-1.0)
    with pytest.raises(ValueError, match="square"):
        top_eigenpairs(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="no nn.Linear layer"):
        layer_second_moments(nn.Sequential(nn.Tanh()), ce, (x, y), mode="train")
    with pytest.raises(ValueError, match="must return a scalar"):
        layer_second_moments(net, nn.CrossEntropyLoss(reduction="none"), (x, y), mode="eval")


def test_condition_number_is_infinite_for_indefinite_and_uses_rtol_for_singular_spectra():
    assert condition_number(torch.tensor([3.0, -1.0, 2.0])) == math.inf
    assert condition_number(torch.tensor([3.0, 1e-12, 1.5]), rtol=1e-8) == 2.0
    a = spd_matrix(torch.tensor([-2.0, 1.0, 4.0], dtype=DT))
    assert condition_number(a) == math.inf


def test_eigen_result_fields_have_documented_shapes(bn_case):
    _, _, _, op, _ = bn_case
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = top_eigenpairs(op, k=3)
    assert isinstance(res, EigenResult)
    assert res.eigenvalues.shape == (3,) and res.eigenvectors.shape == (3, op.num_params)
    assert (res.eigenvalues[:-1] >= res.eigenvalues[1:]).all()  # largest first


def test_progress_bars_are_drawn_on_request_and_absent_by_default_off_a_terminal(capsys):
    net = bn_net()
    x, y = batch()
    op = HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode="train")
    top_eigenpairs(op, k=1, tol=1e-3, progress=None)
    hessian_trace(op, num_probes=4, progress=None)
    assert capsys.readouterr().err == ""  # pytest's captured stderr is not a terminal
    top_eigenpairs(op, k=1, tol=1e-3, progress=True)
    hessian_trace(op, num_probes=4, progress=True)
    err = capsys.readouterr().err
    assert "Lanczos eigenpairs" in err and "trace probes" in err, err


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_top_eigenvalue_on_each_available_device_matches_the_float64_cpu_exact_value(device):
    # float32 on the device (what a GPU user runs), compared with the float64 exact Hessian.
    net = bn_net().float().to(device)
    x, y = batch()
    op = HessianOperator(net, nn.CrossEntropyLoss(), (x.float().to(device), y.to(device)), mode="train")
    res = top_eigenpairs(op, k=2, tol=1e-4)
    exact = torch.linalg.eigvalsh(exact_bn(bn_net(), x, y, training=True)).flip(0)[:2]
    assert torch.allclose(res.eigenvalues.double().cpu(), exact, rtol=1e-4), (res.eigenvalues, exact)
    trace = hessian_trace(op, num_probes=200, seed=0)
    exact_trace = float(torch.trace(exact_bn(bn_net(), x, y, training=True)))
    assert abs(trace.value - exact_trace) < 4 * trace.stderr, (trace.value, trace.stderr, exact_trace)
