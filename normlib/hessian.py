"""The Hessian of a model's loss: products, the exact matrix, eigenpairs, trace and density.

For a model :math:`f_\\theta`, a loss :math:`\\ell` and data :math:`D` split into batches
:math:`B_1, \\dots, B_m` of sizes :math:`n_b`, the Hessian is

.. math::

    H = \\nabla^2_\\theta L(\\theta), \\qquad
    L(\\theta) = \\sum_b \\frac{n_b}{\\sum_c n_c}\\, \\ell\\big(f_\\theta(x_b), y_b\\big),

the second derivative of the batch-size-weighted mean loss with respect to every trainable
parameter, flattened into one vector :math:`\\theta \\in \\mathbb{R}^P`.

:class:`HessianOperator` computes products :math:`Hv` for vectors :math:`v` of shape ``(P,)``
(or blocks ``(B, P)``) without forming :math:`H`, with ``torch.func.functional_call`` on a flat
parameter vector and a second derivative of the gradient. On top of it:

- :func:`hessian_matrix`: the exact :math:`P \\times P` Hessian, for small models.
- :func:`top_eigenpairs`: extreme eigenvalues and eigenvectors by Lanczos with full
  reorthogonalization (default) or by power iteration with deflation.
- :func:`hessian_trace`: Hutchinson's estimator :math:`\\operatorname{tr} H \\approx \\frac1s
  \\sum_i z_i^\\top H z_i` with its standard error, or Hutch++ (a low-rank part computed exactly).
- :func:`spectral_density`: stochastic Lanczos quadrature (SLQ) of the eigenvalue density,
  smoothed with a Gaussian kernel.
- :func:`layer_second_moments`: per linear layer, the second moments of its inputs
  :math:`\\Sigma_x` and of its output gradients :math:`\\Sigma_{\\nabla h}`, the Kronecker factors
  of the layer's curvature block :cite:p:`martens2015optimizing`.
- :func:`run_sgd`: (full-batch or minibatch) gradient descent on a copy of a model, to test
  those thresholds.
- :func:`condition_number` and :func:`learning_rate_thresholds`: :math:`\\kappa =
  \\lambda_{\\max} / \\lambda_{\\min}`, the step :math:`1/\\lambda_{\\max}` that is optimal along the
  sharpest direction and the step :math:`2/\\lambda_{\\max}` above which gradient descent diverges.

The BatchNorm mode is explicit: ``mode="train"`` is the Hessian of the training loss, with batch
statistics (running statistics are neither used nor updated); ``mode="eval"`` is the Hessian of
the inference function, with the running statistics. The model's parameters, buffers, train/eval
flags and ``.grad`` fields are exactly as before after every call, also when it raises.

The chapter "Hessian conditioning" (``chapters/hessian.md``) explains what these numbers say
about training; the methods follow :cite:t:`ghorbani2019investigation` (SLQ density of neural
network Hessians), :cite:t:`yao2020pyhessian` (PyHessian), :cite:t:`golub2009matrices`
(Lanczos quadrature), :cite:t:`hutchinson1989stochastic` and :cite:t:`meyer2021hutch`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from normlib.hessian import HessianOperator, top_eigenpairs, hessian_trace
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    >>> x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    >>> op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), mode="train")
    >>> op.shape
    (67, 67)
    >>> eig = top_eigenpairs(op, k=2)
    >>> eig.eigenvalues.shape, bool(eig.converged.all())
    (torch.Size([2]), True)
    >>> est = hessian_trace(op, num_probes=20, seed=0)
    >>> bool(est.stderr > 0)
    True
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from normlib._checks import check_float, check_nonnegative_int, check_positive_float, check_positive_int

__all__ = [
    "HessianOperator",
    "preserved_model_state",
    "hessian_matrix",
    "lanczos",
    "LanczosResult",
    "top_eigenpairs",
    "EigenResult",
    "hessian_trace",
    "TraceEstimate",
    "spectral_density",
    "SpectralDensity",
    "condition_number",
    "learning_rate_thresholds",
    "LearningRateThresholds",
    "ConvergenceWarning",
    "layer_second_moments",
    "LayerMoments",
    "run_sgd",
    "SGDRun",
]

_MODES = ("train", "eval")


class ConvergenceWarning(UserWarning):
    """An iterative eigensolver stopped at its iteration limit before reaching its tolerance."""


# --------------------------------------------------------------------------------------------
# Model state
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag, every buffer and every ``.grad`` on exit.

    Used around each forward pass of the Hessian tools; also on exceptions. Buffers are put back
    as the same tensor objects with their saved values, so a module that updates running
    statistics in place (BatchNorm in train mode) leaves no trace.

    Args:
        model: any ``nn.Module``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> bn = nn.BatchNorm1d(3).eval()
        >>> with preserved_model_state(bn):
        ...     _ = bn.train()(torch.randn(8, 3) + 5.0)
        >>> bn.training, float(bn.running_mean.abs().max())
        (False, 0.0)
    """
    flags = [(module, module.training) for module in model.modules()]
    buffers = [
        (module, name, buf, buf.detach().clone())
        for module in model.modules()
        for name, buf in module._buffers.items()
        if buf is not None
    ]
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag
        with torch.no_grad():
            for module, name, buf, saved in buffers:
                module._buffers[name] = buf
                buf.copy_(saved)
        for p, grad in grads:
            p.grad = grad


