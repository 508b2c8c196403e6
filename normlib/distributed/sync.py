"""Synchronized batch statistics: every batch-pooling normalizer over ``torch.distributed`` ranks.

In the NAP/NOP/NRR framework (chapter "Review I: normalizing activations"; chapter
"Normalization across devices") synchronization is a property of the partition: a statistic
pooled over the batch axis ``N`` of one process becomes, over ``K`` data-parallel ranks, a
count-weighted sum over the ranks. With ``n_r`` elements per statistic on rank ``r``,
``n = sum_r n_r``::

    mu = sum_r s_r / n,     sigma^2 = sum_r q_r / n - mu^2,     s_r = sum x,  q_r = sum x^2

(for whitening ``q_r = sum x x^T`` per group, so ``Sigma = sum_r q_r / n - mu mu^T``). One
all-reduce of ``[n_r, s_r, q_r]`` per layer and pass gives the statistics of the concatenated
batch on every rank, also when the shards differ in size or one is empty. The all-reduce is
differentiable (its backward all-reduces the incoming gradient), so autograd through it gives
every rank the gradient of the sum of all ranks' losses: with ``x_r`` the shard of rank ``r``,
``x_r.grad`` equals the single-process gradient on the concatenated batch for the rows of
``x_r``, and the sum over ranks of a parameter's local ``.grad`` equals its single-process
gradient (DDP then averages these local gradients; for a loss that is a mean over each rank's
equal shard, DDP's average is the single-process gradient of the mean over the whole batch).
Running statistics are updated from the global statistics with the global count (unbiased
variance ``n / (n - 1)``), so they are identical on every rank.

``q_r`` is accumulated about a shift ``c_r`` (the rank's mean rounded to the input dtype) and
corrected in float64, ``q_r = sum (x - c_r)^2 + 2 c_r s_r - n_r c_r^2`` with ``s_r`` summed in
float64, so that ``sum q / n - mu^2`` does not lose the digits of a float32 input whose mean is
large against its spread.

The layers (:class:`SyncBatchNorm` and the others) are the normlib layers with a
``process_group`` attribute; they synchronize in training (as ``torch.nn.SyncBatchNorm``), and
behave exactly as the local layer in evaluation, outside an initialized process group, or in a
group of one process. Every rank of the group must run the forward and the backward pass of
every synchronized layer in the same order (an empty batch too), as for torch's
``SyncBatchNorm``.

Example:
    >>> import torch
    >>> from normlib.distributed.sync import SyncBatchNorm
    >>> bn = SyncBatchNorm(4)  # no process group: a plain BatchNorm
    >>> bn(torch.randn(8, 4)).shape
    torch.Size([8, 4])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from normlib import functional as NF
from normlib.framework import _BATCH_SYNC
from normlib.layers import (
    BatchGroupNorm,
    BatchNorm,
    EvoNormB0,
    PopulationNorm,
    VarianceNorm,
    _guard_forward,
)
from normlib.multimode import ModeNorm, SwitchableNorm, SwitchableWhitening
from normlib.whitening import BatchWhitening

__all__ = [
    "Traffic",
    "count_traffic",
    "all_reduce_sum",
    "BatchStatisticsSync",
    "synchronized",
    "is_synchronizing",
    "SyncBatchNorm",
    "SyncBatchGroupNorm",
    "SyncVarianceNorm",
    "SyncPopulationNorm",
    "SyncEvoNormB0",
    "SyncBatchWhitening",
    "SyncModeNorm",
    "SyncSwitchableNorm",
    "SyncSwitchableWhitening",
    "SYNC_CLASSES",
]


# ----------------------------------------------------------------------------- communication


@dataclass
class Traffic:
    """What the synchronized layers sent while :func:`count_traffic` was active.

    ``calls`` all-reduces (forward and backward), ``numbers`` reduced values in all, ``bytes``
    their size on the wire (per rank, as sent into the all-reduce), and ``per_call`` the
    ``(numbers, dtype)`` of each call in order.
    """

    calls: int = 0
    numbers: int = 0
    bytes: int = 0
    per_call: list | None = None

    def add(self, t: Tensor) -> None:
        self.calls += 1
        self.numbers += t.numel()
        self.bytes += t.numel() * t.element_size()
        if self.per_call is not None:
            self.per_call.append((t.numel(), t.dtype))


_TRAFFIC: list[Traffic] = []


@contextlib.contextmanager
def count_traffic() -> Iterator[Traffic]:
    """Context: count the all-reduces of the synchronized layers (forward and backward).

    Example:
        >>> with count_traffic() as traffic:
        ...     pass
        >>> traffic.calls, traffic.bytes
        (0, 0)
    """
    record = Traffic(per_call=[])
    _TRAFFIC.append(record)
    try:
        yield record
    finally:
        _TRAFFIC.remove(record)


def _all_reduce(t: Tensor, group) -> Tensor:
    out = t.detach().clone().contiguous()
    for record in _TRAFFIC:
        record.add(out)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


class _AllReduceSum(torch.autograd.Function):
    """``sum_r t_r`` on every rank; the backward is the same all-reduce of the gradient."""

    @staticmethod
    def forward(ctx, t: Tensor, group) -> Tensor:
        ctx.group = group
        return _all_reduce(t, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # d(sum_s loss_s) / d t_r = sum_s d loss_s / d out_s: every rank's incoming gradient, summed.
        return _AllReduceSum.apply(grad.contiguous(), ctx.group), None


def all_reduce_sum(t: Tensor, group=None) -> Tensor:
    """Differentiable ``sum_r t_r`` over the ranks of ``group`` (the default group if ``None``).

    Its backward all-reduces the gradient, so that ``t_r.grad`` is the gradient of the sum of all
    ranks' losses. Every rank must call it (and back-propagate through it) in the same order.
    Counted by :func:`count_traffic`. The example runs a group of one process; with ``K`` ranks
    (``run_local`` or ``torchrun``) the value is the sum of the ``K`` tensors and the gradient is
    ``K`` times larger.

    Example:
        >>> import torch, torch.distributed as dist
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> t = torch.tensor([0.5], requires_grad=True)
        >>> total = all_reduce_sum(t)
        >>> (2 * total).sum().backward()
        >>> float(total.detach()), float(t.grad)
        (0.5, 2.0)
        >>> dist.destroy_process_group()
    """
    return _AllReduceSum.apply(t, group)


def _accumulation_dtype(t: Tensor) -> torch.dtype:
    """float64 for the sums (MPS has none: there the compute dtype)."""
    return t.dtype if t.device.type == "mps" else torch.float64


class BatchStatisticsSync:
    """Batch statistics of the concatenated batch of all ranks: one all-reduce per statistic.

    Set active by :func:`synchronized`; the framework's batch-pooling partitions
    (:meth:`normlib.framework.Partition.mean` and ``var_mean``), whitening's covariance and mode
    normalization's gate-weighted moments then call it. After a reduction ``count`` holds the
    global number of elements per statistic (used for the unbiased running estimates),
    ``batch_size`` the global number of samples and ``mode_mass`` (mode normalization only) the
    global gate mass per mode.

    Args:
        group: the process group (``None``: the default group).
    """

    def __init__(self, group=None):
        self.group = group
        self.count: int | None = None
        self.batch_size: int | None = None
        self.mode_mass: Tensor | None = None

    def _reduce(self, parts: list[Tensor], local_count: int, per_sample: int, what: str,
                minimum: int) -> tuple[int, list[Tensor]]:
        """All-reduce ``[count, *parts]`` in one call; check and record the global count."""
        acc = parts[0].dtype
        head = torch.tensor([float(local_count)], dtype=acc, device=parts[0].device)
        flat = torch.cat([head] + [p.reshape(-1) for p in parts])
        total = all_reduce_sum(flat, self.group)
        count = int(round(float(total[0].detach())))
        if count <= minimum:
            raise ValueError(
                f"the batch of all ranks must have more than {minimum} values per statistic for "
                f"{what}, got {count}; use a larger batch per rank or more ranks, or evaluation mode")
        self.count = count
        self.batch_size = count // per_sample if per_sample else 0
        out, start = [], 1
        for p in parts:
            out.append(total[start:start + p.numel()].reshape(p.shape))
            start += p.numel()
        return count, out

    @staticmethod
    def _local_sums(xv: Tensor, dims: tuple[int, ...], acc: torch.dtype):
        """``(n_r, s_r, shifted q_r)``: element count, sum and sum of squares (float ``acc``)."""
        n = math.prod(xv.shape[d] for d in dims)
        s = xv.sum(dim=dims, keepdim=True, dtype=acc)
        shift = (s / max(n, 1)).to(xv.dtype).detach()  # rounded to the input dtype: exact below
        d = xv - shift
        q = (d * d).sum(dim=dims, keepdim=True, dtype=acc)
        c = shift.to(acc)
        # sum x^2 = sum (x - c)^2 + 2 c sum x - n c^2, exact in any c; c is the local mean, so the
        # first term keeps the digits and the correction is done in float64.
        return n, s, q + 2 * c * s - n * c * c

    def mean(self, xv: Tensor, dims: tuple[int, ...]) -> Tensor:
        """Global mean of ``xv`` over ``dims`` (keepdim), ``dims`` including the batch axis 0."""
        acc = _accumulation_dtype(xv)
        n = math.prod(xv.shape[d] for d in dims)
        s = xv.sum(dim=dims, keepdim=True, dtype=acc)
        per_sample = math.prod(xv.shape[d] for d in dims if d != 0)
        count, (total,) = self._reduce([s], n, per_sample, "a synchronized batch mean", 0)
        return (total / count).to(xv.dtype)

    def var_mean(self, xv: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """Global biased variance and mean over ``dims`` (keepdim), as ``torch.var_mean``."""
        acc = _accumulation_dtype(xv)
        n, s, q = self._local_sums(xv, dims, acc)
        per_sample = math.prod(xv.shape[d] for d in dims if d != 0)
        count, (s, q) = self._reduce([s, q], n, per_sample, "synchronized batch statistics", 1)
        mean = s / count
        var = (q / count - mean * mean).clamp_min(0)
        return var.to(xv.dtype), mean.to(xv.dtype)

    def covariance(self, mat: Tensor) -> tuple[Tensor, Tensor]:
        """Global row means ``(..., d, 1)`` and biased covariance ``(..., d, d)`` of ``mat: (..., d, m)``.

        The ``m`` columns of every rank are the pooled samples (batch and positions); as
        :func:`normlib.whitening.covariance` on the columns of all ranks side by side.
        """
        acc = _accumulation_dtype(mat)
        m = mat.shape[-1]
        s = mat.sum(dim=-1, keepdim=True, dtype=acc)
        shift = (s / max(m, 1)).to(mat.dtype).detach()
        d = mat - shift
        scatter = (d @ d.transpose(-1, -2)).to(acc)
        c = shift.to(acc)
        ct = c.transpose(-1, -2)
        q = scatter + c @ s.transpose(-1, -2) + s @ ct - m * (c @ ct)
        g = mat.shape[-2]
        count, (s, q) = self._reduce([s, q], m, 1, f"synchronized whitening of {g} rows", g)
        mean = s / count
        cov = q / count - mean @ mean.transpose(-1, -2)
        cov = (cov + cov.transpose(-1, -2)) / 2
        return mean.to(mat.dtype), cov.to(mat.dtype)

    def mode_moments(self, gates: Tensor, x: Tensor) -> dict[str, Tensor]:
        """Mode normalization's statistics over all ranks: ``gates: (N, K)``, ``x: (N, C, S)``.

        ``mu_k = sum_n g_nk mean_S(x_n) / sum_n g_nk`` and
        ``sigma_k^2 = sum_n g_nk mean_S(x_n^2) / sum_n g_nk - mu_k^2`` with the sums over the
        samples of every rank; ``mode_mass`` keeps ``sum_n g_nk`` for the running estimate.
        """
        acc = _accumulation_dtype(x)
        s = x.shape[-1]
        g = gates.to(acc)
        shift = x.mean(dim=(0, 2)).detach() if x.shape[0] else x.new_zeros(x.shape[1])
        d = x - shift[None, :, None]
        first = x.mean(-1, dtype=acc)  # (N, C)
        second = (d * d).mean(-1, dtype=acc)
        c = shift.to(acc)[None, :]
        second = second + 2 * c * first - c * c  # mean_S(x^2), shift undone in float64
        parts = [g.sum(0), g.transpose(0, 1) @ first, g.transpose(0, 1) @ second]
        _, (mass, a, b) = self._reduce(parts, x.shape[0] * s, s, "synchronized mode normalization", 1)
        self.mode_mass = mass
        safe = mass.clamp_min(torch.finfo(mass.dtype).tiny).unsqueeze(-1)
        mean = a / safe
        var = (b / safe - mean * mean).clamp_min(0)
        return {"mean": mean.to(x.dtype), "var": var.to(x.dtype)}


def _group_size(group) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


@contextlib.contextmanager
def synchronized(process_group=None) -> Iterator[BatchStatisticsSync | None]:
    """Context: batch-pooled statistics computed inside are those of all ranks of the group.

    Outside an initialized process group, or in a group of one process, it does nothing (and
    yields ``None``): the computation is the local one.

    Example:
        >>> import torch
        >>> from normlib import functional as NF
        >>> with synchronized():  # one process: the local statistics
        ...     y = NF.batch_norm(torch.randn(8, 3), backend="framework")
        >>> y.shape
        torch.Size([8, 3])
    """
    if _group_size(process_group) <= 1:
        yield None
        return
    sync = BatchStatisticsSync(process_group)
    token = _BATCH_SYNC.set(sync)
    try:
        yield sync
    finally:
        _BATCH_SYNC.reset(token)


def is_synchronizing(module) -> bool:
    """Whether ``module`` (a synchronized layer) pools its statistics over ranks in its next forward.

    True in training mode inside an initialized process group of more than one process.
    """
    return bool(getattr(module, "training", False)) and _group_size(
        getattr(module, "process_group", None)) > 1


# ----------------------------------------------------------------------------- the layers


class _Synchronized:
    """Mixin: the layer's own forward, inside :func:`synchronized` when training over ranks."""

    process_group = None

    def _init_sync(self, process_group) -> None:
        self.process_group = process_group

    def forward(self, x, *args, **kwargs):
        if not is_synchronizing(self):
            return super().forward(x, *args, **kwargs)
        with synchronized(self.process_group):
            return self._synchronized_forward(x, *args, **kwargs)

    def _synchronized_forward(self, x, *args, **kwargs):
        return super().forward(x, *args, **kwargs)


