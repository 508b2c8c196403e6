"""Extreme eigenpairs of a symmetric operator: Lanczos with full reorthogonalization, power iteration.

:func:`~normlib.hessian.lanczos` runs the Lanczos process and returns the tridiagonal matrix;
:func:`~normlib.hessian.top_eigenpairs` returns the largest, smallest or largest-magnitude
eigenpairs by Lanczos (Ritz values of the tridiagonal matrix, ``eigh``) or by power iteration
with deflation, and warns with :class:`~normlib.hessian.ConvergenceWarning` when the tolerance
was not reached.

Chapter: Hessian conditioning (``chapters/hessian.md``, :ref:`chap-hessian`): the sharpest
curvature :math:`\\lambda_{\\max}` and the spectra of deep networks with and without BatchNorm.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from normlib._checks import check_bool, check_device, check_positive_float, check_positive_int, check_seed
from normlib.hessian.operator import (
    HessianOperator,
    _as_operator,
    _DenseOperator,
    _progress,
    _random_vectors,
)

__all__ = ["ConvergenceWarning", "LanczosResult", "lanczos", "EigenResult", "top_eigenpairs"]


class ConvergenceWarning(UserWarning):
    """An iterative eigensolver stopped at its iteration limit before reaching its tolerance."""


# --------------------------------------------------------------------------------------------
# Lanczos
# --------------------------------------------------------------------------------------------


@dataclass
class LanczosResult:
    """The output of :func:`lanczos`: :math:`Q^\\top H Q = T` with :math:`T` tridiagonal.

    Attributes:
        alphas: diagonal of :math:`T`, ``(m,)`` float64.
        betas: off-diagonal of :math:`T`, ``(m - 1,)`` float64 (a zero marks a restart after an
            invariant subspace was found).
        basis: the orthonormal Lanczos vectors :math:`Q`, ``(m, P)`` (None if not kept).
        start_norm: :math:`\\lVert v_0 \\rVert` of the start vector.
        residual: :math:`\\beta_m`, the norm of the part of :math:`H q_m` outside the basis.
    """

    alphas: torch.Tensor
    betas: torch.Tensor
    basis: torch.Tensor | None
    start_norm: float
    residual: float

    def tridiagonal(self) -> torch.Tensor:
        """The ``(m, m)`` tridiagonal matrix :math:`T` (float64)."""
        return (
            torch.diag(self.alphas)
            + torch.diag(self.betas, diagonal=1)
            + torch.diag(self.betas, diagonal=-1)
        )

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues ``(m,)`` (ascending) and eigenvectors ``(m, m)`` of :math:`T`, by ``eigh``."""
        return torch.linalg.eigh(self.tridiagonal())

    def quadrature(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Gauss quadrature nodes and weights of the spectral measure of the start vector.

        For the normalized start vector :math:`q_1` and :math:`m` steps,
        :math:`q_1^\\top g(H) q_1 \\approx \\sum_j w_j\\, g(\\theta_j)`, exact for polynomials of
        degree up to :math:`2m - 1` :cite:p:`golub2009matrices`.

        Returns:
            nodes ``(m,)`` (the Ritz values) and weights ``(m,)`` (summing to 1), float64.
        """
        nodes, vectors = self.ritz()
        return nodes, vectors[0] ** 2


class _Basis:
    """The Lanczos vectors, grown in chunks of rows as the process goes, on ``device``.

    Memory is ``ceil(m / chunk) * chunk * P`` for ``m`` vectors: nothing is reserved for steps
    that are never taken. A chunk holds about a million numbers (64 rows for small models, 4 for
    large ones: at most 3 vectors allocated ahead). The orthogonalization runs where the basis
    lives (the vector is moved there and back), so a basis on the CPU costs host memory and
    transfers, not device memory.
    """

    def __init__(self, n: int, dtype, device, chunk: int | None = None):
        self.n, self.dtype, self.device = n, dtype, torch.device(device)
        if chunk is None:
            chunk = max(4, min(64, 2**20 // max(n, 1)))
        self.chunk = max(1, min(chunk, n))
        self.blocks: list[torch.Tensor] = []
        self.size = 0

    def append(self, q: torch.Tensor) -> None:
        row = self.size % self.chunk
        if row == 0:
            rows = min(self.chunk, self.n - self.size)
            self.blocks.append(torch.empty(rows, self.n, dtype=self.dtype, device=self.device))
        self.blocks[-1][row] = q.to(self.device)
        self.size += 1

    def _filled(self, limit: int | None = None):
        left = self.size if limit is None else min(limit, self.size)
        for block in self.blocks:
            rows = min(left, block.shape[0])
            if rows <= 0:
                return
            yield block[:rows]
            left -= rows

    def orthogonalize(self, w: torch.Tensor) -> torch.Tensor:
        # Classical Gram-Schmidt twice (block by block): orthogonal to working precision.
        home = w.device
        w = w.to(self.device)
        for _ in range(2):
            for q in self._filled():
                w = w - (q @ w) @ q
        return w.to(home)

    def combine(self, coefficients: torch.Tensor) -> torch.Tensor:
        """``coefficients (k, m) @ Q[:m] (m, P)``, block by block, on the basis' device."""
        coefficients = coefficients.to(dtype=self.dtype, device=self.device)
        out = torch.zeros(coefficients.shape[0], self.n, dtype=self.dtype, device=self.device)
        start = 0
        for q in self._filled(coefficients.shape[1]):
            out += coefficients[:, start : start + q.shape[0]] @ q
            start += q.shape[0]
        return out

    def stacked(self) -> torch.Tensor:
        parts = list(self._filled())
        if not parts:
            return torch.empty(0, self.n, dtype=self.dtype, device=self.device)
        return torch.cat(parts)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.blocks)


