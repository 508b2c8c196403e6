"""Which normalizer is invariant to which transformation of weights and data, decided by computing.

:func:`~normlib.analysis.invariance_error` compares a unit's outputs before and after a
transformation from :data:`~normlib.analysis.TRANSFORMS` (weight rescaling and recentering, row
rescaling, data rescaling and recentering, single-sample rescaling);
:func:`~normlib.analysis.invariance_table` does it for many normalizers :cite:p:`ba2016layer`.

Chapter: Analysis of normalization (``chapters/analysis.md``, :ref:`chap-analysis`), the
invariance table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from normlib._checks import (
    check_eps,
    check_positive_float,
    check_positive_int,
    check_seed,
)
from normlib._state import preserved_state
from normlib.registry import available_norms, create_norm, weight_transform

__all__ = ["invariance_error", "InvarianceTable", "invariance_table", "TRANSFORMS"]


# --------------------------------------------------------------------- invariance table

#: The transformations of :func:`invariance_table`, with what each one does. ``W`` is the
#: ``(out, in)`` weight of the linear map in front of the normalizer (for weight
#: normalizers: the raw weight they normalize), ``x`` the ``(N, in, P)`` data.
TRANSFORMS: dict[str, str] = {
    "weight_rescaling": "W -> a W, one scalar a > 0",
    "weight_recentering": "W -> W + 1 c^T, the same vector c added to every row",
    "row_rescaling": "W -> diag(d) W, a positive scale d_i per output unit (row)",
    "data_rescaling": "x_n -> a x_n for every sample, one scalar a > 0",
    "data_recentering": "x_n -> x_n + b for every sample and position, one vector b",
    "sample_rescaling": "x_0 -> a x_0 for a single sample, a > 0",
}


def _check_names(names, known, what: str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    names = list(names)
    for n in names:
        if n not in known:
            raise ValueError(f"unknown {what} {n!r}; known: {', '.join(known)}")
    return names


def _norm_unit(norm: str, in_features: int, out_features: int, eps: float, norm_kwargs: dict):
    """``Conv1d(in, out, 1)`` with the weight normalizer ``norm``, then the activation normalizer ``norm``."""
    linear = nn.Conv1d(in_features, out_features, 1, bias=False)
    if _is_weight_norm(norm):
        return nn.Sequential(weight_transform(norm, eps=eps)(linear), nn.Identity()).double()
    kwargs = dict(norm_kwargs)
    if "eps" not in kwargs and _accepts(norm, "eps"):
        kwargs["eps"] = eps  # normalizers without an eps (LRN, attentive, ...) get none
    return nn.Sequential(linear, create_norm(norm, out_features, **kwargs)).double()


def _accepts(norm: str, argument: str) -> bool:
    """Whether the registered normalizer ``norm`` takes keyword ``argument``."""
    try:
        create_norm(norm, 4, **{argument: 1e-3})
    except TypeError:
        return False
    except ValueError:
        return True  # it takes the argument (and may refuse other defaults)
    return True


def _is_weight_norm(norm: str) -> bool:
    probe = weight_transform(norm)
    layer = nn.Linear(2, 2)
    return probe(layer) is layer and hasattr(layer, "parametrizations")


def _raw_weight_key(unit: nn.Module) -> str:
    """The parameter that training updates for the linear map: its weight, or the parametrization's
    original of the weight's shape (the direction ``v`` of weight normalization)."""
    linear = unit[0]
    if not (hasattr(linear, "parametrizations") and "weight" in linear.parametrizations):
        return "0.weight"
    shape = linear.weight.shape
    for name, p in linear.parametrizations.weight.named_parameters():
        if p.shape == shape:
            return f"0.parametrizations.weight.{name}"
    raise ValueError("the weight normalizer stores no tensor of the weight's shape to transform")


