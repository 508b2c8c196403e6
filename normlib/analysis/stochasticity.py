"""Stochasticity of batch normalization: the stochastic normalization disturbance (SND).

In training a sample is normalized with the statistics of the random batch it arrives in.
:func:`~normlib.analysis.normalize_in_batches` draws such batches,
:func:`~normlib.analysis.empirical_snd` measures how far a sample's outputs spread,
:func:`~normlib.analysis.stochastic_normalization_disturbance` and
:func:`~normlib.analysis.snd_sweep` do it for batch normalization and the whitening methods over
batch sizes :cite:p:`huang2020investigation`.

Chapter: Analysis of normalization (``chapters/analysis.md``, :ref:`chap-analysis`),
stochasticity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from normlib import functional as NF
from normlib._checks import (
    check_int,
    check_positive_int,
    check_seed,
    check_str,
    check_tensor,
)
from normlib.whitening import whiten

__all__ = [
    "normalize_in_batches",
    "empirical_snd",
    "SNDEstimate",
    "stochastic_normalization_disturbance",
    "SNDSweep",
    "snd_sweep",
    "SND_METHODS",
]


# ---------------------------------------------------------------------------- stochasticity

#: Methods of :func:`stochastic_normalization_disturbance`: BatchNorm standardization and
#: the batch whitening methods of :mod:`normlib.whitening` (``cd`` is Cholesky whitening).
SND_METHODS = ("bn", "zca", "pca", "cd", "iternorm")
_SND_ALIASES = {"cholesky": "cd", "itn": "iternorm"}
_WHITENING_NAME = {"zca": "zca", "pca": "pca", "cd": "cholesky", "iternorm": "iternorm"}


def _snd_method(method) -> str:
    check_str("method", method)
    key = _SND_ALIASES.get(method.lower(), method.lower())
    if key not in SND_METHODS:
        raise ValueError(
            f"unknown normalization method {method!r}; known: {', '.join(SND_METHODS)} "
            f"(aliases: {', '.join(f'{a}={m}' for a, m in _SND_ALIASES.items())})"
        )
    return key


def _check_data(data) -> Tensor:
    return check_tensor("data", data, floating=True, ndim=2,
                        what="a torch.Tensor of floating-point samples, shape (num_samples, d)")


def _check_batch_size(batch_size, num_samples: int, dim: int, method: str) -> None:
    check_positive_int("batch_size", batch_size, minimum=2)
    if batch_size > num_samples:
        raise ValueError(
            f"batch_size={batch_size} is larger than the data ({num_samples} samples); "
            f"use at most {num_samples}"
        )
    if method != "bn" and batch_size <= dim:
        raise ValueError(
            f"{method} whitening of d={dim} features needs batch_size > {dim} samples to estimate "
            f"the covariance, got batch_size={batch_size}"
        )


def _check_snd_arguments(data, batch_size, method) -> tuple[Tensor, str, int, int]:
    """The checks the SND tools share: ``(data, method, num_samples, d)``."""
    method = _snd_method(method)
    data = _check_data(data)
    m, d = data.shape
    _check_batch_size(batch_size, m, d, method)
    return data, method, m, d


def normalize_in_batches(
    data: Tensor,
    index: int,
    batch_size: int,
    *,
    method: str = "bn",
    num_batches: int = 100,
    eps: float = 1e-5,
    iterations: int = 5,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The outputs :math:`G(X_j^B; x)` of one sample normalized within random batches.

    Each batch :math:`X_j^B` is the sample :math:`x` = ``data[index]`` together with
    ``batch_size - 1`` other samples drawn without replacement from the rest of ``data``;
    :math:`G` normalizes the batch with its own statistics (training mode) and
    :math:`G(X_j^B; x)` is the row of :math:`x`. ``"bn"`` is
    :func:`normlib.functional.batch_norm`, the others :func:`normlib.whitening.whiten` of
    all ``d`` features together.

    Args:
        data: ``(M, d)`` samples.
        index: the row of ``data`` to follow.
        batch_size: :math:`B`, from 2 to ``M`` (more than ``d`` for whitening).
        method: one of :data:`SND_METHODS` (``"cholesky"`` and ``"itn"`` are accepted aliases).
        num_batches: :math:`s`.
        eps: the normalizer's ``eps``.
        iterations: Newton steps of IterNorm.
        generator: random source for the batches.

    Returns:
        ``(num_batches, d)``.

    Example:
        >>> data = torch.randn(200, 3, dtype=torch.float64)
        >>> normalize_in_batches(data, 0, 16, num_batches=5).shape
        torch.Size([5, 3])
    """
    data, method, m, d = _check_snd_arguments(data, batch_size, method)
    check_positive_int("num_batches", num_batches)
    check_int("index", index, minimum=0, maximum=m - 1)
    return _outputs_in_batches(data, torch.tensor([index]), batch_size, method, num_batches, eps,
                               iterations, generator)[0]


