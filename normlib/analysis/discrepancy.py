"""The gap between training and inference outputs of a batch normalizer.

:func:`~normlib.analysis.train_inference_discrepancy` compares a layer's training output (batch
statistics), its evaluation output (running statistics) and the output with the population
statistics of the data.

Chapter: Analysis of normalization (``chapters/analysis.md``, :ref:`chap-analysis`),
stochasticity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from normlib._checks import (
    check_float,
    check_positive_int,
    check_seed,
)
from normlib.analysis.stochasticity import (
    _WHITENING_NAME,
    _check_snd_arguments,
    _normalize_batches,
    _outputs_in_batches,
)
from normlib.registry import create_norm

__all__ = ["PopulationDiscrepancy", "train_inference_discrepancy"]


@dataclass
class PopulationDiscrepancy:
    r"""How far inference (running statistics) is from training (batch statistics).

    All three are means over the followed samples :math:`x` (and, where a batch enters, over
    random batches containing :math:`x`) of Euclidean distances between normalized outputs:

    Attributes:
        method: the normalization method.
        batch_size: :math:`B` of training and of the running averages.
        momentum: the running-average momentum (None: cumulative average).
        train_vs_eval: :math:`\|G(X^B; x) - G_{\text{run}}(x)\|`, what the network sees in
            training against what it computes at inference.
        eval_vs_population: :math:`\|G_{\text{run}}(x) - G(D; x)\|`, the error of the running
            estimate against the statistics of the whole data set :math:`D`.
        train_vs_population: :math:`\|G(X^B; x) - G(D; x)\|`.
    """

    method: str
    batch_size: int
    momentum: float | None
    train_vs_eval: float
    eval_vs_population: float
    train_vs_population: float


def train_inference_discrepancy(
    data: Tensor,
    batch_size: int,
    *,
    method: str = "bn",
    momentum: float | None = 0.1,
    num_updates: int = 200,
    num_samples: int = 8,
    num_batches: int = 50,
    eps: float = 1e-5,
    iterations: int = 5,
    layer_kwargs: dict | None = None,
    seed: int = 0,
) -> PopulationDiscrepancy:
    r"""The train/inference discrepancy of a batch normalizer's population statistics.

    A fresh layer of the registry (``create_norm(method, d, affine=False)``; whitening of
    all ``d`` features in one group) runs in training mode on ``num_updates`` random batches
    of ``batch_size`` samples, which updates its running statistics
    :math:`\hat\mu \leftarrow (1-\lambda)\hat\mu + \lambda\mu_{X_m}` (and the running
    variance or whitening matrix likewise) :cite:p:`ioffe2015batch,huang2020investigation`.
    Then it compares, for ``num_samples`` samples, the training output (the sample normalized
    in ``num_batches`` random batches that contain it), the inference output (running
    statistics) and the output with the statistics of the whole data. The training output
    scatters around the others by about the SND; the running estimate itself fluctuates with
    the last :math:`\approx 1/\lambda` batches. For whitening, an average of per-batch
    whitening matrices is also biased (:math:`\mathbb E[\Sigma_B^{-1/2}] \ne \Sigma^{-1/2}`,
    strongly so for small batches); an average of covariances much less so.

    Args:
        data: ``(M, d)`` samples.
        batch_size: :math:`B` (more than ``d`` for whitening).
        method: one of :data:`SND_METHODS`.
        momentum: :math:`\lambda` in ``[0, 1]``, or None for the cumulative average.
        num_updates: training batches that update the running statistics.
        num_samples: samples to compare.
        num_batches: training batches per compared sample.
        eps: the normalizer's ``eps``.
        iterations: Newton steps of IterNorm.
        layer_kwargs: more arguments for the layer, e.g. ``{"running_stat": "covariance"}``
            to average covariances instead of whitening matrices
            (:class:`normlib.whitening.BatchWhitening`).
        seed: seed of all batches and samples.

    Returns:
        a :class:`PopulationDiscrepancy`.

    Raises:
        ValueError: as :func:`stochastic_normalization_disturbance`, or a bad ``momentum`` or
            ``num_updates``.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> data = torch.randn(1000, 4, dtype=torch.float64) * 3 + 1
        >>> r = train_inference_discrepancy(data, 32, num_updates=100)
        >>> r.eval_vs_population < r.train_vs_eval
        True
    """
    check_seed(seed)
    data, method, m, d = _check_snd_arguments(data, batch_size, method)
    check_positive_int("num_updates", num_updates)
    check_positive_int("num_samples", num_samples)
    check_positive_int("num_batches", num_batches)
    if num_samples > m:
        raise ValueError(f"num_samples={num_samples} is larger than the data ({m} samples)")
    if momentum is not None:
        check_float("momentum", momentum, low=0.0, high=1.0, low_open=True, example=0.1)
    kwargs = {"affine": False, "momentum": momentum, "eps": eps}
    if method != "bn":
        kwargs.update(group_size=d, iterations=iterations)
    kwargs.update(layer_kwargs or {})
    layer = create_norm(_WHITENING_NAME.get(method, method), d, **kwargs)
    layer = layer.to(device=data.device, dtype=data.dtype).train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(num_updates):
            layer(data[torch.randperm(m, generator=gen)[:batch_size]])
        layer.eval()
        indices = torch.randperm(m, generator=gen)[:num_samples]
        evaluated = layer(data[indices])
        population = _normalize_batches(data[None], method, eps, iterations)[0, indices]
        train = _outputs_in_batches(data, indices, batch_size, method, num_batches, eps, iterations,
                                    gen)  # (num_samples, num_batches, d)
    return PopulationDiscrepancy(
        method, batch_size, momentum,
        train_vs_eval=float((train - evaluated[:, None]).norm(dim=-1).mean()),
        eval_vs_population=float((evaluated - population).norm(dim=-1).mean()),
        train_vs_population=float((train - population[:, None]).norm(dim=-1).mean()),
    )
