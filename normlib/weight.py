r"""Weight normalization: normalize activations implicitly, through the weights.

Each method is a parametrization (``torch.nn.utils.parametrize``) of the
``weight`` of any ``nn.Linear`` or ``nn.ConvNd``: the layer keeps its forward,
and reading ``layer.weight`` returns the normalized weight, recomputed from the
stored (raw) parameters at every access. A weight of shape
``(out_channels, in_channels, *kernel)`` is seen as the matrix
``V: (out, fan_in)`` whose rows are the output units' weight vectors.

==========================================  ==============================================
method                                      normalized weight (row ``i``)
==========================================  ==============================================
:func:`weight_norm` (WN)                    :math:`g_i\, v_i / \|v_i\|`
:func:`centered_weight_norm` (CWN)          :math:`g_i\, (v_i - \bar v_i) / \|v_i - \bar v_i\|`
:func:`orthogonal_weight_norm` (OWN, ONI)   :math:`W = (V_c V_c^\top)^{-1/2} V_c` per group
:func:`weight_standardization` (WS)         :math:`(v_i - \mu_i) / \sqrt{\sigma_i^2 + \epsilon}`
:func:`scaled_weight_standardization`       :math:`\gamma g_i (v_i - \mu_i) / \sqrt{N(\sigma_i^2+\epsilon)}`
:func:`spectral_norm` (SN)                  :math:`W / \sigma_{\max}(W)` (power iteration)
:func:`normprop` (NormProp)                 :math:`\gamma_i\, v_i / \|v_i\|`, :math:`\gamma_i = 1` at init
==========================================  ==============================================

The functions follow ``torch.nn.utils.parametrizations``: they take the module
and return it. The names ``"wn"``, ``"cwn"``, ``"own"``, ``"oni"``, ``"ws"``,
``"sws"``, ``"sn"`` and ``"normprop"`` are registered with
:func:`normlib.registry.register_weight_norm`, so a model built with
``norm="ws"`` standardizes the weights of its convolutions and puts
``nn.Identity()`` where an activation normalizer would stand. (A model built
with ``norm="normprop"`` gets NormProp's unit-norm rows but keeps its own
activation; :func:`normprop_mlp` is the full NormProp network with
:class:`NormPropReLU`.)

Explained in the chapter "Review III: normalizing weights and gradients"
(``chapters/review_weights.md``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from normlib.weight import weight_standardization
    >>> conv = weight_standardization(nn.Conv2d(3, 8, 3))
    >>> rows = conv.weight.reshape(8, -1)
    >>> bool(rows.mean(1).abs().max() < 1e-6)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from normlib._checks import check_eps, check_positive_float, check_positive_int
from normlib.registry import register_weight_norm
from normlib.whitening import inverse_sqrt_symmetric

# eps = 0 is refused: a constant row (every row of nn.Linear(1, out)) has variance 0, a zero row
# norm 0 and a rank-deficient group eigenvalue 0, and each gives silent NaNs.
_EPS_WHY = "it keeps a constant or zero row, or a rank-deficient group, from dividing by zero"

__all__ = [
    "weight_normalize",
    "orthogonalize_weight",
    "standardize_weight",
    "power_iteration_",
    "spectral_normalize",
    "activation_gamma",
    "normprop_relu",
    "WeightNorm",
    "OrthogonalWeightNorm",
    "WeightStandardization",
    "ScaledWeightStandardization",
    "SpectralNorm",
    "NormPropReLU",
    "weight_norm",
    "centered_weight_norm",
    "orthogonal_weight_norm",
    "oni",
    "weight_standardization",
    "scaled_weight_standardization",
    "spectral_norm",
    "normprop",
    "normprop_mlp",
    "weight_norm_directions",
]

_ORTHO_METHODS = ("eigh", "newton")


# --------------------------------------------------------------------------- checks


def _check_dim(dim, ndim: int, allow_none: bool) -> int | None:
    if dim is None and allow_none:
        return None
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(
            f"dim must be an int in [-{ndim}, {ndim - 1}] for a {ndim}-dim weight"
            + (" or None (the whole tensor)" if allow_none else "")
            + f", got {dim!r}"
        )
    return dim % ndim


def _module_weight(module, name: str) -> torch.Tensor:
    """The tensor a weight normalizer will parametrize, after checking it can."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(
            f"{type(module).__name__} has no tensor named {name!r}; weight normalizers apply "
            "to layers with a weight such as nn.Linear or nn.Conv2d (or pass name=...)"
        )
    if weight.ndim < 2:
        raise ValueError(
            f"{type(module).__name__}.{name} has shape {tuple(weight.shape)}; weight "
            "normalization needs a weight with at least 2 dims (out_features, in_features, "
            "*kernel), so it does not apply to a 1-dim weight such as a normalizer's scale"
        )
    return weight


def _output_dim(module: nn.Module) -> int:
    # Transposed convolutions store (in, out // groups, *kernel): output units are dim 1.
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0


def _as_matrix(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """``(out, fan_in)`` view of ``weight`` with the output dimension ``dim`` first."""
    if dim != 0:
        weight = weight.movedim(dim, 0)
    return weight.reshape(weight.shape[0], -1)


def _from_matrix(matrix: torch.Tensor, shape: torch.Size, dim: int) -> torch.Tensor:
    dim = dim % len(shape)
    moved = [shape[dim]] + [s for d, s in enumerate(shape) if d != dim]
    out = matrix.reshape(moved)
    return out.movedim(0, dim) if dim != 0 else out


def _other_dims(ndim: int, dim: int | None) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(ndim))
    return tuple(d for d in range(ndim) if d != dim % ndim)