class _LanczosProcess:
    """Lanczos, one step (one product) at a time.

    With a basis (``basis_device`` not None): full reorthogonalization against every kept vector,
    the basis grown as the process goes. Without (``basis_device=None``): the plain three-term
    recurrence, three vectors of memory; converged eigenvalues may then reappear as close copies
    (the well-known loss of orthogonality), which :func:`top_eigenpairs` merges.
    """

    def __init__(self, operator, start: torch.Tensor, max_steps: int, generator: torch.Generator,
                 basis_device=None):
        self.op, self.generator = operator, generator
        n = operator.shape[0]
        self.n, self.max_steps = n, min(max_steps, n)
        self.start_norm = float(torch.linalg.vector_norm(start))
        if not self.start_norm > 0 or not math.isfinite(self.start_norm):
            raise ValueError(f"the start vector must be finite and non-zero, norm={self.start_norm}")
        q = start / self.start_norm
        self.basis = None if basis_device is None else _Basis(n, operator.dtype, basis_device)
        if self.basis is not None:
            self.basis.append(q)
        self.q, self.q_prev = q, None
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.scale = 0.0
        self.eps = torch.finfo(operator.dtype).eps
        self.exhausted = False  # an invariant subspace was found without a basis to restart from

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def step(self) -> None:
        j = self.steps
        q = self.q
        w = self.op.matvec(q)
        alpha = float(q @ w)
        if self.basis is not None:
            w = self.basis.orthogonalize(w)
        else:
            # In place: the recurrence holds q_prev, q and w, nothing else of size P. (An
            # operator of another library may return a tensor it keeps: work on a copy then.)
            if not isinstance(self.op, (HessianOperator, _DenseOperator)):
                w = w.clone()
            w.add_(q, alpha=-alpha)
            if self.q_prev is not None:
                w.add_(self.q_prev, alpha=-self.betas[-1])
            # Local reorthogonalization against q (cheap, keeps T accurate).
            w.add_(q, alpha=-float(q @ w))
        beta = float(torch.linalg.vector_norm(w))
        self.alphas.append(alpha)
        self.scale = max(self.scale, abs(alpha), beta)
        if j + 1 >= self.max_steps:
            self.betas.append(beta)
            return
        if beta <= 100 * self.eps * self.scale:
            # An invariant subspace. With a basis: continue from a fresh random direction, so that
            # repeated eigenvalues and the rest of the spectrum are still reached (T splits into
            # blocks). Without one, the Ritz values found are exact: stop.
            self.betas.append(0.0)
            if self.basis is None:
                self.exhausted = True
                self.max_steps = j + 1
                return
            r = _random_vectors((self.n,), "gaussian", self.generator, w.dtype, w.device)
            r = self.basis.orthogonalize(r)
            nxt = r / torch.linalg.vector_norm(r)
        else:
            self.betas.append(beta)
            nxt = w.div_(beta) if self.basis is None else w / beta
        self.q_prev, self.q = q, nxt
        if self.basis is not None:
            self.basis.append(nxt)

    def result(self, keep_basis: bool = True) -> LanczosResult:
        m = self.steps
        basis = None
        if keep_basis and self.basis is not None:
            basis = self.basis.stacked()[:m]
        return LanczosResult(
            alphas=torch.tensor(self.alphas, dtype=torch.float64),
            betas=torch.tensor(self.betas[: m - 1], dtype=torch.float64),
            basis=basis,
            start_norm=self.start_norm,
            residual=self.betas[m - 1] if m < self.n and not self.exhausted else 0.0,
        )


