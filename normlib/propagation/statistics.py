r"""Statistics of one batch of activations: scale, similarity and rank.

Each function takes the activations of ``N`` samples at one layer, ``x: (N, *)``
(for example ``(N, C)`` after a linear layer or ``(N, C, H, W)`` after a
convolution), and returns a Python float. Similarity and rank are properties
of the samples' representations ``x_i`` (each flattened to a vector of length
``D``) through their Gram matrix

.. math::

    M = \tfrac{1}{D} X X^\top \in \mathbb{R}^{N \times N}, \qquad M_{ij} = \tfrac1D\langle x_i, x_j\rangle,

which is computed in float64. All of them are uncentered, as in the mean-field
analyses they are compared with: a common offset shared by all samples counts
as similarity.

==============================  ==============================================================
statistic                       definition
==============================  ==============================================================
:func:`activation_variance`     per-channel variance over ``(N, *)``, averaged over channels
:func:`second_moment`           :math:`\operatorname{mean}(x^2)`
:func:`mean_cosine_similarity`  mean of :math:`\cos(x_i, x_j)` over pairs :math:`i \ne j`
:func:`stable_rank`             :math:`\operatorname{tr}(M) / \|M\|_2` (Rudelson and Vershynin, 2007)
:func:`numerical_rank`          number of singular values of :math:`X` above ``rtol`` times the
                                largest
:func:`effective_rank`          :math:`\exp(-\sum_k p_k \log p_k)`,
                                :math:`p_k = \sigma_k / \sum_j \sigma_j` (Roy and Vetterli, 2007)
:func:`orthogonality_gap`       :math:`\| M / \operatorname{tr}(M) - I_N / N \|_F` (Daneshmand et al., 2021)
==============================  ==============================================================

Every rank measure lies between 1 (all samples on one line) and ``N``. The
orthogonality gap is 0 for orthogonal samples of equal length and
:math:`\sqrt{1 - 1/N}` when all samples are parallel.

Used by the probes of :mod:`normlib.propagation.probe`; chapter "Informative
forward propagation" (``chapters/forward_informative.md``) explains them.

Example:
    >>> import torch
    >>> from normlib.propagation import statistics as S
    >>> x = torch.eye(4)                      # four orthogonal samples
    >>> S.mean_cosine_similarity(x), S.stable_rank(x), S.orthogonality_gap(x)
    (0.0, 4.0, 0.0)
    >>> S.stable_rank(torch.ones(4, 3))       # four identical samples
    1.0
"""

from __future__ import annotations

import math

import torch

from normlib._checks import check_float, check_positive_int

__all__ = [
    "STATISTICS",
    "MIN_RTOL",
    "activation_variance",
    "second_moment",
    "gram_matrix",
    "cosine_similarity_matrix",
    "mean_cosine_similarity",
    "gram_eigenvalues",
    "stable_rank",
    "numerical_rank",
    "effective_rank",
    "orthogonality_gap",
    "representation_statistics",
]

#: The forward statistics the probes record, in the order of their columns.
STATISTICS = (
    "variance",
    "second_moment",
    "cosine_similarity",
    "stable_rank",
    "numerical_rank",
    "effective_rank",
    "orthogonality_gap",
)


def _check_activations(x, *, min_samples: int = 1, what: str = "this statistic") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (N, *), got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"x must have shape (N, *) with a sample dimension first and at least one feature, "
            f"got shape {tuple(x.shape)}; use x.reshape(N, -1)"
        )
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"x must be a floating point tensor, got dtype {x.dtype}")
    if x.shape[0] < min_samples:
        raise ValueError(
            f"{what} compares samples and needs a batch of at least {min_samples}, got "
            f"x.shape[0]={x.shape[0]}; probe with a larger batch"
        )
    if x[0].numel() == 0:
        raise ValueError(f"x has no features per sample, shape {tuple(x.shape)}")


