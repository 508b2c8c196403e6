"""normlib.whitening against reference formulas written here, torch's BatchNorm and LayerNorm.

Tolerances: float64 throughout. Exact identities (``G (Sigma + eps I) G^T = I``,
agreement with a reference written with ``numpy.linalg.eigh``) use ``1e-9``:
the decompositions of ``d <= 8`` matrices with condition numbers below ~1e3 lose
a few digits. "Identity covariance up to eps" is checked against the exact
bound ``eps / lambda_min(Sigma)`` of ZCA's residual. Gradients are checked with
``torch.autograd.gradcheck`` (its float64 defaults, ``atol=1e-5, rtol=1e-3``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import normlib
from normlib import functional as NF
from normlib import whitening as W
from normlib.framework import BATCH, normalize

DT = torch.float64
EXACT = ("zca", "pca", "cholesky")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The problems here are tiny: on a loaded 2-core machine, waking a second thread for every
    small batched decomposition made the gradchecks ~10x slower than computing on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def correlated(d: int = 6, m: int = 200, seed: int = 0, shift: float = 3.0) -> torch.Tensor:
    """``(d, m)`` samples with a dense covariance of condition number ~10^2."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=DT) + 2 * torch.eye(d, dtype=DT)
    return mix @ torch.randn(d, m, generator=g, dtype=DT) + shift


def degenerate(eigenvalues=(1.0, 1.0, 1.0, 4.0, 4.0, 9.0), m: int = 40, seed: int = 0):
    """``(d, m)`` samples whose covariance is exactly ``Q diag(eigenvalues) Q^T`` (repeated ones)."""
    g = torch.Generator().manual_seed(seed)
    d = len(eigenvalues)
    basis = torch.cat([torch.ones(m, 1, dtype=DT), torch.randn(m, d, generator=g, dtype=DT)], 1)
    rows = torch.linalg.qr(basis)[0][:, 1:].T * m**0.5  # orthonormal, orthogonal to the mean
    rot = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))[0]
    return rot @ (torch.tensor(eigenvalues, dtype=DT).sqrt()[:, None] * rows) + 1.0


def reference_zca(x: np.ndarray, eps: float) -> np.ndarray:
    """ZCA whitening of the rows of ``x: (d, m)`` written with numpy."""
    xc = x - x.mean(1, keepdims=True)
    cov = xc @ xc.T / x.shape[1] + eps * np.eye(x.shape[0])
    lam, vec = np.linalg.eigh(cov)
    return vec @ np.diag(lam**-0.5) @ vec.T @ xc


# --------------------------------------------------------------------------- the whitening math


@pytest.mark.parametrize("method", EXACT)
def test_zca_pca_and_cholesky_outputs_have_identity_covariance_up_to_eps(method):
    x, eps = correlated(), 1e-5
    sigma = W.covariance(x)[1]
    y = W.whiten(x, method, eps=eps)
    cov_y = W.covariance(y)[1]
    bound = eps / float(torch.linalg.eigvalsh(sigma).min())
    assert float((cov_y - torch.eye(6, dtype=DT)).abs().max()) <= 1.01 * bound
    assert bound < 1e-3  # the data are well conditioned, so the check is tight
    # the output covariance is I - eps (Sigma + eps I)^{-1} conjugated by an orthogonal map
    shrunk = sigma @ torch.linalg.inv(sigma + eps * torch.eye(6, dtype=DT))
    assert torch.allclose(torch.linalg.eigvalsh(cov_y), torch.linalg.eigvalsh(shrunk), atol=1e-9)


@pytest.mark.parametrize("method", EXACT)
def test_whitening_matrix_satisfies_g_sigma_g_transpose_equals_identity(method):
    sigma, eps = W.covariance(correlated(seed=1))[1], 1e-3
    g = W.whitening_matrix(sigma, method, eps=eps)
    assert torch.allclose(g @ (sigma + eps * torch.eye(6, dtype=DT)) @ g.T, torch.eye(6, dtype=DT),
                          atol=1e-9)


def test_zca_equals_a_numpy_eigh_reference_and_is_symmetric():
    x, eps = correlated(seed=2), 1e-4
    y = W.whiten(x, "zca", eps=eps)
    assert np.allclose(y.numpy(), reference_zca(x.numpy(), eps), atol=1e-9)
    g = W.whitening_matrix(W.covariance(x)[1], "zca", eps=eps)
    assert torch.allclose(g, g.T, atol=1e-12)


