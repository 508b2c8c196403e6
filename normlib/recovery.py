"""Normalization representation recovery (NRR): remove statistics A, add statistics B.

A normalization operation (NOP) removes statistics from its input: after
standardization every normalized set has mean 0 and variance 1. The recovery
step ``Psi`` of the NAP/NOP/NRR framework (:mod:`normlib.framework`) puts
statistics back. The plain affine recovery ``gamma * xhat + beta`` with learned
per-channel ``gamma`` and ``beta`` is :class:`normlib.framework.Affine`; this
module lets ``gamma`` and ``beta`` depend on the data (chapter "Review II:
whitening, recovery, multi-mode"):

- :class:`SampleAffine`: the NRR with ``gamma`` and ``beta`` per sample
  (``(N, C)``) or per sample and position (``(N, C, *)``); everything below is
  a way of choosing them.
- :func:`adain` (Huang and Belongie, 2017): the statistics of a style input.
- :class:`MatrixAffine` and :func:`whitening_coloring` (Li et al., 2017): the
  second-order version, ``Sigma_B^{1/2} Sigma_A^{-1/2} (x - mu_A) + mu_B``, which
  removes a covariance and adds another one.
- :class:`SPADE` (Park et al., 2019): per-pixel ``gamma`` and ``beta`` predicted from a
  segmentation map.
- :class:`AttentiveNorm` (Li et al., 2020): a mixture of ``K`` affine transforms
  weighted by an attention on the input.
- :class:`ConditionalBatchNorm` (de Vries et al., 2017; Dumoulin et al., 2017):
  ``gamma`` and ``beta`` chosen by a class label or mixed by a condition vector.

The layers wrap a parameter-free normalizer from the registry (BatchNorm by
default) and apply the recovery to its output.

Example:
    >>> import torch
    >>> from normlib.recovery import adain
    >>> content, style = torch.randn(2, 3, 8, 8), 5 + 2 * torch.randn(2, 3, 8, 8)
    >>> y = adain(content, style, eps=1e-12)
    >>> bool(torch.allclose(y.mean(dim=(2, 3)), style.mean(dim=(2, 3)), atol=1e-4))
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlib._checks import check_eps, check_positive_int, check_tensor
from normlib.framework import INSTANCE, Partition, Standardize, compute_dtype, normalize
from normlib.functional import check_input
from normlib.layers import _fx_leaf
from normlib.registry import create_norm, register_norm
from normlib.whitening import Whiten, covariance, inverse_sqrt_symmetric

__all__ = [
    "SampleAffine",
    "sample_affine",
    "instance_statistics",
    "adain",
    "AdaIN",
    "MatrixAffine",
    "whitening_coloring",
    "SPADE",
    "AttentiveNorm",
    "ConditionalBatchNorm",
]


def _check_modulation(t, name: str, x_shape: torch.Size, per_position: bool = True) -> None:
    """``t`` must be ``(C,)``, ``(N, C)`` or (if ``per_position``) ``(N, C, *)`` for ``x_shape``."""
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    n, c = x_shape[0], x_shape[1]
    shapes = [(c,), (n, c), (1, c)]
    if per_position:
        shapes += [(n, c, *x_shape[2:]), (1, c, *x_shape[2:])]
    if tuple(t.shape) not in shapes:
        allowed = ", ".join(str(s) for s in dict.fromkeys(shapes))
        raise ValueError(
            f"{name} has shape {tuple(t.shape)} but the input has shape {tuple(x_shape)}; "
            f"{name} must have one of the shapes {allowed}"
        )


@dataclass
class SampleAffine:
    """NRR ``Psi``: ``gamma * xhat + beta`` with ``gamma``, ``beta`` per sample or per position.

    ``weight`` and ``bias`` have shape ``(C,)`` (the plain affine), ``(N, C)``
    (per sample, e.g. AdaIN, conditional BN, attentive normalization) or
    ``(N, C, *)`` (per sample and position, e.g. SPADE); a leading 1 instead of
    ``N`` broadcasts over the batch. It is a recovery for
    :func:`normlib.framework.normalize`: called on the partitioned view, it
    partitions ``weight`` and ``bias`` the same way.

    Args:
        weight: ``gamma`` or ``None`` (no scaling).
        bias: ``beta`` or ``None`` (no shift).

    Example:
        >>> from normlib.framework import LAYER, Standardize, normalize
        >>> x = torch.randn(2, 3, 4, 4)
        >>> beta = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
        >>> y = normalize(x, LAYER, Standardize(), SampleAffine(None, beta))
        >>> bool(torch.allclose(y.mean(dim=(1, 2, 3)), beta.mean(1), atol=1e-5))
        True
    """

    weight: Tensor | None = None
    bias: Tensor | None = None

    @staticmethod
    def _as_view(t: Tensor, xv: Tensor, partition: Partition) -> Tensor:
        t = t.to(xv.dtype)
        if t.dim() == 1:
            t = t.unsqueeze(0)
        # (N or 1, C, ...) -> (N or 1, C, 1 or S) -> the partition's (N, G, C // G, 1 or S).
        return partition.view(t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:])))

    def __call__(self, xv: Tensor, partition: Partition) -> Tensor:
        if self.weight is not None:
            xv = xv * self._as_view(self.weight, xv, partition)
        if self.bias is not None:
            xv = xv + self._as_view(self.bias, xv, partition)
        return xv


def sample_affine(x_hat: Tensor, weight: Tensor | None = None,
                  bias: Tensor | None = None) -> Tensor:
    """Apply :class:`SampleAffine` to an already normalized ``x_hat: (N, C, *)``.

    Args:
        x_hat: ``(N, C, *)``.
        weight: ``(C,)``, ``(N, C)`` or ``(N, C, *)`` (leading 1 broadcasts), or ``None``.
        bias: same shapes as ``weight``, or ``None``.

    Returns:
        ``weight * x_hat + bias``, like ``x_hat``.

    Raises:
        ValueError: if ``weight`` or ``bias`` has none of the accepted shapes.

    Example:
        >>> sample_affine(torch.ones(2, 3, 4), torch.full((2, 3), 2.0), torch.ones(2, 3, 4))[0, 0]
        tensor([3., 3., 3., 3.])
    """
    check_input(x_hat, name="x_hat")
    _check_modulation(weight, "weight", x_hat.shape)
    _check_modulation(bias, "bias", x_hat.shape)
    xv = INSTANCE.view(x_hat).to(compute_dtype(x_hat.dtype))
    out = SampleAffine(weight, bias)(xv, INSTANCE)
    return out.reshape(x_hat.shape).to(x_hat.dtype)


def instance_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and (biased) standard deviation over ``*``.

    The statistics InstanceNorm removes: those of the framework's ``INSTANCE``
    partition, returned with shape ``(N, C)``.

    Args:
        x: ``(N, C, *)`` with at least one spatial axis.

    Returns:
        ``(mean, std)``, each ``(N, C)``.

    Example:
        >>> m, s = instance_statistics(torch.tensor([[[1.0, 3.0]]]))
        >>> m.item(), s.item()
        (2.0, 1.0)
    """
    check_input(x, min_dim=3)
    xv = INSTANCE.view(x).to(compute_dtype(x.dtype))
    stats = Standardize().statistics(xv, INSTANCE)
    n, c = x.shape[:2]
    return stats["mean"].reshape(n, c), stats["var"].sqrt().reshape(n, c)


