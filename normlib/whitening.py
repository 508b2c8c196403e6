"""Batch and group whitening: decorrelating normalization operations (NOPs).

Standardization rescales every row of the deck's matrix form ``X: (d, m)`` (``d``
quantities, ``m`` samples) to unit variance. Whitening goes further and
decorrelates the rows: with ``Sigma = (X - mu 1^T)(X - mu 1^T)^T / m`` it applies a
whitening matrix ``G`` with ``G (Sigma + eps I) G^T = I``,

    Xhat = G (X - mu 1^T).

Every whitening matrix is ``Q (Sigma + eps I)^{-1/2}`` for some orthogonal ``Q``;
the methods differ in ``Q`` and in how they compute it (chapter "Review II:
whitening, recovery, multi-mode"):

- ``zca``: ``G = D Lambda^{-1/2} D^T`` (decorrelated BN, Huang et al., 2018);
- ``pca``: ``G = Lambda^{-1/2} D^T``, rows ordered by variance (Desjardins et al., 2015);
- ``cholesky``: ``G = L^{-1}`` with ``L L^T = Sigma + eps I`` (Siarohin et al., 2019);
- ``iternorm``: ``T`` Newton steps on ``Sigma / tr Sigma`` (IterNorm, Huang et al., 2019);
- ``standardize``: ``G = diag(Sigma + eps I)^{-1/2}``, BatchNorm as a special case.

(``Sigma + eps I = D Lambda D^T``.) Whitening ``d`` channels costs ``O(d^3)``, so
the ``d`` rows are split into contiguous groups of ``group_size`` whitened
independently (group-wise whitening).

In the NAP/NOP/NRR framework of :mod:`normlib.framework` whitening is the NOP
:class:`Whiten`; the partition decides what the rows and samples are:

- batch whitening (:func:`batch_whitening`, :class:`BatchWhitening`): partition
  ``BATCH``, rows are the ``C`` channels, samples the ``N * prod(*)`` positions;
- Group Whitening (:func:`group_whitening`, :class:`GroupWhitening`, Huang et
  al., 2021): partition ``GROUP(G)``, per sample the ``G`` channel groups are
  the rows and the ``C / G * prod(*)`` elements of a group the samples.

Gradients: ZCA is a spectral function of the covariance, and its backward
uses the divided differences of ``t^{-1/2}``,
``-1 / (s_i s_j (s_i + s_j))`` with ``s = sqrt(lambda)``, which stay finite when
eigenvalues repeat (autograd through ``torch.linalg.eigh`` divides by
``lambda_i - lambda_j``). PCA depends on the eigenvectors themselves; its
backward broadens ``1 / (lambda_j - lambda_i)`` to
``(lambda_j - lambda_i) / ((lambda_j - lambda_i)^2 + delta^2)``.

Example:
    >>> import torch
    >>> from normlib.whitening import covariance, whiten
    >>> x = torch.randn(4, 200, dtype=torch.float64) * torch.tensor([[1.], [2.], [3.], [4.]])
    >>> y = whiten(x, "zca", eps=1e-9)
    >>> bool(torch.allclose(covariance(y)[1], torch.eye(4, dtype=torch.float64), atol=1e-6))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normlib._checks import check_eps, check_positive_int
from normlib.framework import BATCH, GROUP, Affine, Operation, Partition, batch_sync, normalize
from normlib.functional import _check_arguments
from normlib.layers import NormLayer
from normlib.registry import register_norm

__all__ = [
    "WHITENING_METHODS",
    "RUNNING_STATS",
    "covariance",
    "inverse_sqrt_symmetric",
    "whitening_matrix",
    "whiten",
    "whitening_error",
    "split_groups",
    "merge_groups",
    "Whiten",
    "batch_whitening",
    "group_whitening",
    "BatchWhitening",
    "GroupWhitening",
]

WHITENING_METHODS = ("zca", "pca", "cholesky", "iternorm", "standardize")
RUNNING_STATS = ("whitening", "covariance")


# ----------------------------------------------------------------------------- checks


def _check_method(method) -> None:
    if method not in WHITENING_METHODS:
        raise ValueError(f"method must be one of {WHITENING_METHODS}, got {method!r}")


def _check_group_size(group_size, d: int, what: str = "channels", name: str = "group_size") -> int:
    """The group size for ``d`` rows: ``group_size`` if it divides ``d``, ``d`` if ``None``.

    ``name`` is the argument the caller's user gave (``"num_groups"`` for group whitening,
    whose group count is checked the same way), so the message names what to change.
    """
    if group_size is None:
        return d
    check_positive_int(name, group_size)
    if d % group_size:
        divisors = [k for k in range(1, d + 1) if d % k == 0]
        raise ValueError(
            f"{name}={group_size} does not divide the {d} {what}; choose one of {divisors}"
        )
    return group_size


def _check_samples(m: int, g: int, shape) -> None:
    if m <= g:
        raise ValueError(
            f"whitening {g} rows needs more than {g} samples to estimate a {g}x{g} covariance, "
            f"got {m} (input of shape {tuple(shape)}); use a larger batch or spatial size, a "
            "smaller group_size (or fewer groups), or evaluation mode with running statistics"
        )


# ----------------------------------------------------------------------------- matrix math


def split_groups(x: Tensor, group_size: int | None) -> Tensor:
    """``(..., d, m)`` as ``(..., d // g, g, m)``: contiguous groups of ``g`` rows.

    Example:
        >>> split_groups(torch.zeros(2, 6, 5), 3).shape
        torch.Size([2, 2, 3, 5])
    """
    d = x.shape[-2]
    g = _check_group_size(group_size, d, "rows")
    return x.reshape(*x.shape[:-2], d // g, g, x.shape[-1])


def merge_groups(x: Tensor) -> Tensor:
    """Inverse of :func:`split_groups`: ``(..., k, g, m)`` as ``(..., k * g, m)``."""
    return x.reshape(*x.shape[:-3], x.shape[-3] * x.shape[-2], x.shape[-1])


def covariance(x: Tensor) -> tuple[Tensor, Tensor]:
    """Row means and biased covariance of ``x: (..., d, m)``.

    ``mu = X 1 / m`` of shape ``(..., d, 1)`` and
    ``Sigma = (X - mu 1^T)(X - mu 1^T)^T / m`` of shape ``(..., d, d)``,
    symmetrized so that round-off leaves no asymmetry.

    Example:
        >>> mu, cov = covariance(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
        >>> mu.flatten().tolist(), cov.tolist()
        ([2.0, 2.0], [[1.0, 0.0], [0.0, 0.0]])
    """
    mean, _, cov = _centered_covariance(x)
    return mean, cov


def _centered_covariance_composed(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row means, centered rows and covariance of ``x: (..., d, m)`` in plain tensor operations."""
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    cov = xc @ xc.transpose(-1, -2) / x.shape[-1]
    return mean, xc, (cov + cov.transpose(-1, -2)) / 2


class _CenteredCovariance(torch.autograd.Function):
    """``(mu, X - mu 1^T, Sigma)`` of ``x: (..., d, m)``, with a backward of one product.

    With ``Xc = X - mu 1^T`` and ``Sigma = sym(Xc Xc^T) / m``, the incoming gradients
    ``G_mu``, ``G_Xc`` and ``G_Sigma`` give

        G = G_Xc + (G_Sigma + G_Sigma^T) Xc / m,    dL/dX = G - mean_m(G) 1^T + G_mu 1^T / m,

    one ``(d, d) x (d, m)`` product fused with the addition (``baddbmm``), where autograd
    through ``Xc @ Xc^T`` takes two (one per operand), and the centering's adjoint as one
    mean and one subtraction. The backward is made of differentiable operations on the
    saved output ``Xc``, so a second derivative (``create_graph=True``: Hessian-vector
    products) differentiates it exactly. Forward mode (``jvp``) and ``torch.func``'s
    transforms (a generated ``vmap`` rule) work as on the plain operations.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor):
        return _centered_covariance_composed(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        xc = output[1]
        ctx.save_for_backward(xc)
        ctx.save_for_forward(xc)
        ctx.set_materialize_grads(False)  # unused outputs arrive as None: no product of zeros

    @staticmethod
    def backward(ctx, grad_mean, grad_xc, grad_cov):
        (xc,) = ctx.saved_tensors
        # under autocast the products ran in lower precision: the gradients arrive in it
        grad_mean, grad_xc, grad_cov = (None if g is None else g.to(xc.dtype)
                                        for g in (grad_mean, grad_xc, grad_cov))
        d, m = xc.shape[-2:]
        total = grad_xc
        if grad_cov is not None:
            sym = (grad_cov + grad_cov.transpose(-1, -2)).reshape(-1, d, d)
            flat = xc.reshape(-1, d, m)
            total = torch.bmm(sym, flat) / m if total is None else \
                torch.baddbmm(total.reshape(flat.shape), sym, flat, alpha=1.0 / m)
            total = total.reshape(xc.shape)
        grad_x = None if total is None else total - total.mean(dim=-1, keepdim=True)
        if grad_mean is not None:
            grad_x = grad_mean / m if grad_x is None else grad_x + grad_mean / m
        if grad_x is None:
            return None
        return grad_x.expand(xc.shape) if grad_x.shape != xc.shape else grad_x

    @staticmethod
    def jvp(ctx, tangent: Tensor):
        (xc,) = ctx.saved_tensors
        d_mean = tangent.mean(dim=-1, keepdim=True)
        d_xc = tangent - d_mean
        a = d_xc @ xc.transpose(-1, -2)
        return d_mean, d_xc, (a + a.transpose(-1, -2)) / xc.shape[-1]


def _centered_covariance(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(mu, X - mu 1^T, Sigma)`` of ``x: (..., d, m)``: :func:`covariance` with the centered rows.

    Under ``torch.compile`` and ``torch.export`` the plain operations (dynamo does not trace
    a custom ``jvp``; the compiler derives and fuses the backward itself).
    """
    if torch.compiler.is_compiling():
        return _centered_covariance_composed(x)
    return _CenteredCovariance.apply(x)


def _all_finite(t: Tensor) -> bool:
    """No NaN or infinity in ``t``: one ``aminmax`` pass (NaN propagates into both ends).

    A quarter of the time of ``torch.isfinite(t).all()`` at ``(8, 64, 64)``, which runs on
    every training step of a whitening layer.
    """
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _identity_like(cov: Tensor) -> Tensor:
    return torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)


def _sym(m: Tensor) -> Tensor:
    return (m + m.transpose(-1, -2)) / 2


def _inverse_sqrt_frechet(evecs: Tensor, s: Tensor, g: Tensor) -> Tensor:
    """``Df(A)[sym g]`` for ``f(t) = t^{-1/2}``, ``A = U diag(s^2) U^T`` (first Daleckii-Krein formula)."""
    # First divided differences of t^{-1/2}: (f(a) - f(b)) / (a - b) = -1 / (sa sb (sa + sb)),
    # equal to f'(a) on the diagonal and for repeated eigenvalues alike.
    si, sj = s.unsqueeze(-1), s.unsqueeze(-2)
    # U^T sym(G) U = sym(U^T G U): symmetrized after the products, on the small result
    inner = evecs.transpose(-1, -2) @ g @ evecs
    inner = (inner + inner.transpose(-1, -2)) * (-0.5 / (si * sj * (si + sj)))
    return evecs @ inner @ evecs.transpose(-1, -2)


def _inverse_sqrt_second_frechet(evecs: Tensor, s: Tensor, e: Tensor, g: Tensor) -> Tensor:
    """``D^2 f(A)[sym e, sym g]`` for ``f(t) = t^{-1/2}`` (second Daleckii-Krein formula).

    ``U M U^T`` with ``M_ij = sum_k f[l_i, l_k, l_j] (E_ik G_kj + G_ik E_kj)`` in the eigenbasis,
    where the second divided difference of ``t^{-1/2}`` has the closed form
    ``(p + q + r) / (p q r (p + q) (p + r) (q + r))`` in the square roots ``p, q, r`` of the
    eigenvalues: finite for repeated eigenvalues (``f''(a) / 2`` when all three are equal).
    """
    ut = evecs.transpose(-1, -2)
    et, gt = ut @ _sym(e) @ evecs, ut @ _sym(g) @ evecs
    n = s.shape[-1]
    inner = torch.zeros_like(et)
    # The (..., n, n, n) tensor of divided differences is built a slab of k at a time, so that
    # memory stays near 2^22 entries per matrix for wide layers.
    step = max(1, 2**22 // (n * n))
    for k0 in range(0, n, step):
        k = slice(k0, min(n, k0 + step))
        p, q, r = s[..., :, None, None], s[..., None, k, None], s[..., None, None, :]
        # Two divisions, not one product of six factors: that underflows in float32.
        second = (p + q + r) / (p * q * r) / ((p + q) * (p + r) * (q + r))  # [..., i, k, j]
        inner = inner + (torch.einsum("...ikj,...ik,...kj->...ij", second, et[..., :, k], gt[..., k, :])
                         + torch.einsum("...ikj,...ik,...kj->...ij", second, gt[..., :, k], et[..., k, :]))
    return evecs @ inner @ ut


class _full_precision:
    """Context: ``a`` in at least float32, with autocast off inside (eigensolvers need float32).

    As autocast does for its float32 operations: a float16/bfloat16 input is computed on in
    float32 and the result stays float32; the backward casts incoming gradients to match.
    """

    def __init__(self, a: Tensor):
        self.a = a.float() if a.dtype in (torch.float16, torch.bfloat16) else a
        # Only where autocast is on: entering a context is a graph break under torch.compile.
        on = a.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(a.device.type)
        self.ctx = torch.autocast(a.device.type, enabled=False) if on else None

    def __enter__(self) -> Tensor:
        if self.ctx is not None:
            self.ctx.__enter__()
        return self.a

    def __exit__(self, *exc):
        return None if self.ctx is None else self.ctx.__exit__(*exc)


class _InverseSqrtSymmetric(torch.autograd.Function):
    """``A^{-1/2}`` of a symmetric positive definite ``A`` with a divided-difference backward."""

    @staticmethod
    def forward(ctx, a: Tensor, floor: float) -> Tensor:
        evals, evecs = torch.linalg.eigh(a)
        # Eigenvalues of Sigma + eps I are >= eps; clamping only undoes round-off.
        s = evals.clamp_min(floor).sqrt()
        ctx.save_for_backward(a, evecs, s)
        return (evecs / s.unsqueeze(-2)) @ evecs.transpose(-1, -2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, evecs, s = ctx.saved_tensors
        grad = grad.to(evecs.dtype)  # under autocast the incoming gradient may be lower precision
        if not torch.is_grad_enabled():  # a plain backward pass: the formula itself
            return _inverse_sqrt_frechet(evecs, s, grad), None
        # create_graph=True: through a Function of its own, so that a second backward pass
        # (Hessian-vector products) differentiates the Frechet derivative exactly.
        return _InverseSqrtFrechet.apply(a, grad, evecs, s), None


class _InverseSqrtFrechet(torch.autograd.Function):
    """``B = Df(A)[sym G]``: the backward of :class:`_InverseSqrtSymmetric`, differentiable in A and G."""

    @staticmethod
    def forward(ctx, a: Tensor, g: Tensor, evecs: Tensor, s: Tensor) -> Tensor:
        ctx.save_for_backward(a, g, evecs, s)
        return _inverse_sqrt_frechet(evecs, s, g)

    @staticmethod
    def backward(ctx, grad_b: Tensor):
        a, g, evecs, s = ctx.saved_tensors
        grad_b = grad_b.to(evecs.dtype)
        # Df(A) is self-adjoint, and <H, D^2 f(A)[E, G]> is symmetric in H, E and G, so the
        # adjoints are Df(A)[sym H] (for G) and D^2 f(A)[sym H, sym G] (for A).
        grad_g = _InverseSqrtFrechet.apply(a, grad_b, evecs, s) if ctx.needs_input_grad[1] else None
        grad_a = None
        if ctx.needs_input_grad[0]:
            with torch.no_grad():  # its graph could never be used: its derivative raises
                second = _inverse_sqrt_second_frechet(evecs, s, grad_b, g)
            grad_a = _NotDifferentiable.apply(
                second,
                "inverse_sqrt_symmetric supports first and second derivatives (gradients and "
                "Hessian-vector products), not third derivatives", a, g, grad_b)
        return grad_a, grad_g, None, None


class _NotDifferentiable(torch.autograd.Function):
    """Identity on ``value`` whose own derivative raises ``RuntimeError(message)``.

    A backward pass that is exact only to first order returns its result through this, with
    the tensors that result depends on as ``inputs``: a further derivative (through
    ``create_graph=True``) then fails loudly instead of silently dropping terms.
    """

    @staticmethod
    def forward(ctx, value: Tensor, message: str, *inputs: Tensor) -> Tensor:
        ctx.message = message
        return value.clone()

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(ctx.message)


def inverse_sqrt_symmetric(a: Tensor, floor: float = 0.0) -> Tensor:
    """``A^{-1/2} = D Lambda^{-1/2} D^T`` for symmetric positive definite ``a: (..., d, d)``.

    Only the lower triangle of ``a`` is read (as by ``torch.linalg.eigh``), so
    pass a symmetric matrix. Eigenvalues below ``floor`` are raised to it. The
    backward pass is the Daleckii-Krein formula with the divided differences
    of ``t^{-1/2}``, which are finite for repeated eigenvalues; it is itself
    differentiable (second-order Daleckii-Krein formula), so Hessian-vector
    products through whitening layers and orthogonal weight normalization are
    exact. Third derivatives raise ``RuntimeError``.

    Args:
        a: symmetric positive definite, ``(..., d, d)``.
        floor: lower bound for the eigenvalues (e.g. the ``eps`` added to ``a``).

    Returns:
        a symmetric ``(..., d, d)`` tensor.

    Example:
        >>> inverse_sqrt_symmetric(torch.diag(torch.tensor([4.0, 4.0, 1.0]))).diagonal().tolist()
        [0.5, 0.5, 1.0]
    """
    with _full_precision(a) as a32:
        return _InverseSqrtSymmetric.apply(a32, floor)


class _BroadenedEigh(torch.autograd.Function):
    """``torch.linalg.eigh`` whose backward replaces ``1 / gap`` by ``gap / (gap^2 + delta^2)``.

    The broadened backward is not the derivative of any function, so it has none itself:
    differentiating it (a Hessian-vector product through PCA whitening in training mode)
    raises instead of returning a wrong second derivative.
    """

    @staticmethod
    def forward(ctx, a: Tensor):
        evals, evecs = torch.linalg.eigh(a)
        ctx.save_for_backward(a, evals, evecs)
        return evals, evecs

    @staticmethod
    def backward(ctx, grad_evals: Tensor | None, grad_evecs: Tensor | None):
        a, evals, evecs = ctx.saved_tensors
        grad_evals = None if grad_evals is None else grad_evals.to(evals.dtype)
        grad_evecs = None if grad_evecs is None else grad_evecs.to(evecs.dtype)
        with torch.no_grad():
            vt = evecs.transpose(-1, -2)
            inner = torch.zeros_like(evecs)
            if grad_evecs is not None:
                gap = evals.unsqueeze(-2) - evals.unsqueeze(-1)  # gap[i, j] = lambda_j - lambda_i
                scale = evals.abs().amax(dim=-1, keepdim=True).unsqueeze(-1)
                delta = torch.finfo(evals.dtype).eps ** 0.5 * scale
                inner = gap / (gap * gap + delta * delta) * (vt @ grad_evecs)
            if grad_evals is not None:
                inner = inner + torch.diag_embed(grad_evals)
            grad_a = evecs @ inner @ vt
            grad_a = (grad_a + grad_a.transpose(-1, -2)) / 2
        given = [g for g in (grad_evals, grad_evecs) if g is not None]
        return _NotDifferentiable.apply(
            grad_a, "PCA whitening's eigenvector gradient is regularized for repeated eigenvalues "
            "and has no second derivative: for Hessians of a network with PCA whitening use "
            "mode='eval' (running statistics), or ZCA, Cholesky or IterNorm whitening", a, *given)


def _iternorm_matrix_composed(cov: Tensor, iterations: int) -> Tensor:
    """IterNorm's whitening matrix in plain tensor operations (autograd differentiates it)."""
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True).unsqueeze(-1)
    cov_n = cov / trace
    eye = _identity_like(cov)
    # IterNorm's P_k = (3 P - P^3 Sigma_N) / 2 in the coupled form Z_k = P_k, Y_k = P_k Sigma_N:
    # the same iterates in exact arithmetic, but rounding errors are damped instead of being
    # amplified by sqrt(kappa) per step, so the limit T -> infinity is ZCA.
    # Z_0 = I makes the first step matmul-free, and the last step needs no Y: 3T - 3 products.
    t = 1.5 * eye - 0.5 * cov_n
    z = t
    y = cov_n @ t if iterations > 1 else cov_n
    three_halves = (1.5 * eye).reshape(-1, *eye.shape[-2:]).contiguous()
    for k in range(1, iterations):
        # one fused kernel for t = 3/2 I - Z Y / 2: the matrices are small, op count matters
        t = torch.baddbmm(three_halves, z.reshape(three_halves.shape), y.reshape(three_halves.shape),
                          alpha=-0.5).reshape(z.shape)
        z = t @ z
        if k < iterations - 1:
            y = y @ t
    return z / trace.sqrt()


class _IterNormMatrix(torch.autograd.Function):
    """IterNorm's ``P_T / sqrt(tr Sigma)`` with a hand-derived backward through the iterations.

    Forward as :func:`_iternorm_matrix_composed` (coupled Newton-Schulz, ``3T - 3`` batched
    products), keeping the iterates. Backward: the adjoint of each step
    ``T = 3/2 I - Z Y / 2``, ``Z' = T Z``, ``Y' = Y T`` in reverse (Huang et al., 2019,
    Appendix: the back-propagation through the Newton iterations),

        G_T = G_Z' Z^T + Y^T G_Y',   G_Z = T^T G_Z' - G_T Y^T / 2,   G_Y = G_Y' T^T - Z^T G_T / 2,

    each sum one fused ``baddbmm``, then through ``Sigma_N = Sigma / tr Sigma`` and the final
    ``1 / sqrt(tr Sigma)``. A second derivative (``create_graph=True``) differentiates the
    composition with autograd instead.
    """

    @staticmethod
    def forward(ctx, cov: Tensor, iterations: int) -> Tensor:
        d = cov.shape[-1]
        trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
        cov_n = (cov / trace).reshape(-1, d, d)
        t = cov_n * -0.5
        t.diagonal(dim1=-2, dim2=-1).add_(1.5)
        ts, zs, ys = [t], [t], [torch.bmm(cov_n, t) if iterations > 1 else cov_n]
        for k in range(1, iterations):
            # T = 3/2 I - Z Y / 2: the product scaled in place, 3/2 added on the diagonal only
            t = torch.bmm(zs[-1], ys[-1]).mul_(-0.5)
            t.diagonal(dim1=-2, dim2=-1).add_(1.5)
            ts.append(t)
            zs.append(torch.bmm(t, zs[-1]))
            if k < iterations - 1:
                ys.append(torch.bmm(ys[-1], t))
        z = zs[-1]
        ctx.iterations = iterations
        ctx.save_for_backward(cov, trace, cov_n, *ts, *zs, *ys)
        return (z.reshape(cov.shape)) / trace.sqrt()

    @staticmethod
    def backward(ctx, grad: Tensor):
        cov, trace, cov_n, *rest = ctx.saved_tensors
        iterations = ctx.iterations
        if torch.is_grad_enabled():
            with torch.enable_grad():
                out = _iternorm_matrix_composed(cov, iterations)
                (grad_cov,) = torch.autograd.grad(out, cov, grad, create_graph=True)
            return grad_cov, None
        ts, zs, ys = rest[:iterations], rest[iterations:2 * iterations], rest[2 * iterations:]
        d = cov.shape[-1]
        grad = grad.to(cov.dtype).reshape(-1, d, d)
        inv_sqrt = trace.rsqrt().reshape(-1, 1, 1)
        mT = lambda m: m.transpose(-1, -2)  # noqa: E731
        # out = Z / sqrt(tr): the trace's share, then G_Z
        grad_trace = -0.5 * (grad * zs[-1]).sum((-1, -2), keepdim=True) * inv_sqrt ** 3
        gz, gy = grad * inv_sqrt, None
        for k in range(iterations - 1, 0, -1):
            t, z, y = ts[k], zs[k - 1], ys[k - 1]
            # each sum accumulated in place into the first product (no copy of an input)
            gt = torch.bmm(gz, mT(z)) if gy is None else torch.bmm(mT(y), gy).baddbmm_(gz, mT(z))
            new_gz = torch.bmm(mT(t), gz).baddbmm_(gt, mT(y), alpha=-0.5)
            new_gy = torch.bmm(mT(z), gt).mul_(-0.5) if gy is None else \
                torch.bmm(gy, mT(t)).baddbmm_(mT(z), gt, alpha=-0.5)
            gz, gy = new_gz, new_gy
        # T_0 = 3/2 I - Sigma_N / 2 = Z_0, Y_0 = Sigma_N T_0
        if gy is None:
            grad_n = -0.5 * gz
        else:
            gt0 = torch.bmm(mT(cov_n), gy).add_(gz)
            grad_n = torch.bmm(gy, mT(ts[0])).add_(gt0, alpha=-0.5)
        # Sigma_N = Sigma / tr Sigma
        trace_flat = trace.reshape(-1, 1, 1)
        grad_trace = grad_trace - (grad_n * cov_n).sum((-1, -2), keepdim=True) / trace_flat
        grad_cov = grad_n / trace_flat
        grad_cov = grad_cov + grad_trace * torch.eye(d, dtype=cov.dtype, device=cov.device)
        return grad_cov.reshape(cov.shape), None


def _iternorm_matrix(cov: Tensor, iterations: int) -> Tensor:
    """IterNorm's whitening matrix of ``cov`` (``eps`` already added), ``(..., d, d)``."""
    return _IterNormMatrix.apply(cov, iterations)


def whitening_matrix(cov: Tensor, method: str = "zca", eps: float = 1e-5,
                     iterations: int = 5) -> Tensor:
    """Whitening matrix ``G`` of ``Sigma + eps I`` for a covariance ``cov: (..., d, d)``.

    - ``zca``: ``D Lambda^{-1/2} D^T``, the symmetric inverse square root.
    - ``pca``: ``Lambda^{-1/2} D^T`` with rows ordered by decreasing eigenvalue.
    - ``cholesky``: ``L^{-1}`` for the Cholesky factor ``L L^T = Sigma + eps I``.
    - ``iternorm``: ``P_T / sqrt(tr Sigma)`` with ``P_0 = I``,
      ``P_k = (3 P_{k-1} - P_{k-1}^3 Sigma_N) / 2`` and ``Sigma_N = Sigma / tr Sigma``
      (Newton's iteration for ``Sigma_N^{-1/2}``; it converges because the
      eigenvalues of ``Sigma_N`` lie in ``(0, 1]``). It runs in the coupled
      Newton-Schulz form (``Y_k = P_k Sigma_N`` carried alongside), which has the same
      iterates but does not amplify round-off, so many iterations reach ZCA.
    - ``standardize``: ``diag(Sigma + eps I)^{-1/2}`` (no decorrelation).

    All but ``iternorm`` satisfy ``G (Sigma + eps I) G^T = I`` exactly;
    ``iternorm`` approaches it as ``iterations`` grows.

    Args:
        cov: symmetric positive semi-definite, ``(..., d, d)``.
        method: one of ``WHITENING_METHODS``.
        eps: positive, added to the diagonal before any decomposition (it
            makes rank-deficient covariances invertible).
        iterations: ``T``, Newton steps of ``iternorm``.

    Returns:
        ``G`` of shape ``(..., d, d)``.

    Raises:
        ValueError: for an unknown ``method``, a non-positive ``eps`` or ``iterations``,
            or a ``cov`` that is not a batch of square matrices.

    Example:
        >>> cov = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> g = whitening_matrix(cov, "cholesky", eps=1e-12)
        >>> bool(torch.allclose(g @ cov @ g.T, torch.eye(2, dtype=torch.float64)))
        True
    """
    _check_method(method)
    check_eps(eps, why="it keeps rank-deficient covariances invertible")
    check_positive_int("iterations", iterations)
    if cov.dim() < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"cov must have shape (..., d, d), got {tuple(cov.shape)}")
    # A data-dependent check: skipped while torch.compile or torch.export trace the layer.
    if not torch.compiler.is_compiling() and not _all_finite(cov):
        raise ValueError(
            f"cannot whiten: the {tuple(cov.shape[-2:])} covariance has non-finite entries, so the "
            f"input holds non-finite values (NaN or inf) or is so large that its second moments "
            f"overflowed {cov.dtype}; check the input of the whitening layer (torch.isfinite(x).all())")
    with _full_precision(cov) as cov:
        cov = cov + eps * _identity_like(cov)
        if method == "zca":
            return inverse_sqrt_symmetric(cov, eps)
        if method == "pca":
            evals, evecs = _BroadenedEigh.apply(cov)
            inv_sqrt = evals.clamp_min(eps).rsqrt()
            return (evecs * inv_sqrt.unsqueeze(-2)).transpose(-1, -2).flip(-2)
        if method == "cholesky":
            chol = torch.linalg.cholesky(cov)
            return torch.linalg.solve_triangular(chol, _identity_like(cov), upper=False)
        if method == "iternorm":
            return _iternorm_matrix(cov, iterations)
        return torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1).rsqrt())