def _flat64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def activation_variance(x: torch.Tensor) -> float:
    r"""Per-channel variance over the batch (and positions), averaged over channels.

    For ``x: (N, C, *)`` this is :math:`\frac1C \sum_c \operatorname{Var}_{n, *}[x_{n c *}]`
    (population variance, divisor ``N * prod(*)``): the quantity BatchNorm sets to
    one, and the "variance of the residual stream" of De and Smith (2020).

    Args:
        x: activations ``(N, C, *)``; ``N * prod(*)`` must be at least 2.

    Returns:
        float: the mean channel variance.

    Example:
        >>> activation_variance(torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
        0.5
    """
    _check_activations(x)
    x = x.detach().to(torch.float64)
    if x.numel() // x.shape[1] < 2:
        raise ValueError(
            f"activation_variance needs at least 2 values per channel, got shape {tuple(x.shape)}; "
            "probe with a batch of 2 or more"
        )
    dims = [0, *range(2, x.dim())]
    return float(x.var(dim=dims, unbiased=False).mean())


def second_moment(x: torch.Tensor) -> float:
    r"""The mean square :math:`\frac{1}{N D}\sum_{n,d} x_{nd}^2` of all entries.

    Example:
        >>> second_moment(torch.tensor([[1.0, 3.0]]))
        5.0
    """
    _check_activations(x)
    return float(x.detach().to(torch.float64).pow(2).mean())


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    r"""The samples' Gram matrix :math:`M = X X^\top / D`, shape ``(N, N)``, float64.

    Args:
        x: activations ``(N, *)``, flattened to ``X: (N, D)``.

    Example:
        >>> gram_matrix(torch.tensor([[1.0, 1.0], [2.0, 0.0]]))
        tensor([[1., 1.],
                [1., 2.]], dtype=torch.float64)
    """
    _check_activations(x)
    flat = _flat64(x)
    return flat @ flat.T / flat.shape[1]


def _cosine_from_gram(m: torch.Tensor, eps: float = 1e-300) -> torch.Tensor:
    # A sample whose activations are all zero has no direction; its cosines are 0.
    norms = m.diagonal().clamp_min(0).sqrt().clamp_min(eps)
    return m / norms[:, None] / norms[None, :]


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    r"""Pairwise cosine similarities :math:`\langle x_i, x_j\rangle / (\|x_i\|\|x_j\|)`, ``(N, N)``, float64.

    A sample whose activations are all zero gets cosine 0 with every sample.

    Example:
        >>> cosine_similarity_matrix(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))[0, 1].item()
        0.7071...
    """
    return _cosine_from_gram(gram_matrix(x))


def _mean_off_diagonal(c: torch.Tensor) -> float:
    n = c.shape[0]
    return float((c.sum() - c.diagonal().sum()) / (n * (n - 1)))


def mean_cosine_similarity(x: torch.Tensor) -> float:
    r"""Mean cosine similarity over all pairs of distinct samples.

    :math:`\frac{1}{N(N-1)} \sum_{i \ne j} \cos(x_i, x_j)`: 1 when all samples
    point the same way, about 0 for independent random directions.

    Args:
        x: activations ``(N, *)`` with ``N >= 2``.

    Raises:
        ValueError: for a batch of one sample (there is no pair to compare).

    Example:
        >>> mean_cosine_similarity(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        0.4714...
    """
    _check_activations(x, min_samples=2, what="the cosine similarity")
    return _mean_off_diagonal(cosine_similarity_matrix(x))


def _eigenvalues(m: torch.Tensor) -> torch.Tensor:
    if not bool(torch.isfinite(m).all()):
        # NaN or infinite activations have no spectrum (eigvalsh would fail to converge):
        # every rank measure is NaN, and the probes report it instead of raising.
        return torch.full((m.shape[0],), math.nan, dtype=m.dtype, device=m.device)
    eig = torch.linalg.eigvalsh(m).flip(0)
    # Eigenvalues below the rounding level of the largest are zero in exact arithmetic
    # as far as anyone can tell; keeping them would add sqrt(eps)-sized singular values.
    floor = m.shape[0] * torch.finfo(torch.float64).eps * eig[0].clamp_min(0)
    return torch.where(eig > floor, eig, torch.zeros_like(eig))


def gram_eigenvalues(x: torch.Tensor) -> torch.Tensor:
    r"""Eigenvalues of :math:`M = X X^\top / D` in decreasing order (float64).

    They are the squared singular values of :math:`X / \sqrt{D}`; those below
    ``N * eps`` (float64) of the largest are set to 0.

    Example:
        >>> gram_eigenvalues(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        tensor([2.0000, 0.5000], dtype=torch.float64)
    """
    _check_activations(x)
    return _eigenvalues(gram_matrix(x))