# --------------------------------------------------------------------------------------------
# The operator
# --------------------------------------------------------------------------------------------


def _progress(iterable, total: int, progress: bool | None, desc: str):
    if progress is None:
        # Automatic: on an interactive terminal only. Notebook kernels report a terminal too,
        # and a bar per call would clutter every executed page; pass progress=True there.
        progress = sys.stderr is not None and sys.stderr.isatty() and "ipykernel" not in sys.modules
    return tqdm(iterable, total=total, disable=not progress, desc=desc, leave=False)


def _is_batch(obj) -> bool:
    return (
        isinstance(obj, (tuple, list))
        and len(obj) == 2
        and isinstance(obj[0], torch.Tensor)
        and isinstance(obj[1], torch.Tensor)
    )


class HessianOperator:
    """The Hessian of a model's loss on data, as a linear operator on flat parameter vectors.

    The operator is :math:`v \\mapsto Hv` with :math:`H = \\nabla^2_\\theta \\sum_b \\frac{n_b}{N}
    \\ell(f_\\theta(x_b), y_b)` over the model's trainable parameters (``requires_grad=True``)
    flattened in ``named_parameters()`` order. It is computed with ``torch.func.functional_call``
    on a flat vector :math:`\\theta` and reverse-over-reverse differentiation; the model's own
    parameters are never written.

    One batch: the graph of :math:`\\nabla_\\theta L` is built once and each product costs one
    second backward pass (about the cost of a forward plus backward pass). An iterable of batches:
    each product streams over the batches (memory of one batch; about twice the cost of a forward
    plus backward pass per batch) and weights each batch by its size.

    Args:
        model: the network; inputs ``x: (N, *)``.
        loss_fn: ``loss_fn(output, target)`` returning a scalar, the mean over the batch
            (for example ``nn.CrossEntropyLoss()``).
        data: one batch ``(x, y)`` of tensors, or a re-iterable of such batches (a list, a
            ``DataLoader``). Tensors are moved to the parameters' device.
        mode: ``"train"`` for the Hessian of the training loss with batch statistics
            (running statistics neither used nor updated; dropout, if any, active) or ``"eval"``
            for the inference function with running statistics. Required: the two Hessians
            differ for any network with BatchNorm.

    Attributes:
        num_params: :math:`P`, the number of trainable scalars.
        shape: ``(P, P)``.
        dtype: the parameters' dtype (all must agree).
        device: the parameters' device (all must agree).
        loss: the loss :math:`L(\\theta)` on the data (float).
        num_samples: :math:`N`, the total number of samples.
        num_matvecs: Hessian-vector products computed so far (a cost counter).
        names: the trainable parameters' names, in the order of the flat vector.

    Raises:
        ValueError: unknown ``mode``, empty data, a batch with no samples, a non-scalar loss, a
            model with no trainable parameters or with parameters of several dtypes or devices.
        TypeError: ``loss_fn`` not callable, ``data`` neither a batch nor a re-iterable of batches,
            a one-shot iterator.

    Paper: :cite:t:`pearlmutter1994fast` (fast exact Hessian-vector products).
    Chapter: "Hessian conditioning".

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(3, 1, bias=False).double()
        >>> x = torch.eye(3, dtype=torch.float64) * 2.0
        >>> op = HessianOperator(model, nn.MSELoss(), (x, torch.zeros(3, 1, dtype=torch.float64)),
        ...                      mode="eval")
        >>> op.matvec(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))  # H = 2 E[x x^T]
        tensor([2.6667, 0.0000, 0.0000], dtype=torch.float64)
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, data, *, mode: str):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be callable as loss_fn(output, target), got {type(loss_fn).__name__}"
            )
        if mode not in _MODES:
            raise ValueError(
                f"mode must be 'train' (batch statistics) or 'eval' (running statistics), "
                f"got {mode!r}"
            )
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model has no parameters with requires_grad=True; nothing to differentiate")
        dtypes = {p.dtype for _, p in named}
        devices = {p.device for _, p in named}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                f"all trainable parameters must share one dtype and device, got dtypes "
                f"{sorted(map(str, dtypes))} and devices {sorted(map(str, devices))}; "
                f"call model.to(dtype=..., device=...) first"
            )
        self.model, self.loss_fn, self.mode = model, loss_fn, mode
        self.names = [n for n, _ in named]
        self._shapes = [p.shape for _, p in named]
        self._sizes = [p.numel() for _, p in named]
        self.num_params = sum(self._sizes)
        self.dtype, self.device = named[0][1].dtype, named[0][1].device
        self.shape = (self.num_params, self.num_params)
        self.num_matvecs = 0
        self._theta = torch.cat([p.detach().reshape(-1) for _, p in named]).requires_grad_(True)

        if _is_batch(data):
            self._batches = None
            batches = [data]
        else:
            try:
                iterator = iter(data)
            except TypeError:
                raise TypeError(
                    f"data must be one batch (x, y) of tensors or a re-iterable of such batches "
                    f"(a list or a DataLoader), got {type(data).__name__}"
                ) from None
            if iterator is data:
                raise TypeError(
                    "data is a one-shot iterator: the Hessian needs a pass over it per product; "
                    "pass list(data) or a DataLoader instead"
                )
            self._batches = data
            batches = iterator

        # One pass: validates the data and the loss, records the loss and gradient, and keeps
        # the gradient's graph when the data turn out to be a single batch.
        grad_sum = torch.zeros_like(self._theta, requires_grad=False)
        loss_sum, count, sizes, first_graph = 0.0, 0, [], None
        for batch in batches:
            x, y, n = self._prepare(batch)
            loss, grad = self._batch_gradient(x, y, create_graph=not sizes)
            if not sizes:
                first_graph = grad
            else:
                first_graph = None
            loss_sum += float(loss) * n
            grad_sum += grad.detach() * n
            count += n
            sizes.append(n)
        if not sizes:
            raise ValueError("data contains no batches; pass at least one batch (x, y)")
        self.num_samples = count
        self.loss = loss_sum / count
        self._gradient = grad_sum / count
        self._batch_sizes = sizes
        # The graph of the gradient for one batch; None means stream over the batches.
        self._graph = first_graph if len(sizes) == 1 else None
        if self._graph is not None and self._batches is not None:
            self._batches = None

    # -- public -------------------------------------------------------------------------------

    def gradient(self) -> torch.Tensor:
        """The gradient :math:`\\nabla_\\theta L`, flat ``(P,)``."""
        return self._gradient.clone()

    def parameters_vector(self) -> torch.Tensor:
        """The trainable parameters :math:`\\theta` as one flat ``(P,)`` tensor (a copy)."""
        return self._theta.detach().clone()

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat ``(P,)`` vector into ``{parameter name: tensor of its shape}`` (views)."""
        vector = self._check_vector(vector, "vector")
        if vector.dim() != 1:
            raise ValueError(f"vector must have shape ({self.num_params},), got {tuple(vector.shape)}")
        return {
            n: chunk.view(s)
            for n, chunk, s in zip(self.names, vector.split(self._sizes), self._shapes)
        }

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """The product :math:`Hv` for ``v: (P,)``, or :math:`V H` row by row for ``v: (B, P)``.

        Args:
            v: one vector ``(P,)`` or a block of vectors ``(B, P)``.

        Returns:
            ``Hv`` of the same shape as ``v``, in the operator's dtype and device.
        """
        v = self._check_vector(v, "v")
        rows = v.unsqueeze(0) if v.dim() == 1 else v
        if self._graph is not None:
            out = torch.stack([self._graph_product(self._graph, r) for r in rows])
        else:
            out = torch.zeros_like(rows)
            seen = 0
            for batch in self._batches:
                x, y, n = self._prepare(batch)
                _, grad = self._batch_gradient(x, y, create_graph=True)
                for i, r in enumerate(rows):
                    out[i] += self._graph_product(grad, r) * (n / self.num_samples)
                seen += n
            if seen != self.num_samples:
                raise RuntimeError(
                    f"data yielded {seen} samples in this pass but {self.num_samples} when the "
                    f"operator was built; pass data that yields the same batches every time"
                )
        self.num_matvecs += rows.shape[0]
        return out[0] if v.dim() == 1 else out

    __matmul__ = matvec

    def __repr__(self) -> str:
        how = "one batch, cached graph" if self._graph is not None else (
            f"{len(self._batch_sizes)} batches, streamed"
        )
        return (
            f"HessianOperator(num_params={self.num_params}, mode={self.mode!r}, "
            f"num_samples={self.num_samples}, {how}, dtype={self.dtype}, device={self.device})"
        )

    # -- internals ----------------------------------------------------------------------------

    def _check_vector(self, v, name: str) -> torch.Tensor:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
        if v.dim() not in (1, 2) or v.shape[-1] != self.num_params:
            raise ValueError(
                f"{name} must have shape ({self.num_params},) or (B, {self.num_params}), "
                f"got {tuple(v.shape)}"
            )
        return v.to(dtype=self.dtype, device=self.device)

    def _prepare(self, batch):
        if not _is_batch(batch):
            raise TypeError(
                f"each batch must be a pair (x, y) of tensors, got {type(batch).__name__}"
            )
        x, y = batch
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"a batch has no samples (x.shape={tuple(x.shape)}); drop empty batches")
        return x.to(self.device), y.to(self.device), int(x.shape[0])

    def _batch_gradient(self, x, y, *, create_graph: bool):
        params = {
            n: chunk.view(s)
            for n, chunk, s in zip(self.names, self._theta.split(self._sizes), self._shapes)
        }
        with torch.enable_grad(), preserved_model_state(self.model):
            self.model.train(self.mode == "train")
            # Fresh copies: modules may update buffers in place during the forward pass.
            buffers = {n: b.detach().clone() for n, b in self.model.named_buffers()}
            output = functional_call(self.model, {**params, **buffers}, (x,))
            loss = self.loss_fn(output, y)
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__}")
        if loss.numel() != 1 or loss.dim() != 0:
            raise ValueError(
                f"loss_fn must return a scalar (the mean loss over the batch), got shape "
                f"{tuple(loss.shape)}; use reduction='mean'"
            )
        if not loss.requires_grad:
            raise ValueError("the loss does not depend on the model's trainable parameters")
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss, self._theta, create_graph=create_graph)
        return loss.detach(), grad

    def _graph_product(self, grad: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not grad.requires_grad:
            # The gradient does not depend on theta: the loss is linear, H = 0.
            return torch.zeros_like(v)
        with torch.enable_grad():
            (hv,) = torch.autograd.grad(
                grad, self._theta, grad_outputs=v, retain_graph=True, allow_unused=True
            )
        return torch.zeros_like(v) if hv is None else hv.detach()


class _DenseOperator:
    """A symmetric matrix seen as an operator, so that every solver also runs on plain tensors."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix
        self.shape = tuple(matrix.shape)
        self.dtype, self.device = matrix.dtype, matrix.device
        self.num_matvecs = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.num_matvecs += 1 if v.dim() == 1 else v.shape[0]
        return v @ self.matrix.T  # rows v_i -> (H v_i)^T


def _as_operator(source, name: str = "operator"):
    if isinstance(source, torch.Tensor):
        if source.dim() != 2 or source.shape[0] != source.shape[1]:
            raise ValueError(f"{name} as a tensor must be a square (n, n) matrix, got {tuple(source.shape)}")
        if not source.is_floating_point():
            raise TypeError(f"{name} must be a floating-point matrix, got {source.dtype}")
        return _DenseOperator(source)
    if all(hasattr(source, a) for a in ("matvec", "shape", "dtype", "device")):
        return source
    raise TypeError(
        f"{name} must be a HessianOperator (or an object with matvec, shape, dtype, device) or a "
        f"symmetric (n, n) tensor, got {type(source).__name__}"
    )


def _random_vectors(
    shape: tuple[int, ...], kind: str, generator: torch.Generator, dtype, device
) -> torch.Tensor:
    # Drawn on the CPU with a CPU generator: the same seed gives the same probes on every device.
    if kind == "rademacher":
        out = torch.randint(0, 2, shape, generator=generator).to(torch.float64).mul_(2).sub_(1)
    elif kind == "gaussian":
        out = torch.randn(shape, generator=generator, dtype=torch.float64)
    else:
        raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {kind!r}")
    # Cast on the CPU first: some devices (MPS) have no float64.
    return out.to(dtype).to(device)


# --------------------------------------------------------------------------------------------
# Exact Hessian
# --------------------------------------------------------------------------------------------


def hessian_matrix(
    operator: HessianOperator, *, max_params: int = 5000, progress: bool | None = None
) -> torch.Tensor:
    """The exact Hessian :math:`H \\in \\mathbb{R}^{P \\times P}`, one column per product :math:`He_i`.

    Args:
        operator: a :class:`HessianOperator`.
        max_params: refuse models with more parameters (the matrix has :math:`P^2` entries and
            takes :math:`P` products).
        progress: show a progress bar (None: only on an interactive terminal).

    Returns:
        ``(P, P)`` tensor, symmetric up to rounding.

    Raises:
        ValueError: ``P > max_params``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(2, 1, bias=False).double()
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
        >>> op = HessianOperator(model, nn.MSELoss(), (x, torch.zeros(2, 1).double()), mode="eval")
        >>> hessian_matrix(op)  # 2 E[x x^T]
        tensor([[1., 0.],
                [0., 9.]], dtype=torch.float64)
    """
    operator = _as_operator(operator)
    p = operator.shape[0]
    check_positive_int("max_params", max_params)
    if p > max_params:
        raise ValueError(
            f"the model has {p} trainable parameters > max_params={max_params}; the exact Hessian "
            f"needs {p} products and {p * p} entries. Raise max_params, or use top_eigenpairs / "
            f"hessian_trace / spectral_density, which never form H"
        )
    eye = torch.eye(p, dtype=operator.dtype, device=operator.device)
    # Blocks of columns: a streamed operator then builds each batch's graph once per block.
    chunk = 64
    starts = range(0, p, chunk)
    rows = [
        operator.matvec(eye[i : i + chunk])
        for i in _progress(starts, len(starts), progress, "Hessian columns")
    ]
    # Row i of the blocks is H e_i, the i-th column; H is symmetric, so this is H up to rounding.
    return torch.cat(rows, dim=0).T


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


class _LanczosProcess:
    """Lanczos with full reorthogonalization, one step (one product) at a time."""

    def __init__(self, operator, start: torch.Tensor, max_steps: int, generator: torch.Generator):
        self.op, self.generator = operator, generator
        n = operator.shape[0]
        self.n, self.max_steps = n, min(max_steps, n)
        self.basis = torch.zeros(self.max_steps, n, dtype=operator.dtype, device=operator.device)
        self.start_norm = float(torch.linalg.vector_norm(start))
        if not self.start_norm > 0 or not math.isfinite(self.start_norm):
            raise ValueError(f"the start vector must be finite and non-zero, norm={self.start_norm}")
        self.basis[0] = start / self.start_norm
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.scale = 0.0
        self.eps = torch.finfo(operator.dtype).eps

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def _orthogonalize(self, w: torch.Tensor, j: int) -> torch.Tensor:
        # Classical Gram-Schmidt twice: orthogonal to working precision against all kept vectors.
        q = self.basis[: j + 1]
        for _ in range(2):
            w = w - (q @ w) @ q
        return w

    def step(self) -> None:
        j = self.steps
        q = self.basis[j]
        w = self.op.matvec(q)
        alpha = float(q @ w)
        w = self._orthogonalize(w, j)
        beta = float(torch.linalg.vector_norm(w))
        self.alphas.append(alpha)
        self.scale = max(self.scale, abs(alpha), beta)
        if j + 1 >= self.max_steps:
            self.betas.append(beta)
            return
        if beta <= 100 * self.eps * self.scale:
            # An invariant subspace: continue from a fresh random direction, so that repeated
            # eigenvalues and the rest of the spectrum are still reached. T splits into blocks.
            self.betas.append(0.0)
            r = _random_vectors((self.n,), "gaussian", self.generator, w.dtype, w.device)
            r = self._orthogonalize(r, j)
            self.basis[j + 1] = r / torch.linalg.vector_norm(r)
        else:
            self.betas.append(beta)
            self.basis[j + 1] = w / beta

    def result(self, keep_basis: bool = True) -> LanczosResult:
        m = self.steps
        return LanczosResult(
            alphas=torch.tensor(self.alphas, dtype=torch.float64),
            betas=torch.tensor(self.betas[: m - 1], dtype=torch.float64),
            basis=self.basis[:m] if keep_basis else None,
            start_norm=self.start_norm,
            residual=self.betas[m - 1] if m < self.n else 0.0,
        )


def lanczos(
    operator,
    num_iters: int,
    *,
    start: torch.Tensor | None = None,
    seed: int = 0,
    keep_basis: bool = True,
    progress: bool | None = None,
) -> LanczosResult:
    """Run ``num_iters`` steps of Lanczos with full reorthogonalization.

    Builds an orthonormal basis :math:`Q_m` of the Krylov space
    :math:`\\mathrm{span}\\{v_0, Hv_0, \\dots, H^{m-1}v_0\\}` and the tridiagonal
    :math:`T_m = Q_m^\\top H Q_m`. Every new vector is orthogonalized against all previous ones
    (twice), so no spurious copies of converged eigenvalues appear; when an invariant subspace is
    exhausted, the process restarts from a random vector orthogonal to the basis.
    Cost: ``num_iters`` products and :math:`O(m^2 P)` for the orthogonalization; memory
    :math:`mP`.

    Args:
        operator: a :class:`HessianOperator` or a symmetric ``(n, n)`` tensor.
        num_iters: number of steps :math:`m` (capped at :math:`n`).
        start: start vector ``(n,)``; default a Rademacher vector drawn with ``seed``.
        seed: seed of the start vector and of restarts.
        keep_basis: keep :math:`Q_m` in the result.
        progress: show a progress bar (None: only on an interactive terminal).

    Returns:
        a :class:`LanczosResult`.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
        >>> res = lanczos(A, 10)
        >>> res.ritz()[0][-1].item()
        10.0
    """
    operator = _as_operator(operator)
    check_positive_int("num_iters", num_iters)
    n = operator.shape[0]
    generator = torch.Generator().manual_seed(seed)
    if start is None:
        start = _random_vectors((n,), "rademacher", generator, operator.dtype, operator.device)
    elif not isinstance(start, torch.Tensor) or start.shape != (n,):
        raise ValueError(f"start must be a tensor of shape ({n},), got {getattr(start, 'shape', start)!r}")
    start = start.to(dtype=operator.dtype, device=operator.device)
    process = _LanczosProcess(operator, start, num_iters, generator)
    for _ in _progress(range(process.max_steps), process.max_steps, progress, "Lanczos"):
        process.step()
    return process.result(keep_basis)


# --------------------------------------------------------------------------------------------
# Eigenpairs
# --------------------------------------------------------------------------------------------


@dataclass
class EigenResult:
    """Eigenpairs from :func:`top_eigenpairs`.

    Attributes:
        eigenvalues: ``(k,)``, ordered as requested (largest first for ``which="largest"``).
        eigenvectors: ``(k, P)``, unit norm, in the operator's dtype.
        residuals: ``(k,)``, :math:`\\lVert H u - \\lambda u \\rVert` (an error bound on each
            eigenvalue: some eigenvalue of :math:`H` lies within it).
        converged: ``(k,)`` bool, residual within the tolerance.
        num_matvecs: Hessian-vector products used.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
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


def _lanczos_eigenpairs(op, k, which, tol, max_iters, generator, progress, start):
    process = _LanczosProcess(op, start, max_iters, generator)
    need = 2 if which == "both_ends" else k
    bar = _progress(range(process.max_steps), process.max_steps, progress, "Lanczos eigenpairs")
    for _ in bar:
        process.step()
        m = process.steps
        if m < need:
            continue
        res = process.result(keep_basis=False)
        values, vectors = res.ritz()
        idx = _select(values, k, which)
        bounds = (res.residual * vectors[m - 1, idx]).abs()
        scale = values.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
        if bool((bounds <= tol * scale).all()) or m == process.max_steps:
            break
    bar.close()  # the loop always runs at least `need` steps (checked by the caller)
    chosen = vectors[:, idx].to(op.dtype).to(op.device)
    eigenvectors = chosen.T @ process.basis[:m]
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
        progress: show a progress bar (None: only on an interactive terminal).

    Returns:
        an :class:`EigenResult`; a :class:`ConvergenceWarning` is issued if ``max_iters`` was
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
    """
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
    generator = torch.Generator().manual_seed(seed)
    if method == "lanczos":
        steps = max_iters if max_iters is not None else min(n, max(100, 10 * k))
        start = _random_vectors((n,), "rademacher", generator, op.dtype, op.device)
        vals, vecs, res, conv, used = _lanczos_eigenpairs(
            op, k, which, tol, steps, generator, progress, start
        )
    else:
        steps = max_iters if max_iters is not None else 1000
        vals, vecs, res, conv, used = _power_eigenpairs(op, k, tol, steps, generator, progress)
    if not bool(conv.all()):
        warnings.warn(
            f"{method} stopped after {used} products with residuals {res.tolist()} above "
            f"tol={tol} times the spectral scale; raise max_iters or tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    return EigenResult(vals, vecs, res, conv, used)


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
    progress: bool | None = None,
) -> SpectralDensity:
    """The eigenvalue density of :math:`H` by stochastic Lanczos quadrature (SLQ).

    Each run draws a Rademacher vector :math:`v`, runs ``num_iters`` Lanczos steps from it and
    keeps the eigenvalues :math:`\\theta_j` of :math:`T_m` with weights :math:`w_j = s_{1j}^2`
    (first components of its eigenvectors): :math:`\\frac{v^\\top g(H) v}{v^\\top v} \\approx
    \\sum_j w_j g(\\theta_j)`, exact for polynomials of degree :math:`\\le 2m - 1`
    :cite:p:`golub2009matrices,ghorbani2019investigation`. Averaging over runs estimates
    :math:`\\frac1P \\operatorname{tr} g(H)`. Cost: ``num_iters * num_runs`` products.

    Args:
        operator: a :class:`HessianOperator` or a symmetric ``(n, n)`` tensor.
        num_iters: Lanczos steps per run (capped at :math:`n`).
        num_runs: independent runs :math:`R`.
        seed: seed of the start vectors.
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
    op = _as_operator(operator)
    check_positive_int("num_iters", num_iters)
    check_positive_int("num_runs", num_runs)
    nodes, weights = [], []
    for r in _progress(range(num_runs), num_runs, progress, "SLQ runs"):
        res = lanczos(op, num_iters, seed=seed + r, keep_basis=False, progress=False)
        node, weight = res.quadrature()
        nodes.append(node)
        weights.append(weight)
    return SpectralDensity(torch.stack(nodes), torch.stack(weights), op.shape[0])


# --------------------------------------------------------------------------------------------
# Condition number and learning rates
# --------------------------------------------------------------------------------------------


def condition_number(
    source,
    *,
    rtol: float = 0.0,
    tol: float = 1e-6,
    max_iters: int | None = None,
    seed: int = 0,
) -> float:
    """The condition number :math:`\\kappa = \\lambda_{\\max} / \\lambda_{\\min}`.

    From a 1-D tensor of eigenvalues, or from an operator or symmetric matrix, whose two extreme
    eigenvalues are found by one Lanczos run. With ``rtol > 0`` (eigenvalues only), eigenvalues
    at most ``rtol`` :math:`\\cdot \\lambda_{\\max}` count as the null space and are ignored: the
    condition number on the range of a singular Hessian, such as a network's.

    Args:
        source: eigenvalues ``(n,)``, a :class:`HessianOperator` or a symmetric ``(n, n)`` tensor.
        rtol: relative cut-off for the null space (eigenvalue input only).
        tol, max_iters, seed: passed to the Lanczos run (operator input).

    Returns:
        :math:`\\kappa \\ge 1`, or ``inf`` when :math:`\\lambda_{\\min} \\le 0` (not positive definite).

    Raises:
        ValueError: ``rtol`` outside ``[0, 1)``, ``rtol > 0`` with an operator, no positive eigenvalue.

    Example:
        >>> import torch
        >>> condition_number(torch.tensor([4.0, 1.0, 0.5]))
        8.0
        >>> condition_number(torch.tensor([4.0, 1.0, 1e-9]), rtol=1e-6)
        4.0
    """
    check_float("rtol", rtol, low=0.0, high=1.0, high_open=True, example=1e-6)
    if isinstance(source, torch.Tensor) and source.dim() == 1:
        values = source.detach().cpu().to(torch.float64)
        if values.numel() == 0:
            raise ValueError("condition_number needs at least one eigenvalue")
    else:
        if rtol > 0:
            raise ValueError(
                "rtol > 0 needs the eigenvalues (a 1-D tensor); an operator gives only the extremes"
            )
        op = _as_operator(source, "source")
        if op.shape[0] == 1:
            values = op.matvec(torch.ones(1, dtype=op.dtype, device=op.device)).double().cpu()
        else:
            values = top_eigenpairs(
                op, 2, which="both_ends", tol=tol, max_iters=max_iters, seed=seed, progress=False
            ).eigenvalues
    lam_max = float(values.max())
    if lam_max <= 0:
        raise ValueError(f"no positive eigenvalue (largest is {lam_max}); kappa is undefined")
    kept = values[values > rtol * lam_max] if rtol > 0 else values
    lam_min = float(kept.min())
    return lam_max / lam_min if lam_min > 0 else math.inf


@dataclass(frozen=True)
class LearningRateThresholds:
    """Step sizes of gradient descent set by the top Hessian eigenvalue.

    Attributes:
        lambda_max: the top eigenvalue.
        optimal: :math:`1/\\lambda_{\\max}`, the step that removes the error along the top
            eigenvector in one step (for a quadratic).
        divergent: :math:`2/\\lambda_{\\max}`; above it the error along the top eigenvector grows
            by :math:`|1 - \\eta\\lambda_{\\max}| > 1` per step.
    """

    lambda_max: float
    optimal: float
    divergent: float


def learning_rate_thresholds(lambda_max) -> LearningRateThresholds:
    """The optimal (:math:`1/\\lambda_{\\max}`) and divergent (:math:`2/\\lambda_{\\max}`) steps.

    Along an eigenvector of eigenvalue :math:`\\lambda`, gradient descent on a quadratic multiplies
    the error by :math:`1 - \\eta\\lambda` per step :cite:p:`lecun2012efficient`.

    Args:
        lambda_max: a positive float, or an :class:`EigenResult` (its largest eigenvalue).

    Raises:
        ValueError: ``lambda_max`` not positive and finite.

    Example:
        >>> learning_rate_thresholds(4.0)
        LearningRateThresholds(lambda_max=4.0, optimal=0.25, divergent=0.5)
    """
    if isinstance(lambda_max, EigenResult):
        lambda_max = float(lambda_max.eigenvalues.max())
    value = float(lambda_max)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"lambda_max must be positive and finite, got {lambda_max!r}")
    return LearningRateThresholds(value, 1.0 / value, 2.0 / value)