def _basis_device(basis_device, reorthogonalize: bool, operator):
    """Where the Lanczos vectors live: None (not kept), or a device."""
    if not reorthogonalize:
        return None
    if basis_device is None:
        return operator.device
    return check_device("basis_device", basis_device, allow_none=False)


def lanczos(
    operator,
    num_iters: int,
    *,
    start: torch.Tensor | None = None,
    seed: int = 0,
    keep_basis: bool = True,
    reorthogonalize: bool = True,
    basis_device: str | torch.device | None = None,
    progress: bool | None = None,
) -> LanczosResult:
    """Run ``num_iters`` steps of Lanczos, with full reorthogonalization by default.

    Builds an orthonormal basis :math:`Q_m` of the Krylov space
    :math:`\\mathrm{span}\\{v_0, Hv_0, \\dots, H^{m-1}v_0\\}` and the tridiagonal
    :math:`T_m = Q_m^\\top H Q_m`. Every new vector is orthogonalized against all previous ones
    (twice), so no spurious copies of converged eigenvalues appear; when an invariant subspace is
    exhausted, the process restarts from a random vector orthogonal to the basis.
    Cost: ``num_iters`` products and :math:`O(m^2 P)` for the orthogonalization; memory
    :math:`mP`, grown as the steps are taken (on ``basis_device``).

    With ``reorthogonalize=False`` no basis is kept: the three-term recurrence
    :math:`\\beta_{j+1} q_{j+1} = Hq_j - \\alpha_j q_j - \\beta_j q_{j-1}` in three vectors of
    memory (:math:`O(P)`), as stochastic Lanczos quadrature needs. Rounding then slowly destroys
    the orthogonality of the :math:`q_j` and converged Ritz values reappear as close copies
    ("ghosts"); the extreme Ritz values and the quadrature moments stay accurate
    :cite:p:`golub2009matrices`. The run stops at an invariant subspace (no restart).

    Args:
        operator: a :class:`HessianOperator` or a symmetric ``(n, n)`` tensor.
        num_iters: number of steps :math:`m` (capped at :math:`n`).
        start: start vector ``(n,)``; default a Rademacher vector drawn with ``seed``.
        seed: seed of the start vector and of restarts.
        keep_basis: keep :math:`Q_m` in the result (needs ``reorthogonalize=True``).
        reorthogonalize: full reorthogonalization (memory :math:`mP`) or the plain
            recurrence (memory :math:`3P`).
        basis_device: where the basis is kept: the operator's device (None) or another one,
            e.g. ``"cpu"`` to keep accelerator memory at a few vectors.
        progress: show a progress bar (None: only on an interactive terminal).

    Returns:
        a :class:`LanczosResult`.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
        >>> res = lanczos(A, 10)
        >>> res.ritz()[0][-1].item()
        10.0
        >>> round(lanczos(A, 10, reorthogonalize=False, keep_basis=False).ritz()[0][-1].item(), 9)
        10.0
    """
    check_seed(seed)
    operator = _as_operator(operator)
    check_positive_int("num_iters", num_iters)
    check_bool("keep_basis", keep_basis)
    check_bool("reorthogonalize", reorthogonalize)
    if keep_basis and not reorthogonalize:
        raise ValueError(
            "keep_basis must be False when reorthogonalize=False, got True; the plain recurrence "
            "keeps no basis: pass keep_basis=False, or reorthogonalize=True to keep one"
        )
    device = _basis_device(basis_device, reorthogonalize, operator)
    n = operator.shape[0]
    generator = torch.Generator().manual_seed(seed)
    if start is None:
        start = _random_vectors((n,), "rademacher", generator, operator.dtype, operator.device)
    elif not isinstance(start, torch.Tensor) or start.shape != (n,):
        raise ValueError(f"start must be a tensor of shape ({n},), got {getattr(start, 'shape', start)!r}")
    start = start.to(dtype=operator.dtype, device=operator.device)
    process = _LanczosProcess(operator, start, num_iters, generator, device)
    bar = _progress(range(process.max_steps), process.max_steps, progress, "Lanczos")
    while process.steps < process.max_steps:
        process.step()
        bar.update()
    bar.close()
    return process.result(keep_basis)


