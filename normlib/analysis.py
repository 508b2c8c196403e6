r"""Analysis of normalization: scale invariance, effective learning rate, stochasticity.

Three properties explain much of what normalization does to training
:cite:p:`huang2023normalization`, and each is measured here rather than assumed:

- **Scale invariance.** A normalizer after a linear map makes the layer's output
  independent of the scale of its weight. :func:`scale_dynamics` rescales the
  weights of a network layer by layer (:math:`W_k \to \alpha_k W_k`) and measures
  how layer inputs, output gradients and weight gradients change;
  :func:`predicted_scale_dynamics` gives the products of :math:`\alpha` that theory
  predicts. :func:`invariance_table` decides, by computing outputs before and after,
  which normalizers are invariant to which transformation of weights and data
  :cite:p:`ba2016layer`.
- **Effective learning rate.** For a scale-invariant weight :math:`w` the gradient is
  orthogonal to :math:`w` and shrinks as :math:`1/\|w\|`, so SGD with learning rate
  :math:`\eta` moves the direction :math:`w/\|w\|` like a step of :math:`\eta/\|w\|^2`
  :cite:p:`van2017l2,hoffer2018norm`. :func:`sgd_norm_dynamics` records
  :math:`\|w_t\|`, the effective learning rate and the angular update during SGD,
  with and without weight decay; :func:`equilibrium_angular_update` is the angular
  update that weight decay settles to :cite:p:`wan2021spherical`.
- **Stochasticity.** In training, a sample is normalized with the statistics of the
  random batch it arrives in. :func:`stochastic_normalization_disturbance` measures
  how much its normalized output moves from batch to batch (the SND of
  :cite:t:`huang2020investigation`); :func:`train_inference_discrepancy` measures the
  gap between the training output (batch statistics) and the inference output
  (population statistics).

Every tool leaves a model as it found it: parameters, buffers (BatchNorm running
statistics), train/eval flags and ``.grad`` fields, also when it raises.

Explained in the chapter "Analysis of normalization" (``chapters/analysis.md``).

Example:
    >>> import torch
    >>> from normlib.analysis import invariance_table
    >>> table = invariance_table(["bn", "ln"], ["weight_rescaling", "sample_rescaling"])
    >>> table.as_dict()["bn"]
    {'weight_rescaling': True, 'sample_rescaling': False}
    >>> table.as_dict()["ln"]
    {'weight_rescaling': True, 'sample_rescaling': True}
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from normlib import functional as NF
from normlib._checks import (
    check_eps,
    check_float,
    check_int,
    check_mode,
    check_module,
    check_momentum,
    check_nonnegative_float,
    check_positive_float,
    check_positive_int,
)
from normlib.hessian import preserved_model_state
from normlib.registry import create_norm, weight_transform
from normlib.whitening import whiten

__all__ = [
    "ScaleDynamics",
    "rescalable_layers",
    "scale_dynamics",
    "predicted_scale_dynamics",
    "TRANSFORMS",
    "InvarianceTable",
    "invariance_error",
    "invariance_table",
    "scale_invariant_parameters",
    "NormDynamics",
    "sgd_norm_dynamics",
    "equilibrium_angular_update",
    "equilibrium_norm",
    "SND_METHODS",
    "normalize_in_batches",
    "empirical_snd",
    "SNDEstimate",
    "stochastic_normalization_disturbance",
    "SNDSweep",
    "snd_sweep",
    "PopulationDiscrepancy",
    "train_inference_discrepancy",
]

_MODES = ("train", "eval")
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# ------------------------------------------------------------------------ argument checks


def _proportionality(new: Tensor, old: Tensor) -> tuple[float, float]:
    """The factor ``c`` with ``new ~ c * old`` (least squares) and ``||new - c old|| / ||new||``."""
    new, old = new.detach().flatten().double(), old.detach().flatten().double()
    denom = float(old @ old)
    if denom == 0.0:
        return math.nan, math.nan
    c = float(new @ old) / denom
    scale = max(float(new.norm()), float(c * old.norm()), torch.finfo(torch.float64).tiny)
    return c, float((new - c * old).norm()) / scale


# ------------------------------------------------------------------------- scale dynamics


@dataclass
class ScaleDynamics:
    """How a layer's input, output gradient and weight gradient scale under :math:`W_k \\to \\alpha_k W_k`.

    Entry ``k`` of each tensor is the factor by which the quantity of layer ``k``
    (in forward order) is multiplied: its input :math:`x_{k-1}`, the gradient
    :math:`\\partial L / \\partial h_k` of the loss with respect to its output
    :math:`h_k = W_k x_{k-1}`, and the gradient :math:`\\partial L / \\partial W_k`
    with respect to its (rescaled) weight.

    Attributes:
        alphas: ``(K,)`` the weight scales.
        input: ``(K,)`` factor of the layer input.
        output_grad: ``(K,)`` factor of the output gradient.
        weight_grad: ``(K,)`` factor of the weight gradient.
        residual: ``(K, 3)`` relative deviation of each measured quantity from an
            exact rescaling (``||new - c old|| / ||new||``); zeros for predictions.
        names: the layers' names in the model (``""`` for predictions).
        mode: ``"train"`` or ``"eval"`` for measurements, ``"predicted"`` otherwise.
    """

    alphas: Tensor
    input: Tensor
    output_grad: Tensor
    weight_grad: Tensor
    residual: Tensor
    names: list[str] = field(default_factory=list)
    mode: str = "predicted"

    def as_rows(self) -> list[dict]:
        """One dict per layer: name, alpha and the three factors (for a table)."""
        return [
            {"layer": self.names[k] if self.names else str(k + 1),
             "alpha": float(self.alphas[k]), "input": float(self.input[k]),
             "output_grad": float(self.output_grad[k]), "weight_grad": float(self.weight_grad[k])}
            for k in range(len(self.alphas))
        ]


def rescalable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The linear and convolution layers of ``model`` as ``(name, module)``, in definition order.

    These are the layers :func:`scale_dynamics` rescales by default. For the models of
    :mod:`normlib.models` definition order is forward order.

    Args:
        model: any ``nn.Module``.

    Example:
        >>> from normlib.models import MLP
        >>> [name for name, _ in rescalable_layers(MLP(4, 2, width=8, depth=2, norm="bn"))]
        ['layers.0.0', 'layers.1.0', 'head']
    """
    check_module("model", model)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _LAYER_TYPES)]