# --------------------------------------------------------------------------------------------
# Per-layer second moments (Kronecker factors)
# --------------------------------------------------------------------------------------------


@dataclass
class LayerMoments:
    """Second moments of one linear layer's inputs and output gradients.

    For a layer :math:`h = Wx + b` and per-sample losses :math:`\\ell_n`,
    :math:`\\Sigma_x = \\mathbb E[x x^\\top]` and :math:`\\Sigma_{\\nabla h} =
    \\mathbb E[\\nabla_h \\ell\\, \\nabla_h \\ell^\\top]`. The layer's block of the Fisher (and of
    the Gauss-Newton curvature, for squared loss) is approximately
    :math:`\\Sigma_x \\otimes \\Sigma_{\\nabla h}`, so the block is well conditioned when both
    factors are, and blocks of different layers are alike when their factors' scales are.

    Attributes:
        name: the module's name in ``model.named_modules()``.
        input_moment: :math:`\\Sigma_x`, ``(d_in, d_in)``.
        grad_moment: :math:`\\Sigma_{\\nabla h}`, ``(d_out, d_out)``.
    """

    name: str
    input_moment: torch.Tensor
    grad_moment: torch.Tensor

    @property
    def input_scale(self) -> float:
        """:math:`\\operatorname{tr}\\Sigma_x / d_{in}`, the mean square of an input entry."""
        return float(self.input_moment.diagonal().mean())

    @property
    def grad_scale(self) -> float:
        """:math:`\\operatorname{tr}\\Sigma_{\\nabla h} / d_{out}`, the mean square of an output gradient."""
        return float(self.grad_moment.diagonal().mean())

    def input_condition(self, rtol: float = 0.0) -> float:
        """Condition number of :math:`\\Sigma_x` (see :func:`condition_number` for ``rtol``)."""
        return condition_number(torch.linalg.eigvalsh(self.input_moment.cpu().double()), rtol=rtol)

    def grad_condition(self, rtol: float = 0.0) -> float:
        """Condition number of :math:`\\Sigma_{\\nabla h}` (see :func:`condition_number`)."""
        return condition_number(torch.linalg.eigvalsh(self.grad_moment.cpu().double()), rtol=rtol)