# --------------------------------------------------------------------------------------------
# Eigenpairs
# --------------------------------------------------------------------------------------------


@dataclass
class EigenResult:
    """Eigenpairs from :func:`top_eigenpairs`.

    Attributes:
        eigenvalues: ``(k,)``, ordered as requested (largest first for ``which="largest"``).
        eigenvectors: ``(k, P)``, unit norm, in the operator's dtype (None when
            :func:`top_eigenpairs` was asked for eigenvalues only).
        residuals: ``(k,)``, :math:`\\lVert H u - \\lambda u \\rVert` (an error bound on each
            eigenvalue: some eigenvalue of :math:`H` lies within it).
        converged: ``(k,)`` bool, residual within the tolerance.
        num_matvecs: Hessian-vector products used.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor | None
    residuals: torch.Tensor
    converged: torch.Tensor
    num_matvecs: int


_WHICH = ("largest", "smallest", "magnitude", "both_ends")


def _select(values: torch.Tensor, k: int, which: str) -> torch.Tensor:
    """Indices of the wanted Ritz values among ascending ``values``, in output order."""
    m = values.numel()
    if which == "largest":
        return torch.arange(m - 1, m - 1 - k, -1)
    if which == "smallest":
        return torch.arange(k)
    if which == "magnitude":
        return torch.argsort(values.abs(), descending=True, stable=True)[:k]
    return torch.tensor([m - 1, 0])  # both_ends: (largest, smallest)


def _merge_copies(values: torch.Tensor, bounds: torch.Tensor, width: float, converged: float):
    """Indices (ascending) of the Ritz values of an unreorthogonalized run that are not copies.

    Runs of values closer than ``width`` keep the one with the smallest residual bound (the
    converged copies of one eigenvalue). A value not converged (bound above ``converged``) whose
    interval :math:`[\\theta - b, \\theta + b]` holds a converged value is dropped too: it is a
    copy still forming (or an eigenvalue not yet resolved from its neighbour)."""
    keep: list[int] = []
    for i in range(values.numel()):
        if keep and float(values[i] - values[keep[-1]]) <= width:
            if float(bounds[i]) < float(bounds[keep[-1]]):
                keep[-1] = i
        else:
            keep.append(i)
    done = [float(values[i]) for i in keep if float(bounds[i]) <= converged]
    keep = [
        i for i in keep
        if float(bounds[i]) <= converged
        or not any(abs(float(values[i]) - d) <= float(bounds[i]) for d in done)
    ]
    return torch.tensor(keep, dtype=torch.long)


def _lanczos_eigenpairs(op, k, which, tol, max_iters, generator, progress, start, basis_device):
    process = _LanczosProcess(op, start, max_iters, generator, basis_device)
    need = 2 if which == "both_ends" else k
    bar = _progress(range(process.max_steps), process.max_steps, progress, "Lanczos eigenpairs")
    while process.steps < process.max_steps:
        process.step()
        bar.update()
        m = process.steps
        if m < need:
            continue
        res = process.result(keep_basis=False)
        values, vectors = res.ritz()
        all_bounds = (res.residual * vectors[m - 1]).abs()
        scale = values.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
        if process.basis is None:
            # Without reorthogonalization a converged eigenvalue reappears as a close copy
            # (a "ghost"): merge Ritz values closer than the tolerance, keep the best bound.
            # Copies differ by rounding, about eps times the scale (float32: 1e-6 relative).
            width = max(tol, 1000 * torch.finfo(op.dtype).eps) * float(scale)
            kept = _merge_copies(values, all_bounds, width, width)
            if kept.numel() < need and process.steps < process.max_steps:
                continue
            values, vectors, all_bounds = values[kept], vectors[:, kept], all_bounds[kept]
        idx = _select(values, min(k, values.numel()), which)
        bounds = all_bounds[idx]
        if bool((bounds <= tol * scale).all()) or process.steps >= process.max_steps:
            break
    bar.close()  # the loop always runs at least `need` steps (checked by the caller)
    eigenvectors = None
    if process.basis is not None:
        chosen = vectors[:, idx].T  # (k, m) coefficients on the basis
        eigenvectors = process.basis.combine(chosen).to(op.device)
    return values[idx], eigenvectors, bounds, bounds <= tol * scale, m


def _power_eigenpairs(op, k, tol, max_iters, generator, progress):
    n = op.shape[0]
    found_vals, found_vecs, residuals, matvecs = [], [], [], 0
    bar = _progress(range(k * max_iters), k * max_iters, progress, "power iteration")
    for _ in range(k):
        basis = torch.stack(found_vecs) if found_vecs else None
        v = _random_vectors((n,), "gaussian", generator, op.dtype, op.device)
        value, residual, unit = 0.0, math.inf, v
        for _ in range(max_iters):
            if basis is not None:
                # Rounding leaves components along the pairs already found; remove them each time.
                v = v - (basis @ v) @ basis
            unit = v / torch.linalg.vector_norm(v)
            w = op.matvec(unit)
            matvecs += 1
            bar.update()
            if basis is not None:
                # The deflated operator (I - UU^T) H (I - UU^T): its residual is the one to test.
                w = w - (basis @ w) @ basis
            value = float(unit @ w)
            residual = float(torch.linalg.vector_norm(w - value * unit))
            if residual <= tol * abs(value):
                break
            v = w
        found_vals.append(value)
        found_vecs.append(unit)
        residuals.append(residual)
    bar.close()
    vals = torch.tensor(found_vals, dtype=torch.float64)
    res = torch.tensor(residuals, dtype=torch.float64)
    return vals, torch.stack(found_vecs), res, res <= tol * vals.abs(), matvecs


def top_eigenpairs(
    operator,
    k: int = 1,
    *,
    which: str | None = None,
    method: str = "lanczos",
    tol: float = 1e-6,
    max_iters: int | None = None,
    seed: int = 0,
    eigenvectors: bool = True,
    basis_device: str | torch.device | None = None,
    progress: bool | None = None,
) -> EigenResult:
    """The ``k`` extreme eigenvalues and eigenvectors of :math:`H`.

    Lanczos (default): Ritz pairs of :math:`T_m` (``eigh`` of the tridiagonal matrix) after each
    step; it stops when every wanted pair has residual :math:`\\lVert Hu - \\theta u\\rVert =
    \\beta_m |s_{m,i}| \\le` ``tol`` :math:`\\cdot \\max_j|\\theta_j|`. The eigenvalue error is
    at most the residual and typically its square over the spectral gap. Like any single-vector
    Krylov method it finds one copy of an eigenvalue whose multiplicity exceeds one until it has
    exhausted an invariant subspace; use ``method="power"`` (or :func:`hessian_matrix`) when
    exact multiplicities matter.

    Memory: Lanczos keeps its basis, grown one vector per product (:math:`mP` for :math:`m`
    products; nothing is reserved for steps not taken), on the operator's device or on
    ``basis_device`` (``"cpu"``: accelerator memory stays at the operator's plus a few vectors).
    With ``eigenvectors=False`` it keeps no basis at all: the three-term recurrence in
    :math:`O(P)` memory, as little as power iteration; close copies of converged Ritz values
    (rounding "ghosts" of the unreorthogonalized recurrence) are merged, so two genuine
    eigenvalues closer than :math:`\\max(\\text{tol}, 1000\\,\\epsilon)` times the spectral
    scale count as one (:math:`\\epsilon` the dtype's machine epsilon: 1.2e-4 for float32).

    Power iteration (``method="power"``, as in PyHessian, for comparison): :math:`v \\leftarrow
    Hv/\\lVert Hv\\rVert`, orthogonal to the pairs already found (deflation), until
    :math:`\\lVert Hv - \\lambda v\\rVert \\le` ``tol`` :math:`|\\lambda|`; it finds the
    eigenvalues of largest magnitude, ``max_iters`` products per pair at most.

    Args:
        operator: a :class:`HessianOperator` or a symmetric ``(n, n)`` tensor.
        k: number of eigenpairs (at most the dimension).
        which: ``"largest"`` (algebraic, default for Lanczos), ``"smallest"`` or
            ``"magnitude"`` (the only choice, and the default, for power iteration).
        method: ``"lanczos"`` or ``"power"``.
        tol: relative residual tolerance.
        max_iters: Lanczos steps in total (default ``min(n, max(100, 10 k))``), or power
            iterations per pair (default 1000).
        seed: seed of the start vectors.
        eigenvectors: return the eigenvectors; False keeps Lanczos at :math:`O(P)` memory.
        basis_device: where Lanczos keeps its basis (default the operator's device), e.g.
            ``"cpu"``; ignored with ``eigenvectors=False`` and for power iteration.
        progress: show a progress bar (None: only on an interactive terminal).

    Returns:
        an :class:`EigenResult` (``eigenvectors`` None when not asked for); a
        :class:`ConvergenceWarning` is issued if ``max_iters`` was
        reached before ``tol``.

    Raises:
        ValueError: ``k`` larger than the dimension or not positive, unknown ``which`` or
            ``method``, ``which`` other than ``"magnitude"`` with power iteration, ``tol <= 0``.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([5.0, -7.0, 1.0, 2.0], dtype=torch.float64))
        >>> top_eigenpairs(A, k=2).eigenvalues
        tensor([5., 2.], dtype=torch.float64)
        >>> top_eigenpairs(A, k=1, method="power").eigenvalues
        tensor([-7.], dtype=torch.float64)
        >>> top_eigenpairs(A, k=2, eigenvectors=False).eigenvectors is None
        True
    """
    check_seed(seed)
    op = _as_operator(operator)
    n = op.shape[0]
    check_positive_int("k", k)
    if k > n:
        raise ValueError(
            f"k={k} is larger than the number of parameters {n}; ask for at most {n} eigenpairs"
        )
    if method not in ("lanczos", "power"):
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
    if which is None:
        which = "largest" if method == "lanczos" else "magnitude"
    if which not in _WHICH[:3] and not (which == "both_ends" and method == "lanczos"):
        raise ValueError(f"which must be 'largest', 'smallest' or 'magnitude', got {which!r}")
    if method == "power" and which != "magnitude":
        raise ValueError(
            f"power iteration finds the eigenvalues of largest magnitude; which={which!r} needs "
            f"method='lanczos'"
        )
    check_positive_float("tol", tol, example=1e-6)
    if max_iters is not None:
        check_positive_int("max_iters", max_iters)
        if method == "lanczos" and max_iters < (2 if which == "both_ends" else k):
            raise ValueError(f"max_iters={max_iters} must be at least k={k} for Lanczos")
    check_bool("eigenvectors", eigenvectors)
    device = _basis_device(basis_device, eigenvectors, op)
    generator = torch.Generator().manual_seed(seed)
    if method == "lanczos":
        steps = max_iters if max_iters is not None else min(n, max(100, 10 * k))
        start = _random_vectors((n,), "rademacher", generator, op.dtype, op.device)
        vals, vecs, res, conv, used = _lanczos_eigenpairs(
            op, k, which, tol, steps, generator, progress, start, device
        )
    else:
        steps = max_iters if max_iters is not None else 1000
        vals, vecs, res, conv, used = _power_eigenpairs(op, k, tol, steps, generator, progress)
        if not eigenvectors:
            vecs = None
    if not bool(conv.all()):
        warnings.warn(
            f"{method} stopped after {used} products with residuals {res.tolist()} above "
            f"tol={tol} times the spectral scale; raise max_iters or tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    return EigenResult(vals, vecs, res, conv, used)
