"""Normalization layers: thin ``nn.Module`` wrappers over :mod:`normlib.functional`.

Every layer takes ``num_features`` (the channel count ``C`` of an ``(N, C, *)``
input) first, then ``eps``, ``momentum``, ``affine``, ``track_running_stats``,
``device``, ``dtype`` where they apply, as torch's layers do. Layers with
batch statistics follow torch's train/eval semantics: in training they use
and update the running statistics (unbiased running variance; ``momentum=None``
gives a cumulative average), in evaluation they use the running statistics.
All layers accept ``(N, C)`` inputs (after a linear layer) as well as
``(N, C, *)`` feature maps (except :class:`RegionNorm`, whose regions are
spatial). Chapter "Review I: normalizing activations" explains them; all but
:class:`RegionNorm` (which needs a mask) are registered for
:func:`normlib.registry.create_norm`.

Example:
    >>> import torch, normlib
    >>> bn = normlib.create_norm("bn", 8)
    >>> bn(torch.randn(4, 8, 5, 5)).shape
    torch.Size([4, 8, 5, 5])
    >>> normlib.create_norm("gn", 48)
    GroupNorm(48, num_groups=24, eps=1e-05, affine=True)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from normlib import functional as NF
from normlib._checks import (
    check_choice,
    check_eps,
    check_momentum,
    check_positive_float,
    check_positive_int,
    is_int,
)
from normlib.framework import POSITIONAL, Affine, Standardize, batch_sync, normalize
from normlib.functional import (
    BACKENDS,
    _batch_count_message,
    _check_instance_count,
    _check_window,
    check_input,
    default_num_groups,
)
from normlib.registry import register_norm

__all__ = [
    "NormLayer",
    "BatchNorm",
    "VarianceNorm",
    "BatchGroupNorm",
    "PopulationNorm",
    "LayerNorm",
    "RMSNorm",
    "InstanceNorm",
    "GroupNorm",
    "PositionalNorm",
    "LayerNorm2d",
    "RMSNorm2d",
    "RegionNorm",
    "FilterResponseNorm",
    "EvoNormB0",
    "EvoNormS0",
    "LocalResponseNorm",
    "LocalContrastNorm",
    "DivisiveNorm",
    "LocalContextNorm",
    "resolve_groups",
]


def resolve_groups(num_features: int, num_groups: int | None, group_size: int | None) -> int:
    """The number of channel groups from ``num_groups`` or ``group_size`` (not both).

    With neither, the GroupNorm default: 32 groups, lowered to the largest
    divisor of ``num_features`` (see :func:`normlib.functional.default_num_groups`).

    Example:
        >>> resolve_groups(64, None, 16), resolve_groups(64, 4, None), resolve_groups(12, None, None)
        (4, 4, 12)
    """
    if num_groups is not None and group_size is not None:
        raise ValueError(
            f"pass num_groups or group_size, not both (got num_groups={num_groups}, "
            f"group_size={group_size})"
        )
    for name, value in (("num_groups", num_groups), ("group_size", group_size)):
        check_positive_int(name, value, allow_none=True)
        if value is not None and num_features % value:
            raise ValueError(
                f"num_features={num_features} is not divisible by {name}={value}; choose a "
                f"divisor of {num_features}"
            )
    if group_size is not None:
        return num_features // group_size
    if num_groups is not None:
        return num_groups
    return default_num_groups(num_features)


def _fx_leaf(forward):
    """Wrap a normalizer's ``forward`` so that ``torch.fx`` records it as one module call.

    Under :func:`torch.fx.symbolic_trace` (and tools built on it: torchvision's
    ``create_feature_extractor``, timm's FX feature extraction) the input is a ``Proxy``, and a
    forward's argument checks and shape-dependent branches cannot run on it. The layer then
    becomes a leaf of the graph, as torch's own layers are: a ``call_module`` node that runs the
    real forward when the traced module runs. The returned function is marked
    ``_normlib_fx_leaf`` (applying it twice is harmless).

    Example:
        >>> import torch.fx, normlib
        >>> gm = torch.fx.symbolic_trace(torch.nn.Sequential(normlib.create_norm("gn", 4)))
        >>> [n.op for n in gm.graph.nodes]
        ['placeholder', 'call_module', 'output']
    """
    if getattr(forward, "_normlib_fx_leaf", False):
        return forward

    @functools.wraps(forward)
    def leaf(self, x, *args, **kwargs):
        if isinstance(x, torch.fx.Proxy):
            tracer = x.tracer
            return tracer.create_proxy("call_module", tracer.path_of_module(self), (x, *args),
                                       kwargs)
        return forward(self, x, *args, **kwargs)

    leaf._normlib_fx_leaf = True
    return leaf


def _guard_forward(forward):
    """Wrap a normalizer's ``forward``: empty batches, no trace of a batch that raised, FX leaf.

    An empty batch returns an empty output (see :meth:`NormLayer._empty_output`). A forward
    that raises leaves the batch counter where it was (statistics are only written once a
    batch has been accepted), so a rejected batch does not mis-weight a cumulative average.
    Under ``torch.fx`` tracing the layer is recorded as one call (see :func:`_fx_leaf`).
    """

    @functools.wraps(forward)
    def guarded(self, x, *args, **kwargs):
        if isinstance(x, Tensor) and x.dim() >= 1 and x.shape[0] == 0 and batch_sync() is None:
            return self._empty_output(x)  # (synchronized: an empty rank still joins the all-reduce)
        counter = getattr(self, "num_batches_tracked", None)
        saved = counter.clone() if isinstance(counter, Tensor) and self.training else None
        try:
            return forward(self, x, *args, **kwargs)
        except BaseException:
            if saved is not None:
                with torch.no_grad():
                    counter.copy_(saved)
            raise

    guarded = _fx_leaf(guarded)
    guarded._normlib_guarded = True
    return guarded


class NormLayer(nn.Module):
    """Base of the normalization layers: argument checks, affine parameters, running statistics.

    Subclasses set ``running_keys`` (``("mean", "var")`` for BatchNorm) and
    implement ``forward`` by calling one function of :mod:`normlib.functional`.

    Args:
        num_features: channel count ``C``.
        eps: positive constant added to the variance.
        momentum: weight of a new batch in the running statistics; ``None`` for a
            cumulative average.
        affine: learn a per-channel ``weight`` (ones) and ``bias`` (zeros).
        track_running_stats: keep running statistics (only for layers with
            ``running_keys``).
        bias: with ``affine``, also learn the shift.
        stats_size: length of the running buffers (``C``, or the group count).
        param_shape: shape of ``weight`` and ``bias`` (default ``(C,)``).
        device: factory argument.
        dtype: factory argument.
    """

    def __init_subclass__(cls, **kwargs):
        """Every subclass's ``forward`` is guarded by :meth:`_guarded_forward`."""
        super().__init_subclass__(**kwargs)
        forward = cls.__dict__.get("forward")
        if forward is not None and not getattr(forward, "_normlib_guarded", False):
            cls.forward = _guard_forward(forward)

    def _empty_output(self, x: Tensor) -> Tensor:
        """The output for an empty batch (``N = 0``): an empty tensor of the input's shape.

        As torch's layers do; the shape is still checked, and no statistic or counter moves
        (torch's BatchNorm counts an empty batch; a cumulative average would then be mis-weighted).
        """
        shape = getattr(self, "normalized_shape", None)
        if shape is not None:
            if tuple(x.shape[-len(shape):]) != tuple(shape):
                raise ValueError(f"x has shape {tuple(x.shape)}, whose trailing dimensions must be "
                                 f"the layer's normalized_shape {tuple(shape)}")
        else:
            check_input(x, num_features=self.num_features)
        return x.clone()

    running_keys: tuple[str, ...] = ()
    # Statistics pooled over the batch, so training (and evaluation without running
    # statistics, which then uses the batch's) needs more than one value per statistic.
    uses_batch_statistics: bool = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = False,
        *,
        bias: bool = True,
        stats_size: int | None = None,
        param_shape: tuple[int, ...] | None = None,
        device=None,
        dtype=None,
    ):
        # nn.Module's own initializer, not the next class of the MRO: BatchNorm also derives
        # from torch's BatchNorm2d, whose initializer would build the parameters a second time.
        nn.Module.__init__(self)
        if param_shape is None:
            check_positive_int("num_features", num_features)
        check_eps(eps)
        check_momentum(momentum)
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = bool(track_running_stats and self.running_keys)
        shape = param_shape if param_shape is not None else (num_features,)
        self.weight = nn.Parameter(torch.empty(shape, **factory)) if affine else None
        self.bias = nn.Parameter(torch.empty(shape, **factory)) if affine and bias else None
        size = stats_size if stats_size is not None else num_features
        self._stats_size = size
        for key in ("mean", "var"):
            keep = self.track_running_stats and key in self.running_keys
            self.register_buffer(f"running_{key}", torch.empty(size, **factory) if keep else None)
        self.register_buffer(
            "num_batches_tracked",
            torch.tensor(0, dtype=torch.long, device=device) if self.track_running_stats else None,
        )
        self.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # As torch's BatchNorm: checkpoints written before the batch counter existed have no
        # ``num_batches_tracked``; they load with the layer's current count.
        key = prefix + "num_batches_tracked"
        if self.num_batches_tracked is not None and key not in state_dict and any(
                k.startswith(prefix + "running_") for k in state_dict):
            state_dict[key] = self.num_batches_tracked.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, batch counter 0."""
        if self.running_mean is not None:
            self.running_mean.zero_()
        if self.running_var is not None:
            self.running_var.fill_(1.0)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Running statistics reset; ``weight`` ones, ``bias`` zeros."""
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _momentum(self) -> float:
        """Torch's exponential average factor; counts the batch in training."""
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                return 1.0 / float(self.num_batches_tracked)
        return 0.0 if self.momentum is None else self.momentum

    def _check(self, x: Tensor) -> None:
        """Checks before any computation (and before the batch counter moves)."""
        check_input(x, num_features=self.num_features)
        use_batch = self.training or not self.track_running_stats
        if self.uses_batch_statistics and use_batch and x.numel() // self._stats_size <= 1 \
                and batch_sync() is None:  # synchronized: the global count is checked instead
            raise ValueError(_batch_count_message(type(self).__name__, x, self.training))

    def extra_repr(self) -> str:
        parts = [f"{self.num_features}", f"eps={self.eps}"]
        if self.running_keys:
            parts.append(f"momentum={self.momentum}")
        parts.append(f"affine={self.affine}")
        if self.running_keys:
            parts.append(f"track_running_stats={self.track_running_stats}")
        return ", ".join(parts)


