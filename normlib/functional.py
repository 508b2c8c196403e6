"""Functional core of the activation normalizers: pure functions on ``(N, C, *)`` tensors.

Every standardization-type normalizer here is one call of
:func:`normlib.framework.normalize` with its own partition (NAP), operation
(NOP) and recovery (NRR); see chapter "Review I: normalizing activations".
Where torch has the same computation (``batch_norm``, ``layer_norm``,
``instance_norm``, ``group_norm``, ``rms_norm``), ``backend="auto"`` dispatches
to torch's kernel and ``backend="framework"`` runs the framework path; both
give the same values and gradients (tested).

Conventions shared by all functions:

- ``x: (N, C, *)`` floating point; float16/bfloat16 inputs are normalized with
  statistics in float32 and returned in their own dtype.
- ``weight``/``bias`` are per channel, shape ``(C,)``, or ``None``.
- Running statistics have shape ``(C,)`` (``(G,)`` for grouped ones) and are
  updated in place; the running variance is unbiased, as in torch.
- Bad arguments raise ``TypeError``/``ValueError`` before any computation.

Example:
    >>> import torch
    >>> from normlib import functional as NF
    >>> x = torch.randn(4, 6, 5, 5)
    >>> y = NF.group_norm(x, num_groups=3)
    >>> z = NF.group_norm(x, num_groups=3, backend="framework")
    >>> bool(torch.allclose(y, z, atol=1e-5))
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from normlib._checks import (
    check_choice,
    check_eps,
    check_momentum,
    check_per_channel,
    check_positive_float,
    check_positive_int,
    check_tensor,
    is_int,
)
from normlib.framework import (
    BATCH,
    BATCH_GROUP,
    GROUP,
    INSTANCE,
    LAYER,
    POSITIONAL,
    Affine,
    RegionPartition,
    Standardize,
    batch_sync,
    compute_dtype,
    normalize,
    update_running,
)

__all__ = [
    "BACKENDS",
    "check_input",
    "batch_norm",
    "layer_norm",
    "instance_norm",
    "group_norm",
    "batch_group_norm",
    "positional_norm",
    "rms_norm",
    "variance_norm",
    "region_norm",
    "population_norm",
    "filter_response_norm",
    "tlu",
    "evonorm_b0",
    "evonorm_s0",
    "local_response_norm",
    "local_contrast_norm",
    "divisive_norm",
    "local_context_norm",
    "default_num_groups",
]

BACKENDS = ("auto", "framework")


# ----------------------------------------------------------------------------- checks


def check_input(x, *, num_features: int | None = None, name: str = "x", min_dim: int = 2) -> None:
    """Raise a clear error unless ``x`` is a floating tensor of shape ``(N, C, *)``.

    Args:
        x: the input to check.
        num_features: the expected channel count ``C`` (``None``: any).
        name: the argument name used in messages.
        min_dim: the smallest accepted number of dimensions.

    Raises:
        TypeError: if ``x`` is not a floating-point ``torch.Tensor``.
        ValueError: if it has fewer than ``min_dim`` dimensions or ``C != num_features``.

    Example:
        >>> check_input(torch.zeros(2, 3), num_features=4)
        Traceback (most recent call last):
        ...
        ValueError: x has 3 channels (shape (2, 3)) but the layer expects num_features=4; ...
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}; "
            f"convert it first, e.g. {name}.float()"
        )
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have shape (N, C, *) with at least {min_dim} dimensions, "
            f"got shape {tuple(x.shape)}; add a batch axis with {name}.unsqueeze(0)"
        )
    if num_features is not None and x.shape[1] != num_features:
        raise ValueError(
            f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}) but the layer expects "
            f"num_features={num_features}; pass channels on axis 1 or rebuild the layer"
        )


_SKIP = object()


def _check_arguments(
    x,
    *,
    min_dim: int = 2,
    num_groups=None,
    per_channel: dict[str, Tensor | None] | None = None,
    running: dict[str, Tensor | None] | None = None,
    running_size: int | tuple[int, ...] | None = None,
    running_meaning: str | None = None,
    eps=_SKIP,
    momentum=_SKIP,
    backend=_SKIP,
) -> int:
    """The checks every functional normalizer starts with; returns the channel count ``C``.

    ``x`` must be a floating ``(N, C, *)`` tensor; ``num_groups`` (if given) must divide ``C``;
    each ``per_channel`` tensor (weight, bias, ...) is ``None`` or ``(C,)``; each ``running``
    buffer is ``None`` or of shape ``running_size`` (an int ``n`` means ``(n,)``; default ``(C,)``),
    described by ``running_meaning`` in the message; ``eps`` is a finite positive float,
    ``momentum`` a float in ``[0, 1]``, ``backend`` one of :data:`BACKENDS` (each checked when
    passed). Whitening and multi-mode normalizers use it too, so that one argument gets one
    message everywhere.
    """
    check_input(x, min_dim=min_dim)
    c = x.shape[1]
    if num_groups is not None:
        _check_groups(num_groups, c)
    for name, t in (per_channel or {}).items():
        check_per_channel(name, t, c)
    for name, t in (running or {}).items():
        check_per_channel(name, t, c if running_size is None else running_size, meaning=running_meaning)
    if eps is not _SKIP:
        check_eps(eps)
    if momentum is not _SKIP:
        check_momentum(momentum, allow_none=False)
    if backend is not _SKIP:
        check_choice("backend", backend, BACKENDS)
    return c


def _check_groups(num_groups, num_channels: int, name: str = "num_groups") -> None:
    check_positive_int(name, num_groups)
    if num_channels % num_groups:
        raise ValueError(
            f"{num_channels} channels are not divisible by {name}={num_groups}; choose a divisor "
            f"of {num_channels}, e.g. {default_num_groups(num_channels, num_groups)}"
        )