def _as_alphas(alphas, k: int) -> Tensor:
    a = torch.as_tensor(alphas, dtype=torch.float64).flatten()
    if a.numel() != k:
        raise ValueError(f"alphas has {a.numel()} entries but there are {k} layers; give one per layer")
    if not bool(torch.isfinite(a).all()) or not bool((a > 0).all()):
        raise ValueError(
            f"alphas must be finite and positive (the rules hold for alpha > 0), got {a.tolist()}"
        )
    return a


def predicted_scale_dynamics(alphas: Sequence[float], normalized: Sequence[bool]) -> ScaleDynamics:
    r"""The scaling rules of :math:`W_k \to \alpha_k W_k` for a chain of layers, some normalized.

    The network is :math:`h_k = W_k x_{k-1}`, :math:`x_k = \phi(N_k(h_k))` with a
    positively homogeneous activation :math:`\phi` (ReLU, identity), no biases (or zero
    ones), :math:`N_k` a scale-invariant normalizer (``normalized[k]``) or the identity,
    and a loss whose gradient with respect to the network output is fixed. Forward, the
    input of a layer scales by :math:`s_{k-1}` with :math:`s_0 = 1` and
    :math:`s_k = 1` after a normalizer, :math:`s_k = \alpha_k s_{k-1}` otherwise.
    Backward, :math:`\partial L/\partial h_k` scales by :math:`e_k` (the factor of
    :math:`\partial L/\partial x_k`, with :math:`e_K = 1`) without a normalizer and by
    :math:`e_k / (\alpha_k s_{k-1})` after one (a normalizer's Jacobian scales inversely
    with its input), and :math:`e_{k-1} = \alpha_k \times` that factor. The weight
    gradient :math:`\partial L/\partial W_k = (\partial L/\partial h_k) x_{k-1}^\top`
    multiplies the two.

    With no normalizer this is the first row of the table of
    :cite:t:`huang2023normalization`: inputs :math:`\prod_{i<k}\alpha_i`, output
    gradients :math:`\prod_{i>k}\alpha_i`, weight gradients :math:`\prod_{i\ne k}\alpha_i`;
    with a normalizer after every layer it is the second: inputs 1, output and weight
    gradients :math:`1/\alpha_k`.

    Args:
        alphas: ``K`` positive weight scales.
        normalized: ``K`` flags, whether layer ``k`` is followed by a normalizer.

    Returns:
        a :class:`ScaleDynamics` with ``mode="predicted"``.

    Example:
        >>> p = predicted_scale_dynamics([2.0, 3.0, 5.0], [False, False, False])
        >>> p.input.tolist(), p.output_grad.tolist(), p.weight_grad.tolist()
        ([1.0, 2.0, 6.0], [15.0, 5.0, 1.0], [15.0, 10.0, 6.0])
        >>> predicted_scale_dynamics([2.0, 4.0], [True, True]).weight_grad.tolist()
        [0.5, 0.25]
    """
    flags = [bool(f) for f in normalized]
    a = _as_alphas(alphas, len(flags))
    k = len(flags)
    if k == 0:
        raise ValueError("alphas and normalized must describe at least one layer")
    inp = torch.ones(k, dtype=torch.float64)
    pre = torch.ones(k, dtype=torch.float64)
    s = 1.0
    for i in range(k):
        inp[i] = s
        pre[i] = a[i] * s
        s = 1.0 if flags[i] else float(pre[i])
    out_grad = torch.ones(k, dtype=torch.float64)
    e = 1.0
    for i in reversed(range(k)):
        out_grad[i] = e / pre[i] if flags[i] else e
        e = float(a[i] * out_grad[i])
    return ScaleDynamics(a, inp, out_grad, out_grad * inp, torch.zeros(k, 3, dtype=torch.float64))