def adain(content: Tensor, style: Tensor | None = None, *, style_mean: Tensor | None = None,
          style_std: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Adaptive Instance Normalization (Huang and Belongie, 2017).

    ``AdaIN(x, y) = sigma(y) * (x - mu(x)) / sqrt(sigma(x)^2 + eps) + mu(y)`` with
    ``mu``, ``sigma`` the per-sample, per-channel mean and standard deviation
    over the spatial positions: InstanceNorm removes the statistics of the
    content ``x`` and :class:`SampleAffine` adds those of the style ``y``. The
    output's instance mean is exactly ``mu(y)``; its standard deviation is
    ``sigma(y) * sigma(x) / sqrt(sigma(x)^2 + eps)``, i.e. ``sigma(y)`` up to a
    relative ``eps / (2 sigma(x)^2)``. Framework: partition ``INSTANCE``,
    ``Standardize``, ``SampleAffine(sigma(y), mu(y))``.

    Args:
        content: ``x: (N, C, *)`` with at least one spatial axis.
        style: ``y: (N, C, **)`` or ``(1, C, **)`` (its spatial shape may differ), or
            ``None`` when the target statistics are given directly.
        style_mean: target means ``(N, C)`` or ``(C,)`` instead of ``style``.
        style_std: target standard deviations, same shapes, instead of ``style``.
        eps: added to the content variance.

    Returns:
        a tensor like ``content``.

    Raises:
        ValueError: if both or neither of ``style`` and the target statistics
            are given, or shapes do not match the content.

    Example:
        >>> y = adain(torch.randn(1, 2, 16), style_mean=torch.tensor([1.0, -1.0]),
        ...           style_std=torch.tensor([2.0, 3.0]), eps=1e-12)
        >>> [round(v, 4) for v in y.mean(-1).flatten().tolist()]
        [1.0, -1.0]
    """
    check_input(content, name="content", min_dim=3)
    if style is not None:
        if style_mean is not None or style_std is not None:
            raise ValueError("pass either style or style_mean and style_std, not both")
        check_input(style, name="style", min_dim=3)
        if style.shape[1] != content.shape[1] or style.shape[0] not in (1, content.shape[0]):
            raise ValueError(
                f"style has shape {tuple(style.shape)} but content has {tuple(content.shape)}; "
                "style needs the same channels and a batch of 1 or of the content's size"
            )
        style_mean, style_std = instance_statistics(style)
    elif style_mean is None or style_std is None:
        raise ValueError("pass a style tensor, or both style_mean and style_std")
    _check_modulation(style_mean, "style_mean", content.shape, per_position=False)
    _check_modulation(style_std, "style_std", content.shape, per_position=False)
    check_eps(eps)
    return normalize(content, INSTANCE, Standardize(eps), SampleAffine(style_std, style_mean))


class AdaIN(nn.Module):
    """Module form of :func:`adain`: ``AdaIN()(content, style)``.

    Args:
        eps: added to the content variance.

    Example:
        >>> AdaIN()(torch.randn(2, 3, 8, 8), torch.randn(1, 3, 5, 5)).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        check_eps(eps)
        self.eps = eps

    def forward(self, content: Tensor, style: Tensor) -> Tensor:
        return adain(content, style, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


@dataclass
class MatrixAffine:
    """NRR ``Psi``: ``A xhat + b`` with a full ``C x C`` matrix mixing the channels.

    The second-order counterpart of :class:`SampleAffine`: after a whitening
    NOP has removed a covariance, ``A`` with ``A A^T = Sigma_B`` adds the
    covariance ``Sigma_B`` (coloring). Works with partitions that keep one
    channel per group (``INSTANCE``, ``BATCH``), whose view is ``(N, C, 1, S)``.

    Args:
        matrix: ``A`` of shape ``(C, C)`` or ``(N, C, C)`` (one per sample).
        bias: ``b`` of shape ``(C,)`` or ``(N, C)``, or ``None``.

    Example:
        >>> from normlib.framework import INSTANCE, Standardize, normalize
        >>> swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        >>> y = normalize(torch.randn(1, 2, 8), INSTANCE, Standardize(), MatrixAffine(swap))
        >>> y.shape
        torch.Size([1, 2, 8])
    """

    matrix: Tensor
    bias: Tensor | None = None

    def __call__(self, xv: Tensor, partition: Partition) -> Tensor:
        if xv.shape[2] != 1:
            raise ValueError(
                f"MatrixAffine mixes channels and needs a partition with one channel per group "
                f"(INSTANCE or BATCH), got the {partition.name!r} view of shape {tuple(xv.shape)}"
            )
        c = xv.shape[1]
        if self.matrix.shape[-2:] != (c, c) or self.matrix.dim() not in (2, 3):
            raise ValueError(
                f"matrix must have shape ({c}, {c}) or (N, {c}, {c}), got {tuple(self.matrix.shape)}"
            )
        a = self.matrix.to(xv.dtype)
        spec = "cd,nds->ncs" if a.dim() == 2 else "ncd,nds->ncs"
        out = torch.einsum(spec, a, xv[:, :, 0]).unsqueeze(2)
        if self.bias is not None:
            b = self.bias.to(xv.dtype)
            out = out + (b.unsqueeze(0) if b.dim() == 1 else b).reshape(-1, xv.shape[1], 1, 1)
        return out


def whitening_coloring(content: Tensor, style: Tensor, eps: float = 1e-5) -> Tensor:
    """Whitening and coloring transform (Li et al., 2017): give ``content`` the covariance of ``style``.

    Per sample, with ``mu``, ``Sigma`` the mean and covariance of the ``C``
    channels over the spatial positions:
    ``y = Sigma_s (Sigma_s + eps I)^{-1/2} (Sigma_c + eps I)^{-1/2} (x - mu_c) + mu_s``.
    ZCA instance whitening (NOP :class:`normlib.whitening.Whiten` on the
    ``INSTANCE`` partition) removes the content's covariance and
    :class:`MatrixAffine` adds the style's: the output covariance is
    ``Sigma_s`` up to terms of relative size ``eps / lambda_min``. AdaIN is
    the special case that keeps only the diagonals.

    Args:
        content: ``(N, C, *)``, with more positions than channels.
        style: ``(N, C, **)`` or ``(1, C, **)``, with more positions than channels.
        eps: added to both covariance diagonals.

    Returns:
        a tensor like ``content``.

    Raises:
        ValueError: if the channels or batch sizes do not match, or an input
            has no more spatial positions than channels.

    Example:
        >>> content = torch.randn(1, 3, 400, dtype=torch.float64)
        >>> style = torch.randn(1, 3, 300, dtype=torch.float64) * torch.tensor([[[1.0], [2.0], [3.0]]])
        >>> y = whitening_coloring(content, style, eps=1e-12)
        >>> bool(torch.allclose(torch.cov(y[0], correction=0), torch.cov(style[0], correction=0)))
        True
    """
    check_input(content, name="content", min_dim=3)
    check_input(style, name="style", min_dim=3)
    if style.shape[1] != content.shape[1] or style.shape[0] not in (1, content.shape[0]):
        raise ValueError(
            f"style has shape {tuple(style.shape)} but content has {tuple(content.shape)}; "
            "style needs the same channels and a batch of 1 or of the content's size"
        )
    c = content.shape[1]
    for name, t in (("content", content), ("style", style)):
        if t[0, 0].numel() <= c:
            raise ValueError(
                f"{name} has {t[0, 0].numel()} positions per channel, too few to estimate a {c}x{c} "
                f"covariance; it needs more than {c}"
            )
    style_rows = INSTANCE.to_matrix(INSTANCE.view(style).to(compute_dtype(style.dtype)))
    mean_s, cov_s = covariance(style_rows)
    eye = torch.eye(c, dtype=cov_s.dtype, device=cov_s.device)
    coloring = cov_s @ inverse_sqrt_symmetric(cov_s + eps * eye, eps)
    return normalize(content, INSTANCE, Whiten("zca", eps=eps),
                     MatrixAffine(coloring, mean_s.squeeze(-1)))


def _parameter_free_norm(norm: str, num_features: int, norm_kwargs: dict | None, factory: dict):
    kwargs = {"affine": False, **(norm_kwargs or {}), **factory}
    return create_norm(norm, num_features, **kwargs)


class SPADE(nn.Module):
    """Spatially-adaptive denormalization (Park et al., 2019).

    ``y = norm(x) * (1 + gamma(m)) + beta(m)`` where ``norm`` is a
    parameter-free normalizer (BatchNorm by default) and the per-pixel
    ``gamma(m), beta(m): (N, C, *)`` are predicted from the segmentation map
    ``m`` (resized to the spatial size of ``x`` by nearest neighbour) by a
    shared convolution with ReLU followed by one convolution each, as in the
    paper. The recovery is :class:`SampleAffine`.

    Args:
        num_features: ``C`` of the input ``x``.
        label_channels: channels of the segmentation map (number of classes for one-hot maps).
        hidden_channels: width of the shared convolution.
        kernel_size: odd kernel size of the convolutions.
        spatial_dims: 1, 2 or 3 spatial axes of ``x`` and the map.
        norm: registered name of the normalizer, built with ``affine=False``.
        norm_kwargs: more arguments for the normalizer (``eps``, ``momentum``, ...).
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> spade = SPADE(8, label_channels=3, hidden_channels=16)
        >>> seg = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 4, 4)), 3).permute(0, 3, 1, 2)
        >>> spade(torch.randn(2, 8, 8, 8), seg.float()).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(self, num_features: int, label_channels: int, hidden_channels: int = 128,
                 kernel_size: int = 3, spatial_dims: int = 2, norm: str = "bn",
                 norm_kwargs: dict | None = None, device=None, dtype=None):
        super().__init__()
        for value, name in ((num_features, "num_features"), (label_channels, "label_channels"),
                            (hidden_channels, "hidden_channels"), (kernel_size, "kernel_size")):
            check_positive_int(name, value)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so that outputs keep their size, got {kernel_size}")
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        factory = {"device": device, "dtype": dtype}
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[spatial_dims - 1]
        pad = kernel_size // 2
        self.num_features = num_features
        self.label_channels = label_channels
        self.spatial_dims = spatial_dims
        self.norm = _parameter_free_norm(norm, num_features, norm_kwargs, factory)
        self.shared = conv(label_channels, hidden_channels, kernel_size, padding=pad, **factory)
        self.gamma = conv(hidden_channels, num_features, kernel_size, padding=pad, **factory)
        self.beta = conv(hidden_channels, num_features, kernel_size, padding=pad, **factory)

    def forward(self, x: Tensor, segmap: Tensor) -> Tensor:
        check_input(x, num_features=self.num_features, min_dim=2 + self.spatial_dims)
        if x.dim() != 2 + self.spatial_dims:
            raise ValueError(
                f"x must have {self.spatial_dims} spatial axes (shape (N, C, *) with "
                f"{2 + self.spatial_dims} dims), got shape {tuple(x.shape)}"
            )
        check_input(segmap, num_features=self.label_channels, name="segmap")
        if segmap.dim() != x.dim() or segmap.shape[0] != x.shape[0]:
            raise ValueError(
                f"segmap has shape {tuple(segmap.shape)} but x has {tuple(x.shape)}; the map "
                f"needs shape (N={x.shape[0]}, {self.label_channels}, *) with "
                f"{self.spatial_dims} spatial axes"
            )
        seg = F.interpolate(segmap.to(self.shared.weight.dtype), size=x.shape[2:], mode="nearest")
        hidden = F.relu(self.shared(seg))
        return sample_affine(self.norm(x), 1 + self.gamma(hidden), self.beta(hidden))

    def extra_repr(self) -> str:
        return f"{self.num_features}, label_channels={self.label_channels}"


@register_norm("attentive", "attentive_norm", "an")
class AttentiveNorm(nn.Module):
    """Attentive Normalization (Li, Sun, Wu and Wang, 2020): a mixture of affine transforms.

    ``y = gamma(x) * norm(x) + beta(x)`` with ``gamma(x) = sum_k lambda_k(x) gamma_k``
    and ``beta(x) = sum_k lambda_k(x) beta_k`` over ``K`` learned per-channel
    affine transforms. The attention ``lambda(x): (N, K)`` is
    ``act(W avgpool(x) + b)`` computed from the input, with ``act`` a sigmoid
    (the paper's choice) or a softmax; ``norm`` is a parameter-free normalizer
    (BatchNorm by default). The recovery is :class:`SampleAffine`.

    Args:
        num_features: ``C``.
        num_mixtures: ``K``.
        attention: ``"sigmoid"`` or ``"softmax"``.
        norm: registered name of the normalizer, built with ``affine=False``.
        norm_kwargs: more arguments for the normalizer.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> AttentiveNorm(8, num_mixtures=3)(torch.randn(4, 8, 5, 5)).shape
        torch.Size([4, 8, 5, 5])
    """

    def __init__(self, num_features: int, num_mixtures: int = 5, attention: str = "sigmoid",
                 norm: str = "bn", norm_kwargs: dict | None = None, device=None, dtype=None):
        super().__init__()
        check_positive_int("num_features", num_features)
        check_positive_int("num_mixtures", num_mixtures)
        if attention not in ("sigmoid", "softmax"):
            raise ValueError(f"attention must be 'sigmoid' or 'softmax', got {attention!r}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.num_mixtures = num_mixtures
        self.attention = attention
        self.norm = _parameter_free_norm(norm, num_features, norm_kwargs, factory)
        self.attention_fc = nn.Linear(num_features, num_mixtures, **factory)
        self.weight = nn.Parameter(torch.empty(num_mixtures, num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_mixtures, num_features, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mixture components ``gamma_k ~ N(1, 0.1^2)``, ``beta_k ~ N(0, 0.1^2)`` (the paper's init)."""
        nn.init.normal_(self.weight, 1.0, 0.1)
        nn.init.normal_(self.bias, 0.0, 0.1)
        self.attention_fc.reset_parameters()

    def attention_weights(self, x: Tensor) -> Tensor:
        """``lambda(x): (N, K)`` from the spatially averaged input."""
        pooled = x.flatten(2).mean(-1) if x.dim() > 2 else x
        logits = self.attention_fc(pooled.to(self.attention_fc.weight.dtype))
        return torch.sigmoid(logits) if self.attention == "sigmoid" else logits.softmax(-1)

    @_fx_leaf  # one node under torch.fx tracing, as the layers of normlib.layers
    def forward(self, x: Tensor) -> Tensor:
        check_input(x, num_features=self.num_features)
        lam = self.attention_weights(x)
        return sample_affine(self.norm(x), lam @ self.weight, lam @ self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_mixtures={self.num_mixtures}, attention={self.attention!r}"


class ConditionalBatchNorm(nn.Module):
    """Conditional BatchNorm (de Vries et al., 2017; Dumoulin et al., 2017).

    ``y = gamma[c] * norm(x) + beta[c]``: the affine parameters are rows of
    learned tables ``gamma, beta: (num_classes, C)`` chosen by the condition.
    The condition is either integer labels ``(N,)`` (class-conditional BN,
    conditional instance normalization with ``norm="in"``) or float condition
    vectors ``(N, num_classes)`` that mix the rows linearly (``gamma = c @ gamma``;
    one-hot vectors select rows). ``norm`` is a parameter-free normalizer
    (BatchNorm by default) and the recovery is :class:`SampleAffine`.

    Args:
        num_features: ``C``.
        num_classes: rows of the tables (classes, styles or condition features).
        norm: registered name of the normalizer, built with ``affine=False``.
        norm_kwargs: more arguments for the normalizer (``eps``, ``momentum``, ...).
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> cbn = ConditionalBatchNorm(8, num_classes=10)
        >>> cbn(torch.randn(4, 8, 5, 5), torch.tensor([0, 3, 3, 9])).shape
        torch.Size([4, 8, 5, 5])
    """

    def __init__(self, num_features: int, num_classes: int, norm: str = "bn",
                 norm_kwargs: dict | None = None, device=None, dtype=None):
        super().__init__()
        check_positive_int("num_features", num_features)
        check_positive_int("num_classes", num_classes)
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.num_classes = num_classes
        self.norm = _parameter_free_norm(norm, num_features, norm_kwargs, factory)
        self.weight = nn.Parameter(torch.empty(num_classes, num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_classes, num_features, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every class starts as the identity recovery: ``gamma = 1``, ``beta = 0``."""
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def modulation(self, x: Tensor, condition: Tensor) -> tuple[Tensor, Tensor]:
        """``(gamma, beta)``, each ``(N, C)``, for the condition of each sample."""
        n = x.shape[0]
        check_tensor("condition", condition)
        if condition.is_floating_point():
            if condition.shape != (n, self.num_classes):
                raise ValueError(
                    f"condition vectors must have shape (N={n}, num_classes={self.num_classes}), "
                    f"got {tuple(condition.shape)}"
                )
            c = condition.to(self.weight.dtype)
            return c @ self.weight, c @ self.bias
        if condition.shape != (n,):
            raise ValueError(
                f"condition labels must have shape (N={n},), got {tuple(condition.shape)}; pass "
                "one integer label per sample, or float vectors of shape (N, num_classes)"
            )
        if n and (int(condition.min()) < 0 or int(condition.max()) >= self.num_classes):
            raise ValueError(
                f"condition labels must lie in [0, {self.num_classes}), got values in "
                f"[{int(condition.min())}, {int(condition.max())}]"
            )
        return self.weight[condition], self.bias[condition]

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        check_input(x, num_features=self.num_features)
        gamma, beta = self.modulation(x, condition)
        return sample_affine(self.norm(x), gamma, beta)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_classes={self.num_classes}"