def _check_batch_count(count: int, x: Tensor, what: str, training: bool = True) -> None:
    if count <= 1 and batch_sync() is None:  # synchronized: the global count is checked instead
        raise ValueError(_batch_count_message(what, x, training))


def _batch_count_message(what: str, x: Tensor, training: bool) -> str:
    """The error for batch statistics estimated from one value per channel (shared with layers)."""
    if training:
        return (
            f"{what} in training needs more than 1 value per channel to estimate batch "
            f"statistics, got input of shape {tuple(x.shape)}; use a batch of 2 or more, "
            "call .eval(), or pick a batch-independent normalizer (ln, gn, in)"
        )
    return (
        f"{what} in evaluation has no running statistics (track_running_stats=False), so it "
        f"uses batch statistics and needs more than 1 value per channel, got input of shape "
        f"{tuple(x.shape)}; use a batch of 2 or more, keep running statistics "
        "(track_running_stats=True), or pick a batch-independent normalizer (ln, gn, in)"
    )


def _check_instance_count(x: Tensor, what: str) -> None:
    """Running statistics of per-instance moments need more than one value per instance."""
    if x.numel() // max(x.shape[0] * x.shape[1], 1) <= 1:
        raise ValueError(
            f"{what} in training with running statistics needs more than 1 spatial element per "
            f"(sample, channel) to estimate statistics, got input of shape {tuple(x.shape)}; "
            "feed feature maps with more than one position, turn running statistics off "
            "(track_running_stats=False: the output is then the bias), or pick a normalizer "
            "that pools over channels (ln, gn)"
        )


def _check_window(value, name: str) -> None:
    """A window size: a positive int, or a non-empty sequence of positive ints (one per axis).

    The number of entries is checked against the input in the forward pass.
    """
    values = (value,) if isinstance(value, int) else value
    if (not isinstance(values, Sequence) or isinstance(values, str) or not values
            or any(not is_int(v) or v <= 0 for v in values)):
        raise ValueError(
            f"{name} must be a positive int or a sequence of positive ints (one per spatial "
            f"axis), got {value!r}; use e.g. {name}=3"
        )


def default_num_groups(num_channels: int, num_groups: int = 32) -> int:
    """The largest divisor of ``num_channels`` that is at most ``num_groups``.

    The GroupNorm default of 32 groups (Wu and He, 2018) capped so that it divides
    the channel count.

    Example:
        >>> default_num_groups(64), default_num_groups(48), default_num_groups(10)
        (32, 24, 10)
    """
    for g in range(min(num_groups, num_channels), 0, -1):
        if num_channels % g == 0:
            return g
    return 1


def _torch_ready(x: Tensor, *tensors: Tensor | None) -> Tensor | None:
    """``x`` in its compute dtype if every tensor matches it, else ``None`` (use the framework)."""
    dtype = compute_dtype(x.dtype)
    if any(t is not None and t.dtype != dtype for t in tensors):
        return None
    return x.to(dtype)


def _affine(weight: Tensor | None, bias: Tensor | None) -> Affine | None:
    return None if weight is None and bias is None else Affine(weight, bias)


def _running(**buffers: Tensor | None) -> dict[str, Tensor] | None:
    kept = {k: v for k, v in buffers.items() if v is not None}
    return kept or None


