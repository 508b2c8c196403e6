"""The NAP / NOP / NRR framework: one algorithm behind every activation normalizer.

Huang et al. (TPAMI 2023) decompose a normalizer acting on activations
``X`` of shape ``(N, C, *)`` into four steps (chapter "Review I: normalizing
activations"):

1. **NAP**, normalization area partitioning: ``Xp = Pi(X)`` decides which
   elements share statistics. A :class:`Partition` views ``X`` as
   ``(N, G, C // G, S)`` (``G`` channel groups, ``S`` the flattened spatial
   positions) and names the axes of that view its statistics pool over.
   :class:`RegionPartition` pools over data-given spatial regions instead.
   A NAP provides ``view``, ``groups``, ``mean``, ``var_mean`` and ``count``.
2. **NOP**, normalization operation: ``Xhat = Phi(Xp)``. An :class:`Operation`
   computes statistics of the partitioned view and applies them;
   :class:`Standardize` centers, scales, or both.
3. **NRR**, normalization representation recovery: ``Xtilde = Psi(Xhat)``. A
   recovery is any callable ``recovery(xhat_view, partition)``; :class:`Affine`
   is the learnable per-channel ``gamma * xhat + beta``.
4. Reshape back: ``Pi^{-1}``.

:func:`normalize` runs the four steps. BatchNorm, LayerNorm, InstanceNorm,
GroupNorm, Batch Group Normalization and Positional Normalization are the same
call with different partitions::

    partition         pooled axes of (N, G, C//G, S)   statistics per
    BATCH             N, C//G, S   with G = C          channel
    LAYER             C//G, S      with G = 1          sample
    INSTANCE          S            with G = C          sample and channel
    group(G)          C//G, S                          sample and group
    batch_group(G)    N, C//G, S                       group
    POSITIONAL        C//G         with G = 1          sample and position

Plugging in a new piece: a new NOP (e.g. whitening) implements the
:class:`Operation` methods. It receives the partitioned view and the
partition; one that needs the ``(B, d, m)`` matrix form of the deck (``d``
rows that are decorrelated jointly, ``m`` samples, ``B`` independent problems)
calls :meth:`Partition.to_matrix` and :meth:`Partition.from_matrix`. Running
statistics are kept per key of ``Operation.keys``: the layer owns the
buffers, ``Operation.running_value`` says what is averaged and
:meth:`Operation.from_running` turns a buffer back into a statistic.

Example:
    >>> import torch
    >>> from normlib.framework import BATCH, GROUP, Standardize, normalize
    >>> x = torch.randn(8, 4, 3, 3)
    >>> y = normalize(x, BATCH, Standardize(eps=1e-5))
    >>> bool(torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5))
    True
    >>> y = normalize(x, GROUP(2), Standardize(eps=1e-5))
    >>> y.shape
    torch.Size([8, 4, 3, 3])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from normlib._checks import check_eps, check_positive_int

__all__ = [
    "Partition",
    "BATCH",
    "LAYER",
    "INSTANCE",
    "POSITIONAL",
    "GROUP",
    "BATCH_GROUP",
    "RegionPartition",
    "Operation",
    "Standardize",
    "Affine",
    "normalize",
    "compute_dtype",
    "update_running",
    "batch_sync",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)

# ---- hook: synchronized batch statistics (set by normlib.distributed; None in one process) ----
class _Slot:
    """Holds the active reducer. A plain attribute rather than a ``ContextVar``: torch.compile
    traces an attribute read (and guards on it), while ``ContextVar.get`` breaks the graph."""

    __slots__ = ("value",)

    def __init__(self):
        self.value = None

    def get(self):
        return self.value

    def set(self, value):
        """Set ``value``; returns the previous one, the token for :meth:`reset`."""
        previous, self.value = self.value, value
        return previous

    def reset(self, token) -> None:
        self.value = token


_BATCH_SYNC = _Slot()


def batch_sync():
    """The reducer that pools batch statistics over processes, or ``None`` (the default).

    A synchronized layer of ``normlib.distributed`` sets it around its forward pass; then
    every statistic of a partition that pools over the batch (``mean``, ``var_mean``, whitening's
    covariance) is a count-weighted sum over the ranks, and checks of the batch size use the
    global count.

    Example:
        >>> batch_sync() is None
        True
    """
    return _BATCH_SYNC.get()
# ---- end hook ----


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are computed in: float32 for float16/bfloat16, else ``dtype``.

    Half-precision sums over thousands of elements lose several digits, and
    ``x * x`` overflows float16 above 256.

    Example:
        >>> compute_dtype(torch.float16)
        torch.float32
        >>> compute_dtype(torch.float64)
        torch.float64
    """
    return torch.float32 if dtype in _LOW_PRECISION else dtype