def _sync_class(base: type, doc: str) -> type:
    """``Sync<base>``: ``base`` with a ``process_group`` keyword argument (last)."""

    def __init__(self, *args, process_group=None, **kwargs):
        base.__init__(self, *args, **kwargs)
        self._init_sync(process_group)

    cls = type(f"Sync{base.__name__}", (_Synchronized, base), {
        "__init__": __init__,
        "__doc__": doc,
        "__module__": __name__,
        "__qualname__": f"Sync{base.__name__}",
    })
    return cls


_DOC = """{what} with statistics synchronized over the ranks of ``process_group``.

    Same arguments as :class:`{base}` plus ``process_group`` (``None``: the default group).
    In training inside a process group of more than one process, {stats} are those of the
    concatenated batch of all ranks (see ``normlib.distributed.sync``); otherwise this is
    :class:`{base}`. :func:`normlib.distributed.convert_sync` builds it from an existing layer.

    Example:
        >>> import torch
        >>> from normlib.distributed.sync import {name}
        >>> {name}({example}).training
        True
"""


def _doc(name: str, base: str, what: str, stats: str, example: str) -> str:
    return _DOC.format(name=name, base=base, what=what, stats=stats, example=example)


class SyncBatchNorm(_Synchronized, BatchNorm):
    """Batch Normalization with statistics synchronized over the ranks of ``process_group``.

    Same arguments as :class:`normlib.layers.BatchNorm` plus ``process_group`` (``None``: the
    default group). In training inside a process group of more than one process, the mean and
    variance of every channel are those of the concatenated batch of all ranks, by one
    all-reduce of ``2 C + 1`` numbers per forward (and one in the backward); the framework path
    computes it (torch's kernel has no such statistics). Otherwise this is
    :class:`normlib.layers.BatchNorm`, with torch's kernel. Unlike ``torch.nn.SyncBatchNorm`` it
    runs on CPU tensors (gloo) as well as on GPUs (NCCL), and any ``(N, C, *)`` input.

    Example:
        >>> import torch
        >>> bn = SyncBatchNorm(3)
        >>> bn(torch.randn(4, 3, 2, 2)).shape
        torch.Size([4, 3, 2, 2])
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, backend: str = "auto",
                 device=None, dtype=None, process_group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, backend,
                         device, dtype)
        self._init_sync(process_group)

    def _framework_forward(self, x: Tensor) -> Tensor:
        # torch's kernel computes local statistics: the framework path pools over the ranks
        self._check(x)
        return NF.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                             self.training, self._momentum(), self.eps, "framework")

    _synchronized_forward = _guard_forward(_framework_forward)


SyncBatchGroupNorm = _sync_class(BatchGroupNorm, _doc(
    "SyncBatchGroupNorm", "normlib.layers.BatchGroupNorm", "Batch Group Normalization",
    "the group statistics", "8, num_groups=2"))
SyncVarianceNorm = _sync_class(VarianceNorm, _doc(
    "SyncVarianceNorm", "normlib.layers.VarianceNorm", "Variance Normalization",
    "the mean squares", "4"))
SyncPopulationNorm = _sync_class(PopulationNorm, _doc(
    "SyncPopulationNorm", "normlib.layers.PopulationNorm", "Population normalization",
    "the updates of the running estimates", "4"))
SyncEvoNormB0 = _sync_class(EvoNormB0, _doc(
    "SyncEvoNormB0", "normlib.layers.EvoNormB0", "EvoNorm-B0",
    "the batch variances (the instance variances stay per sample)", "4"))
SyncBatchWhitening = _sync_class(BatchWhitening, _doc(
    "SyncBatchWhitening", "normlib.whitening.BatchWhitening",
    "Batch whitening (ZCA, PCA, Cholesky, IterNorm, group-wise)",
    "the means and covariances (``d^2 + d`` numbers per group of ``d`` channels, plus the count)",
    "8, method='iternorm', group_size=4"))
SyncModeNorm = _sync_class(ModeNorm, _doc(
    "SyncModeNorm", "normlib.multimode.ModeNorm", "Mode Normalization",
    "the gate-weighted statistics of every mode", "8, num_modes=2"))
SyncSwitchableNorm = _sync_class(SwitchableNorm, _doc(
    "SyncSwitchableNorm", "normlib.multimode.SwitchableNorm", "Switchable Normalization",
    "the BatchNorm branch's statistics (IN and LN stay per sample)", "8"))
SyncSwitchableWhitening = _sync_class(SwitchableWhitening, _doc(
    "SyncSwitchableWhitening", "normlib.multimode.SwitchableWhitening", "Switchable Whitening",
    "the batch branches' mean and covariance (the instance ones stay per sample)",
    "8, group_size=4"))

#: normlib layer class -> its synchronized class (subclasses map through their nearest base).
SYNC_CLASSES: dict[type, type] = {
    BatchNorm: SyncBatchNorm,
    BatchGroupNorm: SyncBatchGroupNorm,
    VarianceNorm: SyncVarianceNorm,
    PopulationNorm: SyncPopulationNorm,
    EvoNormB0: SyncEvoNormB0,
    BatchWhitening: SyncBatchWhitening,
    ModeNorm: SyncModeNorm,
    SwitchableNorm: SyncSwitchableNorm,
    SwitchableWhitening: SyncSwitchableWhitening,
}