def _transformed(transform: str, w: Tensor, x: Tensor, gen: torch.Generator):
    out, fan_in = w.shape[0], w.shape[1]
    if transform == "weight_rescaling":
        return 2.5 * w, x
    if transform == "weight_recentering":
        c = torch.randn(1, fan_in, *w.shape[2:], generator=gen, dtype=w.dtype)
        return w + c, x
    if transform == "row_rescaling":
        d = 0.3 + 2.7 * torch.rand(out, generator=gen, dtype=w.dtype)
        return w * d.reshape(-1, *([1] * (w.ndim - 1))), x
    if transform == "data_rescaling":
        return w, 2.5 * x
    if transform == "data_recentering":
        b = torch.randn(1, x.shape[1], 1, generator=gen, dtype=x.dtype)
        return w, x + b
    if transform == "sample_rescaling":
        x = x.clone()
        x[0] = 3.0 * x[0]
        return w, x
    raise ValueError(f"unknown transform {transform!r}; known: {', '.join(TRANSFORMS)}")


def invariance_error(
    norm: str,
    transform: str,
    *,
    in_features: int = 12,
    out_features: int = 8,
    spatial_size: int = 4,
    batch_size: int = 16,
    eps: float = 1e-10,
    norm_kwargs: dict | None = None,
    seed: int = 0,
) -> float:
    r"""Relative change :math:`\|y' - y\| / \|y\|` of a normalized layer's output under ``transform``.

    The layer is :math:`y = N(W x)` on ``x: (batch_size, in_features, spatial_size)``: a
    per-position linear map (a 1x1 convolution) followed by the activation normalizer
    ``norm`` in training mode (batch statistics), or, for a weight normalizer (``"wn"``,
    ``"ws"``, ...), :math:`y = \hat W(W) x` with the normalized weight. ``W`` is the parameter
    training updates (for weight normalization: the direction ``v``, the gain ``g`` fixed).
    Float64, random data with a non-zero mean; ``transform`` is a key of :data:`TRANSFORMS`.

    Args:
        norm: a registered normalizer name (see :func:`normlib.registry.available_norms`).
        transform: one of :data:`TRANSFORMS`.
        in_features: input channels.
        out_features: output channels (rows of ``W``).
        spatial_size: positions ``P`` per sample; with ``P = 1`` the data are plain feature vectors.
        batch_size: samples ``N``.
        eps: the normalizer's ``eps`` (small, so that invariances hold to rounding).
        norm_kwargs: extra arguments for the normalizer, e.g. ``{"num_groups": 2}``.
        seed: seed of the data, the weight and the transformation.

    Returns:
        float: 0 up to rounding for an invariant pair, of order 1 otherwise.

    Raises:
        ValueError: unknown ``norm`` or ``transform``, bad sizes, or a normalizer whose output is
            zero up to rounding on this input (instance norm with ``spatial_size=1``).

    Example:
        >>> invariance_error("bn", "data_recentering") < 1e-8
        True
        >>> invariance_error("ln", "data_recentering") > 0.1
        True
    """
    check_seed(seed)
    if not isinstance(norm, str):
        raise TypeError(f"norm must be a registered name (str), got {type(norm).__name__}")
    _check_names([transform], list(TRANSFORMS), "transform")
    for name, value in (("in_features", in_features), ("out_features", out_features),
                        ("spatial_size", spatial_size), ("batch_size", batch_size)):
        check_positive_int(name, value, minimum=2 if name == "batch_size" else 1)
    check_eps(eps)
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unit = _norm_unit(norm, in_features, out_features, eps, dict(norm_kwargs or {}))
    finally:
        torch.random.set_rng_state(torch_state)
    unit.train()
    key = _raw_weight_key(unit)
    params = dict(unit.named_parameters())
    x = torch.randn(batch_size, in_features, spatial_size, generator=gen, dtype=torch.float64) + 0.5
    w_new, x_new = _transformed(transform, params[key].detach(), x, gen)
    # Both outputs from one state: a normalizer with running estimates (population norm)
    # would otherwise let the first evaluation change what the second one reads.
    with torch.no_grad():
        with preserved_state(unit):
            y = functional_call(unit, {key: params[key].detach()}, (x,))
        with preserved_state(unit):
            y_new = functional_call(unit, {key: w_new}, (x_new,))
    ref = float(y.norm())
    # A normalizer that sees one value per statistic outputs rounding noise (x - mean(x) = 0).
    if ref <= 1e-6 * float(x.norm()):
        raise ValueError(
            f"the output of {norm!r} is zero up to rounding on this input (one value per statistic?); "
            f"use spatial_size >= 2 for instance-type normalizers, got spatial_size={spatial_size}"
        )
    return float((y_new - y).norm()) / ref