# ---------------------------------------------------------------------- functional core


def weight_normalize(
    v: torch.Tensor,
    g: torch.Tensor,
    dim: int | None = 0,
    *,
    centered: bool = False,
    eps: float = 1e-12,
) -> torch.Tensor:
    r"""Weight normalization :math:`w = g\, (v - c) / \max(\|v - c\|, \epsilon)`.

    The norm (and, if ``centered``, the mean ``c``) is taken over every dimension
    except ``dim``, so each slice ``v[i]`` along ``dim`` gets its own direction and
    length ``g[i]``. Without centering this is torch's ``_weight_norm`` (Salimans and
    Kingma, 2016); with centering it is centered weight normalization (Huang et al.,
    2017), whose rows also have zero mean.

    Args:
        v: the direction, any shape with at least 1 dim, e.g. ``(out, in, *kernel)``.
        g: the length, broadcastable to ``v`` (``(out, 1, ..., 1)`` for ``dim=0``;
            a scalar for ``dim=None``).
        dim: the dimension that is not reduced; ``None`` normalizes the whole tensor.
        centered: subtract the mean of each slice before normalizing.
        eps: positive lower bound on the norm (guards a zero slice).

    Returns:
        torch.Tensor: the normalized weight, shape of ``v``.

    Example:
        >>> v = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
        >>> weight_normalize(v, torch.ones(2, 1))
        tensor([[0.6000, 0.8000],
                [0.0000, 1.0000]])
    """
    eps = check_eps(eps, why=_EPS_WHY)
    dims = _other_dims(v.ndim, dim)
    if centered:
        v = v - v.mean(dim=dims, keepdim=True)
    norm = torch.linalg.vector_norm(v, dim=dims, keepdim=True).clamp_min(eps)
    return g * (v / norm)