# ----------------------------------------------------------------------------- batch family


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    backend: str = "auto",
) -> Tensor:
    """Batch Normalization (Ioffe and Szegedy, 2015): per channel over ``(N, *)``.

    ``y = (x - mu_c) / sqrt(sigma_c^2 + eps) * weight_c + bias_c`` with batch
    statistics in training (or when no running statistics are given) and the
    running ones in evaluation. Framework: partition ``BATCH``, ``Standardize``,
    ``Affine``.

    Args:
        x: ``(N, C, *)``.
        running_mean: ``(C,)`` or ``None``; updated in place in training.
        running_var: ``(C,)`` or ``None``; updated in place with the unbiased variance.
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        training: use (and update) batch statistics.
        momentum: weight of the new batch in the running averages.
        eps: added to the variance.
        backend: ``"auto"`` (torch's kernel) or ``"framework"``.

    Returns:
        a tensor like ``x``.

    Raises:
        ValueError: with a single value per channel (``N * prod(*) == 1``) when batch
            statistics are used: in training, or in evaluation without running statistics.

    Example:
        >>> y = batch_norm(torch.randn(16, 3, 4, 4))
        >>> y.mean(dim=(0, 2, 3)).abs().max().item() < 1e-5
        True
    """
    c = _check_arguments(
        x,
        per_channel={"weight": weight, "bias": bias},
        running={"running_mean": running_mean, "running_var": running_var},
        eps=eps,
        momentum=momentum,
        backend=backend,
    )
    use_batch = training or running_mean is None or running_var is None
    if use_batch:
        _check_batch_count(x.numel() // c, x, "batch_norm", training)
    if backend == "auto":
        xc = _torch_ready(x, weight, bias, running_mean, running_var)
        if xc is not None:
            rm, rv = (running_mean, running_var) if training or not use_batch else (None, None)
            out = F.batch_norm(xc, rm, rv, weight, bias, use_batch, momentum, eps)
            return out.to(x.dtype)
    running = _running(mean=running_mean, var=running_var) if training or not use_batch else None
    return normalize(
        x, BATCH, Standardize(eps), _affine(weight, bias),
        running=running, use_batch_stats=use_batch, momentum=momentum,
    )


def batch_group_norm(
    x: Tensor,
    num_groups: int,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch Group Normalization (Zhou et al., 2020): per channel group over ``(N, C/G, *)``.

    Statistics are shared by the ``C / G`` channels of a group across the whole
    batch, so ``num_groups = C`` is BatchNorm and a batch of one sample is
    GroupNorm. Running statistics have shape ``(G,)``.

    Args:
        x: ``(N, C, *)``.
        num_groups: ``G``, a divisor of ``C``.
        running_mean: ``(G,)`` or ``None``.
        running_var: ``(G,)`` or ``None`` (unbiased running variance).
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        training: use (and update) batch statistics.
        momentum: weight of the new batch in the running averages.
        eps: added to the variance.

    Returns:
        a tensor like ``x``.

    Example:
        >>> batch_group_norm(torch.randn(4, 8, 3, 3), num_groups=2).shape
        torch.Size([4, 8, 3, 3])
    """
    _check_arguments(
        x,
        num_groups=num_groups,
        per_channel={"weight": weight, "bias": bias},
        running={"running_mean": running_mean, "running_var": running_var},
        running_size=num_groups,
        eps=eps,
        momentum=momentum,
    )
    use_batch = training or running_mean is None or running_var is None
    if use_batch:
        _check_batch_count(x.numel() // num_groups, x, "batch_group_norm", training)
    running = _running(mean=running_mean, var=running_var) if training or not use_batch else None
    return normalize(
        x, BATCH_GROUP(num_groups), Standardize(eps), _affine(weight, bias),
        running=running, use_batch_stats=use_batch, momentum=momentum,
    )


def variance_norm(
    x: Tensor,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Variance Normalization: BatchNorm without centering (Daneshmand et al., 2020).

    ``y = x / sqrt(E_{N,*}[x_c^2] + eps) * weight_c + bias_c``: partition
    ``BATCH``, ``Standardize(center=False)``. ``running_var`` tracks the
    per-channel mean square ``E[x^2]`` (no bias correction is needed for it).

    Args:
        x: ``(N, C, *)``.
        running_var: ``(C,)`` or ``None``; the running mean square.
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        training: use (and update) batch statistics.
        momentum: weight of the new batch in the running average.
        eps: added to the mean square.

    Returns:
        a tensor like ``x``.

    Example:
        >>> y = variance_norm(torch.randn(32, 3) + 5.0)
        >>> bool(torch.allclose((y ** 2).mean(0), torch.ones(3), atol=1e-4))
        True
    """
    c = _check_arguments(
        x,
        per_channel={"weight": weight, "bias": bias},
        running={"running_var": running_var},
        eps=eps,
        momentum=momentum,
    )
    use_batch = training or running_var is None
    if use_batch:
        _check_batch_count(x.numel() // c, x, "variance_norm", training)
    return normalize(
        x, BATCH, Standardize(eps, center=False), _affine(weight, bias),
        running=_running(var=running_var),
        use_batch_stats=use_batch, momentum=momentum,
    )


def population_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Population normalization: center or standardize with training-set estimates only.

    ``y = (x - mu_hat) / sqrt(sigma_hat^2 + eps)`` per channel, where ``mu_hat``
    and ``sigma_hat^2`` estimate the statistics over the training data
    (Montavon and Mueller, 2012; Wiesler et al., 2014). In training the
    estimates are first updated from the batch (no gradient flows through
    them), then used: unlike BatchNorm the output of a sample never depends
    on its batch-mates, and the loss is not differentiated through the
    statistics. ``running_var=None`` only centers.

    Args:
        x: ``(N, C, *)``.
        running_mean: ``(C,)`` estimate of the mean, updated in place in training.
        running_var: ``(C,)`` estimate of the variance (unbiased), or ``None`` to only center.
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        training: update the estimates from ``x`` before using them.
        momentum: weight of the new batch in the estimates: a float in ``[0, 1]``, or a
            0-dim tensor (a cumulative average ``1 / n`` kept on the device).
        eps: added to the variance.

    Returns:
        a tensor like ``x``.

    Raises:
        ValueError: in training with ``running_var`` and a single value per channel
            (``N * prod(*) == 1``), which has no variance to estimate.

    Example:
        >>> mean, var = torch.zeros(2), torch.ones(2)
        >>> y = population_norm(torch.randn(64, 2) * 3 + 1, mean, var, momentum=1.0)
        >>> bool(torch.allclose(y.mean(0), torch.zeros(2), atol=1e-5))
        True
    """
    if running_mean is None:
        raise ValueError("running_mean is required: population normalization has no batch mode")
    if isinstance(momentum, Tensor) and momentum.dim() != 0:
        raise ValueError(f"momentum must be a float or a 0-dim tensor, got a tensor of shape "
                         f"{tuple(momentum.shape)}; pass a float such as momentum=0.1")
    c = _check_arguments(
        x,
        per_channel={"weight": weight, "bias": bias},
        running={"running_mean": running_mean, "running_var": running_var},
        eps=eps,
        momentum=_SKIP if isinstance(momentum, Tensor) else momentum,
    )
    if training and running_var is not None:
        # One value per channel has no variance: the estimate would be driven toward 0.
        _check_batch_count(x.numel() // c, x, "population_norm")
    op = Standardize(eps, center=True, scale=running_var is not None)
    running = _running(mean=running_mean, var=running_var)
    if training:
        with torch.no_grad():
            xv = BATCH.view(x).to(compute_dtype(x.dtype))
            update_running(running, op, op.statistics(xv, BATCH), BATCH.count(xv.shape), momentum)
    return normalize(x, BATCH, op, _affine(weight, bias), running=running, use_batch_stats=False)


# ----------------------------------------------------------------------------- per-sample family


def _normalized_shape(x: Tensor, normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    try:
        shape = tuple(int(s) for s in normalized_shape)
    except TypeError:
        raise TypeError(
            f"normalized_shape must be an int, a sequence of ints or None, got {normalized_shape!r}"
        ) from None
    if not shape or x.dim() < len(shape) or tuple(x.shape[-len(shape):]) != shape:
        raise ValueError(
            f"normalized_shape={shape} must equal the last dimensions of x, "
            f"got x of shape {tuple(x.shape)}"
        )
    return shape


def layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int] | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    backend: str = "auto",
) -> Tensor:
    """Layer Normalization (Ba et al., 2016): per sample over all channels and positions.

    Two forms. ``normalized_shape=None`` (the CNN form): statistics over
    ``(C, *)`` of each sample, ``weight``/``bias`` per channel ``(C,)``; this is
    GroupNorm with one group. ``normalized_shape`` given (the transformer form):
    statistics over the trailing dimensions of that shape and elementwise
    ``weight``/``bias`` of that shape, exactly ``torch.nn.functional.layer_norm``.

    Args:
        x: ``(N, C, *)`` for the CNN form, ``(*, *normalized_shape)`` for the other.
        normalized_shape: ``None`` or the trailing shape to normalize over.
        weight: ``(C,)`` or ``normalized_shape`` or ``None``.
        bias: ``(C,)`` or ``normalized_shape`` or ``None``.
        eps: added to the variance.
        backend: ``"auto"`` (torch's kernel) or ``"framework"``.

    Returns:
        a tensor like ``x``.

    Example:
        >>> y = layer_norm(torch.randn(2, 3, 4))
        >>> y.flatten(1).mean(1).abs().max().item() < 1e-5
        True
    """
    if normalized_shape is None:
        _check_arguments(x, per_channel={"weight": weight, "bias": bias}, eps=eps, backend=backend)
        if backend == "auto" and (xc := _torch_ready(x, weight, bias)) is not None:
            return F.group_norm(xc, 1, weight, bias, eps).to(x.dtype)
        return normalize(x, LAYER, Standardize(eps), _affine(weight, bias))
    _check_arguments(x, min_dim=1, eps=eps, backend=backend)
    shape = _normalized_shape(x, normalized_shape)
    for t, n in ((weight, "weight"), (bias, "bias")):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{n} must have shape {shape}, got {tuple(t.shape)}")
    if backend == "auto" and (xc := _torch_ready(x, weight, bias)) is not None:
        return F.layer_norm(xc, shape, weight, bias, eps).to(x.dtype)
    flat = x.reshape(-1, math.prod(shape))
    w = None if weight is None else weight.reshape(-1)
    b = None if bias is None else bias.reshape(-1)
    return normalize(flat, LAYER, Standardize(eps), _affine(w, b)).reshape(x.shape)


def rms_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int] | None = None,
    weight: Tensor | None = None,
    eps: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """RMSNorm (Zhang and Sennrich, 2019): divide by the root mean square, no centering.

    ``y = x / sqrt(mean(x^2) + eps) * weight``. Forms as in :func:`layer_norm`:
    ``normalized_shape=None`` pools over ``(C, *)`` with a per-channel weight;
    a shape pools over those trailing dimensions with an elementwise weight
    (``torch.nn.functional.rms_norm``). Framework: ``LAYER`` partition,
    ``Standardize(center=False)``.

    Args:
        x: ``(N, C, *)`` or ``(*, *normalized_shape)``.
        normalized_shape: ``None`` or the trailing shape to normalize over.
        weight: ``(C,)`` or ``normalized_shape`` or ``None``.
        eps: added to the mean square; ``None`` (the default, as in ``torch.nn.RMSNorm``)
            for the machine epsilon of ``x``'s dtype, ``torch.finfo(x.dtype).eps``.
        backend: ``"auto"`` (torch's kernel) or ``"framework"``.

    Returns:
        a tensor like ``x``.

    Example:
        >>> y = rms_norm(torch.randn(2, 8) + 3.0)
        >>> bool(torch.allclose(y.pow(2).mean(1), torch.ones(2), atol=1e-4))
        True
    """
    if eps is None and isinstance(x, Tensor) and x.is_floating_point():
        eps = torch.finfo(x.dtype).eps  # torch.nn.RMSNorm's default
    if normalized_shape is None:
        _check_arguments(x, per_channel={"weight": weight}, eps=eps, backend=backend)
        op = Standardize(eps, center=False)
        if backend == "auto" and (xc := _torch_ready(x, weight)) is not None:
            out = F.rms_norm(xc, xc.shape[1:], None, eps)
            if weight is not None:
                out = out * weight.reshape((1, -1) + (1,) * (x.dim() - 2))
            return out.to(x.dtype)
        return normalize(x, LAYER, op, _affine(weight, None))
    _check_arguments(x, min_dim=1, eps=eps, backend=backend)
    op = Standardize(eps, center=False)
    shape = _normalized_shape(x, normalized_shape)
    if weight is not None and tuple(weight.shape) != shape:
        raise ValueError(f"weight must have shape {shape}, got {tuple(weight.shape)}")
    if backend == "auto" and (xc := _torch_ready(x, weight)) is not None:
        return F.rms_norm(xc, shape, weight, eps).to(x.dtype)
    flat = x.reshape(-1, math.prod(shape))
    w = None if weight is None else weight.reshape(-1)
    return normalize(flat, LAYER, op, _affine(w, None)).reshape(x.shape)


def instance_norm(
    x: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    backend: str = "auto",
) -> Tensor:
    """Instance Normalization (Ulyanov et al., 2016): per sample and channel over ``*``.

    Framework: partition ``INSTANCE``, ``Standardize``, ``Affine``. Optional
    running statistics (as torch's ``track_running_stats``) average the
    per-instance statistics over the batch; the variance is unbiased. On an
    ``(N, C)`` input each statistic covers one element, so the normalized
    value is 0 and the output is ``bias``.

    Args:
        x: ``(N, C, *)``.
        running_mean: ``(C,)`` or ``None``.
        running_var: ``(C,)`` or ``None``.
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        use_input_stats: use (and update) the statistics of ``x``.
        momentum: weight of the new batch in the running averages.
        eps: added to the variance.
        backend: ``"auto"`` (torch's kernel) or ``"framework"``.

    Returns:
        a tensor like ``x``.

    Raises:
        ValueError: with ``use_input_stats`` and running statistics on an input with one
            element per sample and channel (``prod(*) == 1``): the running variance would
            be driven toward 0 (torch raises too).

    Example:
        >>> y = instance_norm(torch.randn(2, 3, 8, 8))
        >>> y.mean(dim=(2, 3)).abs().max().item() < 1e-5
        True
    """
    c = _check_arguments(
        x,
        per_channel={"weight": weight, "bias": bias},
        running={"running_mean": running_mean, "running_var": running_var},
        eps=eps,
        momentum=momentum,
        backend=backend,
    )
    has_running = running_mean is not None and running_var is not None
    use_batch = use_input_stats or not has_running
    if use_input_stats and (running_mean is not None or running_var is not None):
        _check_instance_count(x, "instance_norm")
    spatial = x.numel() // max(x.shape[0] * c, 1)
    if backend == "auto":
        xc = _torch_ready(x, weight, bias, running_mean, running_var)
        # torch's own instance-norm kernel (not group_norm with G = C, whose one-pass variance
        # loses accuracy at large offsets and overflows sooner): equal to torch.nn.InstanceNorm.
        # One value per statistic ((N, C) vectors), which that kernel refuses, goes to group_norm.
        if xc is not None and spatial == 1 and not has_running and _torch_group_norm_accepts(x, c):
            return F.group_norm(xc, c, weight, bias, eps).to(x.dtype)
        if xc is not None and spatial > 1:
            out = F.instance_norm(
                xc, running_mean, running_var, weight, bias, use_batch, momentum, eps
            )
            return out.to(x.dtype)
    running = _running(mean=running_mean, var=running_var)
    return normalize(
        x, INSTANCE, Standardize(eps), _affine(weight, bias),
        running=running, use_batch_stats=use_batch, momentum=momentum,
    )


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    backend: str = "auto",
) -> Tensor:
    """Group Normalization (Wu and He, 2018): per sample and channel group over ``(C/G, *)``.

    ``num_groups=1`` is LayerNorm (CNN form), ``num_groups=C`` is InstanceNorm.
    Framework: partition ``GROUP(G)``, ``Standardize``, ``Affine``.

    Args:
        x: ``(N, C, *)``.
        num_groups: ``G``, a divisor of ``C``.
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        eps: added to the variance.
        backend: ``"auto"`` (torch's kernel) or ``"framework"``.

    Returns:
        a tensor like ``x``.

    Example:
        >>> group_norm(torch.randn(2, 4, 3), num_groups=2).shape
        torch.Size([2, 4, 3])
    """
    _check_arguments(
        x,
        num_groups=num_groups,
        per_channel={"weight": weight, "bias": bias},
        eps=eps,
        backend=backend,
    )
    if (backend == "auto" and _torch_group_norm_accepts(x, num_groups)
            and (xc := _torch_ready(x, weight, bias)) is not None):
        return F.group_norm(xc, num_groups, weight, bias, eps).to(x.dtype)
    return normalize(x, GROUP(num_groups), Standardize(eps), _affine(weight, bias))


def _torch_group_norm_accepts(x: Tensor, num_groups: int) -> bool:
    # torch's group_norm refuses an input with one value per group in all (a single sample of
    # single-value groups), in any mode, with a message about training; the framework path
    # normalizes it like any other input (to the bias), as it does for larger batches.
    return x.numel() // num_groups > 1


def positional_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    backend: str = "auto",
) -> Tensor:
    """Positional Normalization (Li et al., 2019): per sample and position over channels.

    Framework: partition ``POSITIONAL``, ``Standardize``, ``Affine``. On an
    ``(N, C)`` input it equals LayerNorm. With ``backend="auto"`` it runs as timm's
    ``LayerNorm2d`` does: the channels moved last (a view), torch's layer-norm kernel over
    them, and moved back (a view again: the output has the channels-last memory layout of
    that kernel's result, as timm's has).

    Args:
        x: ``(N, C, *)``.
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        eps: added to the variance.
        backend: ``"auto"`` (torch's layer-norm kernel) or ``"framework"``.

    Returns:
        a tensor like ``x``.

    Example:
        >>> y = positional_norm(torch.randn(2, 16, 3, 3))
        >>> y.mean(dim=1).abs().max().item() < 1e-5
        True
    """
    c = _check_arguments(x, per_channel={"weight": weight, "bias": bias}, eps=eps,
                         backend=backend)
    if backend == "auto" and x.dim() > 2:
        xc = _torch_ready(x, weight, bias)
        if xc is not None:
            last = xc.movedim(1, -1)
            return F.layer_norm(last, (c,), weight, bias, eps).movedim(-1, 1).to(x.dtype)
    return normalize(x, POSITIONAL, Standardize(eps), _affine(weight, bias))


def region_norm(
    x: Tensor,
    regions: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    num_regions: int | None = None,
) -> Tensor:
    """Region Normalization (Yu et al., 2020): InstanceNorm within each labelled region.

    For every sample, channel and region label ``r``, the positions labelled
    ``r`` are standardized with their own mean and variance (the basic RN of
    the paper, whose two regions are the corrupted and the intact pixels).
    Framework: :class:`normlib.framework.RegionPartition`, ``Standardize``,
    ``Affine``.

    Args:
        x: ``(N, C, *)`` with at least one spatial axis.
        regions: labels of shape ``(N, *)`` or ``(N, 1, *)``: a boolean mask
            (two regions) or integers in ``[0, R)``.
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        eps: added to the variance.
        num_regions: ``R``; inferred from the labels if ``None``.

    Returns:
        a tensor like ``x``.

    Raises:
        TypeError: if ``regions`` is not an integer or boolean tensor.
        ValueError: if ``regions`` does not match the batch and spatial shape of ``x``,
            holds a negative label, or a label ``>= num_regions``.

    Example:
        >>> x = torch.randn(2, 3, 4, 4)
        >>> mask = torch.zeros(2, 4, 4, dtype=torch.bool); mask[:, :2] = True
        >>> region_norm(x, mask).shape
        torch.Size([2, 3, 4, 4])
    """
    _check_arguments(x, min_dim=3, per_channel={"weight": weight, "bias": bias}, eps=eps)
    check_tensor("regions", regions)
    spatial = tuple(x.shape[2:])
    allowed = ((x.shape[0], *spatial), (x.shape[0], 1, *spatial))
    if tuple(regions.shape) not in allowed:
        raise ValueError(
            f"regions must have shape {allowed[0]} or {allowed[1]} for x of shape "
            f"{tuple(x.shape)}, got {tuple(regions.shape)}"
        )
    partition = RegionPartition(regions, num_regions)
    return normalize(x, partition, Standardize(eps), _affine(weight, bias))


# ----------------------------------------------------------------------------- FRN, EvoNorm


def tlu(x: Tensor, tau: Tensor) -> Tensor:
    """Thresholded Linear Unit ``max(x, tau_c)`` (Singh and Krishnan, 2020).

    Example:
        >>> tlu(torch.tensor([[-1.0, 2.0]]), torch.tensor([0.0, 3.0])).tolist()
        [[0.0, 3.0]]
    """
    _check_arguments(x, per_channel={"tau": tau})
    return torch.maximum(x, tau.to(x.dtype).reshape((1, -1) + (1,) * (x.dim() - 2)))


def filter_response_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    tau: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Filter Response Normalization with TLU (Singh and Krishnan, 2020).

    ``nu2 = mean_{*}(x^2)`` per sample and channel, ``y = max(weight * x /
    sqrt(nu2 + eps) + bias, tau)``. Framework: partition ``INSTANCE``,
    ``Standardize(center=False)``, ``Affine``, then :func:`tlu` (skipped if
    ``tau`` is ``None``). On ``(N, C)`` inputs ``nu2 = x^2`` and FRN is close to
    ``sign(x)``; the paper trains ``eps`` for that case.

    Args:
        x: ``(N, C, *)``.
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        tau: ``(C,)`` TLU threshold or ``None``.
        eps: added to the mean square; a positive float or a one-element tensor.

    Returns:
        a tensor like ``x``.

    Example:
        >>> y = filter_response_norm(torch.randn(2, 3, 5, 5))
        >>> bool(torch.allclose(y.pow(2).mean(dim=(2, 3)), torch.ones(2, 3), atol=1e-4))
        True
    """
    _check_arguments(x, per_channel={"weight": weight, "bias": bias, "tau": tau})
    if isinstance(eps, Tensor):
        # A learned eps stays in the graph: divide by sqrt(nu2 + |eps|) explicitly.
        xv = INSTANCE.view(x).to(compute_dtype(x.dtype))
        nu2 = INSTANCE.mean(xv * xv)
        out = xv * torch.rsqrt(nu2 + eps.abs().to(xv.dtype).reshape(()))
        affine = _affine(weight, bias)
        out = (affine(out, INSTANCE) if affine else out).reshape(x.shape).to(x.dtype)
    else:
        check_eps(eps)
        out = normalize(x, INSTANCE, Standardize(eps, center=False), _affine(weight, bias))
    return out if tau is None else tlu(out, tau)


def evonorm_b0(
    x: Tensor,
    v: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    running_var: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """EvoNorm-B0 (Liu et al., 2020): batch-dependent, no separate activation.

    ``y = x / max(sqrt(s2_batch + eps), v * x + sqrt(s2_instance + eps)) * weight + bias``
    where ``s2_batch`` is the per-channel variance over ``(N, *)`` (the unbiased
    running estimate in evaluation) and ``s2_instance`` the per-sample,
    per-channel variance over ``*``. Both come from the framework's ``BATCH`` and
    ``INSTANCE`` partitions.

    Args:
        x: ``(N, C, *)``.
        v: ``(C,)`` or ``None`` (no ``v * x`` term).
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        running_var: ``(C,)`` or ``None``.
        training: use (and update) batch statistics.
        momentum: weight of the new batch in the running variance.
        eps: added to both variances.

    Returns:
        a tensor like ``x``.

    Example:
        >>> evonorm_b0(torch.randn(4, 3, 5, 5), v=torch.ones(3)).shape
        torch.Size([4, 3, 5, 5])
    """
    c = _check_arguments(
        x,
        per_channel={"v": v, "weight": weight, "bias": bias},
        running={"running_var": running_var},
        eps=eps,
        momentum=momentum,
    )
    use_batch = training or running_var is None
    if use_batch:
        _check_batch_count(x.numel() // c, x, "evonorm_b0", training)
    op = Standardize(eps)
    xv = BATCH.view(x).to(compute_dtype(x.dtype))
    if use_batch:
        stats = op.statistics(xv, BATCH)
        if training and running_var is not None:
            update_running({"var": running_var}, op, stats, BATCH.count(xv.shape), momentum)
        batch_var = stats["var"]
    else:
        batch_var = op.from_running("var", running_var, xv, BATCH).to(xv.dtype)
    instance_var = op.statistics(xv, INSTANCE)["var"]
    instance_std = torch.sqrt(instance_var + eps)
    if v is not None:
        instance_std = v.to(xv.dtype).reshape(1, -1, 1, 1) * xv + instance_std
    out = xv / torch.maximum(torch.sqrt(batch_var + eps), instance_std)
    affine = _affine(weight, bias)
    out = affine(out, BATCH) if affine else out
    return out.reshape(x.shape).to(x.dtype)


def evonorm_s0(
    x: Tensor,
    num_groups: int,
    v: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """EvoNorm-S0 (Liu et al., 2020): batch-independent, a gated GroupNorm-like scaling.

    ``y = x * sigmoid(v * x) / sqrt(s2_group + eps) * weight + bias`` with
    ``s2_group`` the variance over ``(C/G, *)`` of the ``GROUP(G)`` partition.
    The numerator is not centered (the swish-like gate replaces the activation).

    Args:
        x: ``(N, C, *)``.
        num_groups: ``G``, a divisor of ``C``.
        v: ``(C,)`` or ``None`` (then the gate is omitted: ``x / std``).
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        eps: added to the variance.

    Returns:
        a tensor like ``x``.

    Example:
        >>> evonorm_s0(torch.randn(2, 8, 3, 3), num_groups=4, v=torch.ones(8)).shape
        torch.Size([2, 8, 3, 3])
    """
    _check_arguments(
        x,
        num_groups=num_groups,
        per_channel={"v": v, "weight": weight, "bias": bias},
        eps=eps,
    )
    partition = GROUP(num_groups)
    xv = partition.view(x).to(compute_dtype(x.dtype))
    group_var = Standardize(eps).statistics(xv, partition)["var"]
    numerator = xv
    if v is not None:
        numerator = xv * torch.sigmoid(v.to(xv.dtype).reshape(1, num_groups, -1, 1) * xv)
    out = numerator * torch.rsqrt(group_var + eps)
    affine = _affine(weight, bias)
    out = affine(out, partition) if affine else out
    return out.reshape(x.shape).to(x.dtype)


# ----------------------------------------------------------------------------- local family


def _as_tuple(value, n: int, name: str) -> tuple[int, ...]:
    _check_window(value, name)
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n:
        raise ValueError(
            f"{name} must be a positive int or {n} positive ints (one per spatial axis), "
            f"got {value!r}"
        )
    return values


def _window_sum(t: Tensor, axis: int, kernel: Tensor) -> Tensor:
    """Zero-padded sliding sum of ``t`` along ``axis`` weighted by ``kernel`` (same length out).

    The window of position ``i`` covers ``i - k//2 .. i + (k-1)//2``, as in
    torch's local response normalization.
    """
    k = kernel.numel()
    moved = t.movedim(axis, -1)
    shape = moved.shape
    flat = moved.reshape(-1, 1, shape[-1])
    flat = F.pad(flat, (k // 2, (k - 1) // 2))
    out = F.conv1d(flat, kernel.to(t.dtype).reshape(1, 1, k))
    return out.reshape(shape).movedim(-1, axis)


def _window_mean(t: Tensor, axes: Sequence[int], kernels: Sequence[Tensor]) -> Tensor:
    """Weighted sliding mean over several axes, renormalized by the weight inside the tensor.

    Positions near a border average only over the part of the window that
    lies inside, so a constant input stays constant everywhere.
    """
    total, mass = t, torch.ones((), dtype=t.dtype, device=t.device)
    for axis, kernel in zip(axes, kernels, strict=True):
        total = _window_sum(total, axis, kernel)
        ones_shape = [1] * t.dim()
        ones_shape[axis] = t.shape[axis]
        ones = torch.ones(ones_shape, dtype=t.dtype, device=t.device)
        mass = mass * _window_sum(ones, axis, kernel)
    return total / mass


def _box(size: int, device) -> Tensor:
    return torch.ones(size, device=device)


def _gaussian(size: int, sigma: float, device, dtype: torch.dtype) -> Tensor:
    # Built in float64 on the CPU (some accelerators, e.g. MPS, have no float64), then moved.
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    return (g / g.sum()).to(device=device, dtype=dtype)


def local_response_norm(
    x: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> Tensor:
    """Local Response Normalization (Krizhevsky et al., 2012), torch's convention.

    ``y_c = x_c / (k + alpha / size * sum_{c' in window(c)} x_{c'}^2)^beta`` with a
    window of ``size`` neighbouring channels (zero padded), the same formula as
    ``torch.nn.functional.local_response_norm``.

    Args:
        x: ``(N, C, *)``.
        size: number of channels in the window.
        alpha: multiplicative factor.
        beta: exponent.
        k: additive constant.

    Returns:
        a tensor like ``x``.

    Example:
        >>> local_response_norm(torch.randn(2, 6, 4, 4), size=3).shape
        torch.Size([2, 6, 4, 4])
    """
    check_input(x)
    check_positive_int("size", size)
    xc = x.to(compute_dtype(x.dtype))
    sq_sum = _window_sum(xc * xc, 1, _box(size, x.device))
    return (xc / (k + alpha / size * sq_sum) ** beta).to(x.dtype)


def local_contrast_norm(
    x: Tensor, kernel_size: int | Sequence[int] = 9, sigma: float = 2.0, eps: float = 1e-5
) -> Tensor:
    """Local Contrast Normalization (Jarrett et al., 2009): subtractive, then divisive.

    With ``w`` a Gaussian window over the spatial axes that sums to 1 over
    the window and all ``C`` channels: ``v = x - sum_{c, window} w x``,
    ``sigma = sqrt(sum_{c, window} w v^2)``, ``y = v / max(mean_{*}(sigma), sigma, eps)``.
    Windows are renormalized at the borders (so a constant image gives 0).

    Args:
        x: ``(N, C, *)`` with any number of spatial axes (none: the window is a point).
        kernel_size: window size per spatial axis.
        sigma: standard deviation of the Gaussian window, in pixels.
        eps: lower bound of the divisor.

    Returns:
        a tensor like ``x``.

    Example:
        >>> local_contrast_norm(torch.randn(2, 3, 16, 16), kernel_size=5).shape
        torch.Size([2, 3, 16, 16])
    """
    _check_arguments(x, eps=eps)
    check_positive_float("sigma", sigma)
    axes = list(range(2, x.dim()))
    sizes = _as_tuple(kernel_size, len(axes), "kernel_size")
    xc = x.to(compute_dtype(x.dtype))
    # The local means are shift invariant; removing the sample mean first makes a
    # constant image exactly zero instead of rounding noise divided by eps.
    xc = xc - xc.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    kernels = [_gaussian(s, sigma, x.device, xc.dtype) for s in sizes]
    centered = xc - _window_mean(xc.mean(dim=1, keepdim=True), axes, kernels)
    local_std = torch.sqrt(_window_mean((centered * centered).mean(dim=1, keepdim=True),
                                        axes, kernels))
    mean_std = local_std.mean(dim=axes, keepdim=True) if axes else local_std
    divisor = torch.maximum(local_std, mean_std).clamp_min(eps)
    return (centered / divisor).to(x.dtype)


def divisive_norm(
    x: Tensor,
    spatial_size: int | Sequence[int] = 3,
    channel_size: int | None = None,
    sigma: float = 1.0,
    center: bool = True,
) -> Tensor:
    """Divisive Normalization (Ren et al., 2017): ``z = v / sqrt(sigma^2 + E_B[v^2])``.

    ``v = x - E_A[x]`` (if ``center``), with the summation field ``A`` and the
    suppression field ``B`` both a box of ``spatial_size`` positions per
    spatial axis and ``channel_size`` neighbouring channels (``None``: all
    channels). ``sigma`` is the smoothing term of the paper. With windows
    covering everything and ``sigma -> 0`` this is LayerNorm.

    Args:
        x: ``(N, C, *)``.
        spatial_size: window size per spatial axis.
        channel_size: window size over channels, or ``None`` for all channels.
        sigma: smoothing constant in the denominator (positive).
        center: subtract the local mean first.

    Returns:
        a tensor like ``x``.

    Example:
        >>> divisive_norm(torch.randn(2, 4, 8, 8), spatial_size=3).shape
        torch.Size([2, 4, 8, 8])
    """
    check_input(x)
    axes = list(range(2, x.dim()))
    sizes = _as_tuple(spatial_size, len(axes), "spatial_size")
    check_positive_int("channel_size", channel_size, allow_none=True)
    check_positive_float("sigma", sigma)
    xc = x.to(compute_dtype(x.dtype))
    kernels = [_box(s, x.device) for s in sizes]

    def field_mean(t: Tensor) -> Tensor:
        if channel_size is None:
            t = t.mean(dim=1, keepdim=True)
            return _window_mean(t, axes, kernels)
        return _window_mean(t, [1, *axes], [_box(channel_size, x.device), *kernels])

    v = xc - field_mean(xc) if center else xc
    return (v * torch.rsqrt(sigma**2 + field_mean(v * v))).to(x.dtype)


def local_context_norm(
    x: Tensor,
    num_groups: int,
    window_size: int | Sequence[int] = 7,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Local Context Normalization (Ortiz et al., 2020): GroupNorm within a spatial window.

    Each element is standardized with the mean and variance of its channel
    group inside a ``window_size`` neighbourhood (windows clipped at the
    borders). A window of at least ``2 * H - 1`` per axis sees the whole image
    from every position, and then this is GroupNorm.

    Args:
        x: ``(N, C, *)``.
        num_groups: ``G``, a divisor of ``C``.
        window_size: window size per spatial axis.
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        eps: added to the variance.

    Returns:
        a tensor like ``x``.

    Example:
        >>> local_context_norm(torch.randn(2, 4, 8, 8), num_groups=2, window_size=3).shape
        torch.Size([2, 4, 8, 8])
    """
    c = _check_arguments(x, num_groups=num_groups, per_channel={"weight": weight, "bias": bias}, eps=eps)
    spatial = tuple(x.shape[2:])
    sizes = _as_tuple(window_size, len(spatial), "window_size")
    xc = x.to(compute_dtype(x.dtype))
    xg = xc.reshape(x.shape[0], num_groups, c // num_groups, *spatial)
    # Variance is shift invariant; removing the group mean first keeps
    # E[x^2] - E[x]^2 from cancelling catastrophically for inputs far from 0.
    xg = xg - xg.mean(dim=tuple(range(2, xg.dim())), keepdim=True)
    axes = list(range(2, 2 + len(spatial)))
    kernels = [_box(s, x.device) for s in sizes]
    mean = _window_mean(xg.mean(dim=2), axes, kernels).unsqueeze(2)
    mean_sq = _window_mean((xg * xg).mean(dim=2), axes, kernels).unsqueeze(2)
    var = (mean_sq - mean * mean).clamp_min(0)
    out = (xg - mean) * torch.rsqrt(var + eps)
    out = out.reshape(x.shape)
    affine = _affine(weight, bias)
    if affine is not None:
        out = affine(out.reshape(x.shape[0], c, 1, math.prod(x.shape[2:])), INSTANCE).reshape(x.shape)
    return out.to(x.dtype)
