"""Scale dynamics: how rescaling each layer's weights changes inputs, output gradients and weight gradients.

:func:`~normlib.analysis.scale_dynamics` rescales the weights of a network layer by layer
(:math:`W_k \\to \\alpha_k W_k`) and measures the change of every layer's input, output gradient
and weight gradient; :func:`~normlib.analysis.predicted_scale_dynamics` gives the products of
:math:`\\alpha` that theory predicts, with and without a normalizer after each layer
:cite:p:`huang2023normalization`.

Chapter: Analysis of normalization (``chapters/analysis.md``, :ref:`chap-analysis`), scale
invariance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from normlib._checks import (
    check_callable,
    check_mode,
    check_module,
    check_seed,
    check_tensor,
)
from normlib.hessian import preserved_model_state

__all__ = ["ScaleDynamics", "rescalable_layers", "predicted_scale_dynamics", "scale_dynamics"]


_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


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
    check_seed(seed)
    check_module("model", model)
    check_mode(mode)
    check_tensor("x", x)
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
    check_callable("loss_fn", loss_fn, allow_none=True)
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