# ----------------------------------------------------------------------------- batch family


@register_norm("bn", "batchnorm", "batch_norm")
class BatchNorm(NormLayer, nn.BatchNorm2d):
    """Batch Normalization (Ioffe and Szegedy, 2015) for any ``(N, C, *)`` input.

    ``y = (x - mu_c) / sqrt(sigma_c^2 + eps) * weight_c + bias_c``, statistics per
    channel over ``(N, *)``; equals ``torch.nn.BatchNorm1d/2d/3d``. See
    :func:`normlib.functional.batch_norm`.

    It is also a ``torch.nn.BatchNorm2d`` (same attributes, parameters, buffers and state-dict
    keys), so tools that look for torch's batch norm accept it: timm's
    ``freeze_batch_norm_2d``, ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, the
    optimizers' and trainers' "no weight decay on BN" rules. Its forward is normlib's and takes
    any number of dimensions. ``torch.ao.quantization.fuse_modules`` matches exact types: pass
    ``fuse_custom_config_dict={"additional_fuser_method_mapping": fuser_method_mapping()}``
    (from :mod:`normlib.conversion`), or :func:`normlib.revert` a converted model first.

    Args:
        num_features: ``C``.
        eps: added to the variance.
        momentum: running-average weight; ``None`` for a cumulative average.
        affine: learn ``weight`` and ``bias``.
        track_running_stats: keep running statistics for evaluation.
        backend: ``"auto"`` (torch's kernel) or ``"framework"`` (the NAP/NOP/NRR path).
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> bn = BatchNorm(3)
        >>> y = bn(torch.randn(8, 3))
        >>> bn.num_batches_tracked.item()
        1
        >>> isinstance(bn, torch.nn.modules.batchnorm._BatchNorm)
        True
    """

    running_keys = ("mean", "var")
    uses_batch_statistics = True

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, backend: str = "auto",
                 device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self.backend = check_choice("backend", backend, BACKENDS)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                             self.training, self._momentum(), self.eps, self.backend)