def orthogonalize_weight(
    v: torch.Tensor,
    group_size: int,
    *,
    method: str = "eigh",
    num_iters: int = 5,
    centered: bool = True,
    eps: float = 1e-5,
) -> torch.Tensor:
    r"""Orthogonal weight normalization of the rows of ``v``, group by group.

    The ``out`` rows are split into ``out / group_size`` groups ``V`` of
    ``group_size`` rows. Each group is centered (``V_c = V - V 1 1^T / d``, if
    ``centered``) and whitened so that its rows are orthonormal:

    - ``method="eigh"`` (OWN, Huang et al., 2018): with
      :math:`V_c V_c^\top = D \Lambda D^\top`,
      :math:`W = D (\Lambda + \epsilon I)^{-1/2} D^\top V_c`, so
      :math:`W W^\top = I` up to ``eps``. The inverse square root is
      :func:`normlib.whitening.inverse_sqrt_symmetric`, whose backward uses divided
      differences of :math:`t^{-1/2}` and so stays finite when eigenvalues repeat
      (e.g. rows that are already orthonormal).
    - ``method="newton"`` (ONI, Huang et al., 2020): :math:`U = V_c / \|V_c\|_F`,
      :math:`S = U U^\top`, :math:`B_0 = I`,
      :math:`B_t = \tfrac32 B_{t-1} - \tfrac12 B_{t-1}^3 S`, :math:`W = B_T U`.
      ``num_iters = T`` controls how orthogonal ``W`` is: :math:`W W^\top \to I`
      as ``T`` grows, at a rate set by the condition number of ``S``. The
      iteration is run in its coupled form (:math:`Y_t = B_t S` carried along),
      which has the same iterates in exact arithmetic and stays stable for
      large ``T``.

    Args:
        v: ``(out, fan_in)`` weight matrix.
        group_size: rows per group; must divide ``out`` and be at most ``fan_in``
            (``fan_in - 1`` when centered, since centering removes one dimension).
        method: ``"eigh"`` or ``"newton"``.
        num_iters: Newton iterations ``T`` (``method="newton"`` only), a positive int.
        centered: center each row before orthogonalizing.
        eps: positive, added to the eigenvalues (``method="eigh"`` only).

    Returns:
        torch.Tensor: ``(out, fan_in)`` with orthonormal rows within each group.

    Raises:
        ValueError: for a ``v`` that is not a matrix, a ``group_size`` that does not
            divide ``out`` or exceeds the rank of the rows, an unknown ``method``, or a
            non-positive ``num_iters`` or ``eps``.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> w = orthogonalize_weight(torch.randn(4, 9, dtype=torch.float64), 4, eps=1e-12)
        >>> torch.allclose(w @ w.T, torch.eye(4, dtype=torch.float64))
        True
    """
    if v.ndim != 2:
        raise ValueError(f"v must be an (out, fan_in) matrix, got shape {tuple(v.shape)}")
    out, fan_in = v.shape
    _check_group_size(group_size, out, fan_in, centered)
    if method not in _ORTHO_METHODS:
        raise ValueError(f"method must be one of {_ORTHO_METHODS}, got {method!r}")
    check_positive_int("num_iters", num_iters)
    eps = check_eps(eps, why=_EPS_WHY)
    groups = v.reshape(out // group_size, group_size, fan_in)
    if centered:
        groups = groups - groups.mean(dim=-1, keepdim=True)
    eye = torch.eye(group_size, dtype=v.dtype, device=v.device)
    if method == "eigh":
        # Autograd through torch.linalg.eigh divides by eigenvalue gaps and returns NaN for
        # rows that are already orthogonal (all eigenvalues 1); the whitening module's inverse
        # square root has a backward that stays finite there.
        whitening = inverse_sqrt_symmetric(groups @ groups.mT + eps * eye, eps)
    else:
        groups = groups / torch.linalg.matrix_norm(groups, keepdim=True)
        # Coupled Newton-Schulz form: Z_t equals ONI's B_t in exact arithmetic, but the
        # uncoupled B_t = 1.5 B - 0.5 B^3 S amplifies rounding and diverges after a few
        # tens of iterations; here Y_t = Z_t S is carried along and the error stays put.
        y = groups @ groups.mT
        whitening = eye.expand_as(y)
        for _ in range(num_iters):
            step = 1.5 * eye - 0.5 * whitening @ y
            y = y @ step
            whitening = step @ whitening
    return (whitening @ groups).reshape(out, fan_in)


def _check_group_size(group_size, out: int, fan_in: int, centered: bool) -> None:
    check_positive_int("group_size", group_size)
    rank = fan_in - 1 if centered else fan_in
    if out % group_size != 0:
        raise ValueError(
            f"group_size={group_size} must divide the number of output units {out}; "
            "choose a divisor of it (or group_size=None to pick one)"
        )
    if group_size > rank:
        raise ValueError(
            f"group_size={group_size} is larger than the rank {rank} of a group's rows "
            f"(fan_in={fan_in}{', minus 1 for centering' if centered else ''}), so its rows "
            "cannot be orthonormal; use a smaller group_size"
        )


def _default_group_size(out: int, fan_in: int, centered: bool) -> int:
    """The largest divisor of ``out`` that the rows' rank allows."""
    rank = fan_in - 1 if centered else fan_in
    for size in range(min(out, rank), 0, -1):
        if out % size == 0:
            return size
    raise ValueError(
        f"a weight with fan_in={fan_in} has no room for orthonormal rows"
        + (" after centering; use centered=False" if centered else "")
    )


def standardize_weight(
    weight: torch.Tensor,
    dim: int = 0,
    *,
    eps: float = 1e-5,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Weight standardization :math:`\hat w_i = s_i (w_i - \mu_i) / \sqrt{\sigma_i^2 + \epsilon}`.

    Every output unit ``i`` (slice ``i`` along ``dim``) is standardized over its
    ``fan_in`` entries with the biased variance (Qiao et al., 2019), then scaled
    by ``scale[i]`` if given. Scaled weight standardization (Brock et al., 2021)
    is the case ``scale = gamma * gain / sqrt(fan_in)``.

    Args:
        weight: ``(out, in, *kernel)`` (output units along ``dim``).
        dim: the output-unit dimension (1 for transposed convolutions).
        eps: positive, added to the variance (a constant row has variance 0).
        scale: optional ``(out,)`` factor per output unit.

    Returns:
        torch.Tensor: the standardized weight, shape of ``weight``.

    Example:
        >>> w = standardize_weight(torch.tensor([[1.0, 3.0], [2.0, 2.5]]), eps=1e-12)
        >>> w
        tensor([[-1.,  1.],
                [-1.,  1.]])
    """
    eps = check_eps(eps, why=_EPS_WHY)
    matrix = _as_matrix(weight, dim)
    var, mean = torch.var_mean(matrix, dim=1, correction=0, keepdim=True)
    matrix = (matrix - mean) * torch.rsqrt(var + eps)
    if scale is not None:
        matrix = matrix * scale.reshape(-1, 1)
    return _from_matrix(matrix, weight.shape, dim)


@torch.no_grad()
def power_iteration_(
    matrix: torch.Tensor, u: torch.Tensor, v: torch.Tensor, num_iters: int, eps: float = 1e-12
) -> None:
    r"""Refine the top singular vector estimates of ``matrix`` in place.

    One iteration is :math:`u \leftarrow Wv/\|Wv\|`, :math:`v \leftarrow W^\top u/\|W^\top u\|`.

    Args:
        matrix: ``(h, w)``.
        u: ``(h,)`` left vector, updated in place.
        v: ``(w,)`` right vector, updated in place.
        num_iters: number of iterations.
        eps: lower bound on the norms.

    Example:
        >>> m = torch.diag(torch.tensor([3.0, 1.0]))
        >>> u, v = torch.tensor([0.6, 0.8]), torch.tensor([0.6, 0.8])
        >>> power_iteration_(m, u, v, 20)
        >>> round(float(u @ m @ v), 4)
        3.0
    """
    for _ in range(num_iters):
        F.normalize(torch.mv(matrix, v), dim=0, eps=eps, out=u)
        F.normalize(torch.mv(matrix.mT, u), dim=0, eps=eps, out=v)


def spectral_normalize(
    weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int = 0
) -> torch.Tensor:
    r"""Spectral normalization :math:`W / \sigma` with :math:`\sigma = u^\top W v` (Miyato et al., 2018).

    ``u`` and ``v`` are the current estimates of the top singular vectors of the
    ``(out, fan_in)`` matrix of ``weight`` (see :func:`power_iteration_`); they
    are treated as constants, as in torch.

    Args:
        weight: ``(out, in, *kernel)``, output units along ``dim``.
        u: ``(out,)`` left singular vector estimate.
        v: ``(fan_in,)`` right singular vector estimate.
        dim: the output-unit dimension.

    Returns:
        torch.Tensor: ``weight / sigma``.

    Example:
        >>> w = torch.diag(torch.tensor([3.0, 1.0]))
        >>> spectral_normalize(w, torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
        tensor([[1.0000, 0.0000],
                [0.0000, 0.3333]])
    """
    sigma = torch.dot(u, torch.mv(_as_matrix(weight, dim), v))
    return weight / sigma


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "linear": lambda x: x,
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "elu": F.elu,
    "selu": F.selu,
    "celu": F.celu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "leaky_relu": F.leaky_relu,
    "relu6": F.relu6,
}


def activation_gamma(activation: str | Callable[[torch.Tensor], torch.Tensor]) -> float:
    r"""The gain :math:`\gamma = 1/\sqrt{\operatorname{Var}_{z\sim N(0,1)}[f(z)]}` of an activation.

    Scaled weight standardization multiplies by ``gamma`` so that a layer whose
    input is ``f(z)`` with ``z ~ N(0, 1)`` keeps unit variance (Brock et al.,
    2021). For ReLU, :math:`\gamma = \sqrt{2 / (1 - 1/\pi)} \approx 1.7129`. Computed
    by the trapezoidal rule on a fine grid in float64 (exact to about 1e-8), not
    by sampling.

    Args:
        activation: a name (``"relu"``, ``"gelu"``, ``"silu"``, ``"tanh"``, ...) or a
            function of a tensor.

    Returns:
        float: gamma.

    Raises:
        ValueError: for an unknown name or an activation with zero variance.

    Example:
        >>> round(activation_gamma("relu"), 4)
        1.7129
    """
    if isinstance(activation, str):
        key = activation.strip().lower()
        if key not in _ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; known: {', '.join(sorted(_ACTIVATIONS))} "
                "(or pass a function)"
            )
        fn = _ACTIVATIONS[key]
    elif callable(activation):
        fn = activation
    else:
        raise TypeError(f"activation must be a name or a callable, got {activation!r}")
    z = torch.linspace(-12.0, 12.0, 240_001, dtype=torch.float64)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    fz = fn(z).to(torch.float64)
    mean = torch.trapezoid(fz * density, z)
    var = float(torch.trapezoid((fz - mean) ** 2 * density, z))
    if not var > 0:
        raise ValueError(f"activation {activation!r} has zero variance under N(0, 1)")
    return 1.0 / math.sqrt(var)


# Mean and standard deviation of relu(z) for z ~ N(0, 1).
_RELU_MEAN = 1.0 / math.sqrt(2.0 * math.pi)
_RELU_STD = math.sqrt(0.5 * (1.0 - 1.0 / math.pi))


def normprop_relu(x: torch.Tensor) -> torch.Tensor:
    r"""NormProp's ReLU: :math:`(\mathrm{relu}(x) - 1/\sqrt{2\pi}) / \sqrt{\tfrac12(1 - 1/\pi)}`.

    If ``x ~ N(0, 1)``, the output has exactly zero mean and unit variance
    (Arpit et al., 2016); the correction uses these closed-form moments instead
    of batch statistics.

    Args:
        x: any shape.

    Returns:
        torch.Tensor: same shape.

    Example:
        >>> normprop_relu(torch.zeros(2))
        tensor([-0.6833, -0.6833])
    """
    return (F.relu(x) - _RELU_MEAN) / _RELU_STD


class NormPropReLU(nn.Module):
    r"""Module form of :func:`normprop_relu`; use after a :func:`normprop` layer.

    Shape: ``x: (N, C, *)`` to the same shape.

    Example:
        >>> NormPropReLU()(torch.zeros(1))
        tensor([-0.6833])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normprop_relu(x)


# ------------------------------------------------------------------- parametrizations


class WeightNorm(nn.Module):
    r"""Parametrization ``(g, v) -> g (v - c) / ||v - c||`` (see :func:`weight_normalize`).

    ``right_inverse`` splits a weight ``w`` into ``g = ||w - c||`` and ``v = w``, so
    ``original0`` is ``g`` and ``original1`` is ``v``, as in torch.

    Args:
        dim: the dimension that keeps its own norm (output units for ``dim=0``);
            ``None`` normalizes the whole tensor.
        centered: centered weight normalization (``c`` = mean of each slice; else 0).
        eps: lower bound on the norm.

    Example:
        >>> p = WeightNorm()
        >>> g, v = p.right_inverse(torch.tensor([[3.0, 4.0]]))
        >>> g
        tensor([[5.]])
    """

    def __init__(self, dim: int | None = 0, centered: bool = False, eps: float = 1e-12) -> None:
        super().__init__()
        self.dim = dim
        self.centered = bool(centered)
        self.eps = check_eps(eps, why=_EPS_WHY)

    def forward(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return weight_normalize(v, g, self.dim, centered=self.centered, eps=self.eps)

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = _other_dims(weight.ndim, self.dim)
        centered = weight - weight.mean(dim=dims, keepdim=True) if self.centered else weight
        g = torch.linalg.vector_norm(centered, dim=dims, keepdim=self.dim is not None)
        return g, weight

    def extra_repr(self) -> str:
        return f"dim={self.dim}, centered={self.centered}, eps={self.eps}"


class OrthogonalWeightNorm(nn.Module):
    r"""Parametrization ``V -> W`` with orthonormal rows per group (see :func:`orthogonalize_weight`).

    Args:
        group_size: rows per group.
        method: ``"eigh"`` (OWN, exact) or ``"newton"`` (ONI, ``num_iters`` steps).
        num_iters: Newton iterations.
        centered: center the rows first.
        eps: added to the eigenvalues (``"eigh"``).
        dim: the output-unit dimension of the weight.

    Example:
        >>> p = OrthogonalWeightNorm(2, eps=1e-12)
        >>> w = p(torch.randn(4, 3, 3, dtype=torch.float64)).reshape(4, 9)
        >>> torch.allclose(w[:2] @ w[:2].T, torch.eye(2, dtype=torch.float64))
        True
    """

    def __init__(
        self,
        group_size: int,
        method: str = "eigh",
        num_iters: int = 5,
        centered: bool = True,
        eps: float = 1e-5,
        dim: int = 0,
    ) -> None:
        super().__init__()
        self.group_size = check_positive_int("group_size", group_size)
        if method not in _ORTHO_METHODS:
            raise ValueError(f"method must be one of {_ORTHO_METHODS}, got {method!r}")
        self.method = method
        self.num_iters = check_positive_int("num_iters", num_iters)
        self.centered = bool(centered)
        self.eps = check_eps(eps, why=_EPS_WHY)
        self.dim = dim

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = orthogonalize_weight(
            _as_matrix(weight, self.dim),
            self.group_size,
            method=self.method,
            num_iters=self.num_iters,
            centered=self.centered,
            eps=self.eps,
        )
        return _from_matrix(matrix, weight.shape, self.dim)

    def extra_repr(self) -> str:
        iters = f", num_iters={self.num_iters}" if self.method == "newton" else ""
        return (
            f"group_size={self.group_size}, method={self.method!r}{iters}, "
            f"centered={self.centered}, eps={self.eps}"
        )


class WeightStandardization(nn.Module):
    r"""Parametrization ``w -> (w - mean) / sqrt(var + eps)`` per output unit.

    With ``gamma`` or ``affine`` it becomes scaled weight standardization
    (see :class:`ScaledWeightStandardization`). See :func:`standardize_weight`.

    Args:
        eps: added to the variance.
        dim: the output-unit dimension of the weight.

    Example:
        >>> p = WeightStandardization(eps=1e-12)
        >>> p(torch.tensor([[0.0, 2.0]]))
        tensor([[-1.,  1.]])
    """

    def __init__(self, eps: float = 1e-5, dim: int = 0) -> None:
        super().__init__()
        self.eps = check_eps(eps, why=_EPS_WHY)
        self.dim = dim

    def scale(self, weight: torch.Tensor) -> torch.Tensor | None:
        """Per-output-unit factor applied after standardizing (none here)."""
        return None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return standardize_weight(weight, self.dim, eps=self.eps, scale=self.scale(weight))

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class ScaledWeightStandardization(WeightStandardization):
    r"""Scaled weight standardization :math:`\gamma\, g_i (w_i - \mu_i) / \sqrt{N (\sigma_i^2 + \epsilon)}`.

    ``N`` is the fan-in, ``g`` a learnable gain per output unit (initialized to 1;
    fixed at 1 if ``affine=False``) and ``gamma`` the activation's gain
    (:func:`activation_gamma`), as in normalizer-free networks (Brock et al., 2021).
    For an input with i.i.d. entries of unit second moment, each output unit then
    has unit variance at initialization.

    Args:
        num_features: number of output units ``out``.
        gamma: the activation gain (1 for a linear network).
        eps: added to the variance.
        affine: learn the gain ``g``.
        dim: the output-unit dimension of the weight.
        device: device of the gain.
        dtype: dtype of the gain.

    Example:
        >>> p = ScaledWeightStandardization(1, gamma=2.0, eps=1e-12)
        >>> p(torch.tensor([[0.0, 2.0, 0.0, 2.0]])).detach()
        tensor([[-1.,  1., -1.,  1.]])
    """

    def __init__(
        self,
        num_features: int,
        gamma: float = 1.0,
        eps: float = 1e-5,
        affine: bool = True,
        dim: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(eps=eps, dim=dim)
        self.num_features = check_positive_int("num_features", num_features)
        self.gamma = check_positive_float("gamma", gamma)
        self.affine = bool(affine)
        if self.affine:
            self.gain = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("gain", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set the gain to 1."""
        if self.gain is not None:
            nn.init.ones_(self.gain)

    def scale(self, weight: torch.Tensor) -> torch.Tensor:
        """``gamma * gain / sqrt(fan_in)`` per output unit, shape ``(out,)``."""
        fan_in = weight.numel() // weight.shape[self.dim]
        factor = self.gamma / math.sqrt(fan_in)
        if self.gain is None:
            return torch.full((weight.shape[self.dim],), factor, dtype=weight.dtype,
                              device=weight.device)
        return self.gain * factor

    def extra_repr(self) -> str:
        return f"{self.num_features}, gamma={self.gamma:.4g}, eps={self.eps}, affine={self.affine}"


class SpectralNorm(nn.Module):
    r"""Parametrization ``W -> W / sigma_max(W)`` by power iteration with persistent vectors.

    Like ``torch.nn.utils.parametrizations.spectral_norm``: buffers ``_u`` and
    ``_v`` hold the singular vector estimates; they start from normalized
    Gaussian vectors refined by 15 iterations, and each forward pass in training
    mode runs ``n_power_iterations`` more (none in eval mode). The estimate
    :math:`\sigma = u^\top W v` is differentiated with ``u`` and ``v`` held
    constant (Miyato et al., 2018).

    Args:
        weight: the weight to be normalized (sets the buffers' shapes).
        n_power_iterations: iterations per training-mode forward.
        dim: the output-unit dimension.
        eps: lower bound on the vectors' norms.

    Example:
        >>> p = SpectralNorm(torch.diag(torch.tensor([4.0, 1.0])))
        >>> p(torch.diag(torch.tensor([4.0, 1.0])))
        tensor([[1.0000, 0.0000],
                [0.0000, 0.2500]])
    """

    def __init__(
        self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12
    ) -> None:
        super().__init__()
        if weight.ndim < 2:
            raise ValueError(f"weight must have at least 2 dims, got shape {tuple(weight.shape)}")
        self.n_power_iterations = check_positive_int("n_power_iterations", n_power_iterations)
        self.dim = _check_dim(dim, weight.ndim, allow_none=False)
        self.eps = check_eps(eps, why=_EPS_WHY)
        with torch.no_grad():
            matrix = _as_matrix(weight, self.dim)
            h, w = matrix.shape
            # Same draws in the same order as torch, so equal seeds give equal vectors.
            u = matrix.new_empty(h).normal_(0, 1)
            v = matrix.new_empty(w).normal_(0, 1)
            self.register_buffer("_u", F.normalize(u, dim=0, eps=self.eps))
            self.register_buffer("_v", F.normalize(v, dim=0, eps=self.eps))
            power_iteration_(matrix, self._u, self._v, 15, self.eps)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            power_iteration_(_as_matrix(weight, self.dim), self._u, self._v,
                             self.n_power_iterations, self.eps)
        # Cloned so that a graph built on this forward survives the next in-place update.
        return spectral_normalize(weight, self._u.clone(), self._v.clone(), self.dim)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def extra_repr(self) -> str:
        return f"n_power_iterations={self.n_power_iterations}, dim={self.dim}, eps={self.eps}"


# ------------------------------------------------------------------ module functions


def weight_norm(module: nn.Module, name: str = "weight", dim: int | None = 0,
                eps: float = 1e-12) -> nn.Module:
    r"""Weight normalization :math:`w = g\, v / \|v\|` of ``module.name`` (Salimans and Kingma, 2016).

    Equal to ``torch.nn.utils.parametrizations.weight_norm`` (same ``original0 = g``,
    ``original1 = v``, values and gradients). The loss is invariant to the scale
    of ``v``, so its gradient is orthogonal to ``v`` and plain SGD makes ``||v||``
    grow; chapter "Review III" works out the effective learning rate.

    Args:
        module: a layer with a weight of at least 2 dims (``nn.Linear``, ``nn.ConvNd``).
        name: the parameter to normalize.
        dim: the dimension with one ``g`` per slice; ``None`` for the whole tensor.
        eps: lower bound on ``||v||``.

    Returns:
        nn.Module: ``module``, parametrized.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
        ValueError: if it has no such weight, the weight has fewer than 2 dims, or
            ``dim``/``eps`` are invalid.

    Example:
        >>> lin = weight_norm(nn.Linear(3, 2))
        >>> lin.parametrizations.weight.original0.shape
        torch.Size([2, 1])
    """
    weight = _module_weight(module, name)
    dim = _check_dim(dim, weight.ndim, allow_none=True)
    parametrize.register_parametrization(module, name, WeightNorm(dim, eps=eps))
    return module


def centered_weight_norm(module: nn.Module, name: str = "weight", dim: int | None = 0,
                         eps: float = 1e-12) -> nn.Module:
    r"""Centered weight normalization :math:`w = g\, (v - \bar v) / \|v - \bar v\|` (Huang et al., 2017).

    Each output unit's weight has zero mean and length ``g``. ``g`` starts at the
    norm of the centered weight, so the initial weight is the centered original.

    Args:
        module: a layer with a weight of at least 2 dims.
        name: the parameter to normalize.
        dim: the dimension with one ``g`` per slice; ``None`` for the whole tensor.
        eps: lower bound on the norm.

    Returns:
        nn.Module: ``module``, parametrized.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
        ValueError: if it has no such weight, the weight has fewer than 2 dims, or
            ``dim``/``eps`` are invalid.

    Example:
        >>> lin = centered_weight_norm(nn.Linear(3, 2))
        >>> bool(lin.weight.sum(1).abs().max() < 1e-6)
        True
    """
    weight = _module_weight(module, name)
    dim = _check_dim(dim, weight.ndim, allow_none=True)
    parametrize.register_parametrization(module, name, WeightNorm(dim, centered=True, eps=eps))
    return module


def orthogonal_weight_norm(
    module: nn.Module,
    name: str = "weight",
    group_size: int | None = None,
    method: str = "eigh",
    num_iters: int = 5,
    centered: bool = True,
    eps: float = 1e-5,
) -> nn.Module:
    r"""Orthogonal weight normalization: rows of each group orthonormal (OWN; ONI with ``method="newton"``).

    See :func:`orthogonalize_weight` for the formulas. A layer with more outputs
    than its fan-in cannot have orthonormal rows, so the rows are orthogonalized
    in groups of ``group_size`` (Huang et al., 2018).

    Args:
        module: a layer with a weight of at least 2 dims.
        name: the parameter to normalize.
        group_size: rows per group; ``None`` picks the largest divisor of the number
            of outputs that is at most the rank of the rows.
        method: ``"eigh"`` (exact) or ``"newton"`` (ONI, Huang et al., 2020).
        num_iters: Newton iterations for ``method="newton"``.
        centered: center the rows first.
        eps: added to the eigenvalues for ``method="eigh"``.

    Returns:
        nn.Module: ``module``, parametrized.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
        ValueError: if it has no such weight, or ``group_size`` does not divide the
            outputs or exceeds the rank of the rows, or other arguments are invalid.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> lin = orthogonal_weight_norm(nn.Linear(6, 4, dtype=torch.float64), eps=1e-12)
        >>> eye = torch.eye(4, dtype=torch.float64)
        >>> torch.allclose(lin.weight @ lin.weight.T, eye, atol=1e-8)
        True

        ``W W^T`` equals ``Lambda / (Lambda + eps)`` in the eigenbasis of the centered rows'
        Gram matrix, so with the default ``eps`` it is the identity up to ``eps / lambda_min``.
    """
    weight = _module_weight(module, name)
    dim = _output_dim(module)
    out = weight.shape[dim]
    fan_in = weight.numel() // out
    if group_size is None:
        group_size = _default_group_size(out, fan_in, bool(centered))
    _check_group_size(group_size, out, fan_in, bool(centered))
    ortho = OrthogonalWeightNorm(group_size, method, num_iters, centered, eps, dim)
    parametrize.register_parametrization(module, name, ortho)
    return module


def oni(module: nn.Module, name: str = "weight", group_size: int | None = None,
        num_iters: int = 5, centered: bool = True, eps: float = 1e-5) -> nn.Module:
    r"""Orthogonalization by Newton's iteration (ONI): :func:`orthogonal_weight_norm`, ``method="newton"``.

    Args:
        module: a layer with a weight of at least 2 dims.
        name: the parameter to normalize.
        group_size: rows per group (``None``: the largest that fits).
        num_iters: Newton iterations ``T``; more is closer to orthogonal.
        centered: center the rows first.
        eps: checked to be positive and otherwise unused (the Newton iterations need no
            regularization); accepted so that every weight normalizer takes ``eps``.

    Returns:
        nn.Module: ``module``, parametrized.

    Example:
        >>> lin = oni(nn.Linear(16, 4), num_iters=30)
        >>> torch.allclose(lin.weight @ lin.weight.T, torch.eye(4), atol=1e-2)
        True
    """
    return orthogonal_weight_norm(module, name, group_size, "newton", num_iters, centered, eps)


def weight_standardization(module: nn.Module, name: str = "weight", eps: float = 1e-5) -> nn.Module:
    r"""Weight standardization: each output unit's weight has zero mean and unit variance (Qiao et al., 2019).

    Args:
        module: a layer with a weight of at least 2 dims.
        name: the parameter to normalize.
        eps: added to the variance.

    Returns:
        nn.Module: ``module``, parametrized.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
        ValueError: if it has no such weight, the weight has fewer than 2 dims, or
            ``eps`` is not positive.

    Example:
        >>> conv = weight_standardization(nn.Conv2d(2, 4, 3))
        >>> conv.weight.shape
        torch.Size([4, 2, 3, 3])
    """
    _module_weight(module, name)
    ws = WeightStandardization(eps=eps, dim=_output_dim(module))
    parametrize.register_parametrization(module, name, ws)
    return module


def scaled_weight_standardization(
    module: nn.Module,
    name: str = "weight",
    gamma: float | None = None,
    activation: str | Callable[[torch.Tensor], torch.Tensor] = "relu",
    eps: float = 1e-5,
    affine: bool = True,
) -> nn.Module:
    r"""Scaled weight standardization with a learnable gain (NF-Nets; Brock et al., 2021).

    See :class:`ScaledWeightStandardization`. The gain lives in the
    parametrization, ``module.parametrizations.<name>[0].gain``, and is part of
    ``module.parameters()``.

    Args:
        module: a layer with a weight of at least 2 dims.
        name: the parameter to normalize.
        gamma: the activation gain; ``None`` computes it for ``activation``.
        activation: the nonlinearity that follows (used when ``gamma`` is ``None``).
        eps: added to the variance.
        affine: learn a gain per output unit.

    Returns:
        nn.Module: ``module``, parametrized.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
        ValueError: if it has no such weight, the weight has fewer than 2 dims, or
            ``gamma``/``eps``/``activation`` are invalid.

    Example:
        >>> lin = scaled_weight_standardization(nn.Linear(4, 3), activation="identity", eps=1e-12)
        >>> torch.allclose((lin.weight ** 2).sum(1), torch.ones(3))
        True
    """
    weight = _module_weight(module, name)
    if gamma is None:
        gamma = activation_gamma(activation)
    dim = _output_dim(module)
    sws = ScaledWeightStandardization(
        weight.shape[dim], gamma=gamma, eps=eps, affine=affine, dim=dim,
        device=weight.device, dtype=weight.dtype,
    )
    parametrize.register_parametrization(module, name, sws)
    return module


def spectral_norm(
    module: nn.Module,
    name: str = "weight",
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    dim: int | None = None,
) -> nn.Module:
    r"""Spectral normalization :math:`W / \sigma_{\max}(W)` (Miyato et al., 2018).

    Equal to ``torch.nn.utils.parametrizations.spectral_norm`` (values, gradients,
    and the power-iteration state ``_u``, ``_v``), see :class:`SpectralNorm`.

    Args:
        module: a layer with a weight of at least 2 dims.
        name: the parameter to normalize.
        n_power_iterations: power iterations per training-mode forward.
        eps: lower bound on the vectors' norms.
        dim: the output-unit dimension; ``None`` is 1 for transposed convolutions
            and 0 otherwise.

    Returns:
        nn.Module: ``module``, parametrized.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
        ValueError: if it has no such weight, the weight has fewer than 2 dims, or
            the other arguments are invalid.

    Example:
        >>> lin = spectral_norm(nn.Linear(5, 3))
        >>> s = torch.linalg.matrix_norm(lin.weight, ord=2)
        >>> bool(abs(s - 1) < 1e-3)
        True
    """
    weight = _module_weight(module, name)
    if dim is None:
        dim = _output_dim(module)
    sn = SpectralNorm(weight, n_power_iterations, dim, eps)
    # The consistency check of a safe registration runs one training-mode forward, which
    # advances the power iteration once more; torch does the same, so the states agree.
    parametrize.register_parametrization(module, name, sn)
    return module


def normprop(module: nn.Module, name: str = "weight", eps: float = 1e-12) -> nn.Module:
    r"""Normalization propagation's weights :math:`\gamma_i v_i / \|v_i\|`, with :math:`\gamma_i = 1` at init.

    NormProp (Arpit et al., 2016) normalizes the data once and then keeps every
    layer's pre-activations at zero mean and unit variance without batch
    statistics: unit-norm rows keep the variance of an input with uncorrelated
    unit-variance features, and :class:`NormPropReLU` re-standardizes the ReLU
    output in closed form. Both steps assume uncorrelated (ideally Gaussian)
    features, i.e. roughly orthogonal rows; chapter "Review III" tests this.
    It is :func:`weight_norm` with the gains initialized to 1.

    Registered as ``"normprop"``: ``MLP(..., norm="normprop")`` applies it to every
    hidden layer (with the model's own activation, not :class:`NormPropReLU`).

    Args:
        module: a layer with a weight of at least 2 dims.
        name: the parameter to normalize.
        eps: added to each row's norm, as in :func:`weight_norm`.

    Returns:
        nn.Module: ``module``, parametrized (one gain per output unit, which is
        dim 1 of a transposed convolution's weight).

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
        ValueError: if it has no such weight or the weight has fewer than 2 dims.

    Example:
        >>> lin = normprop(nn.Linear(4, 3))
        >>> torch.allclose(lin.weight.norm(dim=1), torch.ones(3))
        True
    """
    weight_norm(module, name, dim=_output_dim(module), eps=eps)
    with torch.no_grad():
        getattr(module.parametrizations, name).original0.fill_(1.0)
    return module


def normprop_mlp(in_features: int, width: int, depth: int, init: str = "orthogonal") -> nn.Sequential:
    r"""A NormProp network: ``depth`` blocks of :func:`normprop` ``Linear -> NormPropReLU``.

    The input is expected to be normalized once (zero mean, unit variance per
    feature); no batch statistics are used afterwards. ``init`` chooses the
    directions of the rows: ``"orthogonal"`` (orthonormal rows where
    ``width <= fan_in``, NormProp's assumption) or ``"gaussian"`` (independent
    random rows, nearly but not exactly orthogonal). Biases start at 0.

    Args:
        in_features: input size.
        width: units per layer.
        depth: number of blocks.
        init: ``"orthogonal"`` or ``"gaussian"``.

    Returns:
        nn.Sequential: the blocks, each ``nn.Sequential(linear, NormPropReLU())``.

    Example:
        >>> net = normprop_mlp(16, 16, 3)
        >>> net(torch.randn(4, 16)).shape
        torch.Size([4, 16])
    """
    for name, value in (("in_features", in_features), ("width", width), ("depth", depth)):
        check_positive_int(name, value)
    if init not in ("orthogonal", "gaussian"):
        raise ValueError(f"init must be 'orthogonal' or 'gaussian', got {init!r}")
    blocks, fan_in = [], in_features
    for _ in range(depth):
        linear = nn.Linear(fan_in, width)
        with torch.no_grad():
            if init == "orthogonal":
                nn.init.orthogonal_(linear.weight)
            else:
                nn.init.normal_(linear.weight)
            nn.init.zeros_(linear.bias)
        blocks.append(nn.Sequential(normprop(linear), NormPropReLU()))
        fan_in = width
    return nn.Sequential(*blocks)


def weight_norm_directions(model: nn.Module) -> dict[str, torch.Tensor]:
    """The direction parameters ``v`` of every weight-normalized tensor in ``model``.

    Covers :func:`weight_norm`, :func:`centered_weight_norm` and :func:`normprop`
    (torch's own ``weight_norm`` is not included). Keys are
    ``"<module name>.<tensor name>"``; values are the live parameters.

    Example:
        >>> net = nn.Sequential(weight_norm(nn.Linear(3, 2)), nn.ReLU())
        >>> list(weight_norm_directions(net))
        ['0.weight']
    """
    found = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, chain in module.parametrizations.items():
            if len(chain) == 1 and isinstance(chain[0], WeightNorm):
                key = f"{module_name}.{tensor_name}" if module_name else tensor_name
                found[key] = chain.original1
    return found


# -------------------------------------------------------------------------- registry

register_weight_norm("wn", "weight_norm")(weight_norm)
register_weight_norm("cwn", "centered_weight_norm")(centered_weight_norm)
register_weight_norm("own", "orthogonal_weight_norm")(orthogonal_weight_norm)
register_weight_norm("oni")(oni)
register_weight_norm("ws", "weight_standardization")(weight_standardization)
register_weight_norm("sws", "scaled_weight_standardization")(scaled_weight_standardization)
register_weight_norm("sn", "spectral_norm")(spectral_norm)
register_weight_norm("normprop", "normalization_propagation")(normprop)
