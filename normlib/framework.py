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
    traces an attribute read (and guards on it), while ``ContextVar.get`` breaks the graph. The
    value is one per process: synchronized layers run by several threads at once (as
    ``nn.DataParallel`` does) are not supported; DDP, one process per device, is."""

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
        return x.reshape(n, g, c // g, _numel(x.shape[2:]))

    def count(self, view_shape: torch.Size) -> int:
        """The number of elements that share one statistic."""
        count = 1
        for d in self.dims:  # a loop, not math.prod of a generator: torch.compile traces it
            count *= view_shape[d]
        return count

    def mean(self, xv: Tensor) -> Tensor:
        """Mean of ``xv`` over each set of elements sharing statistics (keepdim)."""
        if self.pool_batch and (sync := _BATCH_SYNC.get()) is not None:  # hook: over ranks
            return sync.mean(xv, self.dims)
        return xv.mean(dim=self.dims, keepdim=True)

    def var_mean(self, xv: Tensor) -> tuple[Tensor, Tensor]:
        """Biased variance and mean over each set of elements sharing statistics (keepdim).

        Two passes, ``mu = mean(x)`` then ``mean((x - mu)^2)``: as accurate as Welford's
        one-pass update (``torch.var_mean``) for large offsets, and several times faster on
        CPUs, where ``torch.var_mean`` runs at a fraction of the memory bandwidth.
        """
        if self.pool_batch and (sync := _BATCH_SYNC.get()) is not None:  # hook: over ranks
            return sync.var_mean(xv, self.dims)
        mean = xv.mean(dim=self.dims, keepdim=True)
        centered = xv - mean
        return (centered * centered).mean(dim=self.dims, keepdim=True), mean

    def to_matrix(self, xv: Tensor) -> Tensor:
        """The deck's matrix form ``(B, d, m)`` of a view ``(N, G, C // G, S)``.

        ``d = G`` rows are the quantities a NOP may treat jointly (whitening
        decorrelates them), ``m`` counts the pooled elements, and ``B`` indexes
        independent problems (the unpooled batch and spatial axes).
        """
        kept = 1  # explicit, N may be 0; a loop, not math.prod of a generator (torch.compile)
        for d in (0, 3):
            if d not in self.dims:
                kept *= xv.shape[d]
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
        return x.reshape(n, c, 1, _numel(x.shape[2:]))

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

    def normalize_batch(self, xv: Tensor, partition: Partition,
                        recovery: Callable[[Tensor, Partition], Tensor] | None,
                        ) -> tuple[Tensor, dict[str, Tensor]]:
        """Batch statistics, then NOP and NRR: ``(output view, statistics)``.

        The default calls :meth:`statistics` and :meth:`apply_recovered`; an operation may
        compute all three in fewer passes (:class:`Standardize` with an :class:`Affine`
        recovery does, with a hand-derived backward). Statistics are returned for the
        running averages only (callers detach them).
        """
        stats = self.statistics(xv, partition)
        return self.apply_recovered(xv, stats, partition, recovery), stats

    def apply_recovered(self, xv: Tensor, stats: dict[str, Tensor], partition: Partition,
                        recovery: Callable[[Tensor, Partition], Tensor] | None) -> Tensor:
        """NOP then NRR: ``recovery(apply(xv))``. An operation may fuse the two.

        :class:`Standardize` fuses an :class:`Affine` recovery into one multiply-add.
        """
        out = self.apply(xv, stats, partition)
        return out if recovery is None else recovery(out, partition)


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

    def normalize_batch(self, xv: Tensor, partition: Partition,
                        recovery: Callable[[Tensor, Partition], Tensor] | None,
                        ) -> tuple[Tensor, dict[str, Tensor]]:
        """Statistics, ``Phi_SD`` and an ``Affine`` recovery in one function with its own backward.

        Forward: ``mu`` (one pass), ``x - mu`` (one), ``sigma^2`` (one), ``y = (x - mu) s + beta``
        with ``s = gamma r`` formed on the statistics (one). Backward, with ``g = dL/dy`` and
        ``xhat = (x - mu) r``: ``dL/dbeta = sum g``, ``dL/dgamma = sum g xhat`` and

            dL/dx = r (g gamma - mean(g gamma) - xhat mean(g gamma xhat))

        (means over the partition), from two reductions of ``g`` and ``g (x - mu)`` and two
        multiply-adds. ``autograd`` through the composition needs about twice the passes.
        Partitions other than :class:`Partition` and other recoveries take the composed path.
        """
        if not isinstance(partition, Partition) or \
                (recovery is not None and not isinstance(recovery, Affine)) or \
                (partition.pool_batch and _BATCH_SYNC.get() is not None):
            # other partitions and recoveries, and statistics pooled over processes (the
            # reducer's own differentiable statistics), take the composed path
            return super().normalize_batch(xv, partition, recovery)
        weight, bias = (None, None) if recovery is None else recovery.broadcast(xv)
        out, mean, var = _StandardizeAffine.apply(xv, weight, bias, partition.dims, self.eps,
                                                  self.center, self.scale)
        stats = {}
        if self.center:
            stats["mean"] = mean
        if self.scale:
            stats["var"] = var
        return out, stats

    def apply_recovered(self, xv: Tensor, stats: dict[str, Tensor], partition: Partition,
                        recovery: Callable[[Tensor, Partition], Tensor] | None) -> Tensor:
        """``Phi_SD`` and an ``Affine`` recovery in one pass over ``xv``.

        ``gamma * (x - mu) * r + beta = x * s + t`` with ``r = (sigma^2 + eps)^{-1/2}``,
        ``s = gamma * r`` and ``t = beta - mu * s``: the scale and shift are formed on the
        statistics (a few values per group), then one multiply-add touches the activations.
        When ``s`` would be as large as ``xv`` (statistics per position and weights per
        channel, as in Positional Normalization) the two factors are applied in two passes
        instead. Any other recovery runs after ``apply``.
        """
        if recovery is not None and not isinstance(recovery, Affine):
            return super().apply_recovered(xv, stats, partition, recovery)
        weight, bias = (None, None) if recovery is None else recovery.broadcast(xv)
        mean = stats["mean"] if self.center else None
        rstd = torch.rsqrt(stats["var"] + self.eps) if self.scale else None
        if mean is not None and mean.numel() == xv.numel():
            # One element per statistic: x - mu is exactly 0, and the output exactly beta.
            return super().apply_recovered(xv, stats, partition, recovery)
        if rstd is not None and weight is not None and \
                _numel(torch.broadcast_shapes(rstd.shape, weight.shape)) >= xv.numel():
            # Fusing would build a scale as large as the input: normalize, then recover.
            shift = None if mean is None else -mean * rstd
            xhat = xv * rstd if shift is None else _mul_add(xv, rstd, shift)
            return xhat * weight if bias is None else _mul_add(xhat, weight, bias)
        scale = rstd if weight is None else (weight if rstd is None else rstd * weight)
        if mean is not None:
            shift = -mean if scale is None else -mean * scale
            if bias is not None:
                shift = shift + bias
        else:
            shift = bias
        if scale is None:
            return xv if shift is None else xv + shift
        return xv * scale if shift is None else _mul_add(xv, scale, shift)

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

    def broadcast(self, xv: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``(gamma, beta)`` shaped ``(1, G, C // G, 1)`` for the view ``xv``, in its dtype."""
        shape = (1, xv.shape[1], xv.shape[2], 1)
        weight = None if self.weight is None else self.weight.to(xv.dtype).reshape(shape)
        bias = None if self.bias is None else self.bias.to(xv.dtype).reshape(shape)
        return weight, bias

    def __call__(self, xv: Tensor, partition: Partition) -> Tensor:
        weight, bias = self.broadcast(xv)
        if weight is not None and bias is not None:
            return _mul_add(xv, weight, bias)
        if weight is not None:
            return xv * weight
        return xv if bias is None else xv + bias