def _layer_quantities(model, x, layers, scales, output_grad, loss_fn):
    """Inputs, output gradients and weight gradients of ``layers`` with weights ``scales * W``."""
    captured: dict[int, tuple[Tensor, Tensor]] = {}

    def hook_for(i):
        def hook(module, inputs, output):
            captured[i] = (inputs[0], output)
        return hook

    weights = {}
    for (name, layer), c in zip(layers, scales):
        key = f"{name}.weight" if name else "weight"
        weights[key] = (c * layer.weight.detach()).requires_grad_(True)
    handles = [layer.register_forward_hook(hook_for(i)) for i, (_, layer) in enumerate(layers)]
    try:
        out = functional_call(model, weights, (x,))
    finally:
        for h in handles:
            h.remove()
    if len(captured) != len(layers):
        missing = [layers[i][0] for i in range(len(layers)) if i not in captured]
        raise ValueError(
            f"layers {missing} were not called in the forward pass; pass layers that the model uses"
        )
    if loss_fn is None:
        if output_grad.shape != out.shape:
            raise ValueError(
                f"output_grad has shape {tuple(output_grad.shape)} but the model output has "
                f"shape {tuple(out.shape)}"
            )
        loss = (out * output_grad.to(out.dtype)).sum()
    else:
        loss = loss_fn(out)
    outs = [captured[i][1] for i in range(len(layers))]
    grads = torch.autograd.grad(loss, outs + list(weights.values()))
    k = len(layers)
    inputs = [captured[i][0].detach() for i in range(k)]
    return inputs, [g.detach() for g in grads[:k]], [g.detach() for g in grads[k:]]