def _outputs_in_batches(data, indices, batch_size, method, num_batches, eps, iterations, generator):
    """``(n, s, d)``: each of the ``n`` samples ``data[indices]`` normalized in ``s`` random batches."""
    m, d = data.shape
    n = indices.numel()
    # The top B - 1 of M - 1 uniform keys are a uniform random subset (cheaper than a sort).
    keys = torch.rand(n * num_batches, m - 1, generator=generator)
    others = keys.topk(batch_size - 1, dim=1).indices.reshape(n, num_batches, batch_size - 1)
    own = indices.cpu().reshape(n, 1, 1)
    others = others + (others >= own).long()  # skip the sample itself
    rows = torch.cat([own.expand(n, num_batches, 1), others], dim=2)
    rows = rows.reshape(n * num_batches, batch_size).to(data.device)
    out = _normalize_batches(data[rows], method, eps, iterations)
    return out[:, 0].reshape(n, num_batches, d)


def _normalize_batches(batches: Tensor, method: str, eps: float, iterations: int) -> Tensor:
    """Normalize each of the batches ``(s, B, d)`` with its own statistics; same shape."""
    s, b, d = batches.shape
    if method == "bn":
        # One call: the s batches side by side as s * d channels of one (B, s * d) input.
        flat = batches.transpose(0, 1).reshape(b, s * d)
        return NF.batch_norm(flat, eps=eps).reshape(b, s, d).transpose(0, 1)
    out = whiten(batches.transpose(1, 2), _WHITENING_NAME[method], eps=eps, iterations=iterations)
    return out.transpose(1, 2)


def empirical_snd(outputs: Tensor) -> float:
    r"""The empirical SND :math:`\frac1s\sum_i\|G_i - \frac1s\sum_j G_j\|` of outputs ``(s, d)``.

    Example:
        >>> empirical_snd(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
        1.0
    """
    if outputs.dim() != 2 or outputs.shape[0] < 2:
        raise ValueError(f"outputs must have shape (s, d) with s >= 2, got {tuple(outputs.shape)}")
    return float((outputs - outputs.mean(0)).norm(dim=1).mean())


@dataclass
class SNDEstimate:
    r"""The stochastic normalization disturbance of one method at one batch size.

    Attributes:
        method: the normalization method.
        batch_size: :math:`B`.
        value: the mean of the per-sample SND over the followed samples.
        per_sample: ``(num_samples,)`` :math:`\hat\Delta_G(x)` of each followed sample.
        stderr: standard error of ``value`` over the samples.
    """

    method: str
    batch_size: int
    value: float
    per_sample: Tensor
    stderr: float