@register_norm("vn", "variance_norm", "variancenorm")
class VarianceNorm(NormLayer):
    """Variance Normalization: BatchNorm without centering (Daneshmand et al., 2020).

    ``y = x / sqrt(E_{N,*}[x_c^2] + eps) * weight_c + bias_c``; ``running_var`` holds
    the running mean square. See :func:`normlib.functional.variance_norm`.

    Args:
        num_features: ``C``.
        eps: added to the mean square.
        momentum: running-average weight; ``None`` for a cumulative average.
        affine: learn ``weight`` and ``bias``.
        track_running_stats: keep the running mean square for evaluation.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> VarianceNorm(4)(torch.randn(8, 4, 2, 2)).shape
        torch.Size([8, 4, 2, 2])
    """

    running_keys = ("var",)
    uses_batch_statistics = True

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.variance_norm(x, self.running_var, self.weight, self.bias, self.training,
                                self._momentum(), self.eps)


@register_norm("bgn", "batch_group_norm", "batchgroupnorm")
class BatchGroupNorm(NormLayer):
    """Batch Group Normalization (Zhou et al., 2020): channel groups pooled over the batch.

    Statistics per group of ``C / G`` channels over ``(N, C/G, *)``; running
    statistics of shape ``(G,)``. ``num_groups=C`` is BatchNorm; one sample is
    GroupNorm. See :func:`normlib.functional.batch_group_norm`.

    Args:
        num_features: ``C``.
        num_groups: ``G`` (default: 32 capped to a divisor of ``C``).
        group_size: ``C / G`` instead of ``num_groups``.
        eps: added to the variance.
        momentum: running-average weight; ``None`` for a cumulative average.
        affine: learn ``weight`` and ``bias``.
        track_running_stats: keep running statistics for evaluation.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> BatchGroupNorm(8, num_groups=2).running_mean.shape
        torch.Size([2])
    """

    running_keys = ("mean", "var")
    uses_batch_statistics = True

    def __init__(self, num_features: int, num_groups: int | None = None,
                 group_size: int | None = None, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        check_positive_int("num_features", num_features)
        self.num_groups = resolve_groups(num_features, num_groups, group_size)
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         stats_size=self.num_groups, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.batch_group_norm(x, self.num_groups, self.running_mean, self.running_var,
                                   self.weight, self.bias, self.training, self._momentum(),
                                   self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, " + \
            super().extra_repr().split(", ", 1)[1]


@register_norm("population", "population_norm", "popnorm")
class PopulationNorm(NormLayer):
    """Population normalization: center or standardize with training-set estimates.

    The estimates are updated from each training batch without gradient and
    then used, so the output never depends on batch-mates (Wiesler et al.,
    2014). ``momentum=None`` (default) makes them cumulative averages over all
    batches seen, i.e. the training-set statistics. See
    :func:`normlib.functional.population_norm`.

    Args:
        num_features: ``C``.
        eps: added to the variance.
        momentum: estimate update weight; ``None`` for a cumulative average.
        affine: learn ``weight`` and ``bias``.
        center_only: subtract the mean estimate but do not scale.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> pop = PopulationNorm(2)
        >>> _ = pop(torch.randn(100, 2) * 4 + 3)
        >>> bool((pop.running_mean - 3).abs().max() < 1.5)
        True
    """

    running_keys = ("mean", "var")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = None,
                 affine: bool = True, center_only: bool = False, device=None, dtype=None):
        self.center_only = center_only
        # A variance estimate needs two values per channel; a mean estimate needs one.
        self.uses_batch_statistics = not center_only
        super().__init__(num_features, eps, momentum, affine, True, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        running_var = None if self.center_only else self.running_var
        if self.momentum is None and self.training:
            # The cumulative average of _momentum, with the factor 1 / n kept a tensor: no
            # read-back of the counter, so torch.compile traces it without a graph break.
            self.num_batches_tracked.add_(1)
            dtype = NF.compute_dtype(self.running_mean.dtype)
            momentum = 1.0 / self.num_batches_tracked.to(dtype)
        else:
            momentum = self._momentum()
        return NF.population_norm(x, self.running_mean, running_var, self.weight, self.bias,
                                  self.training, momentum, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", center_only={self.center_only}"


# ----------------------------------------------------------------------------- per-sample family


def _trailing_shape(num_features) -> tuple[int, ...] | None:
    if is_int(num_features):
        return None
    if isinstance(num_features, Sequence) and num_features and all(
        is_int(s) and s > 0 for s in num_features
    ):
        return tuple(num_features)
    raise ValueError(
        f"num_features must be a positive int (normalize over (C, *)) or a tuple of positive "
        f"ints (normalize over those trailing dimensions), got {num_features!r}"
    )


@register_norm("ln", "layernorm", "layer_norm")
class LayerNorm(NormLayer):
    """Layer Normalization (Ba et al., 2016), CNN form or transformer form.

    ``LayerNorm(C)``: statistics per sample over ``(C, *)``, per-channel
    ``weight``/``bias`` (GroupNorm with one group; on ``(N, C)`` inputs this is
    ``torch.nn.LayerNorm(C)``). ``LayerNorm((D1, ..., Dk))``: statistics over the
    last ``k`` dimensions with elementwise parameters, as ``torch.nn.LayerNorm``.
    See :func:`normlib.functional.layer_norm`.

    Args:
        num_features: ``C``, or the trailing shape for the transformer form.
        eps: added to the variance.
        affine: learn ``weight`` and ``bias``.
        bias: with ``affine``, also learn ``bias``.
        backend: ``"auto"`` (torch's kernel) or ``"framework"``.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> LayerNorm(16)(torch.randn(2, 16, 4, 4)).shape
        torch.Size([2, 16, 4, 4])
        >>> LayerNorm((10,))(torch.randn(2, 7, 10)).shape
        torch.Size([2, 7, 10])
    """

    def __init__(self, num_features: int | tuple[int, ...], eps: float = 1e-5,
                 affine: bool = True, bias: bool = True, backend: str = "auto",
                 device=None, dtype=None):
        self.normalized_shape = _trailing_shape(num_features)
        super().__init__(num_features, eps, None, affine, bias=bias,
                         param_shape=self.normalized_shape, device=device, dtype=dtype)
        self.backend = check_choice("backend", backend, BACKENDS)

    def _check(self, x: Tensor) -> None:
        if self.normalized_shape is None:
            check_input(x, num_features=self.num_features)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps,
                             self.backend)


@register_norm("rms", "rmsnorm", "rms_norm")
class RMSNorm(NormLayer):
    """RMSNorm (Zhang and Sennrich, 2019): ``x / sqrt(mean(x^2) + eps) * weight``.

    Forms as :class:`LayerNorm`: ``RMSNorm(C)`` pools over ``(C, *)`` with a
    per-channel gain, ``RMSNorm((D1, ..., Dk))`` pools over the trailing
    dimensions as ``torch.nn.RMSNorm``. No bias. See :func:`normlib.functional.rms_norm`.

    Args:
        num_features: ``C``, or the trailing shape.
        eps: added to the mean square; ``None`` (default, as ``torch.nn.RMSNorm``) for
            ``torch.finfo(x.dtype).eps``.
        affine: learn the gain ``weight``.
        backend: ``"auto"`` (torch's kernel) or ``"framework"``.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> RMSNorm(8)(torch.randn(3, 8)).shape
        torch.Size([3, 8])
    """

    def __init__(self, num_features: int | tuple[int, ...], eps: float | None = None,
                 affine: bool = True, backend: str = "auto", device=None, dtype=None):
        self.normalized_shape = _trailing_shape(num_features)
        super().__init__(num_features, 1e-5 if eps is None else eps, None, affine, bias=False,
                         param_shape=self.normalized_shape, device=device, dtype=dtype)
        self.eps = eps  # None: the input dtype's machine epsilon, as torch.nn.RMSNorm
        self.backend = check_choice("backend", backend, BACKENDS)

    def _check(self, x: Tensor) -> None:
        if self.normalized_shape is None:
            check_input(x, num_features=self.num_features)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.rms_norm(x, self.normalized_shape, self.weight, self.eps, self.backend)


@register_norm("in", "instancenorm", "instance_norm")
class InstanceNorm(NormLayer):
    """Instance Normalization (Ulyanov et al., 2016): per sample and channel over ``*``.

    Unlike torch's ``InstanceNorm2d`` the affine parameters are on by default
    (as for the other normalizers of the book). On ``(N, C)`` inputs the output
    is ``bias``: one element per statistic. With ``track_running_stats`` such an
    input raises ``ValueError`` in training (as torch does): one element has no
    variance to average. See :func:`normlib.functional.instance_norm`.

    Args:
        num_features: ``C``.
        eps: added to the variance.
        momentum: running-average weight; ``None`` for a cumulative average.
        affine: learn ``weight`` and ``bias``.
        track_running_stats: keep running statistics and use them in evaluation.
        backend: ``"auto"`` (torch's kernel) or ``"framework"``.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> InstanceNorm(3)(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """

    running_keys = ("mean", "var")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = False,
                 backend: str = "auto", device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self.backend = check_choice("backend", backend, BACKENDS)

    def _check(self, x: Tensor) -> None:
        super()._check(x)
        if self.training and self.track_running_stats:
            _check_instance_count(x, type(self).__name__)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training or not self.track_running_stats,
                                self._momentum(), self.eps, self.backend)


@register_norm("gn", "groupnorm", "group_norm")
class GroupNorm(NormLayer):
    """Group Normalization (Wu and He, 2018): per sample over groups of ``C / G`` channels.

    Give ``num_groups`` or ``group_size``; by default 32 groups, lowered to the
    largest divisor of ``C``. ``num_groups=1`` is :class:`LayerNorm`,
    ``group_size=1`` is :class:`InstanceNorm`. Equals ``torch.nn.GroupNorm``. See
    :func:`normlib.functional.group_norm`.

    Args:
        num_features: ``C``.
        num_groups: ``G``.
        group_size: ``C / G`` instead of ``num_groups``.
        eps: added to the variance.
        affine: learn ``weight`` and ``bias``.
        backend: ``"auto"`` (torch's kernel) or ``"framework"``.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> GroupNorm(64, group_size=16).num_groups
        4
    """

    def __init__(self, num_features: int, num_groups: int | None = None,
                 group_size: int | None = None, eps: float = 1e-5, affine: bool = True,
                 backend: str = "auto", device=None, dtype=None):
        check_positive_int("num_features", num_features)
        self.num_groups = resolve_groups(num_features, num_groups, group_size)
        super().__init__(num_features, eps, None, affine, device=device, dtype=dtype)
        self.backend = check_choice("backend", backend, BACKENDS)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, self.backend)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, " \
            f"affine={self.affine}"