def scale_dynamics(
    model: nn.Module,
    x: Tensor,
    alphas: Sequence[float],
    *,
    layers: Sequence[str] | None = None,
    output_grad: Tensor | None = None,
    loss_fn: Callable[[Tensor], Tensor] | None = None,
    mode: str = "train",
    seed: int = 0,
) -> ScaleDynamics:
    r"""Measure how rescaling each layer's weight, :math:`W_k \to \alpha_k W_k`, changes backprop.

    Two forward and backward passes, one with the model's weights and one with every
    chosen layer's weight multiplied by its :math:`\alpha_k` (through
    ``torch.func.functional_call``: the model's parameters are never written), record
    for each layer its input :math:`x_{k-1}`, the gradient with respect to its output
    :math:`h_k` and the gradient with respect to its weight. Each factor is the least
    squares ``c`` in ``new = c * old``; ``residual`` says how far the new quantity is from
    an exact multiple of the old one. Compare with :func:`predicted_scale_dynamics`.

    By default the loss is linear in the output, :math:`L = \langle g, f(x)\rangle` with a
    fixed random :math:`g`, so that the output gradient is the same in both passes, as
    the scaling rules assume; with another ``loss_fn`` the rules hold only when the
    output itself does not change.

    Args:
        model: the network (its rescaled layers must have plain, unparametrized weights).
        x: an input batch ``(N, *)`` for ``model``.
        alphas: one positive scale per layer.
        layers: names of the layers to rescale, in forward order (default: every linear and
            convolution layer, :func:`rescalable_layers`).
        output_grad: :math:`g`, shaped like the output (default: standard normal, ``seed``).
        loss_fn: ``loss_fn(output) -> scalar`` instead of the linear loss.
        mode: ``"train"`` (batch statistics) or ``"eval"`` (running statistics); the model is
            put in this mode for the measurement and restored afterwards.
        seed: seed of the default ``output_grad``.

    Returns:
        a :class:`ScaleDynamics` with ``mode`` set to the mode measured in.

    Raises:
        ValueError: wrong number of ``alphas`` or a non-positive one, an unknown layer name, a
            layer with a parametrized weight, an unknown ``mode``.
        TypeError: ``model`` is not an ``nn.Module``.

    Example:
        >>> import torch
        >>> from normlib.models import MLP
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = MLP(6, 3, width=16, depth=2, norm="bn").double()
        >>> m = scale_dynamics(net, torch.randn(32, 6, dtype=torch.float64), [2.0, 4.0, 1.0])
        >>> [round(v, 4) for v in m.weight_grad.tolist()]
        [0.5, 0.25, 1.0]
    """
    check_module("model", model)
    check_mode(mode)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    all_layers = dict(rescalable_layers(model))
    modules = dict(model.named_modules())
    if layers is None:
        chosen = list(all_layers.items())
    else:
        chosen = []
        for name in layers:
            if name not in modules or not hasattr(modules[name], "weight"):
                raise ValueError(
                    f"layer {name!r} is not a module with a weight in the model; known layers: "
                    f"{', '.join(all_layers)}"
                )
            chosen.append((name, modules[name]))
    if not chosen:
        raise ValueError("the model has no linear or convolution layer to rescale")
    for name, layer in chosen:
        if hasattr(layer, "parametrizations") and "weight" in layer.parametrizations:
            raise ValueError(
                f"layer {name!r} has a parametrized weight; scale_dynamics rescales plain weights "
                "(use invariance_table for weight normalizers)"
            )
    a = _as_alphas(alphas, len(chosen))
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    with preserved_model_state(model):
        model.train(mode == "train")
        if output_grad is None and loss_fn is None:
            with torch.no_grad():
                shape = model(x).shape
            gen = torch.Generator().manual_seed(seed)
            output_grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(x.device)
        ones = torch.ones_like(a)
        base = _layer_quantities(model, x, chosen, ones.tolist(), output_grad, loss_fn)
        new = _layer_quantities(model, x, chosen, a.tolist(), output_grad, loss_fn)
    factors = torch.empty(3, len(chosen), dtype=torch.float64)
    residual = torch.empty(len(chosen), 3, dtype=torch.float64)
    for q in range(3):
        for k in range(len(chosen)):
            factors[q, k], residual[k, q] = _proportionality(new[q][k], base[q][k])
    return ScaleDynamics(a, factors[0], factors[1], factors[2], residual,
                         [name for name, _ in chosen], mode)


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
    linear = weight_transform(norm, eps=eps)(linear) if _is_weight_norm(norm) else linear
    unit = nn.Sequential(linear, create_norm(norm, out_features, eps=eps, **norm_kwargs))
    return unit.double()


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
    in_features: int = 6,
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
    with torch.no_grad():
        y = functional_call(unit, {key: params[key].detach()}, (x,))
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
    """

    norms: list[str]
    transforms: list[str]
    errors: Tensor
    tol: float

    @property
    def invariant(self) -> Tensor:
        """``(len(norms), len(transforms))`` bool: ``errors < tol``."""
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
    errors = torch.tensor(
        [[invariance_error(n, t, norm_kwargs=per_norm.get(n), **kwargs) for t in transforms]
         for n in norms],
        dtype=torch.float64,
    ).reshape(len(norms), len(transforms))
    return InvarianceTable(norms, transforms, errors, tol)


# ------------------------------------------------------------------ effective learning rate


def scale_invariant_parameters(
    model: nn.Module,
    x: Tensor,
    *,
    factor: float = 3.0,
    tol: float = 1e-3,
    mode: str = "train",
) -> list[str]:
    r"""Names of the parameters :math:`w` with :math:`f(c\,w) = f(w)`, decided by computation.

    Each parameter in turn is multiplied by ``factor`` (the others fixed) and the output
    on ``x`` compared with the original one; a parameter is scale invariant when the
    relative change is below ``tol`` (the default allows for the normalizers' ``eps``;
    a parameter that is not invariant changes the output by a relative amount of order
    1). Parameters that are exactly zero (fresh biases) cannot be tested and are never
    listed. In a network with BatchNorm these are the weights
    of the layers in front of a normalizer; the head and the normalizer's own affine
    parameters are not.

    Args:
        model: the network.
        x: an input batch.
        factor: the test scale :math:`c` (not 1).
        tol: relative output change below which a parameter counts as invariant.
        mode: ``"train"`` (batch statistics) or ``"eval"``.

    Returns:
        list of parameter names, in ``named_parameters()`` order.

    Example:
        >>> import torch
        >>> from normlib.models import MLP
        >>> net = MLP(5, 2, width=8, depth=2, norm="bn").double()
        >>> scale_invariant_parameters(net, torch.randn(16, 5, dtype=torch.float64))
        ['layers.0.0.weight', 'layers.0.1.weight', 'layers.1.0.weight']

    The BatchNorm gain ``layers.0.1.weight`` is listed too: while its shift is zero, the
    next layer's normalizer removes its scale. The answer is about the parameters as they
    are now.
    """
    check_module("model", model)
    check_mode(mode)
    check_positive_float("factor", factor)
    if factor == 1.0:
        raise ValueError("factor must differ from 1 to test invariance; use e.g. 3.0")
    check_positive_float("tol", tol)
    names = []
    with preserved_model_state(model), torch.no_grad():
        model.train(mode == "train")
        y = model(x)
        ref = float(y.norm())
        for name, p in model.named_parameters():
            if not bool(p.detach().any()):
                continue
            y_new = functional_call(model, {name: factor * p.detach()}, (x,))
            if float((y_new - y).norm()) <= tol * ref:
                names.append(name)
    return names


@dataclass
class NormDynamics:
    r"""The norms of tracked weights during SGD and what they imply.

    Attributes:
        names: the tracked parameters.
        norms: ``(steps + 1, len(names))`` :math:`\|w_t\|` before each step and at the end.
        grad_norms: ``(steps, len(names))`` :math:`\|\nabla_w L\|` of each step's mini-batch loss.
        angular_update: ``(steps, len(names))`` the angle (radians) between :math:`w_t` and
            :math:`w_{t+1}`.
        losses: ``(steps,)`` each step's mini-batch loss.
        lr: the learning rate :math:`\eta`.
        weight_decay: :math:`\lambda`.
        momentum: the SGD momentum.
        model: the trained copy of the model (the original is not touched).
    """

    names: list[str]
    norms: Tensor
    grad_norms: Tensor
    angular_update: Tensor
    losses: Tensor
    lr: float
    weight_decay: float
    momentum: float
    model: nn.Module

    @property
    def effective_lr(self) -> Tensor:
        r"""``(steps + 1, len(names))`` :math:`\eta / \|w_t\|^2`, the step size seen by the direction."""
        return self.lr / self.norms**2


def equilibrium_angular_update(lr: float, weight_decay: float, momentum: float = 0.0) -> float:
    r"""The angular update of a scale-invariant weight at equilibrium: :math:`\sqrt{2\eta\lambda/(1+\mu)}`.

    Weight decay shrinks :math:`\|w\|` by the factor :math:`1 - \eta\lambda` per step, while the
    gradient, orthogonal to :math:`w`, lengthens it; the two balance when the angle between
    consecutive weights is about :math:`\sqrt{2\eta\lambda/(1+\mu)}` for SGD with momentum
    :math:`\mu`, whatever the loss :cite:p:`wan2021spherical`. First order in :math:`\eta\lambda`.

    Args:
        lr: :math:`\eta > 0`.
        weight_decay: :math:`\lambda > 0`.
        momentum: :math:`\mu \in [0, 1)`.

    Example:
        >>> round(equilibrium_angular_update(0.1, 5e-4), 6)
        0.01
    """
    lr = check_positive_float("lr", lr)
    weight_decay = check_positive_float("weight_decay", weight_decay)
    check_momentum(momentum, allow_none=False, high_open=True)
    return math.sqrt(2.0 * lr * weight_decay / (1.0 + momentum))


def equilibrium_norm(lr: float, weight_decay: float, unit_grad_norm: float) -> float:
    r"""The norm at which plain SGD with weight decay keeps a scale-invariant weight.

    With :math:`g_t \perp w_t` and :math:`\|g_t\| = G / \|w_t\|` (:math:`G` the gradient norm
    at unit weight norm), one step gives :math:`\|w_{t+1}\|^2 = (1-\eta\lambda)^2\|w_t\|^2 +
    \eta^2 G^2/\|w_t\|^2`, whose fixed point is
    :math:`\|w\|^4 = \eta^2 G^2 / (1 - (1-\eta\lambda)^2) \approx \eta G^2 / (2\lambda)`.

    Args:
        lr: :math:`\eta > 0`.
        weight_decay: :math:`\lambda > 0`, with :math:`\eta\lambda < 1`.
        unit_grad_norm: :math:`G \ge 0`.

    Example:
        >>> round(equilibrium_norm(0.1, 5e-4, 1.0), 4)
        3.1623
    """
    lr = check_positive_float("lr", lr)
    weight_decay = check_positive_float("weight_decay", weight_decay)
    g = check_nonnegative_float("unit_grad_norm", unit_grad_norm)
    if lr * weight_decay >= 1.0:
        raise ValueError(f"lr * weight_decay must be < 1, got {lr * weight_decay!r}")
    return (lr**2 * g**2 / (1.0 - (1.0 - lr * weight_decay) ** 2)) ** 0.25


def _angle(a: Tensor, b: Tensor) -> float:
    # 2 atan2(|u - v|, |u + v|) keeps full precision for tiny angles, where acos(cos) does not.
    u, v = a.flatten().double(), b.flatten().double()
    u, v = u / u.norm(), v / v.norm()
    return 2.0 * math.atan2(float((u - v).norm()), float((u + v).norm()))


def sgd_norm_dynamics(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    lr: float,
    steps: int,
    params: Sequence[str] | None = None,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
) -> NormDynamics:
    r"""Train a copy of ``model`` with SGD and record the norms of its scale-invariant weights.

    Plain SGD (``torch.optim.SGD``, weight decay added to the gradient) on mini-batches
    drawn without replacement from ``data`` (a new permutation each epoch; the full batch
    if ``batch_size`` is None). For a scale-invariant :math:`w` the gradient is orthogonal
    to :math:`w`, so without weight decay and momentum
    :math:`\|w_{t+1}\|^2 = \|w_t\|^2 + \eta^2 \|g_t\|^2`: the norm only grows and the
    effective learning rate :math:`\eta/\|w_t\|^2` only falls
    :cite:p:`van2017l2,hoffer2018norm`. Weight decay balances the growth at the angular
    update of :func:`equilibrium_angular_update`.

    Args:
        model: the network; it is deep-copied, the original is left as it is.
        data: ``(x, y)`` with ``N`` samples.
        loss_fn: ``loss_fn(output, y) -> scalar``.
        lr: learning rate :math:`\eta`.
        steps: number of SGD steps.
        params: names of the parameters to track (default:
            :func:`scale_invariant_parameters` on the first batch).
        weight_decay: :math:`\lambda`, applied to every parameter.
        momentum: SGD momentum in ``[0, 1)``.
        batch_size: mini-batch size (at most ``N``); None for full-batch gradient descent.
        seed: seed of the batch order.

    Returns:
        a :class:`NormDynamics`.

    Raises:
        ValueError: bad ``lr``, ``steps``, ``weight_decay``, ``momentum``, a ``batch_size``
            larger than the data, an unknown parameter name, or no parameter to track.

    Example:
        >>> import torch
        >>> from normlib.models import MLP
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = MLP(5, 3, width=8, depth=2, norm="bn").double()
        >>> x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
        >>> d = sgd_norm_dynamics(net, (x, y), torch.nn.functional.cross_entropy, lr=0.5,
        ...                       steps=5, batch_size=16, params=["layers.1.0.weight"])
        >>> bool((d.norms[1:] > d.norms[:-1]).all())  # no weight decay: the norm only grows
        True
    """
    check_module("model", model)
    lr = check_positive_float("lr", lr)
    check_positive_int("steps", steps)
    weight_decay = check_nonnegative_float("weight_decay", weight_decay)
    momentum = check_momentum(momentum, allow_none=False, high_open=True)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    x, y = data
    n = x.shape[0]
    if batch_size is None:
        batch_size = n
    check_positive_int("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} is larger than the data ({n} samples); use at most {n}")
    net = copy.deepcopy(model).train()
    if params is None:
        params = scale_invariant_parameters(net, x[:batch_size])
        if not params:
            raise ValueError("the model has no scale-invariant parameter; pass params= to track others")
    named = dict(net.named_parameters())
    for name in params:
        if name not in named:
            raise ValueError(f"unknown parameter {name!r}; known: {', '.join(named)}")
    tracked = [named[p] for p in params]
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    norms = torch.empty(steps + 1, len(tracked), dtype=torch.float64)
    grad_norms = torch.empty(steps, len(tracked), dtype=torch.float64)
    angles = torch.empty(steps, len(tracked), dtype=torch.float64)
    losses = torch.empty(steps, dtype=torch.float64)
    for t in range(steps):
        if order.numel() < batch_size:
            order = torch.randperm(n, generator=gen)
        idx, order = order[:batch_size], order[batch_size:]
        before = [p.detach().clone() for p in tracked]
        norms[t] = torch.stack([b.double().norm() for b in before])
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x[idx]), y[idx])
        loss.backward()
        grad_norms[t] = torch.stack([p.grad.double().norm() for p in tracked])
        losses[t] = float(loss.detach())
        opt.step()
        for i, (b, p) in enumerate(zip(before, tracked)):
            angles[t, i] = _angle(b, p.detach())
    norms[steps] = torch.stack([p.detach().double().norm() for p in tracked])
    opt.zero_grad(set_to_none=True)
    return NormDynamics(list(params), norms, grad_norms, angles, losses, lr, weight_decay,
                        momentum, net)


# ---------------------------------------------------------------------------- stochasticity

#: Methods of :func:`stochastic_normalization_disturbance`: BatchNorm standardization and
#: the batch whitening methods of :mod:`normlib.whitening` (``cd`` is Cholesky whitening).
SND_METHODS = ("bn", "zca", "pca", "cd", "iternorm")
_SND_ALIASES = {"cholesky": "cd", "itn": "iternorm"}
_WHITENING_NAME = {"zca": "zca", "pca": "pca", "cd": "cholesky", "iternorm": "iternorm"}


def _snd_method(method) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    key = _SND_ALIASES.get(method.lower(), method.lower())
    if key not in SND_METHODS:
        raise ValueError(
            f"unknown normalization method {method!r}; known: {', '.join(SND_METHODS)} "
            f"(aliases: {', '.join(f'{a}={m}' for a, m in _SND_ALIASES.items())})"
        )
    return key


def _check_data(data) -> Tensor:
    if not isinstance(data, Tensor):
        raise TypeError(f"data must be a torch.Tensor of shape (num_samples, d), got {type(data).__name__}")
    if data.dim() != 2 or not data.is_floating_point():
        raise ValueError(f"data must be a floating point tensor (num_samples, d), got {tuple(data.shape)} "
                         f"{data.dtype}")
    return data


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
    method = _snd_method(method)
    data = _check_data(data)
    m, d = data.shape
    _check_batch_size(batch_size, m, d, method)
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
    method = _snd_method(method)
    data = _check_data(data)
    m, d = data.shape
    _check_batch_size(batch_size, m, d, method)
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
    method = _snd_method(method)
    data = _check_data(data)
    m, d = data.shape
    _check_batch_size(batch_size, m, d, method)
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
