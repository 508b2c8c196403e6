"""Multi-mode normalization: mixtures of normalizers and of normalization statistics.

One set of statistics assumes one mode of the data. The methods here keep
several and mix them (chapter "Review II: whitening, recovery, multi-mode"):

- Mode Normalization (Deecke, Murray and Bilen, 2019), :func:`mode_norm`:
  ``K`` modes, each with its own batch mean and variance estimated with the
  soft assignment of a gating network,
  ``MN(x_n) = alpha * sum_k g_k(x_n) (x_n - mu_k) / sqrt(sigma_k^2 + eps) + beta``.
- Switchable Normalization (Luo et al., 2019), :func:`switchable_norm`: the
  statistics of InstanceNorm, LayerNorm and BatchNorm mixed by learned softmax
  weights, ``(x - sum_k w_k mu_k) / sqrt(sum_k w'_k sigma_k^2 + eps)``.
- Switchable Whitening (Pan et al., 2019), :func:`switchable_whitening`: the
  means and covariances of batch whitening (BW) and instance whitening (IW),
  optionally with those of BN, IN and LN (diagonal covariances), mixed by
  learned softmax weights and then whitened.

All three are NOPs of :mod:`normlib.framework` on the ``BATCH`` partition,
and they take the BN, IN and LN statistics from the framework's own
partitions and ``Standardize`` (no second implementation of those moments).
The per-sample statistics (IN, LN, IW) are always computed from the input,
the batch ones (BN, BW, the modes) come from the batch in training and from
running averages in evaluation.

Example:
    >>> import torch
    >>> from normlib import functional as NF
    >>> from normlib.multimode import switchable_norm
    >>> x = torch.randn(8, 4, 5, 5)
    >>> y = switchable_norm(x, torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0]))
    >>> bool(torch.allclose(y, NF.batch_norm(x), atol=1e-5))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normlib._checks import check_per_channel, check_positive_int
from normlib.framework import (
    BATCH,
    INSTANCE,
    LAYER,
    Affine,
    Operation,
    Partition,
    Standardize,
    batch_sync,
    normalize,
)
from normlib.functional import _check_arguments
from normlib.layers import NormLayer
from normlib.registry import register_norm
from normlib.whitening import (
    _check_group_size,
    _check_samples,
    covariance,
    merge_groups,
    split_groups,
    whitening_matrix,
)

__all__ = [
    "SWITCHABLE_MODES",
    "SWITCHABLE_WHITENING_MODES",
    "ModeStandardize",
    "SwitchableStandardize",
    "SwitchableWhiten",
    "mode_norm",
    "switchable_norm",
    "switchable_whitening",
    "ModeNorm",
    "SwitchableNorm",
    "SwitchableWhitening",
]

SWITCHABLE_MODES = ("in", "ln", "bn")
SWITCHABLE_WHITENING_MODES = ("bw", "iw", "bn", "in", "ln")


# ----------------------------------------------------------------------------- checks


def _check_mixture(weights, name: str, k: int) -> None:
    if not isinstance(weights, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of {k} mixture weights, got {type(weights).__name__}")
    if weights.shape != (k,):
        raise ValueError(
            f"{name} must have shape ({k},) (one weight per mode), got {tuple(weights.shape)}; "
            "pass softmax(logits)"
        )


def _check_modes(modes) -> tuple[str, ...]:
    modes = tuple(modes) if isinstance(modes, (tuple, list)) else (modes,)
    if not modes or any(m not in SWITCHABLE_WHITENING_MODES for m in modes) or len(set(modes)) < len(modes):
        raise ValueError(
            f"modes must be distinct names from {SWITCHABLE_WHITENING_MODES}, got {modes!r}"
        )
    return modes


def _affine(weight: Tensor | None, bias: Tensor | None) -> Affine | None:
    return None if weight is None and bias is None else Affine(weight, bias)


def _check_batch(x: Tensor, what: str) -> None:
    if x.numel() // x.shape[1] <= 1 and batch_sync() is None:  # synchronized: global count checked
        raise ValueError(
            f"{what} in training needs more than 1 value per channel to estimate batch "
            f"statistics, got input of shape {tuple(x.shape)}; use a larger batch or .eval()"
        )


# ----------------------------------------------------------------------------- Mode Normalization


@dataclass(frozen=True, eq=False)
class ModeStandardize(Operation):
    """NOP of Mode Normalization: ``sum_k g_nk (x_n - mu_k) / sqrt(sigma_k^2 + eps)``.

    Works on the ``BATCH`` view ``(N, C, 1, S)``. Mode ``k`` has the weighted
    statistics ``mu_k = sum_n g_nk mean_S(x_n) / sum_n g_nk`` and
    ``sigma_k^2 = sum_n g_nk mean_S((x_n - mu_k)^2) / sum_n g_nk``; with one mode
    (all gates 1) this is BatchNorm's standardization. Statistics and running
    buffers have shape ``(K, C)``; the running variance is unbiased with the
    mode's effective count ``S * sum_n g_nk``.

    Args:
        gates: ``g: (N, K)``, non-negative, each row summing to 1.
        eps: added to the variances.
    """

    gates: Tensor
    eps: float = 1e-5
    keys = ("mean", "var")

    def _mode_mass(self) -> Tensor:
        # A mode no sample is assigned to would divide by zero.
        return self.gates.sum(0).clamp_min(torch.finfo(self.gates.dtype).tiny)

    def statistics(self, xv: Tensor, partition: Partition) -> dict[str, Tensor]:
        if (sync := batch_sync()) is not None:  # hook: gate-weighted sums over ranks
            return sync.mode_moments(self.gates.to(xv.dtype), xv.flatten(1, 2))
        g = self.gates.to(xv.dtype)
        mass = self._mode_mass().to(xv.dtype).unsqueeze(-1)  # (K, 1)
        x = xv.flatten(1, 2)  # (N, C, S)
        mean = torch.einsum("nk,nc->kc", g, x.mean(-1)) / mass
        centered = x.unsqueeze(1) - mean[None, :, :, None]  # (N, K, C, S)
        var = torch.einsum("nk,nkc->kc", g, centered.pow(2).mean(-1)) / mass
        return {"mean": mean, "var": var}

    def apply(self, xv: Tensor, stats: dict[str, Tensor], partition: Partition) -> Tensor:
        x = xv.flatten(1, 2)
        mean, var = stats["mean"].to(xv.dtype), stats["var"].to(xv.dtype)
        xhat = (x.unsqueeze(1) - mean[None, :, :, None]) * torch.rsqrt(var + self.eps)[None, :, :, None]
        out = torch.einsum("nk,nkcs->ncs", self.gates.to(xv.dtype), xhat)
        return out.reshape(xv.shape)

    def running_value(self, key: str, stat: Tensor, count: int) -> Tensor:
        if key != "var":
            return stat
        mass, n = self._mode_mass(), self.gates.shape[0]
        if (sync := batch_sync()) is not None and sync.mode_mass is not None:  # hook: global mass
            mass, n = sync.mode_mass, sync.batch_size
        n_eff = (mass * (count / n)).to(stat.dtype).unsqueeze(-1)
        return torch.where(n_eff > 1, stat * n_eff / (n_eff - 1).clamp_min(1e-12), stat)

    def from_running(self, key: str, buffer: Tensor, xv: Tensor, partition: Partition) -> Tensor:
        return buffer


def mode_norm(
    x: Tensor,
    gates: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Mode Normalization (Deecke et al., 2019) for given gates.

    ``y_n = weight * sum_k g_nk (x_n - mu_k) / sqrt(sigma_k^2 + eps) + bias``
    with per-mode statistics over the batch weighted by the gates (see
    :class:`ModeStandardize`). With hard (one-hot) gates every sample is
    batch-normalized with the samples of its own mode; with ``K = 1`` this is
    BatchNorm. :class:`ModeNorm` computes the gates with a gating network.

    Args:
        x: ``(N, C, *)``.
        gates: ``(N, K)``, rows of non-negative weights summing to 1.
        running_mean: ``(K, C)`` or ``None``.
        running_var: ``(K, C)`` or ``None`` (unbiased).
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        training: use (and update) batch statistics.
        momentum: weight of the new batch in the running averages.
        eps: added to the variances.

    Returns:
        a tensor like ``x``.

    Raises:
        ValueError: if ``gates`` is not ``(N, K)``, or buffers have the wrong shape.

    Example:
        >>> x = torch.randn(6, 3, 4, 4)
        >>> y = mode_norm(x, torch.ones(6, 1))
        >>> y.mean(dim=(0, 2, 3)).abs().max().item() < 1e-5
        True
    """
    c = _check_arguments(x, per_channel={"weight": weight, "bias": bias}, eps=eps, momentum=momentum)
    n = x.shape[0]
    if not isinstance(gates, Tensor) or gates.dim() != 2 or gates.shape[0] != n:
        shape = tuple(gates.shape) if isinstance(gates, Tensor) else type(gates).__name__
        raise ValueError(f"gates must have shape (N={n}, K), got {shape}")
    k = gates.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        check_per_channel(name, t, (k, c), meaning="one row per mode")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together or not at all")
    use_batch = training or running_mean is None
    if use_batch:
        _check_batch(x, "mode_norm")
    running = None if running_mean is None else {"mean": running_mean, "var": running_var}
    return normalize(x, BATCH, ModeStandardize(gates, eps), _affine(weight, bias),
                     running=running, use_batch_stats=use_batch, momentum=momentum)


