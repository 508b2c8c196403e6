"""The Hessian of a model's loss as a linear operator, and the exact matrix for small models.

:class:`~normlib.hessian.HessianOperator` computes products :math:`Hv` (or blocks of them) with
``torch.func.functional_call`` on a flat parameter vector, in an explicit BatchNorm mode;
:func:`~normlib.hessian.hessian_matrix` stacks :math:`He_i`;
:func:`~normlib.hessian.preserved_model_state` is the guard every tool runs its passes under.
The eigen-solvers, estimators and conditioning helpers of :mod:`normlib.hessian` are built on
this operator.

Chapter: Hessian conditioning (``chapters/hessian.md``, :ref:`chap-hessian`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from normlib._checks import check_callable, check_mode, check_module, check_positive_int, check_tensor
from normlib._state import check_materialized, preserved_state

__all__ = ["preserved_model_state", "HessianOperator", "hessian_matrix"]


# --------------------------------------------------------------------------------------------
# Model state
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag, every buffer and every ``.grad`` on exit.

    Used around each forward pass of the Hessian tools; also on exceptions. Buffers are put back
    as the same tensor objects with their saved values, so a module that updates running
    statistics in place (BatchNorm in train mode) leaves no trace; only what changed is written
    back, without moving autograd's version counters, so a loss the user computed before can
    still be back-propagated (the same guard as ``normlib.propagation.preserved_state``).

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
    with preserved_state(model):
        yield


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

    Data-parallel (``process_group`` given): every rank of the group holds its own shard of the
    data (its batches) and an identical model; the loss, the gradient and every product are the
    count-weighted sums over all ranks' batches, divided by the global number of samples
    :math:`N = \\sum_{\\text{ranks}} \\sum_b n_b` (one ``all_reduce`` of :math:`P` numbers, or
    :math:`BP` for a block, per product). So :math:`H` is the Hessian of the mean loss over the
    concatenation of the shards, and every solver of :mod:`normlib.hessian` run on every rank
    (with the same ``seed``: the random vectors are drawn from a seeded CPU generator, identical
    on every rank) computes the single-process result on that data. A rank may hold no data.
    Call the solvers on every rank: each product is a collective. With BatchNorm in
    ``mode="train"`` each batch is normalized with its own statistics, on one process as on
    many: the distributed operator equals the single-process operator on the list of all ranks'
    batches (not on one concatenated batch, whose statistics no rank sees); use ``mode="eval"``
    (running statistics) or a model without batch statistics for the Hessian of one global batch.
    A ``DataLoader`` with ``torch.utils.data.DistributedSampler`` gives each rank a shard, but
    the sampler pads the data set with repeated samples to a multiple of the world size (unless
    ``drop_last=True``, which drops them): those samples then count twice. Shard so that every
    sample is on exactly one rank (e.g. ``Subset(dataset, range(rank, len(dataset), world))``)
    for the Hessian of the data set itself.

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
        process_group: None (this process's data only) or a ``torch.distributed`` process group
            (``torch.distributed.group.WORLD`` for all ranks) over which the data are sharded;
            the default process group must be initialized.

    Attributes:
        num_params: :math:`P`, the number of trainable scalars.
        shape: ``(P, P)``.
        dtype: the parameters' dtype (all must agree).
        device: the parameters' device (all must agree).
        loss: the loss :math:`L(\\theta)` on the data (float).
        num_samples: :math:`N`, the total number of samples (over all ranks).
        local_samples: the samples of this rank (``num_samples`` on one process).
        num_matvecs: Hessian-vector products computed so far (a cost counter).
        names: the trainable parameters' names, in the order of the flat vector.

    Raises:
        ValueError: unknown ``mode``, empty data (on every rank), a batch with no samples, a
            non-scalar loss, a model with no trainable parameters or with parameters of several
            dtypes or devices, parameters or buffers that differ between ranks.
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

    def __init__(self, model: nn.Module, loss_fn: Callable, data, *, mode: str,
                 process_group=None):
        check_module("model", model)
        check_callable("loss_fn", loss_fn, what="callable as loss_fn(output, target)")
        check_mode(mode)
        check_materialized(model, what="HessianOperator")
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
        self.process_group = _check_process_group(process_group)
        if self.process_group is not None:
            self._check_same_parameters()

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
        self.local_samples = count
        if self.process_group is not None:
            totals = torch.tensor([loss_sum, float(count)], dtype=torch.float64,
                                  device=self._collective_device())
            self._all_reduce(totals)
            loss_sum, count = float(totals[0]), int(round(float(totals[1])))
            grad_sum = self._all_reduce(grad_sum)
        if count == 0:
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
            if v.dim() == 1:  # no stacked copy: one vector of memory for one product
                out = self._graph_product(self._graph, v).unsqueeze(0)
            else:
                out = torch.stack([self._graph_product(self._graph, r) for r in rows])
            if self.process_group is not None:
                out = self._all_reduce(out * self.local_samples) / self.num_samples
        else:
            # Sum of n_b H_b v over this rank's batches, then over the ranks, over N.
            out = torch.zeros_like(rows)
            seen = 0
            for batch in (() if self._batches is None else self._batches):
                x, y, n = self._prepare(batch)
                _, grad = self._batch_gradient(x, y, create_graph=True)
                for i, r in enumerate(rows):
                    out[i] += self._graph_product(grad, r) * n
                seen += n
            if seen != self.local_samples:
                raise RuntimeError(
                    f"data yielded {seen} samples in this pass but {self.local_samples} when the "
                    f"operator was built; pass data that yields the same batches every time"
                )
            if self.process_group is not None:
                out = self._all_reduce(out)
            out = out / self.num_samples
        self.num_matvecs += rows.shape[0]
        return out[0] if v.dim() == 1 else out

    __matmul__ = matvec

    def __repr__(self) -> str:
        how = "one batch, cached graph" if self._graph is not None else (
            f"{len(self._batch_sizes)} batches, streamed"
        )
        ranks = ""
        if self.process_group is not None:
            ranks = f", {_dist().get_world_size(self.process_group)} ranks"
        return (
            f"HessianOperator(num_params={self.num_params}, mode={self.mode!r}, "
            f"num_samples={self.num_samples}{ranks}, {how}, dtype={self.dtype}, device={self.device})"
        )

    # -- internals ----------------------------------------------------------------------------

    def _collective_device(self) -> torch.device:
        # gloo reduces CPU tensors; NCCL needs them on the current CUDA device.
        backend = str(_dist().get_backend(self.process_group))
        return self.device if backend == "nccl" else torch.device("cpu")

    def _all_reduce(self, tensor: torch.Tensor, op=None) -> torch.Tensor:
        """Sum ``tensor`` over the ranks (in place when it already lives on the collective's device)."""
        dist = _dist()
        where = self._collective_device()
        moved = tensor.to(where)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM if op is None else op, group=self.process_group)
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def _check_same_parameters(self) -> None:
        # Parameters and floating buffers (running statistics), as float64: max == -max(-x).
        parts = [self._theta.detach().to(torch.float64)] + [
            b.detach().reshape(-1).to(device=self.device, dtype=torch.float64)
            for _, b in self.model.named_buffers() if b.is_floating_point()
        ]
        state = torch.cat(parts)
        both = torch.stack([state, -state])
        self._all_reduce(both, op=_dist().ReduceOp.MAX)
        if not torch.equal(both[0], state) or not torch.equal(-both[1], state):
            raise ValueError(
                "the model's parameters and buffers must be identical on every rank of "
                "process_group, got ranks that differ; load the same state_dict (or broadcast "
                "rank 0's) on every rank before building the operator"
            )

    def _check_vector(self, v, name: str) -> torch.Tensor:
        check_tensor(name, v)
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
            try:
                output = functional_call(self.model, {**params, **buffers}, (x,))
            except RuntimeError as err:
                if x.is_floating_point() and x.dtype != self.dtype:  # say why, not only what
                    raise TypeError(
                        f"data's inputs x are {x.dtype} but the model's parameters are "
                        f"{self.dtype}; convert one of them (x.to({self.dtype}) or "
                        f"model.to({x.dtype})) [{err}]") from err
                raise
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


def _dist():
    import torch.distributed as dist

    return dist


def _check_process_group(group):
    if group is None:
        return None
    dist = _dist()
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            f"process_group must be None when torch.distributed is not initialized, got "
            f"{group!r}; call torch.distributed.init_process_group first (torchrun, or "
            f"normlib.distributed.run_local), or pass process_group=None"
        )
    if group is not dist.group.WORLD and not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"process_group must be a torch.distributed ProcessGroup (e.g. "
            f"torch.distributed.group.WORLD) or None, got {type(group).__name__}"
        )
    return group


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
        if not bool(torch.isfinite(source).all()):
            raise ValueError(f"{name} has non-finite entries (NaN or inf)")
        scale = float(source.abs().max()) if source.numel() else 0.0
        asym = float((source - source.transpose(0, 1)).abs().max()) if source.numel() else 0.0
        if asym > 1e3 * torch.finfo(source.dtype).eps * max(scale, torch.finfo(source.dtype).tiny):
            raise ValueError(f"{name} must be symmetric (a Hessian is), but A - A^T has entries up to "
                             f"{asym:.3g}; pass (A + A.T) / 2 if the asymmetry is rounding")
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
