"""normlib.linear against closed forms."""

import math

import pytest
import torch

from normlib import linear as L

f64 = torch.float64


@pytest.mark.parametrize("d,m", [(1, 0.5), (5, 1.0), (20, 2.0), (64, 0.3)])
def test_mean_shift_lambda_max_equals_top_eigenvalue_of_second_moment(d, m):
    evals = torch.linalg.eigvalsh(L.mean_shift_second_moment(d, m))
    assert math.isclose(float(evals[-1]), L.mean_shift_lambda_max(d, m), rel_tol=1e-12)
    # every direction orthogonal to 1 has eigenvalue exactly 1
    assert torch.allclose(evals[:-1], torch.ones(d - 1, dtype=f64), atol=1e-10)


def test_sampled_mean_shift_second_moment_approaches_formula():
    g = torch.Generator().manual_seed(0)
    d, m, n = 10, 1.5, 200_000
    x = m + torch.randn(n, d, generator=g, dtype=f64)
    lam = float(torch.linalg.eigvalsh(L.second_moment(x))[-1])
    # relative sampling error of a second moment with n = 2e5 is ~ 1e-2 at most
    assert abs(lam / L.mean_shift_lambda_max(d, m) - 1) < 1e-2


def _problem(seed=0, n=200, d=3, shift=2.0):
    g = torch.Generator().manual_seed(seed)
    x = shift + torch.randn(n, d, generator=g, dtype=f64) * torch.tensor([1.0, 3.0, 0.5], dtype=f64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=f64) + 0.1 * torch.randn(n, generator=g, dtype=f64)
    return L.LeastSquares(x, y)


def test_least_squares_hessian_equals_autograd_hessian():
    p = _problem()
    w = torch.randn(p.dim, dtype=f64)
    h = torch.autograd.functional.hessian(p.loss, w)
    assert torch.allclose(h, p.hessian, atol=1e-10)
    g = torch.autograd.functional.jacobian(p.loss, w)
    assert torch.allclose(g, p.grad(w), atol=1e-10)


def test_logistic_hessian_equals_autograd_hessian_and_quarter_second_moment_at_zero():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 4, generator=g, dtype=f64)
    y = (x[:, 0] > 0).to(f64)
    p = L.LogisticRegression(x, y)
    w = 0.3 * torch.randn(p.dim, generator=g, dtype=f64)
    assert torch.allclose(torch.autograd.functional.hessian(p.loss, w), p.hessian(w), atol=1e-10)
    assert torch.allclose(torch.autograd.functional.jacobian(p.loss, w), p.grad(w), atol=1e-10)
    zero = torch.zeros(p.dim, dtype=f64)
    assert torch.allclose(p.hessian(zero), L.second_moment(p.x) / 4, atol=1e-12)


@pytest.mark.parametrize("factor,converges", [(0.5, True), (0.99, True), (1.01, False), (1.5, False)])
def test_gradient_descent_converges_iff_step_below_two_over_lambda_max(factor, converges):
    p = _problem()
    lr = factor * 2.0 / p.lambda_max
    steps = L.steps_to_converge(p, lr, tol=1e-8, max_steps=200_000)
    assert (steps is not None) == converges


def test_error_contracts_by_one_minus_eta_lambda_along_each_eigenvector():
    p = _problem()
    evals, evecs = torch.linalg.eigh(p.hessian)
    lr = 1.7 / float(evals[-1])
    for lam, v in zip(evals, evecs.T):
        w0 = p.solution + v  # error exactly along one eigenvector
        path = L.gradient_descent(p, lr, steps=5, w0=w0)
        err = (path - p.solution) @ v
        ratios = err[1:] / err[:-1]
        assert torch.allclose(ratios, (1 - lr * lam).expand(5), rtol=1e-8, atol=0)
        # and the error stays on that eigenvector
        resid = (path - p.solution) - err[:, None] * v
        assert float(resid.abs().max()) < 1e-8 * float(err.abs().max())


def test_step_one_over_lambda_max_removes_top_direction_in_one_step():
    p = _problem()
    evals, evecs = torch.linalg.eigh(p.hessian)
    eta, _ = L.lr_thresholds(p.hessian)
    path = L.gradient_descent(p, eta, steps=1, w0=p.solution + evecs[:, -1])
    assert float(((path[1] - p.solution) @ evecs[:, -1]).abs()) < 1e-10


def test_standardizing_inputs_lowers_condition_number_and_steps():
    p_raw = _problem(shift=3.0)
    xs = L.fit_input_transform(p_raw.x[:, :-1], "standardize")(p_raw.x[:, :-1])
    p_std = L.LeastSquares(xs, p_raw.y)
    assert p_std.condition_number < p_raw.condition_number / 10
    s_raw = L.steps_to_converge(p_raw, 1.0 / p_raw.lambda_max, tol=1e-6)
    s_std = L.steps_to_converge(p_std, 1.0 / p_std.lambda_max, tol=1e-6)
    assert s_std < s_raw


@pytest.mark.parametrize("kind", ["pca", "zca"])
def test_whitened_inputs_have_identity_covariance(kind):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 4, generator=g, dtype=f64)
    x = torch.randn(1000, 4, generator=g, dtype=f64) @ a + 5
    z = L.fit_input_transform(x, kind, eps=0)(x)
    assert torch.allclose(z.mean(0), torch.zeros(4, dtype=f64), atol=1e-10)
    assert torch.allclose(z.T @ z / len(z), torch.eye(4, dtype=f64), atol=1e-8)


def test_zca_is_symmetric_and_pca_is_rotation_of_zca():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 3, generator=g, dtype=f64) @ torch.randn(3, 3, generator=g, dtype=f64)
    zca, pca = L.fit_input_transform(x, "zca"), L.fit_input_transform(x, "pca")
    assert torch.allclose(zca.matrix, zca.matrix.T, atol=1e-10)
    rot = pca.matrix @ torch.linalg.inv(zca.matrix)
    assert torch.allclose(rot @ rot.T, torch.eye(3, dtype=f64), atol=1e-8)


def test_standardize_gives_zero_mean_unit_variance_columns():
    x = torch.randn(300, 5, dtype=f64) * torch.arange(1, 6, dtype=f64) + 7
    z = L.fit_input_transform(x, "standardize", eps=0)(x)
    assert torch.allclose(z.mean(0), torch.zeros(5, dtype=f64), atol=1e-10)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(5, dtype=f64), atol=1e-10)


def test_knn_matches_bruteforce_vote():
    g = torch.Generator().manual_seed(4)
    xtr, ytr = torch.randn(50, 2, generator=g), torch.randint(0, 3, (50,), generator=g)
    xq = torch.randn(7, 2, generator=g)
    pred = L.knn_predict(xtr, ytr, xq, k=1)
    nearest = ((xq[:, None] - xtr[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(pred, ytr[nearest])


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="unknown input transform"):
        L.fit_input_transform(x, "whiten")
    with pytest.raises(ValueError, match=r"shape \(N, d\)"):
        L.fit_input_transform(torch.randn(10), "center")
    with pytest.raises(TypeError, match="floating-point"):
        L.fit_input_transform(torch.ones(3, 2, dtype=torch.int64), "center")
    with pytest.raises(ValueError, match="lr must be a positive float"):
        L.gradient_descent(_problem(), -1.0, 3)
    with pytest.raises(ValueError, match="k must be"):
        L.knn_predict(x, torch.zeros(10, dtype=torch.long), x, k=11)