def test_pca_rows_are_principal_components_ordered_by_variance():
    x = correlated(seed=3)
    sigma = W.covariance(x)[1]
    g = W.whitening_matrix(sigma, "pca", eps=1e-9)
    lam, vec = torch.linalg.eigh(sigma)
    # row i of G is +-v_i / sqrt(lambda_i), largest eigenvalue first
    for i, j in enumerate(range(5, -1, -1)):
        cos = torch.dot(g[i] / g[i].norm(), vec[:, j])
        assert abs(abs(float(cos)) - 1) < 1e-9
        assert abs(float(g[i].norm()) - float(lam[j]) ** -0.5) < 1e-6


def test_cholesky_whitening_matrix_is_lower_triangular():
    g = W.whitening_matrix(W.covariance(correlated(seed=4))[1], "cholesky")
    assert torch.equal(g, torch.tril(g))


def test_standardize_method_is_the_diagonal_special_case():
    x, eps = correlated(seed=5), 1e-5
    y = W.whiten(x, "standardize", eps=eps)
    xc = x - x.mean(1, keepdim=True)
    assert torch.allclose(y, xc / (xc.pow(2).mean(1, keepdim=True) + eps).sqrt(), atol=1e-12)


def test_iternorm_whitened_eigenvalues_increase_monotonically_in_t_towards_one():
    x = correlated(d=8, seed=6)
    previous = torch.zeros(8, dtype=DT)
    errors = []
    for t in range(1, 16):
        y = W.whiten(x, "iternorm", eps=1e-10, iterations=t)
        lam = torch.linalg.eigvalsh(W.covariance(y)[1])
        # Newton's iteration on the scalar sqrt(lambda) p_T rises monotonically to 1 per eigenvalue
        assert bool((lam >= previous - 1e-12).all()), t
        assert bool((lam <= 1 + 1e-9).all()), t
        previous = lam
        errors.append(W.whitening_error(y))
    assert all(a > b for a, b in zip(errors[:8], errors[1:9])), errors
    assert errors[0] > 0.3 and errors[-1] < 1e-8, errors


def test_iternorm_equals_zca_as_t_grows():
    x, eps = correlated(d=8, seed=7), 1e-5
    zca = W.whiten(x, "zca", eps=eps)
    # E||y_T - y_ZCA||^2 = sum_i (sqrt(lambda_i) p_T(lambda_i) - 1)^2 shrinks with every step
    gaps = [float((W.whiten(x, "iternorm", eps=eps, iterations=t) - zca).pow(2).sum(0).mean())
            for t in (2, 4, 8, 30)]
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3]
    assert gaps[3] < 1e-18, gaps
    # the coupled iteration stays put long after convergence (the plain one diverges here)
    assert float((W.whiten(x, "iternorm", eps=eps, iterations=100) - zca).abs().max()) < 1e-9


def test_zca_is_the_whitening_closest_to_its_input():
    x = correlated(seed=8, shift=0.0)
    x = x - x.mean(1, keepdim=True)
    sigma = W.covariance(x)[1]
    eps = 1e-12

    def distance(y):
        return float((y - x).pow(2).sum(0).mean())

    zca = W.whitening_matrix(sigma, "zca", eps=eps)
    d_zca = distance(zca @ x)
    # every whitening matrix is Q Sigma^{-1/2}; the minimum of E||Gx - x||^2 is
    # tr(Sigma) + d - 2 tr(Sigma^{1/2}) (Kessy et al., 2018)
    evals = torch.linalg.eigvalsh(sigma)
    assert abs(d_zca - float(evals.sum() + 6 - 2 * evals.sqrt().sum())) < 1e-8
    for method in ("pca", "cholesky"):
        assert distance(W.whitening_matrix(sigma, method, eps=eps) @ x) > d_zca + 1e-3
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        q = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=DT))[0]
        assert distance(q @ zca @ x) > d_zca


def hadamard_rows(d: int = 4, m: int = 8) -> torch.Tensor:
    """Rows 1..d of the m x m Hadamard matrix: mean 0 and covariance exactly I (so eigh
    returns exactly equal eigenvalues)."""
    h = torch.ones(1, 1, dtype=DT)
    while h.shape[0] < m:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h[1:d + 1]


def _weighted_sum(y):
    return (y * torch.linspace(-1, 1, y.numel(), dtype=DT).reshape(y.shape)).sum()


@pytest.mark.parametrize("method", W.WHITENING_METHODS)
@pytest.mark.parametrize("data", ["hadamard", "rotated"])
def test_gradients_stay_finite_with_repeated_eigenvalues(method, data):
    x = (hadamard_rows() if data == "hadamard" else degenerate()).requires_grad_()
    lam = torch.linalg.eigvalsh(W.covariance(x.detach())[1])
    assert float(lam[1] - lam[0]) < 1e-12
    (grad,) = torch.autograd.grad(_weighted_sum(W.whiten(x, method, eps=1e-5)), x)
    assert torch.isfinite(grad).all()