def whiten(x: Tensor, method: str = "zca", group_size: int | None = None, eps: float = 1e-5,
           iterations: int = 5) -> Tensor:
    """Whiten the rows of ``x: (..., d, m)`` over its ``m`` samples, group-wise.

    ``Xhat = G (X - mu 1^T)`` with ``G = whitening_matrix(Sigma, method, eps, iterations)``,
    computed independently for every group of ``group_size`` consecutive rows
    (``None``: all ``d`` rows together).

    Args:
        x: ``(..., d, m)``.
        method: one of ``WHITENING_METHODS``.
        group_size: rows per group, a divisor of ``d``; ``None`` for one group.
        eps: added to the covariance diagonal.
        iterations: ``T`` of ``iternorm``.

    Returns:
        a tensor like ``x``.

    Raises:
        ValueError: if ``group_size`` does not divide ``d`` or ``m <= group_size``
            (too few samples to estimate the covariance).

    Example:
        >>> y = whiten(torch.randn(8, 100), "iternorm", group_size=4)
        >>> y.shape
        torch.Size([8, 100])
    """
    if x.dim() < 2:
        raise ValueError(f"x must have shape (..., d, m), got {tuple(x.shape)}")
    _check_method(method)
    g = _check_group_size(group_size, x.shape[-2], "rows")
    _check_samples(x.shape[-1], g, x.shape)
    _, xc, cov = _centered_covariance(split_groups(x, g))
    return merge_groups(whitening_matrix(cov, method, eps, iterations) @ xc)


