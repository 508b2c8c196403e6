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

pytestmark = pytest.mark.usefixtures("one_thread")


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


# -- memory: a basis grown as the steps are taken, kept elsewhere or not at all ---------------


def test_lanczos_basis_grows_with_the_steps_taken_not_with_max_iters():
    from normlib.hessian.eigen import _LanczosProcess

    a = spd_matrix(torch.linspace(0.0, 1.0, 400, dtype=DT), seed=9)
    start = torch.ones(400, dtype=DT)
    process = _LanczosProcess(a_op := _dense(a), start, 400, torch.Generator().manual_seed(0), "cpu")
    for _ in range(5):
        process.step()
    # Five steps keep six vectors, in one chunk of 64 rows: not the 400 x 400 of max_iters.
    assert process.basis.size == 6
    assert process.basis.nbytes() == 64 * 400 * 8
    # A large model: chunks of 4 rows, so at most 3 vectors are allocated ahead of the steps.
    from normlib.hessian.eigen import _Basis

    big = _Basis(10**7, DT, "meta")
    for _ in range(5):
        big.append(torch.empty(10**7, dtype=DT, device="meta"))
    assert big.nbytes() == 8 * 10**7 * 8
    assert a_op.num_matvecs == 5


def _dense(a):
    from normlib.hessian.operator import _as_operator

    return _as_operator(a)


def test_basis_on_the_cpu_gives_the_same_eigenpairs(bn_case):
    _, _, _, op, _ = bn_case
    here = top_eigenpairs(op, k=3, tol=1e-8)
    cpu = top_eigenpairs(op, k=3, tol=1e-8, basis_device="cpu")
    assert torch.equal(here.eigenvalues, cpu.eigenvalues)
    assert torch.equal(here.eigenvectors, cpu.eigenvectors)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_eigenvalues_only_lanczos_matches_exact_hessian_without_a_basis(bn_case, which):
    _, _, _, op, exact = bn_case
    ev = torch.linalg.eigvalsh(exact)
    expected = ev.flip(0)[:5] if which == "largest" else ev[:5]
    res = top_eigenpairs(op, k=5, which=which, tol=1e-8, eigenvectors=False)
    assert res.eigenvectors is None
    assert res.converged.all()
    assert torch.allclose(res.eigenvalues, expected, rtol=1e-6, atol=0)


def test_eigenvalues_only_lanczos_merges_the_ghosts_of_converged_eigenvalues():
    # Two outliers above a bulk: without reorthogonalization, a long run repeats the outliers
    # as close copies; the k=3 answer must still be the three distinct largest eigenvalues.
    lam = torch.cat([torch.linspace(0.0, 1.0, 300, dtype=DT), torch.tensor([10.0, 9.0], dtype=DT)])
    a = spd_matrix(lam, seed=10)
    raw = lanczos(a, 150, reorthogonalize=False, keep_basis=False).ritz()[0]
    assert int((raw > 9.5).sum()) >= 2  # the ghosts are there in the plain recurrence
    res = top_eigenpairs(a, k=3, tol=1e-9, max_iters=150, eigenvectors=False)
    assert torch.allclose(res.eigenvalues, torch.tensor([10.0, 9.0, 1.0], dtype=DT), rtol=1e-7)


def test_density_without_reorthogonalization_keeps_the_low_moments():
    from normlib.hessian import spectral_density

    a = spd_matrix(torch.linspace(-1.0, 4.0, 300, dtype=DT) ** 3, seed=11)
    full = spectral_density(a, num_iters=40, num_runs=2, seed=1)
    plain = spectral_density(a, num_iters=40, num_runs=2, seed=1, reorthogonalize=False)
    for power in (1, 2, 3, 5):
        assert math.isclose(plain.moment(power), full.moment(power), rel_tol=1e-8)


def test_keep_basis_needs_reorthogonalization():
    with pytest.raises(ValueError, match="keep_basis must be False"):
        lanczos(torch.eye(3, dtype=DT), 2, reorthogonalize=False)


def test_eigenvalues_only_in_float32_with_a_tolerance_below_rounding_merges_the_copies():
    # float32 copies of a converged eigenvalue differ by rounding (~1e-6 relative), more than a
    # tol of 1e-9: they must still count as one eigenvalue.
    lam = torch.cat([torch.linspace(0.0, 1.0, 300, dtype=DT), torch.tensor([10.0, 9.0], dtype=DT)])
    a = spd_matrix(lam, seed=10).float()
    with pytest.warns(ConvergenceWarning):  # 1e-9 is out of float32's reach
        res = top_eigenpairs(a, k=3, tol=1e-9, max_iters=150, eigenvectors=False)
    assert torch.allclose(res.eigenvalues, torch.tensor([10.0, 9.0, 1.0], dtype=DT), rtol=1e-4)