def _mul_add(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x * scale + shift`` for a full-size ``x`` and broadcast ``scale`` and ``shift``.

    On a CPU, a multiplication into a fresh tensor and an in-place addition: there
    ``torch.addcmul(shift, x, scale)`` is the slower (measured on a 2-core machine: 2.2
    against 1.6 ms at 16 MiB, and 9.5 against 1.6 ms for a ``(64, 32, 2, 1024)`` group-norm
    view, whose broadcast first operand sends addcmul's kernel down a slow loop). Elsewhere
    one ``addcmul``, one kernel and one pass. The result's dtype is the promoted one either way.
    """
    if not x.is_cpu:
        return torch.addcmul(shift, x, scale)
    out = x * scale
    # in place only where the sum has the product's shape and dtype (no broadcast, no promotion)
    fits = shift.dtype == out.dtype and out.shape == torch.broadcast_shapes(out.shape, shift.shape)
    return out.add_(shift) if fits else out + shift


def _sum_to(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``t`` summed over the axes where ``shape`` has size 1 (keepdim), as broadcasting's adjoint."""
    dims = tuple(d for d in range(t.dim()) if shape[d] == 1 and t.shape[d] != 1)
    return t.sum(dim=dims, keepdim=True) if dims else t


class _StandardizeAffine(torch.autograd.Function):
    """``Standardize`` and ``Affine`` on a ``(N, G, C // G, S)`` view, with a hand-derived backward.

    Inputs: the view, ``gamma`` and ``beta`` shaped ``(1, G, C // G, 1)`` (or ``None``), the
    pooled axes, ``eps`` and the ``center`` / ``scale`` flags of :class:`Standardize`.
    Outputs: ``y``, ``mu`` and ``sigma^2`` (the last two for running averages, not
    differentiable; ``mu = 0`` without centering, ``sigma^2`` the mean square without
    centering). A second derivative (``create_graph=True``) recomputes the composition
    with autograd, so Hessian-vector products stay exact.

    Memory traffic: one full-size tensor is allocated forward (``x - mu``, turned into the
    output in place), and backward one (the product ``g x``, whose sums are taken before
    the input gradient is written into it) when the statistics pool over the batch or the
    positions (BN, LN, IN, GN); otherwise, as for Positional Normalization, the product and
    the input gradient are two. On a CPU a fresh allocation of the input's size costs about
    as much as a pass over it.
    """

    @staticmethod
    def forward(ctx, xv, weight, bias, dims, eps, center, scale):
        count = 1
        for d in dims:
            count *= xv.shape[d]
        if center:
            mean = xv.mean(dim=dims, keepdim=True)
            xc = xv - mean
        else:
            mean = xv.new_zeros(())
            xc = xv
        if scale:
            # the sum of squares without a temporary as large as the input (under torch.compile
            # too: inductor's one-pass forms, Welford's update or float64 sums of x and x^2,
            # were measured slower than these two passes on a CPU)
            var = torch.linalg.vector_norm(xc, 2, dim=dims, keepdim=True).square_() / count
            rstd = torch.rsqrt(var + eps)
        else:
            var, rstd = xv.new_zeros(()), None
        factor = rstd if weight is None else (weight if rstd is None else rstd * weight)
        if center:  # xc is ours: the output is written into it
            out = xc if factor is None else xc.mul_(factor)
            out = out if bias is None else out.add_(bias)
        elif bias is None:
            out = xv * factor
        else:
            out = _mul_add(xv, factor, bias)
        ctx.save_for_backward(xv, mean if center else None, rstd, weight, bias)
        ctx.dims, ctx.eps, ctx.center, ctx.scale = dims, eps, center, scale
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_var):
        xv, mean, rstd, weight, bias = ctx.saved_tensors
        dims, eps, center, scale = ctx.dims, ctx.eps, ctx.center, ctx.scale
        if torch.is_grad_enabled():
            # create_graph=True: differentiate the composition itself, so that the gradient
            # has a graph (the fast formulas below use tensors saved without one).
            with torch.enable_grad():
                inputs = [t for t in (xv, weight, bias) if t is not None and t.requires_grad]
                out = _standardize_affine_composed(xv, weight, bias, dims, eps, center, scale)
                grads = iter(torch.autograd.grad(out, inputs, grad, create_graph=True,
                                                 allow_unused=True))
            result = [next(grads) if t is not None and t.requires_grad else None
                      for t in (xv, weight, bias)]
            return (*result, None, None, None, None)
        count = 1
        for d in dims:
            count *= xv.shape[d]
        grad_x = grad_weight = grad_bias = None
        # Axes pooled by the statistics and broadcast by gamma are summed first, on the full
        # tensors; everything after works on tensors of the statistics' or gamma's size.
        shared = tuple(d for d in dims if d in (0, 3) and xv.shape[d] != 1)
        g_sum = grad.sum(dim=shared, keepdim=True) if shared else grad
        gx_sum = None  # the sum over the shared axes of g (x - mu)
        spare = None  # a full-size tensor of ours that dL/dx may be written into
        if scale or (weight is not None and ctx.needs_input_grad[1]):
            gx_sum = grad * xv
            if shared:
                spare, gx_sum = gx_sum, gx_sum.sum(dim=shared, keepdim=True)
            if center:  # mu is constant along the shared axes
                gx_sum = gx_sum - mean * g_sum
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = _sum_to(g_sum, bias.shape)
        if weight is not None and ctx.needs_input_grad[1]:
            wg = gx_sum if rstd is None else gx_sum * rstd
            grad_weight = _sum_to(wg, weight.shape)
        if ctx.needs_input_grad[0]:
            w_g_sum = g_sum if weight is None else g_sum * weight
            factor = rstd if weight is None else (weight if rstd is None else rstd * weight)
            if scale:
                w_gx_sum = gx_sum if weight is None else gx_sum * weight
                # dL/dx = g s - r mean(g gamma) - (x - mu) r^3 mean(g gamma (x - mu))
                #       = g s + x k2 + k3
                k2 = -(rstd * rstd * rstd) * w_gx_sum.sum(dim=dims, keepdim=True) / count
                # written into the product g * x once its sums are taken: on a CPU a fresh
                # tensor of the input's size costs about a pass over it (page faults)
                grad_x = xv * k2 if spare is None else torch.mul(xv, k2, out=spare)
                if center:
                    grad_x.add_(-mean * k2 - rstd * w_g_sum.sum(dim=dims, keepdim=True) / count)
                grad_x = grad_x.addcmul_(grad, factor)
            else:
                k3 = -w_g_sum.sum(dim=dims, keepdim=True) / count
                grad_x = grad * factor + k3 if factor is not None else grad + k3
        return grad_x, grad_weight, grad_bias, None, None, None, None


def _standardize_affine_composed(xv, weight, bias, dims, eps, center, scale):
    """The same map as :class:`_StandardizeAffine`, by plain tensor operations (for autograd)."""
    xc = xv - xv.mean(dim=dims, keepdim=True) if center else xv
    out = xc * torch.rsqrt((xc * xc).mean(dim=dims, keepdim=True) + eps) if scale else xc
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


def _numel(shape: torch.Size) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


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
        out, stats = operation.normalize_batch(xv, partition, recovery)
        if running:
            update_running(running, operation, stats, partition.count(xv.shape), momentum)
    else:
        stats = {k: operation.from_running(k, running[k], xv, partition) for k in operation.keys}
        stats = {k: v.to(xv.dtype) for k, v in stats.items()}
        out = operation.apply_recovered(xv, stats, partition, recovery)
    return out.reshape(x.shape).to(x.dtype)