@register_norm("pn", "positional_norm", "positionalnorm")
class PositionalNorm(NormLayer):
    """Positional Normalization (Li et al., 2019): per sample and position over channels.

    See :func:`normlib.functional.positional_norm`.

    Args:
        num_features: ``C``.
        eps: added to the variance.
        affine: learn ``weight`` and ``bias``.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> PositionalNorm(16)(torch.randn(2, 16, 4, 4)).shape
        torch.Size([2, 16, 4, 4])
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None):
        super().__init__(num_features, eps, None, affine, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.positional_norm(x, self.weight, self.bias, self.eps)


def _move_channels_last(x: Tensor) -> Tensor:
    return x.movedim(1, -1) if x.dim() > 2 else x


def _move_channels_first(y: Tensor) -> Tensor:
    return y.movedim(-1, 1) if y.dim() > 2 else y


@register_norm("ln2d", "layernorm2d", "layer_norm_2d", "channel_ln")
class LayerNorm2d(NormLayer):
    """LayerNorm over the channels at each position, for ``(N, C, *)`` feature maps.

    ``y[n, :, p] = (x[n, :, p] - mean_c) / sqrt(var_c + eps) * weight + bias``: the statistics
    of one sample at one position, over its ``C`` channels. This is the LayerNorm of vision
    transformers and ConvNeXt applied to channels-first maps, timm's ``LayerNorm2d`` (equal to
    it), and the same function as :class:`PositionalNorm` (Li et al., 2019), computed here by
    torch's LayerNorm kernel on a channels-last view. :class:`LayerNorm` (``"ln"``) pools over
    ``(C, *)`` instead. Chapter "Review I: normalizing activations".

    Args:
        num_features: ``C``.
        eps: added to the variance.
        affine: learn ``weight`` and ``bias`` of shape ``(C,)``.
        bias: with ``affine``, also learn ``bias``.
        backend: ``"auto"`` (torch's kernel) or ``"framework"`` (the positional partition).
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> x = torch.randn(2, 16, 4, 4)
        >>> y = LayerNorm2d(16)(x)
        >>> bool(y.mean(dim=1).abs().max() < 1e-5)
        True
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True,
                 bias: bool = True, backend: str = "auto", device=None, dtype=None):
        super().__init__(num_features, eps, None, affine, bias=bias, device=device, dtype=dtype)
        self.backend = check_choice("backend", backend, BACKENDS)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        if self.backend == "auto" and (xc := NF._torch_ready(x, self.weight, self.bias)) is not None:
            y = F.layer_norm(_move_channels_last(xc), (self.num_features,), self.weight,
                             self.bias, self.eps)
            return _move_channels_first(y).to(x.dtype)
        return NF.positional_norm(x, self.weight, self.bias, self.eps)


