"""Tests of normlib.hessian.estimators: Hutchinson's trace and stochastic Lanczos quadrature."""

from __future__ import annotations

import math

import pytest
import torch
from hessian_problems import (
    DT,
    spd_matrix,
)

from normlib.hessian import (
    hessian_trace,
    lanczos,
    spectral_density,
)

pytestmark = pytest.mark.usefixtures("one_thread")


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