def whitening_error(y: Tensor, group_size: int | None = None) -> float:
    """How far ``y: (..., d, m)`` is from white: ``||Cov(y) - I||_F / sqrt(d)`` per group.

    The root mean square over groups (and leading axes) of the Frobenius
    distance between each group's covariance and the identity, divided by
    ``sqrt(group_size)``; for a covariance with eigenvalues ``lambda_i`` it is
    the root mean square of ``lambda_i - 1``. 0 for perfectly white rows.

    Example:
        >>> round(whitening_error(torch.tensor([[1.0, -1.0], [2.0, -2.0]])), 4)  # eigenvalues 0, 5
        2.9155
    """
    yg = split_groups(y.detach(), group_size)
    cov = covariance(yg)[1]
    dev = (cov - _identity_like(cov)).pow(2).sum((-1, -2)) / cov.shape[-1]
    return float(dev.mean().sqrt())


# ----------------------------------------------------------------------------- the NOP


@dataclass(frozen=True)
class Whiten(Operation):
    """NOP ``Phi_W``: whiten the rows of the partition's matrix form, group-wise.

    The partition's :meth:`~normlib.framework.Partition.to_matrix` gives
    ``(B, d, m)`` (``B`` independent problems, ``d`` rows decorrelated jointly,
    ``m`` samples). The ``d`` rows are split into groups of ``group_size``; each
    group gets its own mean and whitening matrix.

    Running statistics: the mean and either the whitening matrix
    (``running_stat="whitening"``, as decorrelated BN and IterNorm) or the
    covariance (``running_stat="covariance"``, unbiased like torch's running
    variance; evaluation then computes the whitening matrix of the running
    covariance). Buffers: ``mean`` of shape ``(d,)``, the matrix of shape
    ``(d // g, g, g)``; they average over the ``B`` problems.

    Args:
        method: one of ``WHITENING_METHODS``.
        group_size: rows per group (``None``: all rows).
        eps: added to each covariance's diagonal.
        iterations: ``T`` of ``iternorm``.
        running_stat: ``"whitening"`` or ``"covariance"``.

    Example:
        >>> from normlib.framework import BATCH, normalize
        >>> y = normalize(torch.randn(64, 4), BATCH, Whiten("zca", eps=1e-9))
        >>> cov = y.T @ y / 64
        >>> bool(torch.allclose(cov, torch.eye(4), atol=1e-4))
        True
    """

    method: str = "zca"
    group_size: int | None = None
    eps: float = 1e-5
    iterations: int = 5
    running_stat: str = "whitening"

    def __post_init__(self):
        _check_method(self.method)
        check_eps(self.eps, why="it keeps rank-deficient covariances invertible")
        check_positive_int("iterations", self.iterations)
        if self.group_size is not None:
            check_positive_int("group_size", self.group_size)
        if self.running_stat not in RUNNING_STATS:
            raise ValueError(
                f"running_stat must be one of {RUNNING_STATS}, got {self.running_stat!r}"
            )

    @property
    def keys(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("mean", "whitening" if self.running_stat == "whitening" else "cov")

    def groups_of(self, xv: Tensor) -> tuple[int, int]:
        """``(d // g, g)``: the number of groups and their size for a view ``xv``."""
        d = xv.shape[1]
        g = _check_group_size(self.group_size, d)
        return d // g, g

    def matrix(self, xv: Tensor, partition: Partition) -> Tensor:
        """The view ``(N, G, C // G, S)`` as grouped rows ``(B, d // g, g, m)``."""
        return split_groups(partition.to_matrix(xv), self.groups_of(xv)[1])

    def statistics(self, xv: Tensor, partition: Partition) -> dict[str, Tensor]:
        mat = self.matrix(xv, partition)
        if partition.pool_batch and (sync := batch_sync()) is not None:  # hook: over ranks
            mean, cov = sync.covariance(mat)
        else:
            _check_samples(mat.shape[-1], mat.shape[-2], xv.shape)
            mean, cov = covariance(mat)
        g = whitening_matrix(cov, self.method, self.eps, self.iterations)
        return {"mean": mean, "cov": cov, "whitening": g}

    def normalize_batch(self, xv: Tensor, partition: Partition,
                        recovery: Callable[[Tensor, Partition], Tensor] | None,
                        ) -> tuple[Tensor, dict[str, Tensor]]:
        """Statistics and whitening, with the rows centered once for both.

        The mean, the centered rows and the covariance come from one function with its own
        backward (one ``(g, g) x (g, m)`` product for the covariance, where autograd takes
        two). Statistics pooled over processes take the composed path (the reducer's own),
        as does a subclass that overrides ``statistics`` or ``apply``.
        """
        own = type(self).statistics is Whiten.statistics and type(self).apply is Whiten.apply
        if not own or (partition.pool_batch and batch_sync() is not None):
            # a subclass's own statistics or apply, or the reducer's statistics
            return super().normalize_batch(xv, partition, recovery)
        mat = self.matrix(xv, partition)
        _check_samples(mat.shape[-1], mat.shape[-2], xv.shape)
        mean, xc, cov = _centered_covariance(mat)
        g = whitening_matrix(cov, self.method, self.eps, self.iterations)
        out = partition.from_matrix(merge_groups(g @ xc), xv.shape)
        stats = {"mean": mean, "cov": cov, "whitening": g}
        return (out if recovery is None else recovery(out, partition)), stats

    def apply(self, xv: Tensor, stats: dict[str, Tensor], partition: Partition) -> Tensor:
        mat = self.matrix(xv, partition)
        g = stats.get("whitening")
        if g is None:
            g = whitening_matrix(stats["cov"], self.method, self.eps, self.iterations)
        out = merge_groups(g @ (mat - stats["mean"]))
        return partition.from_matrix(out, xv.shape)

    def running_value(self, key: str, stat: Tensor, count: int) -> Tensor:
        value = stat.mean(dim=0)
        if key == "cov" and count > 1:
            value = value * (count / (count - 1))
        return value

    def from_running(self, key: str, buffer: Tensor, xv: Tensor, partition: Partition) -> Tensor:
        k, g = self.groups_of(xv)
        return buffer.reshape(1, k, g, 1 if key == "mean" else g)


# ----------------------------------------------------------------------------- functional


def _affine(weight: Tensor | None, bias: Tensor | None) -> Affine | None:
    return None if weight is None and bias is None else Affine(weight, bias)


def batch_whitening(
    x: Tensor,
    running_mean: Tensor | None = None,
    running_whitening: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    method: str = "zca",
    group_size: int | None = None,
    iterations: int = 5,
    running_cov: Tensor | None = None,
) -> Tensor:
    """Batch whitening: decorrelate the channels of ``x`` over ``(N, *)``, group-wise.

    ``y = G (x - mu) * weight + bias`` where, per group of ``group_size``
    channels, ``mu`` and ``Sigma`` are the mean and covariance over the batch
    and spatial positions and ``G = whitening_matrix(Sigma, method, eps, iterations)``.
    Framework: partition ``BATCH``, NOP :class:`Whiten`, NRR ``Affine``.
    With ``method="zca"`` this is decorrelated BN (Huang et al., 2018), with
    ``"iternorm"`` IterNorm (Huang et al., 2019), with ``"cholesky"`` the
    whitening of Siarohin et al. (2019); ``group_size=1`` or
    ``method="standardize"`` is BatchNorm.

    Running statistics: ``running_mean: (C,)`` and either
    ``running_whitening: (C // g, g, g)`` (the averaged whitening matrix) or
    ``running_cov: (C // g, g, g)`` (the averaged unbiased covariance, whitened
    at evaluation). They are updated in training and used when
    ``training=False``.

    Args:
        x: ``(N, C, *)``.
        running_mean: ``(C,)`` or ``None``.
        running_whitening: ``(C // g, g, g)`` or ``None``.
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        training: use (and update) batch statistics.
        momentum: weight of the new batch in the running averages.
        eps: added to the covariance diagonal.
        method: one of ``WHITENING_METHODS``.
        group_size: channels per group, a divisor of ``C`` (``None``: all channels).
        iterations: ``T`` of ``iternorm``.
        running_cov: ``(C // g, g, g)`` or ``None``; not together with ``running_whitening``.

    Returns:
        a tensor like ``x``.

    Raises:
        ValueError: for a ``group_size`` that does not divide ``C``, too few
            samples (``N * prod(*) <= group_size``) in training, buffers of the
            wrong shape, or both matrix buffers.

    Example:
        >>> y = batch_whitening(torch.randn(256, 8), method="iternorm", group_size=4)
        >>> y.shape
        torch.Size([256, 8])
    """
    c = _check_arguments(x, per_channel={"weight": weight, "bias": bias},
                         running={"running_mean": running_mean}, momentum=momentum)
    g = _check_group_size(group_size, c)
    if running_whitening is not None and running_cov is not None:
        raise ValueError("pass running_whitening or running_cov, not both")
    matrix_buffer = running_whitening if running_whitening is not None else running_cov
    if matrix_buffer is not None and matrix_buffer.shape != (c // g, g, g):
        name = "running_whitening" if running_whitening is not None else "running_cov"
        raise ValueError(
            f"{name} must have shape ({c // g}, {g}, {g}) for {c} channels in groups of {g}, "
            f"got {tuple(matrix_buffer.shape)}"
        )
    if (running_mean is None) != (matrix_buffer is None):
        raise ValueError("running_mean and a running matrix must be given together or not at all")
    stat = "covariance" if running_cov is not None else "whitening"
    op = Whiten(method, g, eps, iterations, stat)
    use_batch = training or running_mean is None
    if use_batch and batch_sync() is None:  # synchronized: the global count is checked instead
        _check_samples(x.numel() // c, g, x.shape)
    running = None if running_mean is None else {"mean": running_mean, op.keys[1]: matrix_buffer}
    return normalize(x, BATCH, op, _affine(weight, bias), running=running,
                     use_batch_stats=use_batch, momentum=momentum)


def group_whitening(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    method: str = "zca",
    iterations: int = 5,
) -> Tensor:
    """Group Whitening (Huang et al., 2021): per sample, decorrelate ``G`` channel groups.

    Each sample is viewed as a ``(G, C / G * prod(*))`` matrix whose rows are
    the channel groups; the rows are whitened over their elements, then a
    per-channel affine is applied. Framework: partition ``GROUP(G)``, NOP
    :class:`Whiten` (one group of ``G`` rows), NRR ``Affine``. No batch
    statistics, so training and evaluation agree; ``num_groups=1`` is
    LayerNorm.

    Args:
        x: ``(N, C, *)``.
        num_groups: ``G``, a divisor of ``C``.
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        eps: added to the covariance diagonal.
        method: one of ``WHITENING_METHODS``.
        iterations: ``T`` of ``iternorm``.

    Returns:
        a tensor like ``x``.

    Raises:
        ValueError: if ``num_groups`` does not divide ``C`` or a group has no
            more elements than there are groups (``C / G * prod(*) <= G``).

    Example:
        >>> group_whitening(torch.randn(2, 16, 4, 4), num_groups=4).shape
        torch.Size([2, 16, 4, 4])
    """
    c = _check_arguments(x, per_channel={"weight": weight, "bias": bias})
    check_positive_int("num_groups", num_groups)
    if c % num_groups:
        divisors = [k for k in range(1, c + 1) if c % k == 0]
        raise ValueError(
            f"num_groups={num_groups} does not divide the {c} channels; choose one of {divisors}"
        )
    _check_samples(x[0].numel() // num_groups, num_groups, x.shape)
    return normalize(x, GROUP(num_groups), Whiten(method, None, eps, iterations),
                     _affine(weight, bias))


# ----------------------------------------------------------------------------- layers


class BatchWhitening(NormLayer):
    """Batch whitening layer: ZCA, PCA, Cholesky, IterNorm or standardization, group-wise.

    See :func:`batch_whitening` for the computation. Registered as ``"zca"``
    (alias ``"dbn"``, decorrelated BN), ``"pca"``, ``"cholesky"`` (alias
    ``"cd"``) and ``"iternorm"``; through :func:`normlib.registry.create_norm` the group
    size defaults to the largest divisor of ``C`` that is at most 16 (64 for
    IterNorm, as in its paper).

    Args:
        num_features: ``C``.
        eps: added to the covariance diagonal.
        momentum: running-average weight; ``None`` for a cumulative average.
        affine: learn a per-channel ``weight`` (ones) and ``bias`` (zeros).
        track_running_stats: keep a running mean and matrix for evaluation.
        method: one of ``WHITENING_METHODS``.
        group_size: channels per group, a divisor of ``C`` (``None``: all ``C``).
        iterations: ``T`` of ``iternorm``.
        running_stat: ``"whitening"`` (average the whitening matrix) or
            ``"covariance"`` (average the covariance, whiten it at evaluation).
            ``None`` (default) picks ``"covariance"`` for ``method="pca"`` and
            ``"whitening"`` for the others. PCA's matrix ``Lambda^{-1/2} D^T`` is not
            a continuous function of the covariance: from batch to batch its rows
            flip sign (an eigenvector is defined up to sign) and trade places when
            eigenvalues cross, so an average of PCA matrices cancels rows and does
            not whiten in evaluation mode (chapter "Review II" measures a whitening
            error above 0.7 on digit features). The covariance has no such
            ambiguity; its average is whitened once per evaluation forward.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> BatchWhitening(8, method="pca").running_stat
        'covariance'
        >>> layer = BatchWhitening(8, method="iternorm", group_size=4)
        >>> layer(torch.randn(32, 8, 3, 3)).shape
        torch.Size([32, 8, 3, 3])
        >>> layer.running_whitening.shape
        torch.Size([2, 4, 4])
    """

    running_keys = ("mean",)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, method: str = "zca",
                 group_size: int | None = None, iterations: int = 5,
                 running_stat: str | None = None, device=None, dtype=None):
        check_positive_int("num_features", num_features)
        self.group_size = _check_group_size(group_size, num_features)
        if running_stat is None:
            running_stat = "covariance" if method == "pca" else "whitening"
        # Validates method, iterations and running_stat before any buffer exists.
        Whiten(method, self.group_size, 1.0, iterations, running_stat)
        self.method = method
        self.iterations = iterations
        self.running_stat = running_stat
        g = self.group_size
        shape = (num_features // g, g, g)
        self._matrix_name = "running_whitening" if running_stat == "whitening" else "running_cov"
        self._matrix_shape = shape
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        buffer = torch.empty(shape, device=device, dtype=dtype) if self.track_running_stats else None
        self.register_buffer(self._matrix_name, buffer)
        self.reset_running_stats()

    def reset_running_stats(self) -> None:
        """Running mean 0, running matrix the identity, batch counter 0."""
        super().reset_running_stats()
        buffer = getattr(self, getattr(self, "_matrix_name", ""), None)
        if buffer is not None:
            buffer.copy_(torch.eye(buffer.shape[-1]).expand_as(buffer))

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        matrix = getattr(self, self._matrix_name)
        buffers = {"running_whitening": None, "running_cov": None, self._matrix_name: matrix}
        return batch_whitening(
            x, self.running_mean, buffers["running_whitening"], self.weight, self.bias,
            self.training, self._momentum(), self.eps, self.method, self.group_size,
            self.iterations, running_cov=buffers["running_cov"],
        )

    def extra_repr(self) -> str:
        parts = [f"{self.num_features}", f"method={self.method!r}", f"group_size={self.group_size}"]
        if self.method == "iternorm":
            parts.append(f"iterations={self.iterations}")
        parts += [f"eps={self.eps}", f"momentum={self.momentum}", f"affine={self.affine}",
                  f"track_running_stats={self.track_running_stats}",
                  f"running_stat={self.running_stat!r}"]
        return ", ".join(parts)


class GroupWhitening(NormLayer):
    """Group Whitening (Huang et al., 2021): per-sample whitening of ``G`` channel groups.

    See :func:`group_whitening`. Registered as ``"gw"``; through
    :func:`normlib.registry.create_norm` ``num_groups`` defaults to the largest divisor
    of ``C`` that is at most 16.

    Args:
        num_features: ``C``.
        num_groups: ``G``, a divisor of ``C``.
        eps: added to the covariance diagonal.
        affine: learn a per-channel ``weight`` and ``bias``.
        method: one of ``WHITENING_METHODS``.
        iterations: ``T`` of ``iternorm``.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> GroupWhitening(16, num_groups=4)(torch.randn(2, 16, 4, 4)).shape
        torch.Size([2, 16, 4, 4])
    """

    def __init__(self, num_features: int, num_groups: int = 16, eps: float = 1e-5,
                 affine: bool = True, method: str = "zca", iterations: int = 5,
                 device=None, dtype=None):
        check_positive_int("num_features", num_features)
        _check_group_size(num_groups, num_features, name="num_groups")
        Whiten(method, None, 1.0, iterations)
        self.num_groups = num_groups
        self.method = method
        self.iterations = iterations
        super().__init__(num_features, eps, None, affine, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return group_whitening(x, self.num_groups, self.weight, self.bias, self.eps,
                               self.method, self.iterations)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, num_groups={self.num_groups}, method={self.method!r}, "
                f"eps={self.eps}, affine={self.affine}")


# ----------------------------------------------------------------------------- registry


def _largest_divisor(n: int, at_most: int) -> int:
    return max(k for k in range(1, min(n, at_most) + 1) if n % k == 0)


def _batch_whitening_factory(method: str, default_group: int):
    def factory(num_features: int, group_size: int | None = None, **kw) -> nn.Module:
        if group_size is None:
            group_size = _largest_divisor(num_features, default_group)
        return BatchWhitening(num_features, method=method, group_size=group_size, **kw)

    factory.__doc__ = f"``BatchWhitening(C, method={method!r})``, groups of at most {default_group}."
    return factory


register_norm("zca", "dbn", "decorrelated_bn", "zca_whitening")(_batch_whitening_factory("zca", 16))
register_norm("pca", "pca_whitening")(_batch_whitening_factory("pca", 16))
register_norm("cholesky", "cd", "cholesky_whitening")(_batch_whitening_factory("cholesky", 16))
register_norm("iternorm", "iterative_norm")(_batch_whitening_factory("iternorm", 64))


@register_norm("gw", "group_whitening")
def _group_whitening_factory(num_features: int, num_groups: int | None = None, **kw) -> nn.Module:
    if num_groups is None:
        num_groups = _largest_divisor(num_features, 16)
    return GroupWhitening(num_features, num_groups=num_groups, **kw)