@register_norm("rms2d", "rmsnorm2d", "rms_norm_2d", "channel_rms")
class RMSNorm2d(NormLayer):
    """RMSNorm over the channels at each position, for ``(N, C, *)`` feature maps.

    ``y[n, :, p] = x[n, :, p] / sqrt(mean_c(x[n, :, p]^2) + eps) * weight`` (Zhang and Sennrich,
    2019), as timm's ``RmsNorm2d`` (equal to it, and computed the same way, over dimension 1):
    the RMSNorm of transformers applied to channels-first maps. :class:`RMSNorm` (``"rms"``)
    pools over ``(C, *)`` instead. Chapter "Review I: normalizing activations".

    Args:
        num_features: ``C``.
        eps: added to the mean square; ``None`` for ``torch.finfo(x.dtype).eps`` (as
            ``torch.nn.RMSNorm``).
        affine: learn the gain ``weight`` of shape ``(C,)``.
        backend: ``"auto"`` (torch's kernel) or ``"framework"`` (the positional partition).
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> y = RMSNorm2d(8, eps=1e-6)(torch.randn(2, 8, 3, 3))
        >>> bool(torch.allclose(y.pow(2).mean(dim=1), torch.ones(2, 3, 3), atol=1e-4))
        True
    """

    def __init__(self, num_features: int, eps: float | None = 1e-6, affine: bool = True,
                 backend: str = "auto", device=None, dtype=None):
        super().__init__(num_features, 1e-5 if eps is None else eps, None, affine, bias=False,
                         device=device, dtype=dtype)
        self.eps = eps
        self.backend = check_choice("backend", backend, BACKENDS)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        if self.backend == "auto" and (xc := NF._torch_ready(x, self.weight)) is not None:
            # Reduced over dimension 1 in place: on the CPU, torch's rms_norm kernel on a
            # channels-last view is 1.5 to 3 times slower than this (timm computes it so too).
            y = xc * torch.rsqrt(xc.square().mean(dim=1, keepdim=True) + eps)
            if self.weight is not None:
                y = y * self.weight.reshape((1, -1) + (1,) * (x.dim() - 2))
            return y.to(x.dtype)
        return normalize(x, POSITIONAL, Standardize(eps, center=False),
                         None if self.weight is None else Affine(self.weight, None))


