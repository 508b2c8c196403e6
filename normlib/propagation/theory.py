r"""Theory to hold against the probes: mean-field predictions for random networks at initialization.

All functions are deterministic closed forms (or short recursions) in float64
NumPy; each docstring gives the formula, its source and the chapter that
compares it with measurements.

==================================  ==========================================================
function                            prediction
==================================  ==========================================================
:func:`residual_variance`           variance of the residual stream: linear in depth with a
                                    normalized branch, exponential without (De and Smith, 2020)
:func:`running_maximum_moments`     moments of a reflected Gaussian random walk (Kac, Spitzer)
:func:`relu_resnet_moments`         mean-field moments of the stream of
                                    :class:`normlib.models.ResNet`
:func:`relu_correlation_map`        correlation after a random ReLU layer, the normalized
                                    arc-cosine kernel of degree 1 (Cho and Saul, 2009)
:func:`relu_similarity_by_depth`    that map iterated: similarity of un-normalized ReLU networks
:func:`bn_similarity_fixed_point`   cosine similarity a deep BatchNorm-ReLU network settles at
:func:`bn_gradient_explosion_rate`  per-layer growth of squared gradient norms in
                                    BatchNorm-ReLU networks at batch size ``B`` (Yang et al., 2019)
:func:`gn_gradient_explosion_rate`  the same for GroupNorm-ReLU networks with group size ``g``
:func:`groupnorm_rank_lower_bound`  :math:`\sqrt{\text{width}/\text{group size}}` (Lubana et al., 2021)
:func:`readout_gap_curve`           loss gap of gradient descent on a linear readout of fixed
                                    features, step by step (exact, from the Gram spectrum)
==================================  ==========================================================

Example:
    >>> from normlib.propagation import theory as T
    >>> round(T.relu_correlation_map(0.0), 6) == round(1 / 3.141592653589793, 6)
    True
    >>> round(T.bn_gradient_explosion_rate(10**6), 4), round(T.BN_GRADIENT_EXPLOSION_LIMIT, 4)
    (1.4669, 1.4669)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from normlib._checks import check_bool, check_int, check_nonnegative_float, is_int

__all__ = [
    "BN_GRADIENT_EXPLOSION_LIMIT",
    "RESNET_BRANCHES",
    "residual_variance",
    "running_maximum_moments",
    "relu_resnet_moments",
    "relu_correlation_map",
    "relu_similarity_by_depth",
    "bn_similarity_fixed_point",
    "bn_gradient_explosion_rate",
    "gn_gradient_explosion_rate",
    "groupnorm_rank_lower_bound",
    "readout_gap_curve",
]

#: :math:`\pi/(\pi-1) \approx 1.467`, the gradient explosion rate of BatchNorm-ReLU networks
#: for an infinite batch (Yang et al., 2019).
BN_GRADIENT_EXPLOSION_LIMIT = math.pi / (math.pi - 1.0)


def residual_variance(
    num_blocks: int,
    *,
    normalized: bool = True,
    alpha: float = 1.0,
    branch_variance: float = 1.0,
    branch_gain: float = 1.0,
    initial: float = 1.0,
) -> np.ndarray:
    r"""Variance of the residual stream :math:`x_{l+1} = x_l + \alpha f_l(x_l)` after ``l`` blocks.

    At initialization the branch output is uncorrelated with its input, so
    :math:`v_{l+1} = v_l + \alpha^2 \operatorname{Var} f_l(x_l)` (De and Smith, 2020):

    - a *normalized* branch (ending in an activation normalizer) has a fixed
      variance ``branch_variance`` whatever its input, so the variance grows
      linearly, :math:`v_l = v_0 + l\,\alpha^2 \sigma_f^2`, and block ``l``'s branch
      contributes only a fraction :math:`\sim 1/l`: the network behaves as if it
      were shallower;
    - an *un-normalized* branch multiplies its input's variance by ``branch_gain``
      (1 for a He-initialized branch), so the variance grows exponentially,
      :math:`v_l = v_0 (1 + \alpha^2 g)^l`.

    SkipInit (``alpha = 0`` at initialization) keeps :math:`v_l = v_0` in both cases.

    Args:
        num_blocks: number of blocks ``L``.
        normalized: whether the branch ends in an activation normalizer.
        alpha: the branch's scalar multiplier.
        branch_variance: output variance of a normalized branch.
        branch_gain: variance gain of an un-normalized branch.
        initial: the variance :math:`v_0` entering the first block.

    Returns:
        numpy.ndarray: :math:`v_0, \dots, v_L`, shape ``(L + 1,)``.

    Example:
        >>> residual_variance(3)
        array([1., 2., 3., 4.])
        >>> residual_variance(3, normalized=False)
        array([1., 2., 4., 8.])
    """
    n = check_int("num_blocks", num_blocks, minimum=0)
    check_bool("normalized", normalized)
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha!r}")
    branch_variance = check_nonnegative_float("branch_variance", branch_variance)
    branch_gain = check_nonnegative_float("branch_gain", branch_gain)
    initial = check_nonnegative_float("initial", initial)
    steps = np.arange(n + 1, dtype=np.float64)
    if normalized:
        return initial + steps * alpha**2 * branch_variance
    return initial * (1.0 + alpha**2 * branch_gain) ** steps


def _as_correlation(rho, name: str = "rho") -> np.ndarray:
    arr = np.asarray(rho, dtype=np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    # Cosines computed in floating point can leave [-1, 1] by a few ulps.
    if (np.abs(arr) > 1.0 + 1e-9).any():
        raise ValueError(f"{name} must lie in [-1, 1] (a correlation), got values up to "
                         f"{np.abs(arr).max():.6g}")
    return np.clip(arr, -1.0, 1.0)


def _arccos_map(rho: np.ndarray) -> np.ndarray:
    return (np.sqrt(1.0 - rho * rho) + (np.pi - np.arccos(rho)) * rho) / np.pi


def relu_correlation_map(rho):
    r"""The ReLU correlation map :math:`f(\rho) = \big(\sqrt{1-\rho^2} + (\pi - \arccos\rho)\,\rho\big)/\pi`.

    For jointly Gaussian :math:`(u, v)` with unit variances and correlation
    :math:`\rho`, :math:`E[\mathrm{relu}(u)\mathrm{relu}(v)] / E[\mathrm{relu}(u)^2]`
    equals this value: the normalized arc-cosine kernel of degree 1 (Cho and
    Saul, 2009). A random linear layer keeps cosine similarities (for a wide
    layer), so in an un-normalized ReLU network the cosine similarity of two
    inputs' activations follows :math:`c_{l+1} = f(c_l)`. Known values:
    :math:`f(-1) = 0`, :math:`f(0) = 1/\pi`, :math:`f(1) = 1`, :math:`f'(1) = 1`;
    :math:`f(\rho) > \rho` on :math:`[-1, 1)`, so similarity climbs to 1 with depth.

    Args:
        rho: a correlation or an array of them, in ``[-1, 1]``.

    Returns:
        float or numpy.ndarray: :math:`f(\rho)`, a float for a scalar input.

    Raises:
        ValueError: for values outside ``[-1, 1]`` or NaN.

    Example:
        >>> relu_correlation_map([-1.0, 1.0])
        array([0., 1.])
    """
    arr = _as_correlation(rho)
    out = _arccos_map(arr)
    return float(out) if out.ndim == 0 else out


def relu_similarity_by_depth(initial, depth: int) -> np.ndarray:
    r"""Cosine similarities of an un-normalized ReLU network after ``0, 1, ..., depth`` layers.

    Iterates :func:`relu_correlation_map`: :math:`c_0` = ``initial`` (the inputs'
    cosine similarity, one value or an array of pairs), :math:`c_{l+1} = f(c_l)`.
    It holds for wide fully connected ``Linear -> ReLU`` networks without biases
    at any weight scale, and for LayerNorm networks, because per-sample
    normalization does not change cosines.

    Args:
        initial: cosine similarity of the inputs, scalar or array, in ``[-1, 1]``.
        depth: number of layers.

    Returns:
        numpy.ndarray: shape ``(depth + 1, *initial.shape)``.

    Example:
        >>> relu_similarity_by_depth(0.0, 2).round(4)
        array([0.    , 0.3183, 0.4937])
    """
    depth = check_int("depth", depth, minimum=0)
    c = _as_correlation(initial, "initial")
    out = np.empty((depth + 1, *c.shape), dtype=np.float64)
    out[0] = c
    for layer in range(depth):
        out[layer + 1] = _arccos_map(out[layer])
    return out


def _check_batch_size(batch_size, minimum: int) -> float:
    if batch_size == math.inf:
        return math.inf
    return float(check_int("batch_size", batch_size, minimum=minimum))


def bn_similarity_fixed_point(batch_size) -> float:
    r"""Cosine similarity of post-ReLU activations at the fixed point of a deep BatchNorm-ReLU network.

    For ``Linear -> BN -> ReLU`` layers at batch size :math:`B`, the batch's
    Gram matrix converges with depth to a permutation-symmetric fixed point
    (Yang et al., 2019). There, each neuron's normalized pre-activations form a
    vector uniformly distributed on the sphere of radius :math:`\sqrt B` in the
    subspace orthogonal to :math:`\mathbf 1` (BN centers them), so two samples'
    pre-activations have correlation :math:`-1/(B-1)`. ReLU is positively
    homogeneous, so the direction's law is the Gaussian one and the cosine
    similarity after the ReLU is

    .. math:: c^*_B = f\!\left(-\tfrac{1}{B-1}\right) \xrightarrow[B\to\infty]{} f(0) = \tfrac{1}{\pi},

    with :math:`f` the :func:`relu_correlation_map`. Unlike the un-normalized
    network (similarity :math:`\to 1`), BatchNorm keeps samples apart. ``B = 2``
    gives 0: the two samples' normalized values are :math:`\pm 1`.

    Args:
        batch_size: :math:`B \ge 2`, or ``math.inf``.

    Example:
        >>> bn_similarity_fixed_point(2), round(bn_similarity_fixed_point(math.inf), 6)
        (0.0, 0.31831)
    """
    b = _check_batch_size(batch_size, 2)
    rho = 0.0 if b == math.inf else -1.0 / (b - 1.0)
    return float(_arccos_map(np.float64(rho)))


def bn_gradient_explosion_rate(batch_size) -> float:
    r"""Per-layer growth factor of squared gradient norms in a deep BatchNorm-ReLU network.

    In the mean-field limit (infinite width, gradient independence) of
    ``Linear -> BN -> ReLU`` networks at batch size :math:`B`, the squared norm of
    the gradient with respect to a layer's activations grows by
    :math:`\lambda_B` per layer towards the input (Yang et al., 2019):
    :math:`\|\partial L / \partial x_{l}\|^2 \approx \lambda_B \|\partial L / \partial x_{l+1}\|^2`.
    At the fixed point of :func:`bn_similarity_fixed_point`, with
    :math:`\rho = -1/(B-1)`, :math:`f` the :func:`relu_correlation_map` and
    :math:`E[1/\chi^2_{B-1}] = 1/(B-3)` from BN's division by the batch norm,

    .. math::

        \lambda_B = \frac{2B}{(1 - f(\rho))(B-1)(B-3)}\left[\frac{(B-1)^2}{2B}
        + \frac{B-1}{B}\Big(\frac14 + \frac{\arcsin\rho}{2\pi}\Big) - \frac12
        + \frac{1 + (B-1) f(\rho)}{2B}\right]
        \xrightarrow[B\to\infty]{} \frac{\pi}{\pi - 1} \approx 1.467 .

    The bracket is :math:`E\,\mathrm{tr}\big[D G D (G - u u^\top)\big]` for
    :math:`G = I - \mathbf 1\mathbf 1^\top/B`, :math:`u` the normalized centered
    pre-activation and :math:`D` the ReLU's 0/1 derivative. Small batches explode
    faster (:math:`\lambda_4 \approx 3.08`); the factor never reaches 1, so
    deep BatchNorm networks without skip connections have exploding gradients
    at initialization. Chapter "Stable backward propagation" checks it against
    wide networks.

    Args:
        batch_size: :math:`B \ge 4` (the expectation is infinite for :math:`B \le 3`),
            or ``math.inf``.

    Example:
        >>> round(bn_gradient_explosion_rate(8), 3)
        1.788
    """
    b = _check_batch_size(batch_size, 4)
    if b == math.inf:
        return BN_GRADIENT_EXPLOSION_LIMIT
    rho = -1.0 / (b - 1.0)
    f = float(_arccos_map(np.float64(rho)))
    bracket = ((b - 1.0) ** 2 / (2.0 * b)
               + (b - 1.0) / b * (0.25 + math.asin(rho) / (2.0 * math.pi))
               - 0.5
               + (1.0 + (b - 1.0) * f) / (2.0 * b))
    return 2.0 * b * bracket / ((1.0 - f) * (b - 1.0) * (b - 3.0))


def groupnorm_rank_lower_bound(width: int, group_size: int) -> float:
    r"""The order :math:`\sqrt{\text{width} / \text{group size}}` of the rank of GroupNorm representations.

    Lubana et al. (2021, Sec. 4) extend the BatchNorm result of Daneshmand et
    al. (2020) to GroupNorm: in a deep random GroupNorm network the rank of the
    representations of a batch stays at least of order
    :math:`\sqrt{\text{width}/\text{group size}} = \sqrt{\text{number of groups}}`.
    Instance Normalization (group size 1) has the largest bound, LayerNorm
    (one group) the smallest, 1: nothing prevents its representations from
    collapsing. The constant of the bound is not specified; chapter
    "Informative forward propagation" measures it.

    Args:
        width: number of channels.
        group_size: channels per group; must divide ``width``.

    Example:
        >>> groupnorm_rank_lower_bound(64, 4)
        4.0
    """
    width = check_int("width", width, minimum=1)
    group_size = check_int("group_size", group_size, minimum=1)
    if group_size > width or width % group_size:
        raise ValueError(
            f"group_size={group_size} must divide width={width}; use one of "
            f"{[g for g in range(1, width + 1) if width % g == 0]}"
        )
    return math.sqrt(width / group_size)


def gn_gradient_explosion_rate(group_size: int) -> float:
    r"""Per-layer growth factor of squared gradient norms in a deep GroupNorm-ReLU MLP: :math:`(g-2)/(g-3)`.

    The mean-field computation of :func:`bn_gradient_explosion_rate` carried
    over to ``Linear -> GroupNorm -> ReLU`` layers with ``g`` channels per
    group. A sample's pre-activations within a group are i.i.d. Gaussian (the
    rows of a random weight matrix are independent), so the normalized group
    is :math:`\sqrt g\,u` with :math:`u` uniform on the unit sphere of the
    centered subspace and :math:`\|G h\|^2 \sim q\,\chi^2_{g-1}`. With the
    gradient entries i.i.d. (gradient independence), ReLU's mask keeping half
    of them and He initialization,

    .. math::

        \lambda_g = 2 \cdot \frac{g}{g-3} \cdot
        \frac{E\,\mathrm{tr}\big[D (G - u u^\top)\big]}{g}
        = 2 \cdot \frac{g}{g-3} \cdot \frac{(g-2)/2}{g} = \frac{g-2}{g-3}.

    The rate is the same for every weight scale (GroupNorm is scale invariant).
    Small groups explode: :math:`\lambda_4 = 2`, :math:`\lambda_8 = 1.2`, and for
    :math:`g \le 3` the expectation is infinite; LayerNorm (:math:`g` = width)
    is stable, :math:`\lambda \to 1`. This is the stability half of the
    speed-stability trade-off of group size that Lubana et al. (2021, Sec. 5)
    describe; chapter "Stable backward propagation" checks it against wide
    networks. In convolutional networks a group also spans positions whose
    values are correlated, so the formula does not apply there directly.

    Args:
        group_size: channels per group :math:`g \ge 4`.

    Example:
        >>> gn_gradient_explosion_rate(4), gn_gradient_explosion_rate(8)
        (2.0, 1.2)
    """
    g = check_int("group_size", group_size, minimum=4)
    return (g - 2.0) / (g - 3.0)


def running_maximum_moments(num_steps: int) -> pd.DataFrame:
    r"""Mean, second moment and variance of the running maximum :math:`M_n = \max(0, S_1, \dots, S_n)`.

    :math:`S_k = z_1 + \dots + z_k` is a standard Gaussian random walk,
    :math:`z_i \sim N(0, 1)` i.i.d. By time
    reversal, :math:`M_n` has the law of the reflected walk
    :math:`x_{k} = \max(0, x_{k-1} + z_k)`, :math:`x_0 = 0`: the residual stream of
    a post-activation ResNet whose branch ends in BatchNorm (see
    :func:`relu_resnet_moments`). Spitzer's identity gives exact moments
    (Kac's formula for the mean):

    .. math::

        E M_n = \sum_{k=1}^{n} \frac{E S_k^+}{k} = \sum_{k=1}^{n} \frac{1}{\sqrt{2\pi k}}, \qquad
        E M_n^2 = \frac n2 + \frac{1}{2\pi}\sum_{j+k\le n} \frac{1}{\sqrt{jk}},

    so :math:`E M_n^2 \sim n` (the double sum is :math:`\approx \pi n`) and
    :math:`\operatorname{Var} M_n \sim (1 - 2/\pi)\, n`: linear growth.

    Args:
        num_steps: largest ``n``.

    Returns:
        pandas.DataFrame: columns ``n`` (1..num_steps), ``mean``, ``second_moment``, ``variance``.

    Example:
        >>> running_maximum_moments(2).round(4).values.tolist()
        [[1.0, 0.3989, 0.5, 0.3408], [2.0, 0.681, 1.1592, 0.6954]]
    """
    n_max = check_int("num_steps", num_steps, minimum=1)
    k = np.arange(1, n_max + 1, dtype=np.float64)
    mean = np.cumsum(1.0 / np.sqrt(2.0 * np.pi * k))
    inv_sqrt = 1.0 / np.sqrt(k)
    # pair_sum[n] = sum over j + k <= n of 1/sqrt(j k): a cumulative sum of the
    # self-convolution of 1/sqrt(k), whose entry m collects the pairs with j + k = m.
    conv = np.convolve(inv_sqrt, inv_sqrt)[: n_max]          # pairs with j + k = 2 .. n_max + 1
    pair_sum = np.concatenate([[0.0], np.cumsum(conv)[: n_max - 1]])
    second = k / 2.0 + pair_sum / (2.0 * np.pi)
    return pd.DataFrame({"n": k.astype(int), "mean": mean, "second_moment": second,
                         "variance": second - mean**2})


#: Branch types of :func:`relu_resnet_moments`.
RESNET_BRANCHES = ("normalized", "he", "scaled_ws")
# gamma^2 of scaled weight standardization for ReLU: 1 / Var[relu(z)], z ~ N(0, 1).
_SWS_GAIN = 2.0 / (1.0 - 1.0 / math.pi)


class _RectifiedLaw:
    """The law of a non-negative variable on a grid: point masses ``p`` at nodes ``x``."""

    def __init__(self, nodes: torch.Tensor, masses: torch.Tensor):
        self.x, self.p = nodes, masses

    @classmethod
    def rectified_gaussian(cls, variance: float, grid_size: int) -> _RectifiedLaw:
        """``relu(N(0, variance))``."""
        if variance <= 0:
            return cls(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
        sd = math.sqrt(variance)
        return cls._binned(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                           sd, 10.0 * sd, grid_size)

    @staticmethod
    def _binned(x, p, sd, top, grid_size) -> _RectifiedLaw:
        # relu(x + sd * z) on a new grid: node k > 0 receives the mass of its cell,
        # node 0 everything below half a cell (the atom at 0 included).
        nodes = torch.linspace(0.0, top, grid_size, dtype=torch.float64)
        edges = nodes[:-1] + 0.5 * (nodes[1] - nodes[0])
        cdf = (torch.special.ndtr((edges[:, None] - x[None, :]) / sd) * p[None, :]).sum(1)
        masses = torch.empty(grid_size, dtype=torch.float64)
        masses[0] = cdf[0]
        masses[1:-1] = cdf[1:] - cdf[:-1]
        masses[-1] = 1.0 - cdf[-1]
        return _RectifiedLaw(nodes, masses.clamp_min(0.0))

    def add_noise_and_rectify(self, variance: float, grid_size: int) -> _RectifiedLaw:
        """The law of ``relu(x + N(0, variance))`` with independent noise."""
        if variance <= 0:
            return self
        sd = math.sqrt(variance)
        # The grid ends 10 sd beyond the last node that carries tail mass above 1e-15,
        # so it follows the law's scale instead of growing by 10 sd per step.
        tail = self.p.flip(0).cumsum(0).flip(0)
        last = int((tail > 1e-15).nonzero().max())
        top = float(self.x[last]) + 10.0 * sd
        return self._binned(self.x, self.p, sd, top, grid_size)

    def moments(self) -> tuple[float, float, float]:
        mean = float((self.x * self.p).sum())
        second = float((self.x * self.x * self.p).sum())
        return mean, second, max(second - mean * mean, 0.0)


def _padding_fraction(size: int | None, strided: bool = False) -> float:
    # Average share of a 3x3 kernel's taps that fall inside an H x H map padded by
    # one pixel (stride 1: (3H - 2) / 3H per axis); a stride-2 convolution only
    # loses the taps of its first row and column.
    if size is None:
        return 1.0
    per_axis = (3 * size - 1) / (3 * size) if strided else (3 * size - 2) / (3 * size)
    return per_axis**2


def relu_resnet_moments(
    blocks_per_stage: int | Sequence[int],
    *,
    branch: str = "normalized",
    alpha: float = 1.0,
    num_stages: int = 3,
    spatial_sizes: Sequence[int] | None = None,
    input_second_moment: float = 1.0,
    input_variance: float | None = None,
    grid_size: int = 801,
) -> pd.DataFrame:
    r"""Mean-field moments of the residual stream of :class:`normlib.models.ResNet` at initialization.

    The model's blocks compute :math:`x_{l+1} = \mathrm{relu}(s(x_l) + \alpha f(x_l))`
    (a ReLU after the sum). In the mean-field picture (wide layers) one
    coordinate of the branch output :math:`f` is Gaussian and independent of the
    same coordinate of :math:`x_l`, with a variance set by the branch:

    - ``"normalized"``: the branch ends in an activation normalizer, so
      :math:`\operatorname{Var} f = 1` whatever :math:`x_l`; the stream is the
      reflected random walk :math:`x_{l+1} = \max(0, x_l + \alpha z)` whose second
      moment grows linearly (:func:`running_maximum_moments`);
    - ``"he"``: no normalizer, He-initialized convolutions (weight normalization
      starts there too): :math:`\operatorname{Var} f = 2\,E[x_l^2]`, exponential growth;
    - ``"scaled_ws"``: scaled weight standardization, whose centered weights see
      the variance instead: :math:`\operatorname{Var} f = \gamma^2 \operatorname{Var} x_l`
      with :math:`\gamma^2 = 2/(1 - 1/\pi)`.

    The first block of every stage after the first has a projection shortcut
    (a 1x1 convolution, followed by the normalizer if there is one), whose
    output is again a fresh Gaussian: unit variance, :math:`2E[x^2]` or
    :math:`\gamma^2 \operatorname{Var} x`. The stem is ``relu(norm(conv(input)))``.
    With ``spatial_sizes`` each un-normalized 3x3 convolution is scaled by the
    average share of its taps that fall inside the zero-padded map.

    The law of a coordinate is propagated exactly on a grid of ``grid_size``
    points (relative error below 1e-4 in the moments), not sampled.

    Args:
        blocks_per_stage: blocks per stage (``(depth - 2) // 6`` for a CIFAR ResNet), or one
            number per stage.
        branch: one of :data:`RESNET_BRANCHES`.
        alpha: the branch multiplier (0 for SkipInit at initialization).
        num_stages: number of stages when ``blocks_per_stage`` is one number.
        spatial_sizes: side length of each stage's feature maps (e.g. ``(32, 16, 8)``)
            for the zero-padding correction of un-normalized branches; ``None``: no correction.
        input_second_moment: :math:`E[\text{input}^2]`, for the stem of a ``"he"`` network.
        input_variance: the input's variance, for the stem of a ``"scaled_ws"`` network
            (default: ``input_second_moment``).
        grid_size: grid points of the law.

    Returns:
        pandas.DataFrame: one row per block, ``block`` 0 for the stem, then 1, 2, ...;
        columns ``block``, ``stage``, ``mean``, ``second_moment``, ``variance``.

    Raises:
        ValueError: for an unknown branch or a malformed stage layout.

    Example:
        >>> t = relu_resnet_moments(3)
        >>> t["variance"].round(3).tolist()[:4]
        [0.341, 0.695, 1.054, 1.414]
        >>> float(relu_resnet_moments(3, alpha=0.0)["variance"].max().round(3))
        0.341
    """
    if branch not in RESNET_BRANCHES:
        raise ValueError(f"branch must be one of {RESNET_BRANCHES}, got {branch!r}")
    if is_int(blocks_per_stage):
        stages = [check_int("blocks_per_stage", blocks_per_stage, minimum=1)] * check_int(
            "num_stages", num_stages, minimum=1)
    elif isinstance(blocks_per_stage, Sequence) and blocks_per_stage:
        stages = [check_int("blocks_per_stage[i]", n, minimum=1) for n in blocks_per_stage]
    else:
        raise ValueError(f"blocks_per_stage must be a positive int or a list of them, got "
                         f"{blocks_per_stage!r}")
    if spatial_sizes is not None:
        sizes = [check_int("spatial_sizes[i]", h, minimum=1) for h in spatial_sizes]
        if len(sizes) != len(stages):
            raise ValueError(f"spatial_sizes has {len(sizes)} entries for {len(stages)} stages")
    else:
        sizes = [None] * len(stages)
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha!r}")
    grid_size = check_int("grid_size", grid_size, minimum=16)
    second_in = check_nonnegative_float("input_second_moment", input_second_moment)
    var_in = (second_in if input_variance is None
              else check_nonnegative_float("input_variance", input_variance))

    def gain(mean: float, second: float, variance: float) -> float:
        # variance that an un-normalized convolution + ReLU pair passes on
        if branch == "he":
            return 2.0 * second
        return _SWS_GAIN * variance

    stem_var = {"normalized": 1.0, "he": 2.0 * second_in, "scaled_ws": _SWS_GAIN * var_in}[branch]
    if branch != "normalized":
        stem_var *= _padding_fraction(sizes[0])
    law = _RectifiedLaw.rectified_gaussian(stem_var, grid_size)
    rows = [(0, 0, *law.moments())]
    block = 0
    for stage, (count, size) in enumerate(zip(stages, sizes)):
        for i in range(count):
            mean, second, variance = law.moments()
            projection = stage > 0 and i == 0
            if branch == "normalized":
                branch_var = alpha**2
                shortcut_var = 1.0
            else:
                first = _padding_fraction(size, strided=projection)
                branch_var = alpha**2 * gain(mean, second, variance) * first * _padding_fraction(size)
                shortcut_var = gain(mean, second, variance)
            if projection:
                law = _RectifiedLaw.rectified_gaussian(shortcut_var + branch_var, grid_size)
            else:
                law = law.add_noise_and_rectify(branch_var, grid_size)
            block += 1
            rows.append((block, stage, *law.moments()))
    return pd.DataFrame(rows, columns=["block", "stage", "mean", "second_moment", "variance"])


def readout_gap_curve(features, targets, steps: int, lr: float | None = None) -> np.ndarray:
    r"""Remaining loss gap of gradient descent on a least-squares readout of fixed features.

    For features :math:`\Phi: (N, D)` and targets :math:`y: (N,)`, gradient descent on
    :math:`L(w) = \frac{1}{2N}\|\Phi w - y\|^2` from :math:`w_0 = 0` with step :math:`\eta`
    has, with :math:`(\lambda_i, v_i)` the eigenpairs of the Gram matrix
    :math:`\Phi\Phi^\top/N` (the nonzero eigenvalues of the Hessian :math:`\Phi^\top\Phi/N`),

    .. math::

        \frac{L(w_t) - L^\star}{L(w_0) - L^\star} =
        \frac{\sum_{\lambda_i > 0} (v_i^\top y)^2 (1 - \eta\lambda_i)^{2t}}
             {\sum_{\lambda_i > 0} (v_i^\top y)^2},

    exactly. Steps stay stable up to :math:`\eta < 2/\lambda_{\max}`; with the step
    :math:`\eta = 1/\lambda_{\max}` used here (the sharpest direction solved in one step) a
    direction with eigenvalue :math:`\lambda` shrinks by :math:`1 - \lambda/\lambda_{\max}` per step.
    When the samples' features are similar (mean cosine :math:`c` close to 1) the
    top eigenvalue carries most of the trace and every other direction is slow:
    the stable rank :math:`\sum_i\lambda_i/\lambda_{\max}` is small. Chapter
    "Informative forward propagation" uses this to show why similar
    representations (LayerNorm) train slowly.

    Args:
        features: ``(N, *)``, flattened per sample.
        targets: ``(N,)``.
        steps: number of steps ``T``.
        lr: the step; default :math:`1/\lambda_{\max}`; must lie in :math:`(0, 2/\lambda_{\max})`.

    Returns:
        numpy.ndarray: the gap ratio after ``0, 1, ..., T`` steps (starts at 1).

    Raises:
        ValueError: for mismatched shapes, all-zero features or targets orthogonal to
            the features, or an unstable step.

    Example:
        >>> phi = torch.eye(2, dtype=torch.float64) * torch.tensor([2.0, 1.0]).sqrt()
        >>> readout_gap_curve(phi, torch.tensor([1.0, 1.0]), 2).round(4)   # eigenvalues 1, 1/2
        array([1.    , 0.125 , 0.0312])
    """
    phi = torch.as_tensor(features).detach().to(torch.float64)
    if phi.dim() < 2:
        raise ValueError(f"features must have shape (N, *), got {tuple(phi.shape)}")
    phi = phi.reshape(phi.shape[0], -1)
    y = torch.as_tensor(targets).detach().to(torch.float64)
    if y.shape != (phi.shape[0],):
        raise ValueError(f"targets must have shape ({phi.shape[0]},), got {tuple(y.shape)}")
    steps = check_int("steps", steps, minimum=0)
    n = phi.shape[0]
    eig, vec = torch.linalg.eigh(phi @ phi.T / n)
    top = float(eig[-1])
    if not top > 0:
        raise ValueError("features are all zero: there is nothing to descend on")
    keep = eig > n * torch.finfo(torch.float64).eps * top
    lam, weight = eig[keep], (vec[:, keep].T @ y) ** 2
    if not float(weight.sum()) > 0:
        raise ValueError("targets are orthogonal to the features' span: the gap is 0 from the start")
    eta = 1.0 / top if lr is None else float(lr)
    if not 0 < eta < 2.0 / top:
        raise ValueError(f"lr={lr!r} must lie in (0, 2/lambda_max) = (0, {2.0 / top:.4g}) to converge")
    t = torch.arange(steps + 1, dtype=torch.float64)[:, None]
    factors = (1.0 - eta * lam)[None, :].abs() ** (2.0 * t)
    return ((factors * weight).sum(1) / weight.sum()).numpy()