def layer_second_moments(model: nn.Module, loss_fn: Callable, batch, *, mode: str) -> list[LayerMoments]:
    """:math:`\\Sigma_x` and :math:`\\Sigma_{\\nabla h}` of every ``nn.Linear`` layer, in forward order.

    One forward and one backward pass on ``batch``; inputs of shape ``(N, *, d)`` count each
    position as a sample. ``loss_fn`` returns the mean over the batch, so the per-sample output
    gradient is :math:`N` times the gradient of the mean. The two criteria of a well-conditioned
    landscape :cite:p:`huang2023normalization` read: the factors have equal scales across layers,
    and each is well conditioned within its layer.

    Args:
        model: a network with ``nn.Linear`` layers.
        loss_fn: ``loss_fn(output, target)`` returning the mean loss, a scalar.
        batch: one batch ``(x, y)``.
        mode: ``"train"`` (batch statistics) or ``"eval"`` (running statistics).

    Returns:
        a list of :class:`LayerMoments`. Hooks are removed and the model's state (buffers,
        flags, ``.grad``) is restored, also on exceptions.

    Raises:
        ValueError: unknown mode, a model without ``nn.Linear`` layers, a non-scalar loss.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
        >>> moments = layer_second_moments(net, nn.CrossEntropyLoss(), (x, y), mode="train")
        >>> [m.name for m in moments], tuple(moments[1].input_moment.shape)
        (['0', '2'], (4, 4))
    """
    if mode not in _MODES:
        raise ValueError(
            f"mode must be 'train' (batch statistics) or 'eval' (running statistics), got {mode!r}"
        )
    if not _is_batch(batch):
        raise TypeError(f"batch must be a pair (x, y) of tensors, got {type(batch).__name__}")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError("model has no nn.Linear layer; layer_second_moments measures linear layers")
    x, y = batch
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    records: dict[str, list] = {n: [] for n, _ in layers}
    handles = []

    def recorder(name):
        def hook(module, inputs, output):
            records[name].append((inputs[0].detach(), output))

        return hook

    try:
        with torch.enable_grad(), preserved_model_state(model):
            for name, module in layers:
                handles.append(module.register_forward_hook(recorder(name)))
            model.train(mode == "train")
            loss = loss_fn(model(x), y)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise ValueError(
                    f"loss_fn must return a scalar (the mean loss over the batch), got "
                    f"{getattr(loss, 'shape', type(loss).__name__)}"
                )
            outputs = [out for n, _ in layers for _, out in records[n]]
            grads = torch.autograd.grad(loss, outputs, allow_unused=True, materialize_grads=True)
    finally:
        for handle in handles:
            handle.remove()
    grads = iter(grads)
    result = []
    n = x.shape[0]
    for name, module in layers:
        ins, outs = [], []
        for inp, _ in records[name]:
            ins.append(inp.reshape(-1, module.in_features))
            outs.append(next(grads).detach().reshape(-1, module.out_features) * n)
        if not ins:
            continue  # the layer was not used in this forward pass
        xin, gout = torch.cat(ins), torch.cat(outs)
        result.append(LayerMoments(name, xin.T @ xin / len(xin), gout.T @ gout / len(gout)))
    return result