class RegionNorm(NormLayer):
    """Region Normalization (Yu et al., 2020): InstanceNorm within each labelled region.

    ``forward(x, regions)`` takes the labels (a boolean mask or integers, shape
    ``(N, *)`` or ``(N, 1, *)``); without ``regions`` the whole image is one
    region (InstanceNorm). Not in the registry, since it needs the mask. See
    :func:`normlib.functional.region_norm`.

    Args:
        num_features: ``C``.
        eps: added to the variance.
        affine: learn ``weight`` and ``bias``.
        num_regions: ``R``, the labels allowed in ``regions`` are ``0 .. R - 1``;
            ``None`` infers it from each mask.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> mask = torch.rand(2, 6, 6) > 0.5
        >>> RegionNorm(3)(torch.randn(2, 3, 6, 6), mask).shape
        torch.Size([2, 3, 6, 6])
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True,
                 num_regions: int | None = None, device=None, dtype=None):
        if num_regions is not None:
            check_positive_int("num_regions", num_regions)
        super().__init__(num_features, eps, None, affine, device=device, dtype=dtype)
        self.num_regions = num_regions

    def forward(self, x: Tensor, regions: Tensor | None = None) -> Tensor:
        self._check(x)
        if regions is None:
            regions = torch.zeros((x.shape[0], *x.shape[2:]), dtype=torch.long, device=x.device)
        return NF.region_norm(x, regions, self.weight, self.bias, self.eps, self.num_regions)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_regions={self.num_regions}"


# ----------------------------------------------------------------------------- FRN, EvoNorm


@register_norm("frn", "filter_response_norm", "frn_tlu")
class FilterResponseNorm(NormLayer):
    """Filter Response Normalization with TLU (Singh and Krishnan, 2020).

    ``y = max(weight * x / sqrt(mean_{*}(x^2) + eps) + bias, tau)``. FRN replaces
    the activation too (TLU), so use it without a following ReLU. See
    :func:`normlib.functional.filter_response_norm`.

    Args:
        num_features: ``C``.
        eps: added to the mean square (the initial value if learnable).
        affine: learn ``weight`` and ``bias``.
        learnable_eps: learn ``|eps|`` as a parameter (the paper's choice for 1x1 maps).
        use_tlu: apply the thresholded linear unit with a learned ``tau``.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> FilterResponseNorm(4)(torch.randn(2, 4, 3, 3)).shape
        torch.Size([2, 4, 3, 3])
    """

    def __init__(self, num_features: int, eps: float = 1e-6, affine: bool = True,
                 learnable_eps: bool = False, use_tlu: bool = True, device=None, dtype=None):
        self.learnable_eps = learnable_eps
        self.use_tlu = use_tlu
        super().__init__(num_features, eps, None, affine, device=device, dtype=dtype)
        factory = {"device": device, "dtype": dtype}
        self.tau = nn.Parameter(torch.zeros(num_features, **factory)) if use_tlu else None
        self.eps_param = (nn.Parameter(torch.full((1,), float(eps), **factory))
                          if learnable_eps else None)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "tau", None) is not None:
            nn.init.zeros_(self.tau)
        if getattr(self, "eps_param", None) is not None:
            nn.init.constant_(self.eps_param, float(self.eps))

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        eps = self.eps_param if self.eps_param is not None else self.eps
        return NF.filter_response_norm(x, self.weight, self.bias, self.tau, eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + \
            f", learnable_eps={self.learnable_eps}, use_tlu={self.use_tlu}"


@register_norm("evonorm_b0", "evonormb0")
class EvoNormB0(NormLayer):
    """EvoNorm-B0 (Liu et al., 2020): ``x / max(sqrt(s2_batch + eps), v x + sqrt(s2_inst + eps))``.

    Then ``* weight + bias``. Batch variance per channel with an unbiased
    running estimate for evaluation. It replaces normalizer and activation. See
    :func:`normlib.functional.evonorm_b0`.

    Args:
        num_features: ``C``.
        eps: added to the variances.
        momentum: running-average weight; ``None`` for a cumulative average.
        affine: learn ``weight``, ``bias`` and ``v`` (``v`` starts at 1).
        track_running_stats: keep the running variance for evaluation.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> EvoNormB0(4)(torch.randn(8, 4, 3, 3)).shape
        torch.Size([8, 4, 3, 3])
    """

    running_keys = ("var",)
    uses_batch_statistics = True

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self.v = (nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
                  if affine else None)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "v", None) is not None:
            nn.init.ones_(self.v)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.evonorm_b0(x, self.v, self.weight, self.bias, self.running_var, self.training,
                             self._momentum(), self.eps)


@register_norm("evonorm_s0", "evonorms0")
class EvoNormS0(NormLayer):
    """EvoNorm-S0 (Liu et al., 2020): ``x * sigmoid(v x) / sqrt(s2_group + eps)``.

    Then ``* weight + bias``; batch-independent, group variance over
    ``(C/G, *)``. It replaces normalizer and activation. See
    :func:`normlib.functional.evonorm_s0`.

    Args:
        num_features: ``C``.
        num_groups: ``G`` (default: 32 capped to a divisor of ``C``).
        group_size: ``C / G`` instead of ``num_groups``.
        eps: added to the variance.
        affine: learn ``weight``, ``bias`` and ``v`` (``v`` starts at 1).
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> EvoNormS0(8, num_groups=2)(torch.randn(2, 8, 3, 3)).shape
        torch.Size([2, 8, 3, 3])
    """

    def __init__(self, num_features: int, num_groups: int | None = None,
                 group_size: int | None = None, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None):
        check_positive_int("num_features", num_features)
        self.num_groups = resolve_groups(num_features, num_groups, group_size)
        super().__init__(num_features, eps, None, affine, device=device, dtype=dtype)
        self.v = (nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
                  if affine else None)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "v", None) is not None:
            nn.init.ones_(self.v)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.evonorm_s0(x, self.num_groups, self.v, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, " \
            f"affine={self.affine}"


# ----------------------------------------------------------------------------- local family


@register_norm("lrn", "local_response_norm")
class LocalResponseNorm(NormLayer):
    """Local Response Normalization (Krizhevsky et al., 2012), as ``torch.nn.LocalResponseNorm``.

    ``y_c = x_c / (k + alpha / size * sum_{c' near c} x_{c'}^2)^beta``. No parameters.
    See :func:`normlib.functional.local_response_norm`.

    Args:
        num_features: ``C`` (checked against the input).
        size: channels in the window.
        alpha: multiplicative factor.
        beta: exponent.
        k: additive constant.
        device: factory argument (accepted as by every layer; LRN has no tensors).
        dtype: factory argument.

    Example:
        >>> LocalResponseNorm(8, size=3)(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, num_features: int, size: int = 5, alpha: float = 1e-4,
                 beta: float = 0.75, k: float = 1.0, device=None, dtype=None):
        check_positive_int("size", size)
        super().__init__(num_features, 1e-5, None, affine=False, device=device, dtype=dtype)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.num_features}, size={self.size}, alpha={self.alpha}, beta={self.beta}, " \
            f"k={self.k}"