def test_autograd_through_plain_eigh_is_not_finite_at_exactly_repeated_eigenvalues():
    # Shows that the Hadamard input of the test above is a hard case, not an easy one.
    x = hadamard_rows().requires_grad_()
    sigma = W.covariance(x)[1] + 1e-5 * torch.eye(4, dtype=DT)
    lam, vec = torch.linalg.eigh(sigma)
    y = vec @ torch.diag(lam.rsqrt()) @ vec.T @ (x - x.mean(1, keepdim=True))
    (grad,) = torch.autograd.grad(_weighted_sum(y), x)
    assert not torch.isfinite(grad).all()


@pytest.mark.parametrize("method", ("zca", "cholesky", "iternorm", "standardize"))
def test_gradcheck_passes_at_repeated_eigenvalues_for_methods_that_are_functions_of_sigma(method):
    for x in (hadamard_rows(3, 8), degenerate(m=10, eigenvalues=(1.0, 1.0, 2.0, 2.0))):
        assert torch.autograd.gradcheck(lambda z: W.whiten(z, method, eps=1e-5), (x.requires_grad_(),))


@pytest.mark.parametrize("method", W.WHITENING_METHODS)
def test_gradcheck_of_whiten_with_groups(method):
    x = correlated(d=4, m=9, seed=9).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: W.whiten(z, method, group_size=2, eps=1e-4), (x,))


@pytest.mark.parametrize("method", ("zca", "pca"))
def test_eigen_backward_equals_torch_autograd_for_distinct_eigenvalues(method):
    x = correlated(d=5, m=30, seed=10).requires_grad_()
    weights = torch.randn(5, 30, generator=torch.Generator().manual_seed(1), dtype=DT)
    (ours,) = torch.autograd.grad((W.whiten(x, method, eps=1e-5) * weights).sum(), x)
    x2 = x.detach().clone().requires_grad_()
    xc = x2 - x2.mean(1, keepdim=True)  # plain operations only: autograd is the oracle
    sigma = xc @ xc.T / xc.shape[1] + 1e-5 * torch.eye(5, dtype=DT)
    lam, vec = torch.linalg.eigh(sigma)
    g = vec @ torch.diag(lam.rsqrt()) @ vec.T if method == "zca" else (vec * lam.rsqrt()).T.flip(0)
    y = g @ xc
    (oracle,) = torch.autograd.grad((y * weights).sum(), x2)
    assert torch.allclose(ours, oracle, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("used", [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)], ids=str)