def _stable_rank(eig: torch.Tensor) -> float:
    top = float(eig[0])
    if math.isnan(top):
        return math.nan
    return float(eig.sum()) / top if top > 0 else 0.0


def _numerical_rank(eig: torch.Tensor, rtol: float) -> float:
    sv = eig.sqrt()
    if math.isnan(float(sv[0])):
        return math.nan
    return float((sv > rtol * sv[0]).sum()) if float(sv[0]) > 0 else 0.0


def _effective_rank(eig: torch.Tensor) -> float:
    sv = eig.sqrt()
    total = float(sv.sum())
    if math.isnan(total):
        return math.nan
    if total <= 0:
        return 0.0
    p = sv / total
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def _orthogonality_gap(m: torch.Tensor) -> float:
    n = m.shape[0]
    trace = float(m.trace())
    if trace <= 0:
        return math.sqrt(1.0 - 1.0 / n)
    eye = torch.eye(n, dtype=m.dtype, device=m.device)
    return float(torch.linalg.matrix_norm(m / trace - eye / n))


#: Smallest relative threshold of :func:`numerical_rank`: singular values come from
#: the float64 Gram matrix, whose eigenvalues are exact to about ``N * 1e-16`` of the
#: largest, so singular values are resolved down to about ``1e-7`` of the largest.
MIN_RTOL = 1e-6


def _check_rtol(rtol) -> float:
    return check_float("rtol", rtol, low=MIN_RTOL, high=1.0, high_open=True, example=1e-3)


def _default_rtol(x: torch.Tensor) -> float:
    # torch.linalg.matrix_rank's default, max(N, D) times the machine epsilon of the
    # data, but no finer than the Gram matrix resolves.
    dtype = x.dtype if x.is_floating_point() else torch.float64
    return max(max(x.shape[0], x[0].numel()) * torch.finfo(dtype).eps, MIN_RTOL)


def stable_rank(x: torch.Tensor) -> float:
    r"""Stable rank :math:`\operatorname{tr}(M)/\|M\|_2 = \sum_k \sigma_k^2 / \sigma_1^2` of the Gram matrix.

    A continuous lower bound of the rank, insensitive to tiny singular values.
    Returns 0 when every activation is zero.

    Example:
        >>> stable_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0])))
        2.0
    """
    return _stable_rank(gram_eigenvalues(x))


def numerical_rank(x: torch.Tensor, rtol: float | None = None) -> int:
    r"""Number of singular values of ``X`` larger than ``rtol`` times the largest.

    Args:
        x: activations ``(N, *)``.
        rtol: relative threshold, at least :data:`MIN_RTOL`; default ``max(N, D) * eps`` of
            ``x``'s dtype as in ``torch.linalg.matrix_rank`` (float32 activations), but not
            below :data:`MIN_RTOL` (float64 ones).

    Raises:
        ValueError: if ``x`` holds a NaN or infinite value (it has no rank to count).

    Example:
        >>> numerical_rank(torch.diag(torch.tensor([1.0, 1e-2, 1e-6])), rtol=1e-3)
        2
    """
    _check_activations(x)
    tol = _default_rtol(x) if rtol is None else _check_rtol(rtol)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or infinite values; it has no numerical rank (the other "
                         "rank measures return NaN for it)")
    return int(_numerical_rank(gram_eigenvalues(x), tol))


def effective_rank(x: torch.Tensor) -> float:
    r"""Entropy-based effective rank :math:`\exp(H(p))`, :math:`p_k = \sigma_k / \sum_j \sigma_j`.

    Roy and Vetterli (2007); equals ``r`` when ``X`` has ``r`` equal nonzero
    singular values, and is never below :func:`stable_rank` (with
    :math:`p_k = \sigma_k/\sum_j\sigma_j`: stable rank :math:`\le 1/\sum_k p_k^2 \le e^{H(p)}`).

    Example:
        >>> round(effective_rank(torch.eye(3)), 6)
        3.0
    """
    return _effective_rank(gram_eigenvalues(x))