@register_norm("local_contrast", "lcn", "local_contrast_norm")
class LocalContrastNorm(NormLayer):
    """Local Contrast Normalization (Jarrett et al., 2009): subtractive then divisive.

    Gaussian window over space and all channels. No parameters. See
    :func:`normlib.functional.local_contrast_norm`.

    Args:
        num_features: ``C`` (checked against the input).
        kernel_size: window size per spatial axis.
        sigma: standard deviation of the Gaussian window.
        eps: lower bound of the divisor.
        device: factory argument (accepted as by every layer; no tensors).
        dtype: factory argument.

    Example:
        >>> LocalContrastNorm(3)(torch.randn(2, 3, 12, 12)).shape
        torch.Size([2, 3, 12, 12])
    """

    def __init__(self, num_features: int, kernel_size: int = 9, sigma: float = 2.0,
                 eps: float = 1e-5, device=None, dtype=None):
        _check_window(kernel_size, "kernel_size")
        check_positive_float("sigma", sigma)
        super().__init__(num_features, eps, None, affine=False, device=device, dtype=dtype)
        self.kernel_size, self.sigma = kernel_size, sigma

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.local_contrast_norm(x, self.kernel_size, self.sigma, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, kernel_size={self.kernel_size}, sigma={self.sigma}, " \
            f"eps={self.eps}"


@register_norm("divisive", "divisive_norm", "dn")
class DivisiveNorm(NormLayer):
    """Divisive Normalization (Ren et al., 2017): ``v / sqrt(sigma^2 + E_B[v^2])``, ``v = x - E_A[x]``.

    No parameters. See :func:`normlib.functional.divisive_norm`.

    Args:
        num_features: ``C`` (checked against the input).
        spatial_size: window size per spatial axis.
        channel_size: window over channels, ``None`` for all channels.
        sigma: smoothing constant.
        center: subtract the local mean.
        device: factory argument (accepted as by every layer; no tensors).
        dtype: factory argument.

    Example:
        >>> DivisiveNorm(4)(torch.randn(2, 4, 6, 6)).shape
        torch.Size([2, 4, 6, 6])
    """

    def __init__(self, num_features: int, spatial_size: int = 3,
                 channel_size: int | None = None, sigma: float = 1.0, center: bool = True,
                 device=None, dtype=None):
        _check_window(spatial_size, "spatial_size")
        if channel_size is not None:
            check_positive_int("channel_size", channel_size)
        check_positive_float("sigma", sigma)
        super().__init__(num_features, 1e-5, None, affine=False, device=device, dtype=dtype)
        self.spatial_size, self.channel_size = spatial_size, channel_size
        self.sigma, self.center = sigma, center

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.divisive_norm(x, self.spatial_size, self.channel_size, self.sigma, self.center)

    def extra_repr(self) -> str:
        return f"{self.num_features}, spatial_size={self.spatial_size}, " \
            f"channel_size={self.channel_size}, sigma={self.sigma}, center={self.center}"


@register_norm("local_context", "local_context_norm", "lcxn")
class LocalContextNorm(NormLayer):
    """Local Context Normalization (Ortiz et al., 2020): GroupNorm within a spatial window.

    See :func:`normlib.functional.local_context_norm`.

    Args:
        num_features: ``C``.
        num_groups: ``G`` (default: 32 capped to a divisor of ``C``).
        group_size: ``C / G`` instead of ``num_groups``.
        window_size: window per spatial axis.
        eps: added to the variance.
        affine: learn ``weight`` and ``bias``.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> LocalContextNorm(8, num_groups=2, window_size=3)(torch.randn(2, 8, 6, 6)).shape
        torch.Size([2, 8, 6, 6])
    """

    def __init__(self, num_features: int, num_groups: int | None = None,
                 group_size: int | None = None, window_size: int = 7, eps: float = 1e-5,
                 affine: bool = True, device=None, dtype=None):
        check_positive_int("num_features", num_features)
        self.num_groups = resolve_groups(num_features, num_groups, group_size)
        _check_window(window_size, "window_size")
        self.window_size = window_size
        super().__init__(num_features, eps, None, affine, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return NF.local_context_norm(x, self.num_groups, self.window_size, self.weight,
                                     self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, " \
            f"window_size={self.window_size}, eps={self.eps}, affine={self.affine}"