def stochastic_normalization_disturbance(
    data: Tensor,
    batch_size: int,
    *,
    method: str = "bn",
    num_samples: int = 8,
    num_batches: int = 100,
    eps: float = 1e-5,
    iterations: int = 5,
    seed: int = 0,
) -> SNDEstimate:
    r"""Empirical Stochastic Normalization Disturbance (SND) of a normalizer at a batch size.

    For a sample :math:`x` and :math:`s` random batches :math:`X_j^B` that contain it
    (:func:`normalize_in_batches`),

    .. math::

        \hat\Delta_G(x) = \frac1s \sum_{i=1}^s \Big\| G(X_i^B; x)
            - \frac1s \sum_{j=1}^s G(X_j^B; x) \Big\|,

    the mean distance of the normalized sample from its average over batches
    :cite:p:`huang2020investigation`. It is averaged over ``num_samples`` samples chosen at
    random. For BatchNorm and for ZCA and Cholesky whitening it falls roughly as
    :math:`1/\sqrt{B}` (the batch statistics' errors do), times the finite-population factor
    :math:`\sqrt{(M-B)/(M-1)}` when batches are a large share of the ``M`` samples; PCA
    whitening's does not fall, because the eigenvectors of nearly equal eigenvalues swap
    and flip sign from batch to batch (stochastic axis swapping). With the same ``seed`` two
    methods see the same samples and the same batches.

    Args:
        data: ``(M, d)`` samples (e.g. a layer's activations over a data set).
        batch_size: :math:`B`, from 2 to ``M`` (more than ``d`` for whitening).
        method: one of :data:`SND_METHODS`.
        num_samples: samples :math:`x` to follow.
        num_batches: :math:`s`, batches per sample.
        eps: the normalizer's ``eps``.
        iterations: Newton steps of IterNorm.
        seed: seed of the samples and batches.

    Returns:
        an :class:`SNDEstimate`.

    Raises:
        ValueError: unknown ``method``, ``batch_size`` larger than the data (or not above
            ``d`` for whitening), ``num_samples`` larger than the data, bad counts.
        TypeError: ``data`` is not a tensor.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> data = torch.randn(2000, 4, dtype=torch.float64)
        >>> small = stochastic_normalization_disturbance(data, 16, num_batches=50)
        >>> large = stochastic_normalization_disturbance(data, 64, num_batches=50)
        >>> 0.35 < large.value / small.value < 0.65  # about 1/sqrt(4)
        True
    """
    check_seed(seed)
    data, method, m, d = _check_snd_arguments(data, batch_size, method)
    check_positive_int("num_samples", num_samples)
    check_positive_int("num_batches", num_batches, minimum=2)
    if num_samples > m:
        raise ValueError(f"num_samples={num_samples} is larger than the data ({m} samples)")
    gen = torch.Generator().manual_seed(seed)
    indices = torch.randperm(m, generator=gen)[:num_samples]
    outputs = _outputs_in_batches(data, indices, batch_size, method, num_batches, eps, iterations, gen)
    per_sample = torch.tensor([empirical_snd(o) for o in outputs], dtype=torch.float64)
    stderr = float(per_sample.std() / math.sqrt(num_samples)) if num_samples > 1 else math.nan
    return SNDEstimate(method, batch_size, float(per_sample.mean()), per_sample, stderr)


@dataclass
class SNDSweep:
    """SND for several methods and batch sizes (see :func:`snd_sweep`).

    Attributes:
        methods: row names.
        batch_sizes: column values.
        values: ``(len(methods), len(batch_sizes))`` mean SND.
        stderr: ``(len(methods), len(batch_sizes))`` standard errors.
    """

    methods: list[str]
    batch_sizes: list[int]
    values: Tensor
    stderr: Tensor

    def slope(self, method: str) -> float:
        """Least squares slope of ``log SND`` against ``log B`` (about -1/2 for BN, ZCA, CD)."""
        i = self.methods.index(_snd_method(method))
        lb = torch.log(torch.tensor(self.batch_sizes, dtype=torch.float64))
        lv = torch.log(self.values[i])
        lb, lv = lb - lb.mean(), lv - lv.mean()
        return float((lb @ lv) / (lb @ lb))


def snd_sweep(
    data: Tensor,
    batch_sizes: Sequence[int],
    methods: Sequence[str] = SND_METHODS,
    **kwargs,
) -> SNDSweep:
    """:func:`stochastic_normalization_disturbance` for every method and batch size.

    All entries use the same ``seed`` (common samples and batches, so differences between
    methods are not sampling noise). Every argument is checked before any computation.

    Args:
        data: ``(M, d)``.
        batch_sizes: the batch sizes.
        methods: names from :data:`SND_METHODS`.
        **kwargs: passed to :func:`stochastic_normalization_disturbance`.

    Returns:
        an :class:`SNDSweep`.

    Example:
        >>> s = snd_sweep(torch.randn(500, 3), [8, 32], ["bn"], num_batches=20, num_samples=4)
        >>> s.values.shape
        torch.Size([1, 2])
    """
    methods = [_snd_method(m) for m in ([methods] if isinstance(methods, str) else methods)]
    batch_sizes = list(batch_sizes)
    data = _check_data(data)
    if not methods or not batch_sizes:
        raise ValueError("give at least one method and one batch size")
    for m in methods:
        for b in batch_sizes:
            _check_batch_size(b, data.shape[0], data.shape[1], m)
    est = [[stochastic_normalization_disturbance(data, b, method=m, **kwargs) for b in batch_sizes]
           for m in methods]
    values = torch.tensor([[e.value for e in row] for row in est], dtype=torch.float64)
    stderr = torch.tensor([[e.stderr for e in row] for row in est], dtype=torch.float64)
    return SNDSweep(methods, batch_sizes, values, stderr)
