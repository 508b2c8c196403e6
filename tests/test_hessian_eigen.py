"""Tests of normlib.hessian.eigen: Lanczos and power iteration against exact eigenvalues."""

from __future__ import annotations

import math

import pytest
import torch
from hessian_problems import (
    DT,
    batch,
    bn_net,
    exact_bn,
    spd_matrix,
)
from torch import nn

from normlib.hessian import (
    ConvergenceWarning,
    HessianOperator,
    lanczos,
    top_eigenpairs,
)

# torch.func.hessian (the oracle) goes through a deprecated torch.jit.script internally.
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]


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