def test_centered_covariance_backward_equals_autograd_of_the_plain_operations(used):
    """Its own backward (one product) against autograd through mean, subtraction and ``Xc Xc^T``,
    for every subset of its outputs that a caller may use; second derivatives too. The weights
    of the covariance are an expanded, non-symmetric tensor (a stride-0 incoming gradient)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 4, 9, generator=gen, dtype=DT, requires_grad=True)
    weights = [torch.randn((3, 4, 1), generator=gen, dtype=DT),
               torch.randn((3, 4, 9), generator=gen, dtype=DT),
               torch.randn((1, 4, 4), generator=gen, dtype=DT).expand(3, 4, 4)]

    def loss(outputs):
        return sum((outputs[i] * weights[i]).sum() for i in used)

    (ours,) = torch.autograd.grad(loss(W._centered_covariance(x)), x)
    mean = x.mean(-1, keepdim=True)
    xc = x - mean
    cov = xc @ xc.transpose(-1, -2) / 9
    (oracle,) = torch.autograd.grad(loss((mean, xc, (cov + cov.transpose(-1, -2)) / 2)), x)
    assert torch.allclose(ours, oracle, atol=1e-12, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda z: loss(W._centered_covariance(z)), (x,))
    assert torch.autograd.gradgradcheck(lambda z: loss(W._centered_covariance(z)), (x,))


def test_covariance_works_under_torch_func_transforms_as_the_plain_operations():
    """jacrev, jacfwd (forward mode), vmap and hessian through the centered covariance."""
    from torch.func import hessian, jacfwd, jacrev, vmap

    gen = torch.Generator().manual_seed(12)
    x = torch.randn(2, 3, 7, generator=gen, dtype=DT)

    def plain(z):
        zc = z - z.mean(-1, keepdim=True)
        cov = zc @ zc.transpose(-1, -2) / z.shape[-1]
        return (cov + cov.transpose(-1, -2)) / 2

    def ours(z):
        return W.covariance(z)[1]

    for transform in (jacrev, jacfwd):
        assert torch.allclose(transform(ours)(x[0]), transform(plain)(x[0]), atol=1e-12)
    assert torch.allclose(vmap(ours)(x), plain(x), atol=1e-12)
    assert torch.allclose(hessian(lambda z: ours(z).square().sum())(x[0]),
                          hessian(lambda z: plain(z).square().sum())(x[0]), atol=1e-10)


@pytest.mark.parametrize("method", W.WHITENING_METHODS)
def test_rank_deficient_covariance_gives_finite_outputs_and_gradients(method):
    x = correlated(d=6, m=50, seed=11)
    x = torch.cat([x[:4], x[:1], torch.zeros(1, 50, dtype=DT)])  # a duplicate and a dead channel
    x.requires_grad_()
    y = W.whiten(x, method, eps=1e-5)
    (grad,) = torch.autograd.grad(y.pow(2).sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(grad).all()
    if method != "standardize":  # whitening maps the eigenvalues to lambda / (lambda + eps)
        lam = torch.linalg.eigvalsh(W.covariance(y.detach())[1])
        assert float(lam.min()) > -1e-9 and float(lam.max()) < 1 + 1e-6


def test_whitening_error_is_the_rms_deviation_of_covariance_eigenvalues_from_one():
    x = correlated(seed=12)
    lam = torch.linalg.eigvalsh(W.covariance(x)[1])
    assert abs(W.whitening_error(x) - float((lam - 1).pow(2).mean().sqrt())) < 1e-9
    assert W.whitening_error(W.whiten(x, "zca", eps=1e-12)) < 1e-9


# --------------------------------------------------------------------------- layers in the framework


def batch_whitening_reference(x: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """Group-wise ZCA of the channels over (N, *) written with numpy, per group."""
    n, c = x.shape[:2]
    rows = x.transpose(0, 1).reshape(c, -1).numpy()
    out = np.concatenate([reference_zca(rows[i:i + group_size], eps) for i in range(0, c, group_size)])
    return torch.from_numpy(out).reshape(c, n, *x.shape[2:]).transpose(0, 1)


def feature_maps(shape=(16, 6, 3, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=DT)
    mix = torch.randn(shape[1], shape[1], generator=g, dtype=DT) + 2 * torch.eye(shape[1], dtype=DT)
    return torch.einsum("dc,nc...->nd...", mix, x) + 1.5


def test_batch_whitening_equals_a_group_wise_numpy_reference():
    x = feature_maps()
    y = W.batch_whitening(x, eps=1e-5, method="zca", group_size=3)
    assert torch.allclose(y, batch_whitening_reference(x, 3, 1e-5), atol=1e-9)


@pytest.mark.parametrize("method", W.WHITENING_METHODS)
def test_batch_whitening_with_group_size_one_equals_torch_batch_norm(method):
    x = feature_maps()
    layer = W.BatchWhitening(6, method=method, group_size=1, running_stat="covariance", dtype=DT)
    oracle = nn.BatchNorm2d(6, dtype=DT)
    with torch.no_grad():
        for p in (layer.weight, oracle.weight):
            p.copy_(torch.linspace(0.5, 2, 6))
        for p in (layer.bias, oracle.bias):
            p.copy_(torch.linspace(-1, 1, 6))
    for seed in range(3):
        x = feature_maps(seed=seed)
        assert torch.allclose(layer(x), oracle(x), atol=1e-9)
    assert torch.allclose(layer.running_mean, oracle.running_mean, atol=1e-12)
    assert torch.allclose(layer.running_cov.flatten(), oracle.running_var, atol=1e-12)
    layer.eval()
    oracle.eval()
    assert torch.allclose(layer(x), oracle(x), atol=1e-9)


def test_standardize_method_with_all_channels_in_one_group_equals_batch_norm():
    x = feature_maps()
    y = W.batch_whitening(x, method="standardize", eps=1e-5)
    assert torch.allclose(y, NF.batch_norm(x, eps=1e-5), atol=1e-10)


@pytest.mark.parametrize("method", EXACT)
def test_batch_whitening_layer_output_has_identity_channel_covariance(method):
    x = feature_maps((32, 6, 4, 4))
    y = W.BatchWhitening(6, method=method, eps=1e-9, dtype=DT)(x)
    rows = y.transpose(0, 1).reshape(6, -1)
    assert W.whitening_error(rows) < 1e-6
    assert rows.mean(1).abs().max() < 1e-10


def test_group_whitening_with_one_group_equals_layer_norm():
    x = feature_maps()
    assert torch.allclose(W.group_whitening(x, 1, eps=1e-5), NF.layer_norm(x, eps=1e-5), atol=1e-10)


def test_group_whitening_equals_a_per_sample_numpy_reference():
    x, eps = feature_maps((3, 8, 4, 4)), 1e-5
    y = W.group_whitening(x, num_groups=4, eps=eps)
    for n in range(3):
        rows = x[n].reshape(4, -1).numpy()
        assert np.allclose(y[n].reshape(4, -1).numpy(), reference_zca(rows, eps), atol=1e-9)


def test_group_whitening_decorrelates_the_groups_of_every_sample():
    x = feature_maps((3, 8, 4, 4))
    y = W.GroupWhitening(8, num_groups=4, eps=1e-9, dtype=DT)(x)
    for n in range(3):
        assert W.whitening_error(y[n].reshape(4, -1)) < 1e-6


def test_running_whitening_is_the_momentum_average_of_batch_whitening_matrices():
    layer = W.BatchWhitening(6, method="zca", group_size=3, momentum=0.25, dtype=DT)
    xs = [feature_maps(seed=s) for s in range(2)]
    expected_g = torch.eye(3, dtype=DT).repeat(2, 1, 1)
    expected_mu = torch.zeros(6, dtype=DT)
    for x in xs:
        layer(x)
        rows = W.split_groups(x.transpose(0, 1).reshape(6, -1), 3)
        mu, cov = W.covariance(rows)
        expected_g = 0.75 * expected_g + 0.25 * W.whitening_matrix(cov, "zca", eps=1e-5)
        expected_mu = 0.75 * expected_mu + 0.25 * mu.flatten()
    assert torch.allclose(layer.running_whitening, expected_g, atol=1e-12)
    assert torch.allclose(layer.running_mean, expected_mu, atol=1e-12)
    assert layer.num_batches_tracked.item() == 2
    layer.eval()
    x = feature_maps(seed=5)
    rows = W.split_groups(x.transpose(0, 1).reshape(6, -1), 3)
    out = W.merge_groups(expected_g @ (rows - expected_mu.reshape(2, 3, 1)))
    assert torch.allclose(layer(x), out.reshape(6, 16, 3, 3).transpose(0, 1), atol=1e-10)
    assert torch.allclose(layer.running_whitening, expected_g)  # evaluation does not update


def test_running_covariance_is_unbiased_and_whitened_at_evaluation():
    layer = W.BatchWhitening(6, method="cholesky", group_size=6, momentum=1.0,
                             running_stat="covariance", dtype=DT)
    x = feature_maps()
    layer(x)
    rows = x.transpose(0, 1).reshape(6, -1)
    m = rows.shape[1]
    mu, cov = W.covariance(rows)
    assert torch.allclose(layer.running_cov[0], cov * m / (m - 1), atol=1e-12)
    layer.eval()
    g = W.whitening_matrix(cov * m / (m - 1), "cholesky", eps=1e-5)
    assert torch.allclose(layer(x), (g @ (rows - mu)).reshape(6, 16, 3, 3).transpose(0, 1), atol=1e-10)


def test_evaluation_with_momentum_one_reproduces_the_training_output():
    layer = W.BatchWhitening(6, method="iternorm", group_size=3, momentum=1.0, dtype=DT)
    x = feature_maps()
    y_train = layer(x)
    layer.eval()
    assert torch.allclose(layer(x), y_train, atol=1e-12)


def test_cumulative_average_with_momentum_none():
    layer = W.BatchWhitening(6, group_size=2, momentum=None, dtype=DT)
    xs = [feature_maps(seed=s) for s in range(3)]
    means = []
    for x in xs:
        layer(x)
        means.append(x.mean(dim=(0, 2, 3)))
    assert torch.allclose(layer.running_mean, torch.stack(means).mean(0), atol=1e-12)


def test_evaluation_without_running_statistics_uses_batch_statistics():
    layer = W.BatchWhitening(6, track_running_stats=False, dtype=DT).eval()
    x = feature_maps()
    assert layer.running_mean is None and layer.running_whitening is None
    assert torch.allclose(layer(x), W.batch_whitening(x), atol=1e-12)


def _randomized(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3), dtype=DT))
    return layer


@pytest.mark.parametrize("method", W.WHITENING_METHODS)
@pytest.mark.parametrize("training", [True, False])
def test_batch_whitening_layer_gradcheck(method, training):
    layer = _randomized(W.BatchWhitening(4, method=method, group_size=2, running_stat="whitening",
                                         dtype=DT))
    layer(feature_maps((6, 4, 2, 2), seed=1))
    layer.train(training)
    x = feature_maps((6, 4, 2, 2), seed=2).requires_grad_()
    params = (layer.weight, layer.bias)

    def f(z, w, b):
        layer.weight.data, layer.bias.data = w.data, b.data
        return W.batch_whitening(z, None if training else layer.running_mean,
                                 None if training else layer.running_whitening, w, b,
                                 training, 0.1, 1e-4, method, 2)

    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("method", W.WHITENING_METHODS)
@pytest.mark.parametrize("training", [True, False])
def test_batch_whitening_layer_gradcheck_with_running_covariance(method, training):
    # running_stat="covariance": evaluation whitens the running covariance, so the gradient
    # with respect to x no longer flows through batch statistics but still through G.
    layer = _randomized(W.BatchWhitening(4, method=method, group_size=2, running_stat="covariance",
                                         dtype=DT))
    layer(feature_maps((6, 4, 2, 2), seed=1))
    assert not torch.equal(layer.running_cov, torch.eye(2, dtype=DT).repeat(2, 1, 1))
    x = feature_maps((6, 4, 2, 2), seed=2).requires_grad_()
    running_mean, running_cov = layer.running_mean.clone(), layer.running_cov.clone()

    def f(z, w, b):
        # fresh copies: a training-mode call updates the buffers in place
        return W.batch_whitening(z, running_mean.clone(), None, w, b, training, 0.1, 1e-4, method,
                                 2, running_cov=running_cov.clone())

    assert torch.autograd.gradcheck(f, (x, layer.weight, layer.bias))


@pytest.mark.parametrize("method", W.WHITENING_METHODS)
def test_group_whitening_layer_gradcheck(method):
    layer = _randomized(W.GroupWhitening(4, num_groups=2, method=method, dtype=DT))
    x = feature_maps((2, 4, 2, 2), seed=3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z, w, b: W.group_whitening(z, 2, w, b, 1e-4, method), (x, layer.weight, layer.bias))


def _train_then_eval_error(layer, batches=50, batch=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(8, 8, generator=g, dtype=DT) + 2 * torch.eye(8, dtype=DT)
    for _ in range(batches):
        layer(torch.randn(batch, 8, generator=g, dtype=DT) @ mix.T + 1.0)
    layer.eval()
    with torch.no_grad():
        y = layer(torch.randn(20_000, 8, generator=g, dtype=DT) @ mix.T + 1.0)
    return W.whitening_error(y.T)


def test_registered_pca_whitening_whitens_in_evaluation_mode_after_training():
    # Averaging PCA matrices averages rows whose signs flip from batch to batch; the registered
    # layer therefore keeps a running covariance and whitens it at evaluation.
    layer = normlib.create_norm("pca", 8, group_size=8, dtype=DT)
    assert layer.running_stat == "covariance" and hasattr(layer, "running_cov")
    error = _train_then_eval_error(layer)
    # Momentum 0.1 averages the covariance over the last ~20 batches of 64: the remaining
    # estimation error is about 0.1 (0.09-0.11 over five seeds).
    assert error < 0.25, error
    # The failure the default avoids, with the same data.
    averaged = W.BatchWhitening(8, method="pca", group_size=8, running_stat="whitening", dtype=DT)
    assert _train_then_eval_error(averaged) > 0.5


def test_running_stat_defaults_to_covariance_for_pca_only():
    for method in W.WHITENING_METHODS:
        expected = "covariance" if method == "pca" else "whitening"
        assert W.BatchWhitening(4, method=method).running_stat == expected
    for name in ("zca", "pca", "cholesky", "iternorm"):
        expected = "covariance" if name == "pca" else "whitening"
        assert normlib.create_norm(name, 4).running_stat == expected
    assert W.BatchWhitening(4, method="pca", running_stat="whitening").running_stat == "whitening"


def test_half_precision_inputs_are_whitened_in_float32():
    x = feature_maps((32, 4, 2, 2)).to(torch.bfloat16)
    y = W.BatchWhitening(4)(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


# --------------------------------------------------------------------------- registry, errors


@pytest.mark.parametrize("name,method,group", [("zca", "zca", 16), ("dbn", "zca", 16),
                                               ("pca", "pca", 16), ("cholesky", "cholesky", 16),
                                               ("cd", "cholesky", 16), ("iternorm", "iternorm", 64)])
def test_registry_builds_batch_whitening_with_group_size_defaults(name, method, group):
    layer = normlib.create_norm(name, 128)
    assert isinstance(layer, W.BatchWhitening) and layer.method == method
    assert layer.group_size == group
    assert normlib.create_norm(name, 24).group_size == (24 if group == 64 else 12)
    assert normlib.create_norm(name, 8, group_size=4).group_size == 4


@pytest.mark.parametrize("name", ["zca", "pca", "cholesky", "iternorm", "gw"])
@pytest.mark.parametrize("shape", [(64, 8), (16, 8, 4, 4)])
def test_registered_whitening_layers_accept_vectors_and_feature_maps(name, shape):
    kw = {"num_groups": 2} if name == "gw" else {"group_size": 4}
    layer = normlib.create_norm(name, 8, **kw)
    x = torch.randn(shape)
    assert layer(x).shape == shape
    layer.eval()
    assert torch.isfinite(layer(x)).all()


def test_layer_repr_reset_and_state_dict():
    layer = W.BatchWhitening(8, method="iternorm", group_size=4, iterations=3)
    assert repr(layer) == ("BatchWhitening(8, method='iternorm', group_size=4, iterations=3, eps=1e-05, "
                           "momentum=0.1, affine=True, track_running_stats=True, "
                           "running_stat='whitening')")
    layer(torch.randn(32, 8) * 3)
    clone = W.BatchWhitening(8, method="iternorm", group_size=4, iterations=3)
    clone.load_state_dict(layer.state_dict())
    assert torch.equal(clone.running_whitening, layer.running_whitening)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    layer.reset_parameters()
    assert torch.equal(layer.running_whitening, torch.eye(4).repeat(2, 1, 1))
    assert torch.equal(layer.weight, torch.ones(8)) and layer.num_batches_tracked.item() == 0
    cov_layer = W.BatchWhitening(8, group_size=4, running_stat="covariance")
    assert "running_cov" in dict(cov_layer.named_buffers())
    assert "running_whitening" not in dict(cov_layer.named_buffers())


def test_group_size_that_does_not_divide_the_channels_is_rejected():
    msg = r"group_size=5 does not divide the 8 channels; choose one of \[1, 2, 4, 8\]"
    with pytest.raises(ValueError, match=msg):
        W.BatchWhitening(8, group_size=5)
    with pytest.raises(ValueError, match="group_size=3 does not divide"):
        W.batch_whitening(torch.randn(16, 8), group_size=3)
    with pytest.raises(ValueError, match="num_groups=3 does not divide the 8 channels"):
        W.group_whitening(torch.randn(2, 8, 4, 4), num_groups=3)


def test_too_few_samples_for_the_covariance_is_rejected_in_training_only():
    layer = W.BatchWhitening(8, group_size=8)
    with pytest.raises(ValueError, match=r"needs more than 8 samples to estimate a 8x8 covariance, got 4"):
        layer(torch.randn(4, 8))
    layer.eval()
    assert layer(torch.randn(4, 8)).shape == (4, 8)
    with pytest.raises(ValueError, match=r"needs more than 4 samples .* got 4"):
        W.group_whitening(torch.randn(2, 8, 2, 1), num_groups=4)
    with pytest.raises(ValueError, match="more than 3 samples"):
        W.whiten(torch.randn(3, 3), "zca")


def test_bad_arguments_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match="method must be one of"):
        W.BatchWhitening(8, method="svd")
    with pytest.raises(ValueError, match="eps must be a positive float"):
        W.whitening_matrix(torch.eye(3), "zca", eps=0.0)
    with pytest.raises(ValueError, match="iterations must be a positive int"):
        W.BatchWhitening(8, method="iternorm", iterations=0)
    with pytest.raises(ValueError, match="running_stat must be one of"):
        W.BatchWhitening(8, running_stat="mean")
    with pytest.raises(ValueError, match=r"running_whitening must have shape \(2, 4, 4\)"):
        W.batch_whitening(torch.randn(16, 8), torch.zeros(8), torch.zeros(8, 8), group_size=4)
    with pytest.raises(ValueError, match="not both"):
        W.batch_whitening(torch.randn(16, 8), torch.zeros(8), torch.zeros(1, 8, 8),
                          running_cov=torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="8 channels .* num_features=4"):
        W.BatchWhitening(4)(torch.randn(16, 8))
    with pytest.raises(ValueError, match=r"cov must have shape \(\.\.\., d, d\)"):
        W.whitening_matrix(torch.zeros(3, 4))


def test_whiten_nop_plugs_into_the_framework_with_any_partition():
    x = feature_maps((16, 6, 3, 3))
    y = normalize(x, BATCH, W.Whiten("zca", group_size=3, eps=1e-5))
    assert torch.allclose(y, batch_whitening_reference(x, 3, 1e-5), atol=1e-9)


# ------------------------------------------------------------------ second derivatives


def _spd(n: int, seed: int) -> torch.Tensor:
    m = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return m @ m.T / n + 0.5 * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("eigenvalues", [None, [2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]],
                         ids=["distinct", "all-equal", "two-pairs"])
def test_inverse_sqrt_symmetric_second_derivatives_are_exact_also_at_repeated_eigenvalues(eigenvalues):
    a = _spd(4, 0) if eigenvalues is None else torch.diag(torch.tensor(eigenvalues, dtype=torch.float64))
    a.requires_grad_(True)

    def f(x):
        return W.inverse_sqrt_symmetric((x + x.T) / 2)

    assert torch.autograd.gradcheck(f, (a,))
    assert torch.autograd.gradgradcheck(f, (a,))


def test_inverse_sqrt_symmetric_refuses_a_third_derivative():
    a = _spd(3, 1).requires_grad_(True)
    (g,) = torch.autograd.grad(W.inverse_sqrt_symmetric(a).sum(), a, create_graph=True)
    (h,) = torch.autograd.grad(g.square().sum(), a, create_graph=True)
    with pytest.raises(RuntimeError, match="not third derivatives"):
        torch.autograd.grad(h.sum(), a)


@pytest.mark.parametrize(("norm", "mode"), [("zca", "train"), ("zca", "eval"), ("cholesky", "train"),
                                            ("iternorm", "train"), ("pca", "eval")])
def test_hessian_vector_products_through_whitening_layers_match_finite_differences(
        norm, mode, hvp_and_finite_difference):
    hv, fd = hvp_and_finite_difference(norm, mode)
    assert float((hv - fd).norm() / fd.norm()) < 1e-6


def test_hessian_through_training_mode_pca_whitening_raises_instead_of_being_wrong(
        hvp_and_finite_difference):
    with pytest.raises(RuntimeError, match="PCA whitening's eigenvector gradient"):
        hvp_and_finite_difference("pca", "train")


def test_second_frechet_derivative_of_a_wide_matrix_matches_differences_of_the_first():
    # n = 300 builds the divided differences in several slabs of k.
    n = 300
    a = _spd(n, 2) + 0.5 * torch.eye(n, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    e, g = (torch.randn(n, n, dtype=torch.float64, generator=gen) for _ in range(2))

    def first(matrix):
        evals, evecs = torch.linalg.eigh(matrix)
        return W._inverse_sqrt_frechet(evecs, evals.sqrt(), g)

    evals, evecs = torch.linalg.eigh(a)
    second = W._inverse_sqrt_second_frechet(evecs, evals.sqrt(), e, g)
    h, e_sym = 1e-5, (e + e.T) / 2
    differences = (first(a + h * e_sym) - first(a - h * e_sym)) / (2 * h)
    assert float((second - differences).norm() / differences.norm()) < 1e-6


# ----------------------------------------------------------------------------- hand-derived backward


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_iternorm_backward_equals_autograd_through_the_iterations(iterations):
    # The hand-derived backward through the coupled Newton steps against autograd of the
    # same steps, and gradcheck / gradgradcheck (second order through the recomputation).
    torch.manual_seed(0)
    a = torch.randn(2, 3, 4, 12, dtype=DT)
    cov = (a @ a.transpose(-1, -2) / 12 + 0.1 * torch.eye(4, dtype=DT)).requires_grad_()
    grad = torch.randn(2, 3, 4, 4, dtype=DT)
    fast = W._IterNormMatrix.apply(cov, iterations)
    slow = W._iternorm_matrix_composed(cov, iterations)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(torch.autograd.grad(fast, cov, grad)[0],
                               torch.autograd.grad(slow, cov, grad)[0])

    def f(c):
        return W._IterNormMatrix.apply(c, iterations)

    assert torch.autograd.gradcheck(f, (cov,))
    assert torch.autograd.gradgradcheck(f, (cov,))


def test_iternorm_layer_gradient_equals_autograd_of_the_composed_matrix(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(64, 8, dtype=DT) @ torch.randn(8, 8, dtype=DT)
    grad = torch.randn(64, 8, dtype=DT)

    def run():
        xi = x.clone().requires_grad_()
        y = W.batch_whitening(xi, method="iternorm", group_size=4, iterations=3)
        return y, torch.autograd.grad(y, xi, grad)[0]

    y_fast, g_fast = run()
    monkeypatch.setattr(W, "_iternorm_matrix", W._iternorm_matrix_composed)
    y_slow, g_slow = run()
    torch.testing.assert_close(y_fast, y_slow)
    torch.testing.assert_close(g_fast, g_slow)


def test_zca_plain_backward_equals_autograd_through_eigh():
    torch.manual_seed(0)
    a = torch.randn(3, 5, 30, dtype=DT)
    cov = (a @ a.transpose(-1, -2) / 30 + 1e-3 * torch.eye(5, dtype=DT)).requires_grad_()
    grad = torch.randn(3, 5, 5, dtype=DT)
    ours = torch.autograd.grad(W.inverse_sqrt_symmetric(cov), cov, grad)[0]
    lam, vec = torch.linalg.eigh(cov)
    ref = torch.autograd.grad((vec * lam.rsqrt().unsqueeze(-2)) @ vec.transpose(-1, -2), cov, grad)[0]
    # eigh reads the lower triangle only; compare the symmetric parts (the covariance is symmetric)
    sym = lambda m: (m + m.transpose(-1, -2)) / 2  # noqa: E731
    torch.testing.assert_close(sym(ours), sym(ref))
