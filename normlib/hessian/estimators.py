"""Stochastic estimators of a Hessian's spectrum: the trace and the eigenvalue density.

:func:`~normlib.hessian.hessian_trace` is Hutchinson's estimator :math:`\\operatorname{tr} H
\\approx \\frac1s \\sum_i z_i^\\top H z_i` with its standard error, or Hutch++
:cite:p:`meyer2021hutch`; :func:`~normlib.hessian.spectral_density` is stochastic Lanczos
quadrature :cite:p:`ghorbani2019investigation` smoothed with a Gaussian kernel.

Chapter: Hessian conditioning (``chapters/hessian.md``, :ref:`chap-hessian`): the spectra of
deep networks with and without BatchNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from normlib._checks import check_positive_int, check_seed
from normlib.hessian.eigen import lanczos
from normlib.hessian.operator import _as_operator, _progress, _random_vectors

__all__ = ["TraceEstimate", "hessian_trace", "SpectralDensity", "spectral_density"]


# --------------------------------------------------------------------------------------------
# Trace
# --------------------------------------------------------------------------------------------


@dataclass
class TraceEstimate:
    """A trace estimate from :func:`hessian_trace`.

    Attributes:
        value: the estimate of :math:`\\operatorname{tr} H`.
        stderr: its standard error (sample standard deviation of the probes over
            :math:`\\sqrt{s}`; for Hutch++ that of the residual part, the low-rank part being exact).
        samples: the per-probe values :math:`z_i^\\top H z_i` (residual part for Hutch++), float64.
        num_matvecs: Hessian-vector products used.
        method: ``"hutchinson"`` or ``"hutch++"``.
    """

    value: float
    stderr: float
    samples: torch.Tensor
    num_matvecs: int
    method: str


def hessian_trace(
    operator,
    num_probes: int = 100,
    *,
    method: str = "hutchinson",
    distribution: str = "rademacher",
    seed: int = 0,
    progress: bool | None = None,
) -> TraceEstimate:
    """Estimate :math:`\\operatorname{tr} H` from Hessian-vector products, with a standard error.

    Hutchinson :cite:p:`hutchinson1989stochastic`: :math:`\\hat t = \\frac1s \\sum_{i=1}^s z_i^\\top
    H z_i` with Rademacher (or Gaussian) :math:`z_i`, unbiased, with variance
    :math:`2(\\lVert H\\rVert_F^2 - \\sum_i H_{ii}^2)/s` for Rademacher probes; the reported
    standard error is the sample standard deviation over :math:`\\sqrt s`.

    Hutch++ :cite:p:`meyer2021hutch` spends the same ``num_probes`` products in thirds: a sketch
    :math:`Q = \\mathrm{orth}(HS)`, the exact trace :math:`\\operatorname{tr}(Q^\\top H Q)` of the
    top of the spectrum, and Hutchinson on the rest :math:`(I - QQ^\\top) H (I - QQ^\\top)`. When a
    few outlier eigenvalues dominate :math:`\\lVert H\\rVert_F` (as for deep networks), its
    error is far smaller for the same number of products.

    Args:
        operator: a :class:`HessianOperator` or a symmetric ``(n, n)`` tensor.
        num_probes: Hessian-vector products to spend (at least 2; at least 4 for Hutch++).
        method: ``"hutchinson"`` or ``"hutch++"``.
        distribution: ``"rademacher"`` or ``"gaussian"`` probes.
        seed: seed of the probes.
        progress: show a progress bar (None: only on an interactive terminal).

    Returns:
        a :class:`TraceEstimate`.

    Raises:
        ValueError: too few probes, unknown method or distribution.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> hessian_trace(A, num_probes=10).value  # diagonal: Rademacher probes are exact
        6.0
    """
    check_seed(seed)
    op = _as_operator(operator)
    if method not in ("hutchinson", "hutch++"):
        raise ValueError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")
    minimum = 4 if method == "hutch++" else 2
    check_positive_int("num_probes", num_probes, minimum=minimum)
    if distribution not in ("rademacher", "gaussian"):
        raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
    n = op.shape[0]
    generator = torch.Generator().manual_seed(seed)
    bar = _progress(range(num_probes), num_probes, progress, "trace probes")

    def product(v):
        out = op.matvec(v)
        bar.update()
        return out

    exact, basis = 0.0, None
    num_residual = num_probes
    if method == "hutch++":
        rank = min(num_probes // 3, n)
        num_residual = num_probes - 2 * rank
        sketch = torch.stack([
            product(_random_vectors((n,), distribution, generator, op.dtype, op.device))
            for _ in range(rank)
        ])
        basis = torch.linalg.qr(sketch.T).Q.T
        exact = sum(float(q @ product(q)) for q in basis)
    samples = []
    for _ in range(num_residual):
        z = _random_vectors((n,), distribution, generator, op.dtype, op.device)
        if basis is not None:
            z = z - (basis @ z) @ basis
        samples.append(float(z @ product(z)))
    bar.close()
    values = torch.tensor(samples, dtype=torch.float64)
    if values.numel() >= 2:
        stderr = float(values.std(unbiased=True) / math.sqrt(values.numel()))
    else:
        stderr = 0.0
    mean = float(values.mean()) if values.numel() else 0.0
    return TraceEstimate(exact + mean, stderr, values, num_probes, method)


# --------------------------------------------------------------------------------------------
# Spectral density
# --------------------------------------------------------------------------------------------


@dataclass
class SpectralDensity:
    """A stochastic Lanczos quadrature estimate of the eigenvalue density of :math:`H`.

    The spectral measure :math:`\\mu = \\frac1P \\sum_i \\delta_{\\lambda_i}` is estimated by
    :math:`\\frac1R \\sum_{r} \\sum_j w_{rj} \\delta_{\\theta_{rj}}`: Gauss quadrature nodes and
    weights of the Lanczos run from each of :math:`R` random start vectors.

    Attributes:
        nodes: ``(R, m)`` Ritz values per run, float64.
        weights: ``(R, m)`` quadrature weights per run (each row sums to 1), float64.
        dim: :math:`P`.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    dim: int

    def moment(self, power: int) -> float:
        """:math:`\\int \\lambda^k d\\mu \\approx \\operatorname{tr}(H^k)/P` (exact in expectation
        for :math:`k \\le 2m - 1`)."""
        return float((self.weights * self.nodes**power).sum(dim=1).mean())

    def evaluate(self, grid: torch.Tensor, sigma: float) -> torch.Tensor:
        """The density smoothed with a Gaussian of width ``sigma`` on ``grid: (G,)``.

        Returns:
            ``(G,)`` float64 values of :math:`\\frac1R \\sum_{r,j} w_{rj}\\,
            \\mathcal N(t; \\theta_{rj}, \\sigma^2)`, integrating to 1.
        """
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        grid = torch.as_tensor(grid, dtype=torch.float64).reshape(-1, 1, 1)
        kernel = torch.exp(-0.5 * ((grid - self.nodes) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return (kernel * self.weights).sum(dim=2).mean(dim=1)


def spectral_density(
    operator,
    num_iters: int = 80,
    num_runs: int = 1,
    *,
    seed: int = 0,
    reorthogonalize: bool = True,
    basis_device: str | torch.device | None = None,
    progress: bool | None = None,
) -> SpectralDensity:
    """The eigenvalue density of :math:`H` by stochastic Lanczos quadrature (SLQ).

    Each run draws a Rademacher vector :math:`v`, runs ``num_iters`` Lanczos steps from it and
    keeps the eigenvalues :math:`\\theta_j` of :math:`T_m` with weights :math:`w_j = s_{1j}^2`
    (first components of its eigenvectors): :math:`\\frac{v^\\top g(H) v}{v^\\top v} \\approx
    \\sum_j w_j g(\\theta_j)`, exact for polynomials of degree :math:`\\le 2m - 1`
    :cite:p:`golub2009matrices,ghorbani2019investigation`. Averaging over runs estimates
    :math:`\\frac1P \\operatorname{tr} g(H)`. Cost: ``num_iters * num_runs`` products.
    Memory: the Lanczos basis, ``num_iters`` vectors (on ``basis_device``), or three vectors
    with ``reorthogonalize=False`` (the plain recurrence; its Gauss quadrature stays accurate,
    ghost copies of converged Ritz values only split their weight).

    Args:
        operator: a :class:`HessianOperator` or a symmetric ``(n, n)`` tensor.
        num_iters: Lanczos steps per run (capped at :math:`n`).
        num_runs: independent runs :math:`R`.
        seed: seed of the start vectors.
        reorthogonalize: full reorthogonalization (memory ``num_iters`` vectors) or the
            three-term recurrence (three vectors).
        basis_device: where the basis is kept (default the operator's device), e.g. ``"cpu"``.
        progress: show a progress bar over runs (None: only on a terminal).

    Returns:
        a :class:`SpectralDensity`.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([1.0, 1.0, 4.0], dtype=torch.float64))
        >>> d = spectral_density(A, num_iters=3)
        >>> round(d.moment(1) * 3, 6)  # v^T A v for a Rademacher v: exactly tr(A)
        6.0
    """
    check_seed(seed)
    op = _as_operator(operator)
    check_positive_int("num_iters", num_iters)
    check_positive_int("num_runs", num_runs)
    nodes, weights = [], []
    for r in _progress(range(num_runs), num_runs, progress, "SLQ runs"):
        res = lanczos(op, num_iters, seed=seed + r, keep_basis=False,
                      reorthogonalize=reorthogonalize, basis_device=basis_device, progress=False)
        node, weight = res.quadrature()
        nodes.append(node)
        weights.append(weight)
    return SpectralDensity(torch.stack(nodes), torch.stack(weights), op.shape[0])