@dataclass(frozen=True)
class Partition:
    """NAP: which elements of an ``(N, C, *)`` tensor share statistics.

    The partition views ``x`` as ``(N, G, C // G, S)`` and pools over the
    channels within a group (axis 2) always, over the batch (axis 0) if
    ``pool_batch`` and over the spatial positions (axis 3) if ``pool_spatial``.

    Args:
        name: a short label (``"batch"``, ``"group"``, ...).
        pool_batch: statistics are shared across the samples of a batch.
        pool_spatial: statistics are shared across spatial positions.
        num_groups: number of channel groups ``G``; ``None`` means one group
            per channel (``G = C``), ``1`` means all channels together.

    Example:
        >>> p = Partition("group", pool_batch=False, pool_spatial=True, num_groups=2)
        >>> p.view(torch.zeros(5, 4, 3, 3)).shape
        torch.Size([5, 2, 2, 9])
        >>> p.dims
        (2, 3)
    """

    name: str
    pool_batch: bool
    pool_spatial: bool
    num_groups: int | None = None

    def __post_init__(self):
        check_positive_int("num_groups", self.num_groups, allow_none=True,
                           meaning="None: one group per channel")

    def groups(self, num_channels: int) -> int:
        """The number of channel groups ``G`` for ``num_channels`` channels.

        Raises:
            ValueError: if ``num_channels`` is not divisible by ``num_groups``.
        """
        if self.num_groups is None:
            return num_channels
        if num_channels % self.num_groups:
            raise ValueError(
                f"num_channels={num_channels} is not divisible by num_groups={self.num_groups}; "
                "choose num_groups among the divisors of the channel count"
            )
        return self.num_groups

    @property
    def dims(self) -> tuple[int, ...]:
        """The pooled axes of the ``(N, G, C // G, S)`` view."""
        return (0,) * self.pool_batch + (2,) + (3,) * self.pool_spatial

    def view(self, x: Tensor) -> Tensor:
        """``x: (N, C, *)`` as ``(N, G, C // G, S)`` (a view when ``x`` is contiguous)."""
        n, c = x.shape[:2]
        g = self.groups(c)
        return x.reshape(n, g, c // g, math.prod(x.shape[2:]))

    def count(self, view_shape: torch.Size) -> int:
        """The number of elements that share one statistic."""
        return math.prod(view_shape[d] for d in self.dims)

    def mean(self, xv: Tensor) -> Tensor:
        """Mean of ``xv`` over each set of elements sharing statistics (keepdim)."""
        if self.pool_batch and (sync := _BATCH_SYNC.get()) is not None:  # hook: over ranks
            return sync.mean(xv, self.dims)
        return xv.mean(dim=self.dims, keepdim=True)

    def var_mean(self, xv: Tensor) -> tuple[Tensor, Tensor]:
        """Biased variance and mean over each set of elements sharing statistics (keepdim)."""
        if self.pool_batch and (sync := _BATCH_SYNC.get()) is not None:  # hook: over ranks
            return sync.var_mean(xv, self.dims)
        return torch.var_mean(xv, dim=self.dims, correction=0, keepdim=True)

    def to_matrix(self, xv: Tensor) -> Tensor:
        """The deck's matrix form ``(B, d, m)`` of a view ``(N, G, C // G, S)``.

        ``d = G`` rows are the quantities a NOP may treat jointly (whitening
        decorrelates them), ``m`` counts the pooled elements, and ``B`` indexes
        independent problems (the unpooled batch and spatial axes).
        """
        kept = math.prod(xv.shape[d] for d in (0, 3) if d not in self.dims)  # explicit: N may be 0
        return xv.permute(self._order()).reshape(kept, xv.shape[1], self.count(xv.shape))

    def from_matrix(self, mat: Tensor, view_shape: torch.Size) -> Tensor:
        """Inverse of :meth:`to_matrix`: back to the view shape ``(N, G, C // G, S)``."""
        order = self._order()
        permuted_shape = [view_shape[d] for d in order]
        inverse = sorted(range(4), key=order.__getitem__)
        return mat.reshape(permuted_shape).permute(inverse)

    def _order(self) -> list[int]:
        kept = [d for d in (0, 3) if d not in self.dims]
        pooled = [d for d in (0, 2, 3) if d in self.dims]
        return kept + [1] + pooled

    def shares_statistics_with(self, shape: tuple[int, ...], index: tuple[int, ...]) -> Tensor:
        """Boolean mask of shape ``shape`` marking the elements pooled with ``x[index]``.

        Example:
            >>> BATCH.shares_statistics_with((2, 3, 2, 2), (0, 1, 0, 0)).sum().item()
            8
        """
        if len(index) != len(shape):
            raise ValueError(f"index {index} must have one entry per axis of shape {shape}")
        flat = torch.zeros(shape, dtype=torch.bool)
        flat[index] = True
        xv = self.view(flat)
        hit = xv.amax(dim=self.dims, keepdim=True)
        return hit.expand_as(xv).reshape(shape)


BATCH = Partition("batch", pool_batch=True, pool_spatial=True, num_groups=None)
LAYER = Partition("layer", pool_batch=False, pool_spatial=True, num_groups=1)
INSTANCE = Partition("instance", pool_batch=False, pool_spatial=True, num_groups=None)
POSITIONAL = Partition("positional", pool_batch=False, pool_spatial=False, num_groups=1)


def GROUP(num_groups: int) -> Partition:  # noqa: N802  (reads like the constants above)
    """GroupNorm's partition: ``num_groups`` channel groups per sample."""
    return Partition("group", pool_batch=False, pool_spatial=True, num_groups=num_groups)


def BATCH_GROUP(num_groups: int) -> Partition:  # noqa: N802
    """Batch Group Normalization's partition: channel groups pooled over the batch too."""
    return Partition("batch_group", pool_batch=True, pool_spatial=True, num_groups=num_groups)


class RegionPartition:
    """NAP of Region Normalization: per sample and channel, positions with one label share statistics.

    Unlike the axis partitions the sets are given by data: ``regions`` labels
    every spatial position of every sample with an integer in ``[0, R)``. The
    view is ``(N, C, 1, S)`` and the pooled moments are broadcast back to it.

    Args:
        regions: integer or boolean tensor of shape ``(N, *)`` or ``(N, 1, *)``
            with the spatial shape ``*`` of the input.
        num_regions: ``R``; inferred as ``regions.max() + 1`` if ``None``.

    Raises:
        TypeError: if ``regions`` is not an integer or boolean tensor.
        ValueError: if a label is negative or not below ``num_regions``.

    Example:
        >>> mask = torch.zeros(1, 2, 2, dtype=torch.bool); mask[0, 0] = True
        >>> p = RegionPartition(mask)
        >>> p.mean(p.view(torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]]))).flatten().tolist()
        [2.0, 2.0, 6.0, 6.0]
    """

    name = "region"
    dims = (3,)

    def __init__(self, regions: Tensor, num_regions: int | None = None):
        if not isinstance(regions, Tensor):
            raise TypeError(f"regions must be a torch.Tensor of labels, got {type(regions).__name__}")
        if regions.is_floating_point() or regions.is_complex():
            raise TypeError(
                f"regions must be an integer or boolean label tensor, got dtype {regions.dtype}; "
                "convert a 0/1 mask with mask.bool()"
            )
        check_positive_int("num_regions", num_regions, allow_none=True,
                           meaning="None: inferred from the labels")
        labels = regions.reshape(regions.shape[0], -1).long()
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(
                f"regions must hold labels >= 0, got the label {int(labels.min())}; "
                "relabel the regions as 0, 1, ..., R - 1"
            )
        top = int(labels.max()) if labels.numel() else -1
        if num_regions is not None and top >= num_regions:
            raise ValueError(
                f"regions holds the label {top} but num_regions={num_regions} allows only "
                f"labels 0..{num_regions - 1}; pass num_regions={top + 1} or None (inferred "
                "from the labels), or fix the mask"
            )
        r = max(top, 0) + 1 if num_regions is None else num_regions
        self.regions = regions
        self.labels = labels
        self.num_regions = r
        self._onehot: dict[torch.dtype, tuple[Tensor, Tensor]] = {}

    def groups(self, num_channels: int) -> int:
        return num_channels

    def view(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        return x.reshape(n, c, 1, math.prod(x.shape[2:]))

    def count(self, view_shape: torch.Size) -> int:
        raise ValueError("region statistics vary in size per sample; they have no running estimate")

    def _assignment(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        if dtype not in self._onehot:
            onehot = torch.nn.functional.one_hot(self.labels.to(device), self.num_regions)
            onehot = onehot.to(dtype)  # (N, S, R)
            counts = onehot.sum(dim=1, keepdim=True).clamp_min(1)  # (N, 1, R)
            self._onehot[dtype] = (onehot, counts)
        return self._onehot[dtype]

    def mean(self, xv: Tensor) -> Tensor:
        n, c, _, s = xv.shape
        onehot, counts = self._assignment(xv.dtype, xv.device)
        region_mean = torch.bmm(xv.reshape(n, c, s), onehot) / counts  # (N, C, R)
        return torch.bmm(region_mean, onehot.transpose(1, 2)).reshape(xv.shape)

    def var_mean(self, xv: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.mean(xv)
        centered = xv - mean
        return self.mean(centered * centered), mean


class Operation:
    """NOP interface: statistics of a partitioned view, and how to apply them.

    Subclasses set ``keys`` (names of their statistics, which are also the
    names of running buffers ``running_<key>``) and implement
    :meth:`statistics` and :meth:`apply`. Statistics are computed in
    :func:`compute_dtype` of the input.
    """

    keys: tuple[str, ...] = ()

    def statistics(self, xv: Tensor, partition: Partition) -> dict[str, Tensor]:
        """Batch statistics of the view ``xv: (N, G, C // G, S)``."""
        raise NotImplementedError

    def apply(self, xv: Tensor, stats: dict[str, Tensor], partition: Partition) -> Tensor:
        """The normalized view, same shape as ``xv``."""
        raise NotImplementedError

    def running_value(self, key: str, stat: Tensor, count: int) -> Tensor:
        """What a running buffer averages for statistic ``key``; ``count`` elements per statistic.

        The default averages the statistic itself over every axis except the
        group axis, so running buffers have shape ``(G,)``.
        """
        dims = [d for d in range(stat.dim()) if d != 1]
        return stat.mean(dim=dims) if dims else stat

    def from_running(self, key: str, buffer: Tensor, xv: Tensor, partition: Partition) -> Tensor:
        """A running buffer of shape ``(G,)`` as a statistic broadcastable to ``xv``."""
        return buffer.reshape(1, -1, 1, 1)


@dataclass(frozen=True)
class Standardize(Operation):
    """NOP ``Phi_SD``: ``(x - mu) / sqrt(sigma^2 + eps)`` with statistics over the partition.

    Args:
        eps: added to the variance; must be positive so constant inputs map to 0.
        center: subtract the mean. Without centering ``sigma^2`` is the mean
            square ``E[x^2]`` (RMSNorm, Variance Normalization, FRN).
        scale: divide by the standard deviation (or root mean square). Without
            scaling the operation only centers.

    The running variance is unbiased (``n / (n - 1)`` times the batch
    variance) as in torch; the running mean square needs no correction.
    """

    eps: float = 1e-5
    center: bool = True
    scale: bool = True

    def __post_init__(self):
        if not (self.center or self.scale):
            raise ValueError("Standardize needs center=True or scale=True (otherwise it is identity)")
        check_eps(self.eps)

    @property
    def keys(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("mean",) * self.center + ("var",) * self.scale

    def statistics(self, xv: Tensor, partition: Partition) -> dict[str, Tensor]:
        if self.center and self.scale:
            var, mean = partition.var_mean(xv)
            return {"mean": mean, "var": var}
        if self.center:
            return {"mean": partition.mean(xv)}
        return {"var": partition.mean(xv * xv)}

    def apply(self, xv: Tensor, stats: dict[str, Tensor], partition: Partition) -> Tensor:
        out = xv - stats["mean"] if self.center else xv
        if self.scale:
            out = out * torch.rsqrt(stats["var"] + self.eps)
        return out

    def running_value(self, key: str, stat: Tensor, count: int) -> Tensor:
        value = super().running_value(key, stat, count)
        if key == "var" and self.center and count > 1:
            value = value * (count / (count - 1))
        return value


@dataclass
class Affine:
    """NRR ``Psi_AF``: per-channel ``gamma * xhat + beta`` on the partitioned view.

    Args:
        weight: ``gamma`` of shape ``(C,)`` or ``None`` (no scaling).
        bias: ``beta`` of shape ``(C,)`` or ``None`` (no shift).
    """

    weight: Tensor | None = None
    bias: Tensor | None = None

    def __call__(self, xv: Tensor, partition: Partition) -> Tensor:
        shape = (1, xv.shape[1], xv.shape[2], 1)
        weight = None if self.weight is None else self.weight.to(xv.dtype).reshape(shape)
        bias = None if self.bias is None else self.bias.to(xv.dtype).reshape(shape)
        if weight is not None and bias is not None:
            return torch.addcmul(bias, xv, weight)  # one pass over the activations, not two
        if weight is not None:
            return xv * weight
        return xv if bias is None else xv + bias


def update_running(
    running: dict[str, Tensor],
    operation: Operation,
    stats: dict[str, Tensor],
    count: int,
    momentum: float,
) -> None:
    """In place: ``running[k] = (1 - momentum) * running[k] + momentum * value_k`` (no gradient)."""
    if (sync := _BATCH_SYNC.get()) is not None and sync.count is not None:  # hook: global count
        count = sync.count
    with torch.no_grad():
        updates = []
        for key in operation.keys:
            buf = running.get(key)
            if buf is None:
                continue
            value = operation.running_value(key, stats[key].detach(), count).reshape(buf.shape)
            if buf.dtype in (torch.float16, torch.bfloat16):
                # Average in float32, and refuse (before any buffer is written) an estimate the
                # buffer cannot hold: float16 overflows at 65504, and inf turns into NaN later.
                new = buf.float().lerp(value.float(), momentum)
                limit = torch.finfo(buf.dtype).max
                if bool(torch.isfinite(value).all()) and float(new.abs().max()) > limit:
                    raise ValueError(
                        f"the running {key} ({float(new.abs().max()):.4g} at most) overflows the "
                        f"layer's {buf.dtype} buffers (largest value {limit:.6g}): keep "
                        "normalization layers in float32 (torch.autocast runs them so) or rescale "
                        "the input")
                updates.append((buf, new, None))
            else:
                updates.append((buf, value, momentum))
        for buf, value, weight in updates:
            if weight is None:
                buf.copy_(value)
            else:
                buf.lerp_(value.to(buf.dtype), weight)


def normalize(
    x: Tensor,
    partition: Partition,
    operation: Operation,
    recovery: Callable[[Tensor, Partition], Tensor] | None = None,
    *,
    running: dict[str, Tensor] | None = None,
    use_batch_stats: bool = True,
    momentum: float = 0.1,
) -> Tensor:
    """Algorithm 1 of the deck: partition, operation, recovery, reshape back.

    Args:
        x: input of shape ``(N, C, *)``, floating point.
        partition: the NAP.
        operation: the NOP.
        recovery: the NRR, ``recovery(xhat_view, partition) -> view``; ``None`` for none.
        running: running statistics by key (``{"mean": ..., "var": ...}``), each of
            shape ``(G,)``; updated in place when ``use_batch_stats`` is true.
        use_batch_stats: normalize with the statistics of ``x`` (training);
            otherwise with ``running`` (evaluation).
        momentum: weight of the new batch in the running averages.

    Returns:
        a tensor of the shape and dtype of ``x``.
    """
    xv = partition.view(x)
    xv = xv.to(compute_dtype(x.dtype))
    if use_batch_stats or not running:
        stats = operation.statistics(xv, partition)
        if running:
            update_running(running, operation, stats, partition.count(xv.shape), momentum)
    else:
        stats = {k: operation.from_running(k, running[k], xv, partition) for k in operation.keys}
        stats = {k: v.to(xv.dtype) for k, v in stats.items()}
    out = operation.apply(xv, stats, partition)
    if recovery is not None:
        out = recovery(out, partition)
    return out.reshape(x.shape).to(x.dtype)