# --------------------------------------------------------------------------------------------
# Gradient descent on a copy
# --------------------------------------------------------------------------------------------


@dataclass
class SGDRun:
    """The result of :func:`run_sgd`.

    Attributes:
        model: the trained copy (the original is untouched).
        losses: ``(steps + 1,)`` float64: entry ``t < steps`` is the loss on step ``t``'s batch
            before the step, the last entry the loss on all of ``data`` after the last step
            (shorter when the run diverged).
        diverged: the loss became non-finite or grew a trillion-fold, and the run stopped.
    """

    model: nn.Module
    losses: torch.Tensor
    diverged: bool


def run_sgd(
    model: nn.Module,
    loss_fn: Callable,
    data,
    *,
    lr: float,
    steps: int,
    batch_size: int | None = None,
    momentum: float = 0.0,
    seed: int = 0,
) -> SGDRun:
    """Gradient descent :math:`\\theta \\leftarrow \\theta - \\eta \\nabla L` on a deep copy of ``model``.

    Full batch (``batch_size=None``): every step uses all of ``data``, so on a quadratic loss
    the error along an eigenvector of eigenvalue :math:`\\lambda` is multiplied by exactly
    :math:`1 - \\eta\\lambda` per step: the loss converges for :math:`\\eta < 2/\\lambda_{\\max}`
    and diverges above. With ``batch_size``, minibatches are drawn without replacement from a
    seeded shuffle, reshuffled every epoch. The copy is in train mode.

    Args:
        model: the network (not modified).
        loss_fn: ``loss_fn(output, target)``, a scalar.
        data: one batch ``(x, y)`` of tensors.
        lr: the step size :math:`\\eta > 0`.
        steps: number of steps.
        batch_size: minibatch size, or None for full-batch gradient descent.
        momentum: heavy-ball momentum of ``torch.optim.SGD``.
        seed: seed of the minibatch order.

    Returns:
        an :class:`SGDRun`.

    Raises:
        ValueError: non-positive ``lr`` or ``batch_size``, negative ``steps``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> x = torch.eye(2, dtype=torch.float64) * torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> model = nn.Linear(2, 1, bias=False).double()
        >>> run = run_sgd(model, nn.MSELoss(), (x, torch.ones(2, 1, dtype=torch.float64)),
        ...               lr=0.2, steps=200)
        >>> run.diverged, round(float(run.losses[-1]), 8)
        (False, 0.0)
    """
    check_positive_float("lr", lr, example=0.1)
    check_nonnegative_int("steps", steps)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    if not _is_batch(data):
        raise TypeError(f"data must be one batch (x, y) of tensors, got {type(data).__name__}")
    trained = copy.deepcopy(model).train()
    x, y = data
    device = next(trained.parameters()).device
    x, y = x.to(device), y.to(device)
    opt = torch.optim.SGD(trained.parameters(), lr=lr, momentum=momentum)
    generator = torch.Generator().manual_seed(seed)
    order, position = torch.randperm(len(x), generator=generator), 0
    losses, diverged = [], False

    def step_batch():
        nonlocal order, position
        if batch_size is None:
            return x, y
        if position + batch_size > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        idx = order[position : position + batch_size].to(device)
        position += batch_size
        return x[idx], y[idx]

    for t in range(steps + 1):
        bx, by = step_batch() if t < steps else (x, y)
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = loss_fn(trained(bx), by)
        value = float(loss.detach())
        losses.append(value)
        if not math.isfinite(value) or value > 1e12 * max(abs(losses[0]), 1e-12):
            diverged = True
            break
        if t < steps:
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return SGDRun(trained, torch.tensor(losses, dtype=torch.float64), diverged)