@dataclass
class InvarianceTable:
    """Which normalizer is invariant to which transformation, decided by computation.

    Attributes:
        norms: row names.
        transforms: column names (keys of :data:`TRANSFORMS`).
        errors: ``(len(norms), len(transforms))`` relative output changes (:func:`invariance_error`).
        tol: an entry is invariant when its error is below ``tol``.
        not_applicable: normalizers the question does not apply to, with the reason (their
            row of ``errors`` is NaN), e.g. a normalizer that needs arguments the table did not
            give, or whose output is zero up to rounding on the table's data.
    """

    norms: list[str]
    transforms: list[str]
    errors: Tensor
    tol: float
    not_applicable: dict[str, str] = field(default_factory=dict)

    @property
    def invariant(self) -> Tensor:
        """``(len(norms), len(transforms))`` bool: ``errors < tol`` (``False`` where not applicable)."""
        return self.errors < self.tol

    def as_dict(self) -> dict[str, dict[str, bool]]:
        """``{norm: {transform: invariant}}``."""
        inv = self.invariant
        return {n: {t: bool(inv[i, j]) for j, t in enumerate(self.transforms)}
                for i, n in enumerate(self.norms)}


def invariance_table(
    norms: Sequence[str] = ("bn", "ln", "in", "gn", "wn", "ws"),
    transforms: Sequence[str] | None = None,
    *,
    tol: float = 1e-6,
    norm_kwargs: dict[str, dict] | None = None,
    **kwargs,
) -> InvarianceTable:
    r"""The invariance table of normalizers under transformations of weights and data.

    Each entry is :func:`invariance_error` compared with ``tol``: invariant entries change
    the output by rounding error only (about 1e-15 in float64 with the default tiny
    ``eps``), the others by a relative amount of order 1, so the decision does not hinge on
    ``tol``. The table extends Table 1 of :cite:t:`ba2016layer` to instance, group and
    weight standardization and to data with several positions per sample, where layer
    normalization loses its invariance to weight re-centering.

    Args:
        norms: registered normalizer names (rows).
        transforms: keys of :data:`TRANSFORMS` (columns; default all, in that order).
        tol: decision threshold on the relative error.
        norm_kwargs: per-normalizer arguments, default ``{"gn": {"num_groups": 2}}`` (group
            norm with 2 groups, neither layer nor instance norm).
        **kwargs: passed to :func:`invariance_error` (``spatial_size``, ``seed``, ...).

    Returns:
        an :class:`InvarianceTable`.

    Example:
        >>> t = invariance_table(["in", "wn"], ["row_rescaling", "data_rescaling"])
        >>> t.invariant.tolist()
        [[True, True], [True, False]]
    """
    if isinstance(norms, str):
        norms = [norms]
    norms = list(norms)
    if transforms is None:
        transforms = list(TRANSFORMS)
    transforms = _check_names(transforms, list(TRANSFORMS), "transform")
    check_positive_float("tol", tol)
    per_norm = {"gn": {"num_groups": 2}} if norm_kwargs is None else dict(norm_kwargs)
    errors = torch.full((len(norms), len(transforms)), math.nan, dtype=torch.float64)
    skipped = {}
    for i, n in enumerate(norms):
        try:
            for j, t in enumerate(transforms):
                errors[i, j] = invariance_error(n, t, norm_kwargs=per_norm.get(n), **kwargs)
        except (ValueError, TypeError) as err:
            if n not in available_norms():
                raise
            errors[i] = math.nan
            skipped[n] = str(err)
    return InvarianceTable(norms, transforms, errors, tol, skipped)