def orthogonality_gap(x: torch.Tensor) -> float:
    r"""Distance of the normalized Gram matrix from the identity, :math:`\|M/\operatorname{tr}M - I/N\|_F`.

    Daneshmand et al. (2021) show that BatchNorm drives it towards 0 with depth in
    random linear networks. Ranges from 0 (orthogonal samples of equal norm) to
    :math:`\sqrt{1 - 1/N}` (all samples parallel).

    Example:
        >>> round(orthogonality_gap(torch.ones(4, 2)), 4)      # sqrt(1 - 1/4)
        0.866
    """
    _check_activations(x)
    return _orthogonality_gap(gram_matrix(x))


def _gram_subsample(flat: torch.Tensor, max_features: int | None) -> torch.Tensor:
    """Every ``k``-th entry of each row, ``k = ceil(D / max_features)``: at most ``max_features``."""
    if max_features is None or flat.shape[1] <= max_features:
        return flat
    step = -(-flat.shape[1] // max_features)
    return flat[:, ::step]


def representation_statistics(x: torch.Tensor, rtol: float | None = None, *,
                              max_features: int | None = None) -> dict[str, float]:
    r"""All statistics of :data:`STATISTICS`: one pass over ``x``, one Gram matrix, one eigendecomposition.

    The probes call this once per layer and batch. The similarity measures need
    ``N >= 2``; with one sample they are NaN here (the probes refuse such a batch).
    Activations with a NaN or infinite value give NaN similarity and ranks.

    ``variance`` and ``second_moment`` always use every entry (one per-channel
    ``var_mean`` pass, accumulated as torch does for ``x``'s dtype: float32 activations
    agree with a float64 computation to about ``1e-7``). The Gram-matrix statistics
    (similarity, ranks, orthogonality gap) cost :math:`O(N^2 D)`; with ``max_features``
    they use an evenly strided subset of each sample's flattened activations, every
    :math:`k`-th entry with :math:`k = \lceil D / \text{max\_features} \rceil`. For a
    convolution output ``(N, C, H, W)`` that is a regular lattice of positions in every
    channel, so :math:`M_{ij}`, a mean over entries, is estimated from a spatial
    subsample; a layer of at most ``max_features`` entries per sample is used whole.

    Args:
        x: activations ``(N, C, *)``.
        rtol: threshold of :func:`numerical_rank` (default from the full ``x``).
        max_features: most entries per sample in the Gram matrix (``None``: all of them).

    Returns:
        dict: ``{name: value}`` for every name in :data:`STATISTICS`.

    Example:
        >>> stats = representation_statistics(torch.eye(3))
        >>> stats["stable_rank"], stats["cosine_similarity"]
        (3.0, 0.0)
        >>> big = torch.randn(4, 8, 64, 64)
        >>> sub = representation_statistics(big, max_features=4096)   # every 8th entry
        >>> abs(sub["variance"] - representation_statistics(big)["variance"]) < 1e-6
        True
    """
    _check_activations(x)
    if max_features is not None:
        check_positive_int("max_features", max_features)
    tol = _default_rtol(x) if rtol is None else _check_rtol(rtol)
    detached = x.detach()
    if detached.is_complex() or detached.dtype not in (torch.float32, torch.float64):
        detached = detached.to(torch.float64)
    n = detached.shape[0]
    if detached.numel() // detached.shape[1] >= 2:
        dims = [0, *range(2, detached.dim())]
        var_c, mean_c = torch.var_mean(detached, dim=dims, correction=0)
        var_c, mean_c = var_c.to(torch.float64), mean_c.to(torch.float64)
        variance = float(var_c.mean())
        # Every channel holds the same number of entries: mean(x^2) = mean_c(var_c + mean_c^2).
        second = float((var_c + mean_c.square()).mean())
    else:
        variance = float("nan")
        second = float(detached.to(torch.float64).pow(2).mean())
    flat = _gram_subsample(detached.reshape(n, -1), max_features).to(torch.float64)
    m = flat @ flat.T / flat.shape[1]
    eig = _eigenvalues(m)
    return {
        "variance": variance,
        "second_moment": second,
        "cosine_similarity": _mean_off_diagonal(_cosine_from_gram(m)) if n >= 2 else float("nan"),
        "stable_rank": _stable_rank(eig),
        "numerical_rank": _numerical_rank(eig, tol),
        "effective_rank": _effective_rank(eig),
        "orthogonality_gap": _orthogonality_gap(m),
    }