# ----------------------------------------------------------------------------- Switchable Normalization


def _moments(xv: Tensor, partition: Partition) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of the view ``xv: (N, C, 1, S)`` pooled as ``partition`` pools.

    The framework's own ``Standardize`` statistics on the partition's view,
    reshaped so that they broadcast against ``(N, C, 1, S)``.
    """
    stats = Standardize().statistics(partition.view(xv), partition)
    mean, var = stats["mean"], stats["var"]
    g = partition.groups(xv.shape[1])
    if g == 1:  # (N, 1, 1, 1) already broadcasts
        return mean, var
    return mean.reshape(mean.shape[0], g, 1, 1), var.reshape(var.shape[0], g, 1, 1)


@dataclass(frozen=True, eq=False)
class SwitchableStandardize(Operation):
    """NOP of Switchable Normalization: IN, LN and BN statistics mixed by weights.

    ``(x - sum_k w_k mu_k) / sqrt(sum_k w'_k sigma_k^2 + eps)`` over
    ``k in ("in", "ln", "bn")``, on the ``BATCH`` view ``(N, C, 1, S)``. The
    BN moments (keys ``mean`` and ``var``, running buffers ``(C,)``, unbiased
    running variance) come from the batch or the running averages; IN and LN
    moments are always those of the input.

    Args:
        mean_weights: ``w: (3,)`` for ``(in, ln, bn)``.
        var_weights: ``w': (3,)``.
        eps: added to the mixed variance.
    """

    mean_weights: Tensor
    var_weights: Tensor
    eps: float = 1e-5
    keys = ("mean", "var")

    def statistics(self, xv: Tensor, partition: Partition) -> dict[str, Tensor]:
        mean, var = _moments(xv, BATCH)
        return {"mean": mean, "var": var}

    def apply(self, xv: Tensor, stats: dict[str, Tensor], partition: Partition) -> Tensor:
        # The framework hands over only the batch statistics (from running buffers in
        # evaluation); the per-sample ones are the input's in both modes.
        moments = {"in": _moments(xv, INSTANCE), "ln": _moments(xv, LAYER),
                   "bn": (stats["mean"], stats["var"])}
        wm, wv = self.mean_weights.to(xv.dtype), self.var_weights.to(xv.dtype)
        mean = sum(wm[i] * moments[k][0] for i, k in enumerate(SWITCHABLE_MODES))
        var = sum(wv[i] * moments[k][1] for i, k in enumerate(SWITCHABLE_MODES))
        return (xv - mean) * torch.rsqrt(var + self.eps)

    def running_value(self, key: str, stat: Tensor, count: int) -> Tensor:
        return Standardize(self.eps).running_value(key, stat, count)


def switchable_norm(
    x: Tensor,
    mean_weights: Tensor,
    var_weights: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Switchable Normalization (Luo et al., 2019) for given mixture weights.

    ``y = weight * (x - sum_k w_k mu_k) / sqrt(sum_k w'_k sigma_k^2 + eps) + bias``
    with ``k`` over ``SWITCHABLE_MODES = ("in", "ln", "bn")``. One-hot weights
    give exactly InstanceNorm, LayerNorm or BatchNorm. :class:`SwitchableNorm`
    learns the weights as softmaxes of logits.

    Args:
        x: ``(N, C, *)``.
        mean_weights: ``(3,)``, weights of the IN, LN and BN means.
        var_weights: ``(3,)``, weights of the IN, LN and BN variances.
        running_mean: ``(C,)`` BN running mean or ``None``.
        running_var: ``(C,)`` BN running variance (unbiased) or ``None``.
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        training: use (and update) the BN batch statistics.
        momentum: weight of the new batch in the running averages.
        eps: added to the mixed variance.

    Returns:
        a tensor like ``x``.

    Example:
        >>> w = torch.tensor([1.0, 0.0, 0.0])
        >>> y = switchable_norm(torch.randn(2, 3, 4, 4), w, w)  # InstanceNorm
        >>> y.mean(dim=(2, 3)).abs().max().item() < 1e-5
        True
    """
    _check_arguments(
        x,
        per_channel={"weight": weight, "bias": bias},
        running={"running_mean": running_mean, "running_var": running_var},
        eps=eps,
        momentum=momentum,
    )
    _check_mixture(mean_weights, "mean_weights", 3)
    _check_mixture(var_weights, "var_weights", 3)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together or not at all")
    use_batch = training or running_mean is None
    if use_batch:
        _check_batch(x, "switchable_norm")
    running = None if running_mean is None else {"mean": running_mean, "var": running_var}
    return normalize(x, BATCH, SwitchableStandardize(mean_weights, var_weights, eps),
                     _affine(weight, bias), running=running, use_batch_stats=use_batch,
                     momentum=momentum)


# ----------------------------------------------------------------------------- Switchable Whitening


@dataclass(frozen=True, eq=False)
class SwitchableWhiten(Operation):
    """NOP of Switchable Whitening: whiten with a mixture of means and covariances.

    On the ``BATCH`` view ``(N, C, 1, S)`` with channel groups of ``group_size``:
    ``mu = sum_k w'_k mu_k``, ``Sigma = sum_k w_k Sigma_k`` over the chosen
    ``modes`` (``bw``: batch covariance; ``iw``: per-sample covariance over the
    positions; ``bn``, ``in``: their diagonals; ``ln``: the per-sample LayerNorm
    variance times ``I``), then each sample is whitened with
    ``whitening_matrix(Sigma, method, eps, iterations)``. Batch statistics
    (``bw``, ``bn``) have the keys ``mean`` ``(C,)`` and ``cov``
    ``(C // g, g, g)`` (unbiased running covariance); ``bn`` uses the diagonal of
    the same covariance.

    Args:
        mean_weights: ``(len(modes),)``.
        cov_weights: ``(len(modes),)``.
        modes: a subset of ``SWITCHABLE_WHITENING_MODES``, in any order.
        group_size: channels per group (``None``: all).
        method: a method of :func:`normlib.whitening.whitening_matrix`.
        eps: added to the covariance diagonal.
        iterations: ``T`` of ``iternorm``.
    """

    mean_weights: Tensor
    cov_weights: Tensor
    modes: tuple[str, ...] = ("bw", "iw")
    group_size: int | None = None
    method: str = "zca"
    eps: float = 1e-5
    iterations: int = 5
    keys = ("mean", "cov")

    def _grouped(self, mat: Tensor) -> Tensor:
        return split_groups(mat, self.group_size)

    def statistics(self, xv: Tensor, partition: Partition) -> dict[str, Tensor]:
        sync = batch_sync()  # hook: over ranks when synchronized
        mean, cov = (covariance if sync is None else sync.covariance)(self._grouped(BATCH.to_matrix(xv)))
        return {"mean": mean, "cov": cov}

    def apply(self, xv: Tensor, stats: dict[str, Tensor], partition: Partition) -> Tensor:
        n, c = xv.shape[:2]
        samples = self._grouped(INSTANCE.to_matrix(xv))  # (N, k, g, S)
        eye = torch.eye(samples.shape[-2], dtype=xv.dtype, device=xv.device)
        moments = {"bw": (stats["mean"], stats["cov"])}
        moments["bn"] = (stats["mean"], torch.diag_embed(stats["cov"].diagonal(dim1=-2, dim2=-1)))
        if "iw" in self.modes or "in" in self.modes:
            iw_mean, iw_cov = covariance(samples)
            moments["iw"] = (iw_mean, iw_cov)
            moments["in"] = (iw_mean, torch.diag_embed(iw_cov.diagonal(dim1=-2, dim2=-1)))
        if "ln" in self.modes:
            ln_mean, ln_var = _moments(xv, LAYER)  # (N, 1, 1, 1) each
            moments["ln"] = (ln_mean, ln_var * eye)
        wm, wc = self.mean_weights.to(xv.dtype), self.cov_weights.to(xv.dtype)
        mean = sum(wm[i] * moments[k][0] for i, k in enumerate(self.modes))
        cov = sum(wc[i] * moments[k][1] for i, k in enumerate(self.modes))
        g = whitening_matrix(cov, self.method, self.eps, self.iterations)
        return merge_groups(g @ (samples - mean)).reshape(n, c, 1, xv.shape[-1])

    def running_value(self, key: str, stat: Tensor, count: int) -> Tensor:
        value = stat.mean(dim=0)
        return value * (count / (count - 1)) if key == "cov" and count > 1 else value

    def from_running(self, key: str, buffer: Tensor, xv: Tensor, partition: Partition) -> Tensor:
        g = buffer.shape[-1] if key == "cov" else (self.group_size or xv.shape[1])
        return buffer.reshape(1, -1, g, 1 if key == "mean" else g)


def switchable_whitening(
    x: Tensor,
    mean_weights: Tensor,
    cov_weights: Tensor,
    modes: tuple[str, ...] = ("bw", "iw"),
    running_mean: Tensor | None = None,
    running_cov: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    group_size: int | None = None,
    method: str = "zca",
    iterations: int = 5,
) -> Tensor:
    """Switchable Whitening (Pan et al., 2019) for given mixture weights.

    ``y_n = weight * G_n (x_n - mu_n) + bias`` with ``mu_n = sum_k w'_k mu_k`` and
    ``G_n`` the whitening matrix of ``Sigma_n = sum_k w_k Sigma_k`` over
    ``modes`` (see :class:`SwitchableWhiten`), per group of ``group_size``
    channels. With ``modes=("bw",)`` this is batch whitening, with ``("iw",)``
    instance whitening, with ``("bn",)`` BatchNorm.

    Args:
        x: ``(N, C, *)``.
        mean_weights: ``(len(modes),)``.
        cov_weights: ``(len(modes),)``.
        modes: a subset of ``("bw", "iw", "bn", "in", "ln")``.
        running_mean: ``(C,)`` or ``None``.
        running_cov: ``(C // g, g, g)`` or ``None`` (unbiased batch covariance).
        weight: ``(C,)`` or ``None``.
        bias: ``(C,)`` or ``None``.
        training: use (and update) the batch statistics.
        momentum: weight of the new batch in the running averages.
        eps: added to the covariance diagonal.
        group_size: channels per group, a divisor of ``C`` (``None``: all).
        method: ``zca``, ``pca``, ``cholesky``, ``iternorm`` or ``standardize``.
        iterations: ``T`` of ``iternorm``.

    Returns:
        a tensor like ``x``.

    Raises:
        ValueError: for unknown or repeated modes, weights of the wrong length,
            a ``group_size`` that does not divide ``C``, or too few positions per
            sample (``prod(*) <= group_size``) for the instance covariance.

    Example:
        >>> w = torch.tensor([0.5, 0.5])
        >>> switchable_whitening(torch.randn(4, 8, 6, 6), w, w, group_size=4).shape
        torch.Size([4, 8, 6, 6])
    """
    c = _check_arguments(
        x,
        per_channel={"weight": weight, "bias": bias},
        running={"running_mean": running_mean},
        eps=eps,
        momentum=momentum,
    )
    n = x.shape[0]
    modes = _check_modes(modes)
    _check_mixture(mean_weights, "mean_weights", len(modes))
    _check_mixture(cov_weights, "cov_weights", len(modes))
    g = _check_group_size(group_size, c)
    check_per_channel("running_cov", running_cov, (c // g, g, g), meaning="one covariance per group")
    if (running_mean is None) != (running_cov is None):
        raise ValueError("running_mean and running_cov must be given together or not at all")
    spatial = x.shape[2:].numel()  # (not x[0, 0]: a synchronized rank may hold no sample)
    if "iw" in modes:
        _check_samples(spatial, g, x.shape)
    elif {"in", "ln"} & set(modes) and spatial <= 1:
        raise ValueError(
            f"instance and layer statistics need spatial positions, got input of shape {tuple(x.shape)}"
        )
    use_batch = training or running_mean is None
    if use_batch and batch_sync() is None:  # synchronized: the global count is checked instead
        _check_samples(n * spatial, g, x.shape)
    running = None if running_mean is None else {"mean": running_mean, "cov": running_cov}
    op = SwitchableWhiten(mean_weights, cov_weights, modes, g, method, eps, iterations)
    return normalize(x, BATCH, op, _affine(weight, bias), running=running,
                     use_batch_stats=use_batch, momentum=momentum)


# ----------------------------------------------------------------------------- layers


@register_norm("mode_norm", "mn", "modenorm")
class ModeNorm(NormLayer):
    """Mode Normalization (Deecke et al., 2019) with its gating network.

    Gates ``g(x_n) = softmax(W mean_*(x_n) + b)`` over ``num_modes`` modes, then
    :func:`mode_norm`. Running statistics have shape ``(K, C)``; in evaluation
    the gates still come from the sample, the statistics from the running
    averages.

    Args:
        num_features: ``C``.
        num_modes: ``K``.
        eps: added to the variances.
        momentum: running-average weight; ``None`` for a cumulative average.
        affine: learn a per-channel ``weight`` and ``bias``.
        track_running_stats: keep per-mode running statistics.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> mn = ModeNorm(8, num_modes=2)
        >>> mn(torch.randn(16, 8, 4, 4)).shape, mn.running_mean.shape
        (torch.Size([16, 8, 4, 4]), torch.Size([2, 8]))
    """

    running_keys = ("mean", "var")

    def __init__(self, num_features: int, num_modes: int = 2, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        check_positive_int("num_features", num_features)
        check_positive_int("num_modes", num_modes)
        self.num_modes = num_modes
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        factory = {"device": device, "dtype": dtype}
        self.gate = nn.Linear(num_features, num_modes, **factory)
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_modes, num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_modes, num_features, **factory))

    def reset_parameters(self) -> None:
        """Affine ones/zeros, running statistics reset, gating network re-initialized."""
        super().reset_parameters()
        if hasattr(self, "gate"):
            self.gate.reset_parameters()

    def gates(self, x: Tensor) -> Tensor:
        """``g(x): (N, K)``, softmax of an affine map of the spatially averaged input."""
        pooled = x.flatten(2).mean(-1) if x.dim() > 2 else x
        return self.gate(pooled.to(self.gate.weight.dtype)).softmax(-1)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return mode_norm(x, self.gates(x), self.running_mean, self.running_var, self.weight,
                         self.bias, self.training, self._momentum(), self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_modes={self.num_modes}, " + \
            super().extra_repr().split(", ", 1)[1]


@register_norm("switchable", "switchable_norm", "switchnorm")
class SwitchableNorm(NormLayer):
    """Switchable Normalization (Luo et al., 2019): learned mixture of IN, LN and BN.

    ``w = softmax(mean_logits)``, ``w' = softmax(var_logits)`` over
    ``("in", "ln", "bn")``, then :func:`switchable_norm`. The logits start at 0
    (equal weights). :meth:`mixture` returns the current weights.

    Args:
        num_features: ``C``.
        eps: added to the mixed variance.
        momentum: running-average weight of the BN statistics; ``None`` for a cumulative average.
        affine: learn a per-channel ``weight`` and ``bias``.
        track_running_stats: keep BN running statistics for evaluation.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> sn = SwitchableNorm(8)
        >>> sn(torch.randn(4, 8, 5, 5)).shape
        torch.Size([4, 8, 5, 5])
        >>> sn.mixture()["mean"].tolist()
        [0.333..., 0.333..., 0.333...]
    """

    running_keys = ("mean", "var")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        factory = {"device": device, "dtype": dtype}
        self.mean_logits = nn.Parameter(torch.zeros(3, **factory))
        self.var_logits = nn.Parameter(torch.zeros(3, **factory))

    def reset_parameters(self) -> None:
        """Affine ones/zeros, running statistics reset, equal mixture weights."""
        super().reset_parameters()
        if hasattr(self, "mean_logits"):
            nn.init.zeros_(self.mean_logits)
            nn.init.zeros_(self.var_logits)

    def mixture(self) -> dict[str, Tensor]:
        """The current weights ``{"mean": w, "var": w'}``, each ``(3,)`` over ``(in, ln, bn)``."""
        return {"mean": self.mean_logits.detach().softmax(0),
                "var": self.var_logits.detach().softmax(0)}

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        running = self.running_mean if self.track_running_stats else None
        return switchable_norm(x, self.mean_logits.softmax(0), self.var_logits.softmax(0),
                               running, self.running_var if running is not None else None,
                               self.weight, self.bias, self.training, self._momentum(), self.eps)


class SwitchableWhitening(NormLayer):
    """Switchable Whitening (Pan et al., 2019): learned mixture of whitening statistics.

    Softmax weights over ``modes`` for the means and for the covariances, then
    :func:`switchable_whitening`. Running statistics: the batch mean ``(C,)``
    and the unbiased batch covariance ``running_cov: (C // g, g, g)``, whitened
    in evaluation together with the sample's own instance statistics.

    Args:
        num_features: ``C``.
        group_size: channels per group (``None``: all; the registry default is
            the largest divisor of ``C`` at most 16).
        modes: a subset of ``("bw", "iw", "bn", "in", "ln")``.
        method: whitening method (``zca`` as in the paper, or ``iternorm``, ...).
        iterations: ``T`` of ``iternorm``.
        eps: added to the covariance diagonal.
        momentum: running-average weight; ``None`` for a cumulative average.
        affine: learn a per-channel ``weight`` and ``bias``.
        track_running_stats: keep batch running statistics.
        device: factory argument.
        dtype: factory argument.

    Example:
        >>> sw = SwitchableWhitening(8, group_size=4)
        >>> sw(torch.randn(4, 8, 6, 6)).shape, sw.running_cov.shape
        (torch.Size([4, 8, 6, 6]), torch.Size([2, 4, 4]))
    """

    running_keys = ("mean",)

    def __init__(self, num_features: int, group_size: int | None = None,
                 modes: tuple[str, ...] = ("bw", "iw"), method: str = "zca", iterations: int = 5,
                 eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        check_positive_int("num_features", num_features)
        self.group_size = _check_group_size(group_size, num_features)
        modes = _check_modes(modes)
        whitening_matrix(torch.eye(1), method, 1.0, iterations)  # validates method and iterations
        self.modes, self.method, self.iterations = modes, method, iterations
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        factory = {"device": device, "dtype": dtype}
        g = self.group_size
        self.mean_logits = nn.Parameter(torch.zeros(len(modes), **factory))
        self.cov_logits = nn.Parameter(torch.zeros(len(modes), **factory))
        cov = torch.eye(g, **factory).repeat(num_features // g, 1, 1) if self.track_running_stats else None
        self.register_buffer("running_cov", cov)

    def reset_running_stats(self) -> None:
        """Running mean 0, running covariance the identity, batch counter 0."""
        super().reset_running_stats()
        cov = getattr(self, "running_cov", None)
        if cov is not None:
            cov.copy_(torch.eye(cov.shape[-1]).expand_as(cov))

    def reset_parameters(self) -> None:
        """Affine ones/zeros, running statistics reset, equal mixture weights."""
        super().reset_parameters()
        if hasattr(self, "mean_logits"):
            nn.init.zeros_(self.mean_logits)
            nn.init.zeros_(self.cov_logits)

    def mixture(self) -> dict[str, Tensor]:
        """The current weights ``{"mean": ..., "cov": ...}`` over ``modes``."""
        return {"mean": self.mean_logits.detach().softmax(0),
                "cov": self.cov_logits.detach().softmax(0)}

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return switchable_whitening(
            x, self.mean_logits.softmax(0), self.cov_logits.softmax(0), self.modes,
            self.running_mean, self.running_cov, self.weight, self.bias, self.training,
            self._momentum(), self.eps, self.group_size, self.method, self.iterations,
        )

    def extra_repr(self) -> str:
        return (f"{self.num_features}, group_size={self.group_size}, modes={self.modes}, "
                f"method={self.method!r}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


def _switchable_whitening_factory(num_features: int, group_size: int | None = None, **kw):
    if group_size is None:
        group_size = max(k for k in range(1, min(num_features, 16) + 1) if num_features % k == 0)
    return SwitchableWhitening(num_features, group_size=group_size, **kw)


register_norm("switchable_whitening", "sw")(_switchable_whitening_factory)
